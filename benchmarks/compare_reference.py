"""Side-by-side timing of our generation against the reference implementation (FoundationVision/VAR).

The reference is imported at run time from a checkout given by ``--ref`` (it is never part of this
repository). Both models get the SAME random weights: the reference's ``build_vae_var`` builds them,
and ours loads its state dicts through ``VARPipeline.from_official``. Runs alternate between the two
in one process so that machine noise hits both alike; the report gives medians and ratios.

    PYTHONPATH=src python benchmarks/compare_reference.py --ref /path/to/VAR --ref-deps /path/to/site

``--ref-deps`` names an extra folder appended to ``sys.path`` for the reference's own imports
(``huggingface_hub``), for when they are not installed in this environment.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from var import VARPipeline, generate
from var.bench import machine_info

log = logging.getLogger("compare_reference")

Runner = Callable[[], dict[str, float]]  # one timed run: seconds per part, "total" included


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ref", required=True, type=Path, help="checkout of github.com/FoundationVision/VAR")
    p.add_argument("--ref-deps", type=Path, help="extra folder for the reference's imports (appended to sys.path)")
    p.add_argument("--depth", type=int, default=16, help="transformer depth of the released shape (d16, d20, ...)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each implementation")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded rounds of both before the timed ones")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--streams", type=int, help="our batch streams (var.streams; default: one per thread, 1: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench_out/compare_reference.json"))
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if not (args.ref / "models" / "__init__.py").is_file():
        p.error(f"--ref {args.ref} is not a VAR checkout (no models/__init__.py)")
    return args


def import_reference(ref: Path, deps: Path | None) -> ModuleType:
    """The reference's ``models`` package (``build_vae_var``, ``VQVAE``, ``VAR``), imported from the checkout
    ``ref``, which stays on ``sys.path`` for its other packages."""
    sys.path.insert(0, str(ref.resolve()))
    if deps is not None:
        sys.path.append(str(deps.resolve()))
    try:
        import models
    except ImportError as e:
        raise SystemExit(f"cannot import the reference from {ref}: {e} (install its dependencies into a "
                         f"separate folder, e.g. `pip install --target DIR huggingface_hub`, and pass --ref-deps DIR)")
    return models


@torch.no_grad()
def randomize_convs(vae: torch.nn.Module, seed: int) -> None:
    """Give the tokenizer's convs fan-in scaled random weights.

    The reference's builder switches off the default init of convs (it expects to load a checkpoint),
    which would leave uninitialised memory: possibly denormals or NaNs that distort timings.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in vae.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * fan_in ** -0.5)
            if m.bias is not None:
                m.bias.zero_()


def build_pair(models: ModuleType, depth: int, seed: int):
    """The reference d{depth} VQVAE + VAR at 256 px with random weights, and our pipeline on copies of them."""
    torch.manual_seed(seed)
    ref_vae, ref_var = models.build_vae_var(device="cpu", depth=depth, flash_if_available=False,
                                            fused_if_available=False)
    randomize_convs(ref_vae, seed)
    ref_vae.eval()
    ref_var.eval()
    pipe = VARPipeline.from_official(_copy(ref_vae.state_dict()), _copy(ref_var.state_dict()), device="cpu")
    return ref_vae, ref_var, pipe


