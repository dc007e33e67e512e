"""The side-by-side benchmark of the GPU check (benchmarks/gpu_check.sh): generation and a training step of the
transformer on one device, written as one JSON and a markdown table into a folder.

Generation at the released d16 shape (256 px, random weights) at the reference's sampling settings (cfg 1.5,
top-k 900, top-p 0.96), for every batch size (2 and 64), dtype (fp32 and bf16 autocast) and ``cfg_scales``
(None, and K - 2: all but the last two scales guided): our pipeline eager and compiled (``VARPipeline.compile``,
inductor) alternate in one process, after a warm-up call each, whose time (compiling included) is recorded.
With ``--ref`` (a checkout of github.com/FoundationVision/VAR) the reference's ``autoregressive_infer_cfg`` on
the same weights alternates with them (its rows have no ``cfg_scales``: the speed-ups of ours are quoted
against its full guidance). Then a d16 training step on fixed random tokens, fp32: ``VARTrainer.train_step``
eager and compiled, and the reference's step (``compare_reference.ReferenceTrainStep``) with ``--ref``; label
dropout and stochastic depth off, so that the first-step losses compare.

``--dry-run`` runs the same steps at tiny sizes on the CPU (a two-block model at 16 px, batches 2 and 4, one timed
run, compiling with the eager backend, which traces without building kernels; with ``--ref`` the reference's
d2): a check of the script, not a measurement.

    PYTHONPATH=src python benchmarks/gpu_bench.py OUT [--ref /path/to/VAR] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from var import VAR, VARConfig, VARPipeline, VQVAE, VQVAEConfig
from var.bench import build_pipeline, machine_info
from var.cpu import plain
from var.precision import autocast
from var.training import Schedule
from var.training.runs import VAR_BETAS, make_optimizer
from var.training.trainers import VARTrainer

log = logging.getLogger("gpu_bench")
SAMPLING = {"cfg": 1.5, "top_k": 900, "top_p": 0.96}   # the reference's settings
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    device: str
    config: str                        # a var.recipes shape or "tiny" (random weights), unless --ref gives them
    depth: int                         # the reference's d{depth}, with --ref
    batch_sizes: tuple[int, ...]
    train_batch_size: int
    backend: str                       # torch.compile's backend
    repeats: int
    dtypes: tuple[str, ...] = tuple(DTYPES)
    train_dtypes: tuple[str, ...] = tuple(DTYPES)
    cfg_scales_rows: bool = True       # also time cfg_scales = K - 2
    parts: tuple[str, ...] = ("generation", "training")


# The GPU's training step in fp32 only (the reference's step is fp32): compiling the whole d16 step again under
# bf16 would cost minutes of the check's 8.
GPU = Plan(device="cuda", config="d16", depth=16, batch_sizes=(2, 64), train_batch_size=16, backend="inductor",
           repeats=3, train_dtypes=("fp32",))
DRY_RUN = Plan(device="cpu", config="tiny", depth=2, batch_sizes=(2, 4), train_batch_size=4, backend="eager",
               repeats=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder for gpu_bench.json and gpu_bench.md")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script, measures nothing")
    p.add_argument("--ref", type=Path, help="a checkout of github.com/FoundationVision/VAR: also time the reference")
    p.add_argument("--repeats", type=int, help="timed runs of each (default: 3, 1 with --dry-run)")
    g = p.add_argument_group("another plan (e.g. a CPU measurement: --device cpu --config d8 --batch-sizes 2 "
                             "--train-batch-size 4 --dtypes fp32 --no-cfg-scales-rows)")
    g.add_argument("--device", help="default: cuda, cpu with --dry-run")
    g.add_argument("--config", help="a var.recipes shape (d8, d16, fashion-mnist, ...) or tiny")
    g.add_argument("--batch-sizes", type=int, nargs="+", help="generation batch sizes")
    g.add_argument("--train-batch-size", type=int)
    g.add_argument("--dtypes", nargs="+", choices=list(DTYPES))
    g.add_argument("--no-cfg-scales-rows", dest="cfg_scales_rows", action="store_false", default=None,
                   help="time the default guidance only")
    g.add_argument("--parts", nargs="+", choices=("generation", "training"))
    p.add_argument("--tests-junit", type=Path, help="pytest's junit XML of the CUDA tests, whose counts join the report")
    args = p.parse_args(argv)
    if args.ref is not None and not (args.ref / "models" / "__init__.py").is_file():
        p.error(f"--ref {args.ref} is not a VAR checkout (no models/__init__.py)")
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of ``fn()``, the device synchronised on both sides."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def alternate(runners: dict[str, Callable[[], float]], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """One warm-up run of each (its seconds returned apart: the compiled one's compiles), then ``repeats`` rounds
    of all, the order reversed every other round; returns (warm-up seconds, median seconds)."""
    first = {who: run() for who, run in runners.items()}
    times: dict[str, list[float]] = {who: [] for who in runners}
    order = list(runners)
    for i in range(repeats):
        for who in order if i % 2 == 0 else order[::-1]:
            times[who].append(runners[who]())
    return first, {who: statistics.median(t) for who, t in times.items()}


# ------------------------------------------------------------------------------------------------ models
def import_reference(ref: Path):
    """The reference's ``models`` package and our compare_reference helpers (beside this script)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import compare_reference

    return compare_reference, compare_reference.import_reference(ref, None)


def our_pipelines(plan: Plan, reference) -> tuple[VARPipeline, VARPipeline, tuple | None]:
    """Two pipelines with the same weights on the plan's device (one to compile), and the reference's
    (VQVAE, VAR) with those weights when ``reference`` (compare_reference, models) is given."""
    device = torch.device(plan.device)
    if reference is None:
        build = tiny_pipeline if plan.config == "tiny" else lambda device: build_pipeline(plan.config, device)
        return build(device), build(device), None
    compare, models = reference
    ref_vae, ref_var, pipe = compare.build_pair(models, plan.depth, seed=0)
    twin = VARPipeline.from_official(ref_vae.state_dict(), ref_var.state_dict())
    return pipe.to(device), twin.to(device), (ref_vae.to(device), ref_var.to(device))


def tiny_pipeline(device: torch.device) -> VARPipeline:
    """The dry run's model: two blocks of width 64 over a 16 px tokenizer of 32 codes, random weights of seed 0
    (the caller's random state left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vqvae = VQVAE(VQVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=32,
                                  patch_nums=(1, 2, 4, 8), using_sa=False, using_mid_sa=False))
        var = VAR(VARConfig(vocab_size=32, latent_channels=8, num_classes=10, depth=2, embed_dim=64, num_heads=2,
                            patch_nums=(1, 2, 4, 8)))
    return VARPipeline(vqvae, var, info={"source": "random"}).to(device)


# -------------------------------------------------------------------------------------------- generation
def generation_rows(plan: Plan, reference) -> list[dict]:
    device = torch.device(plan.device)
    eager, compiled, ref = our_pipelines(plan, reference)
    compiled.compile(backend=plan.backend)
    K = len(eager.scales)
    rows = []
    for dtype in plan.dtypes:
        for pipe in (eager, compiled):
            pipe.use_dtype(dtype, force=True)       # a benchmark measures what it is asked, emulated or not
        for B in plan.batch_sizes:
            labels = [i % eager.num_classes for i in range(B)]
            ref_seconds = None
            for cfg_scales in (None, K - 2) if plan.cfg_scales_rows else (None,):
                def ours(pipe: VARPipeline) -> Callable[[], float]:
                    return lambda: timed(lambda: pipe(labels, seed=0, cfg_scales=cfg_scales, **SAMPLING), device)
                runners = {"eager": ours(eager), "compiled": ours(compiled)}
                if ref is not None and cfg_scales is None:
                    runners["reference"] = reference_generation(ref[1], B, dtype, device)
                first, median = alternate(runners, plan.repeats)
                ref_seconds = median.get("reference", ref_seconds)
                row = {"batch_size": B, "dtype": dtype, "cfg_scales": cfg_scales, "seconds": median,
                       "first_call_seconds": first, "compiled_speedup": median["eager"] / median["compiled"]}
                if ref_seconds is not None:
                    row["speedup_vs_reference"] = {who: ref_seconds / median[who] for who in ("eager", "compiled")}
                log.info("generation %s", row)
                rows.append(row)
    return rows


def reference_generation(ref_var: torch.nn.Module, B: int, dtype: str, device: torch.device) -> Callable[[], float]:
    """One timed ``autoregressive_infer_cfg`` of the reference at the shared settings (bf16: under autocast)."""
    labels = torch.arange(B, device=device) % 1000

    def run() -> float:
        with torch.inference_mode(), autocast(device, DTYPES[dtype]):
            return timed(lambda: ref_var.autoregressive_infer_cfg(B=B, label_B=labels, g_seed=0, more_smooth=False,
                                                                  **SAMPLING), device)
    return run


# ---------------------------------------------------------------------------------------------- training
def training_rows(plan: Plan, reference) -> list[dict]:
    """A training step per dtype: ours eager and compiled, and (fp32, with ``--ref``) the reference's."""
    device = torch.device(plan.device)
    rows = []
    for dtype in plan.train_dtypes:
        eager, compiled, ref = our_pipelines(plan, reference)
        cfg = eager.var.config
        gen = torch.Generator().manual_seed(0)
        tokens = [torch.randint(cfg.vocab_size, (plan.train_batch_size, h * w), generator=gen).to(device)
                  for h, w in cfg.scales]
        labels = (torch.arange(plan.train_batch_size) % cfg.num_classes).to(device)
        steps = {"eager": OurStep(eager, tokens, labels, dtype, None),
                 "compiled": OurStep(compiled, tokens, labels, dtype, plan.backend)}
        if ref is not None and dtype == "fp32":  # the reference's step is fp32 (its AmpOptimizer, mixed_precision=0)
            compare = reference[0]
            compare.disable_training_noise(ref[1], steps["eager"].trainer.var)
            steps["reference"] = compare.ReferenceTrainStep(*ref, tokens, labels, Schedule())
        first, median = alternate({who: lambda step=step: timed(step, device) for who, step in steps.items()},
                                  plan.repeats)
        row = {"batch_size": plan.train_batch_size, "dtype": dtype, "seconds": median, "first_step_seconds": first,
               "first_step_loss": {who: step.losses[0] for who, step in steps.items()},
               "compiled_speedup": median["eager"] / median["compiled"]}
        if "reference" in median:
            row["speedup_vs_reference"] = {who: median["reference"] / median[who] for who in ("eager", "compiled")}
        log.info("training %s", row)
        rows.append(row)
        del eager, compiled, steps
    return rows


class OurStep:
    """``VARTrainer.train_step`` (what ``var train`` runs on cached tokens) on fixed tokens, at the schedule's
    peak learning rate, label dropout and stochastic depth off; compiled with ``backend`` unless None."""

    def __init__(self, pipe: VARPipeline, tokens: list[torch.Tensor], labels: torch.Tensor, dtype: str,
                 backend: str | None):
        var = VAR(replace(pipe.var.config, cond_drop_rate=0.0, drop_path_rate=0.0)).to(pipe.device)
        var.load_state_dict(plain(pipe.var).state_dict())
        schedule = Schedule()
        self.trainer = VARTrainer(var, pipe.vqvae, make_optimizer(var, schedule, VAR_BETAS), pipe.device,
                                  grad_clip=schedule.grad_clip, amp=dtype == "bf16")
        if backend is not None:
            self.trainer.compile(backend=backend)
        self.batch, self.losses = (tokens, labels), []

    def __call__(self) -> None:
        self.losses.append(self.trainer.train_step(self.batch)["loss"])


# ------------------------------------------------------------------------------------------------ report
def _seconds(times: dict[str, float], who: str, digits: int = 3) -> str:
    return f"{times[who]:.{digits}f}" if who in times else "-"


def _versus(row: dict) -> str:
    vs = row.get("speedup_vs_reference")
    return f"{vs['eager']:.2f}x / {vs['compiled']:.2f}x" if vs else "-"


def markdown(report: dict) -> str:
    """The report's tables (and what they ran on) as markdown; a part not run has no table."""
    m, plan = report["machine"], report["plan"]
    dry = " (dry run on the CPU: checks the script, measures nothing)" if report["dry_run"] else ""
    weights = ("the reference's random weights" if report["reference"] else
               "the bundled model" if plan["config"] == "fashion-mnist" else "random weights")
    tests = report["cuda_tests"]
    lines = [f"# Side by side on {m.get('gpu', m['cpu'])}{dry}", ""]
    if tests:
        lines += [f"CUDA tests (pytest -m cuda): {tests['tests']} run, {tests['failures']} failed, {tests['errors']} "
                  f"errors, {tests['skipped']} skipped, {tests['seconds']:.0f} s.", ""]
    lines.append(f"torch {m['torch']}; {plan['config']} shape, {weights}; compiled with {plan['backend']}; median "
                 f"of {plan['repeats']} alternating runs after a warm-up (its seconds: first call, compiling "
                 "included).")
    if report["generation"]:
        lines += ["", "## Generation (cfg 1.5, top-k 900, top-p 0.96), seconds per call", "",
                  "| B | dtype | cfg_scales | eager | compiled | compiled speed-up | reference | vs reference: eager / "
                  "compiled | first call: eager / compiled |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["generation"]:
        s, first = r["seconds"], r["first_call_seconds"]
        lines.append(f"| {r['batch_size']} | {r['dtype']} | {r['cfg_scales'] or 'all'} | {s['eager']:.3f} | "
                     f"{s['compiled']:.3f} | {r['compiled_speedup']:.2f}x | {_seconds(s, 'reference')} | "
                     f"{_versus(r)} | {first['eager']:.1f} / {first['compiled']:.1f} |")
    if report["training"]:
        lines += ["", "## Training step of the transformer, seconds per step", "",
                  "| B | dtype | eager | compiled | compiled speed-up | reference | vs reference: eager / compiled | "
                  "first-step loss: eager / compiled / reference | first step: eager / compiled |",
                  "|---|---|---|---|---|---|---|---|---|"]
    for r in report["training"]:
        s, loss, first = r["seconds"], r["first_step_loss"], r["first_step_seconds"]
        losses = " / ".join(f"{loss[who]:.6f}" for who in ("eager", "compiled", "reference") if who in loss)
        lines.append(f"| {r['batch_size']} | {r['dtype']} | {s['eager']:.3f} | {s['compiled']:.3f} | "
                     f"{r['compiled_speedup']:.2f}x | {_seconds(s, 'reference')} | {_versus(r)} | {losses} | "
                     f"{first['eager']:.1f} / {first['compiled']:.1f} |")
    if report["reference_note"]:
        lines += ["", f"Reference: {report['reference_note']}."]
    return "\n".join(lines) + "\n"


def test_counts(junit: Path | None) -> dict | None:
    """The counts of pytest's junit XML (tests, failures, errors, skipped, seconds), or None without one."""
    if junit is None:
        return None
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return counts | {"seconds": float(suite.get("time", 0.0))}


def write(report: dict, out: Path) -> None:
    """gpu_bench.json and gpu_bench.md in ``out`` (rewritten after each part: a run stopped part way keeps the
    parts done)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_bench.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan = DRY_RUN if args.dry_run else GPU
    given = {key: getattr(args, key) for key in ("device", "config", "batch_sizes", "train_batch_size", "dtypes",
                                                 "cfg_scales_rows", "parts", "repeats")
             if getattr(args, key) is not None}
    plan = replace(plan, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    if args.dtypes:
        plan = replace(plan, train_dtypes=tuple(args.dtypes))
    if args.config and args.config.startswith("d") and args.config[1:].isdigit():
        plan = replace(plan, depth=int(args.config[1:]))
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or with --dry-run to check the script on the CPU")
    reference = import_reference(args.ref) if args.ref is not None else None
    started = time.perf_counter()
    report = {"dry_run": args.dry_run, "plan": asdict(plan), "machine": machine_info(),
              "cuda_tests": test_counts(args.tests_junit), "reference": str(args.ref) if args.ref else None,
              "reference_note": None if args.ref else "not timed: no --ref checkout of FoundationVision/VAR given "
                                                     "(benchmarks/README.md says how to get one)",
              "sampling": SAMPLING, "generation": [], "training": []}
    for part, rows in (("generation", generation_rows), ("training", training_rows)):
        if part not in plan.parts:
            continue
        report[part] = rows(plan, reference)
        report["seconds"] = time.perf_counter() - started
        write(report, args.out)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
