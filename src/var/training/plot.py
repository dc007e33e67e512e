"""Loss curves of a run (``var plot RUN``), from its metrics.jsonl."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .common import METRICS

log = logging.getLogger(__name__)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of a run folder's metrics.jsonl, one dict per logged step. A last line cut short (a run
    killed while logging) is skipped with a warning, as a resume drops it; ValueError names the file and
    line of any other line that is not a JSON record with a step."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run folder?")
    try:
        lines = path.read_text().splitlines(keepends=True)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file of JSON lines ({e})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not line.endswith("\n"):
                log.warning("%s: its last line is cut short (the run was stopped while writing it): skipped", path)
                continue
            raise ValueError(f"{path}, line {number}: not JSON ({e})") from None
        if type(record.get("step") if isinstance(record, dict) else None) is not int:  # bool is no step either
            raise ValueError(f"{path}, line {number}: expected a JSON object with an integer step, got "
                             f"{line.strip()[:80]!r}")
        records.append(record)
    return records


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """One panel per metric family: total loss, per-scale losses, accuracy or PSNR, learning rate."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no backend chosen, nothing global changed
    except ImportError as e:
        raise ValueError("var plot needs matplotlib: pip install 'var[plot]'") from e
    rows = read_metrics(run_dir)
    keys = sorted({k for r in rows for k in r if k != "step"})
    panels = [("loss", [k for k in keys if k in ("loss", "rec_loss", "vq_loss", "g_loss", "d_loss")]),
              ("loss per scale", [k for k in keys if k.startswith("loss_s")]),
              ("accuracy / PSNR", [k for k in keys if k == "acc" or k.startswith("acc_s") or "psnr" in k]),
              ("learning rate", [k for k in keys if k == "lr"])]
    panels = [(t, ks) for t, ks in panels if ks]
    if not panels:
        raise ValueError(f"{run_dir}/{METRICS} holds no metric to plot")
    _warn_if_too_short(run_dir, rows)
    fig = Figure(figsize=(4.5 * len(panels), 3.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, ks) in zip(axes[0], panels):
        for k in ks:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1, marker="o" if len(pts) < 2 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(ks) > 1:
            ax.legend(fontsize=6)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "loss.png"
    fig.savefig(out, dpi=100)
    return out


def _warn_if_too_short(run_dir: Path, rows: list[dict]) -> None:
    """A curve needs two logged steps; with fewer the panels show a lone marker or nothing, so say why."""
    steps = sorted({r["step"] for r in rows})
    if len(steps) < 2:
        log.warning("%s/%s holds %d logged step(s) (%s): a curve needs at least two, so the plot shows single "
                    "points; train longer or log more often (--log-every)", run_dir, METRICS, len(steps),
                    ", ".join(map(str, steps)) or "none")