def _copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors of our own: the two models share no memory (nor caches) during the timings."""
    return {k: v.detach().clone() for k, v in state_dict.items()}


class PartTimer:
    """Wraps a method of one object so that the seconds spent in it add up in ``seconds``."""

    def __init__(self, obj: object, name: str):
        inner = getattr(obj, name)
        self.seconds = 0.0

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(obj, name, timed)


# ------------------------------------------------------------------------------------------ generation
def run_reference(ref_var, timer: PartTimer, labels: torch.Tensor, args: argparse.Namespace,
                  top_k: int, top_p: float) -> tuple[torch.Tensor, dict[str, float]]:
    """One reference generation, images in [0, 1], with its total and decoder seconds."""
    timer.seconds = 0.0
    t0 = time.perf_counter()
    images = ref_var.autoregressive_infer_cfg(B=labels.numel(), label_B=labels, g_seed=args.seed, cfg=args.cfg,
                                              top_k=top_k, top_p=top_p, more_smooth=False)
    total = time.perf_counter() - t0
    return images, {"total": total, "transformer": total - timer.seconds, "decoder": timer.seconds}


def run_ours(pipe: VARPipeline, labels: torch.Tensor, args: argparse.Namespace, top_k: int, top_p: float):
    """One generation as ``VARPipeline.__call__`` runs it, with ``--streams``: images in [0, 1], tokens, and
    the total and decoder seconds."""
    generator = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    f_hat, tokens = generate(pipe.var, pipe.vqvae, labels, cfg=args.cfg, top_k=top_k, top_p=top_p,
                             generator=generator, streams=args.streams)
    t1 = time.perf_counter()
    with torch.no_grad():
        images = (pipe.vqvae.decode_latent(f_hat, args.streams) + 1) / 2
    t2 = time.perf_counter()
    return images, tokens, {"total": t2 - t0, "transformer": t1 - t0, "decoder": t2 - t1}


def greedy_check(ref_vae, ref_var, ref_timer, pipe, labels, args) -> dict:
    """Greedy (top_k=1) generation of both: identical tokens at every scale, and the image difference."""
    captured: list[torch.Tensor] = []
    hook = ref_vae.quantize.embedding.register_forward_hook(lambda m, inp, out: captured.append(inp[0].clone()))
    try:
        ref_images, _ = run_reference(ref_var, ref_timer, labels, args, top_k=1, top_p=0.0)
    finally:
        hook.remove()
    images, tokens, _ = run_ours(pipe, labels, args, top_k=1, top_p=0.0)
    same = [bool(torch.equal(a, b)) for a, b in zip(captured, tokens, strict=True)]
    return {"tokens_identical": all(same), "identical_per_scale": same,
            "max_abs_image_diff": float((ref_images - images).abs().max())}


def compare_generation(models: ModuleType, args: argparse.Namespace) -> tuple[dict, str, bool]:
    """Greedy check, then alternating timed generations: the report, its summary line and whether the check passed."""
    ref_vae, ref_var, pipe = build_pair(models, args.depth, args.seed)
    ref_timer = PartTimer(ref_vae, "fhat_to_img")
    labels = torch.arange(args.batch_size) % 1000
    greedy = greedy_check(ref_vae, ref_var, ref_timer, pipe, labels, args)
    log.info("greedy tokens identical: %s (max image diff %.2e)", greedy["tokens_identical"],
             greedy["max_abs_image_diff"])
    runners = {"reference": lambda: run_reference(ref_var, ref_timer, labels, args, args.top_k, args.top_p)[1],
               "ours": lambda: run_ours(pipe, labels, args, args.top_k, args.top_p)[2]}
    report = {
        "setting": {"model": f"d{args.depth} (random weights)", "image_size": 256, "batch_size": args.batch_size,
                    "cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "repeats": args.repeats,
                    "warmup": args.warmup, "threads": args.threads, "our_streams": args.streams or "auto"},
        "greedy": greedy,
        **timed_report(runners, args),
    }
    return report, f"greedy tokens identical: {greedy['tokens_identical']}", greedy["tokens_identical"]


# ------------------------------------------------------------------------------------- timing, report
def alternate(runners: dict[str, Runner], repeats: int, warmup: int) -> dict[str, list[dict[str, float]]]:
    """``warmup`` unrecorded rounds, then ``repeats`` timed ones, each running every runner once, the order
    reversed every other round."""
    times: dict[str, list[dict[str, float]]] = {who: [] for who in runners}
    order = list(runners)
    for i in range(warmup + repeats):
        for who in order if i % 2 == 0 else order[::-1]:
            t = runners[who]()
            if i >= warmup:
                times[who].append(t)
            log.info("%s%-9s %s", "" if i >= warmup else "warm-up ", who, _format_seconds(t))
    return times


def _format_seconds(t: dict[str, float]) -> str:
    return ", ".join(f"{part} {s:.3f} s" for part, s in t.items())


def summarize(times: dict[str, list[dict[str, float]]]) -> dict:
    """Medians per implementation and part, their ratios, and the median of the per-round ratios (adjacent
    runs share the machine's load of the moment, so these cancel slow drifts)."""
    parts = list(times["ours"][0])
    med = {who: {part: statistics.median(r[part] for r in runs) for part in parts} for who, runs in times.items()}
    return {
        "median_seconds": med,
        "speedup_ours_vs_reference": {part: med["reference"][part] / med["ours"][part] for part in parts},
        "speedup_median_of_paired_rounds": {
            part: statistics.median(r[part] / o[part] for r, o in zip(times["reference"], times["ours"]))
            for part in parts},
    }


def timed_report(runners: dict[str, Runner], args: argparse.Namespace) -> dict:
    """Alternating timings of the runners (see :func:`alternate`), their summary, images per second, and the
    machine and reference they ran on."""
    machine = machine_info()  # load average before the timings
    times = alternate(runners, args.repeats, args.warmup)
    summary = summarize(times)
    return {
        "machine": machine,
        "load_average_after": list(os.getloadavg()),
        "reference_commit": _git_head(args.ref),
        "seconds": times,
        **summary,
        "images_per_second": {who: args.batch_size / m["total"] for who, m in summary["median_seconds"].items()},
    }


def print_table(summary: dict) -> None:
    med, ratio, paired = (summary[k] for k in ("median_seconds", "speedup_ours_vs_reference",
                                                "speedup_median_of_paired_rounds"))
    print(f"{'part':<12}{'reference s':>13}{'ours s':>10}{'speed-up':>10}{'paired':>9}")
    for part in ratio:
        print(f"{part:<12}{med['reference'][part]:>13.3f}{med['ours'][part]:>10.3f}{ratio[part]:>9.2f}x"
              f"{paired[part]:>8.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    models = import_reference(args.ref, args.ref_deps)
    report, line, ok = compare_generation(models, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"{line}; wrote {args.out}")
    return 0 if ok else 1


def _git_head(ref: Path) -> str | None:
    """The reference checkout's commit, when it is a git work tree."""
    done = subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


if __name__ == "__main__":
    sys.exit(main())
