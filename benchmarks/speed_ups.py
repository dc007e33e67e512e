"""Speed of the training-free speed-ups (`cfg_scales`, `prune`, `fast`), each alone, against the default: all
alternating round by round in one process, on the same pipeline.

The bundled model (80 images, its default sampling) and the d16 shape with random weights (B=2, the
reference's sampling: cfg 1.5, top-k 900, top-p 0.96); medians of --rounds rounds after a warm-up round (in
which the fast transformer's int8 weights are made). Quality is not measured here: `var eval` measures it
(docs/performance.md). Usage: PYTHONPATH=src python benchmarks/speed_ups.py [--rounds 5 3] [--json OUT]
"""
import argparse
import json
import statistics
import time

import torch

from var import VARPipeline
from var.bench import build_pipeline, machine_info


def options(K: int) -> dict[str, dict]:
    """Each variant's name and its keyword arguments of the pipeline's call, for a model of K scales."""
    return {"default": {}, f"cfg_scales={K - 1}": {"cfg_scales": K - 1}, f"cfg_scales={K - 2}": {"cfg_scales": K - 2},
            "prune=0.25": {"prune": (0.25,)}, "prune=0.5": {"prune": (0.5,)}, "prune=0.5,0.5": {"prune": (0.5, 0.5)},
            "fast": {"fast": True}}


def medians(pipe: VARPipeline, labels: list[int], rounds: int, **sampling) -> dict[str, float]:
    """Median seconds of ``pipe(labels, **option)`` for each option, alternating round by round."""
    variants = options(len(pipe.patch_nums))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds + 1):
        for name, extra in variants.items():
            start = time.perf_counter()
            pipe(class_labels=labels, seed=r, **sampling, **extra)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report(name: str, result: dict[str, float]) -> None:
    base = result["default"]
    print(name + ":\n" + "\n".join(f"  {k:<16}{t:8.3f} s  {base / t:5.2f}x" for k, t in result.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", nargs=2, type=int, default=[5, 3], help="timed rounds: bundled model, d16")
    p.add_argument("--json", help="write the medians here")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    results = {"machine": machine_info()}
    results["bundled, 80 images"] = medians(VARPipeline.from_pretrained("fashion-mnist"), list(range(10)) * 8,
                                            a.rounds[0])
    report("bundled model, 80 images", results["bundled, 80 images"])
    results["d16, B=2"] = medians(build_pipeline("d16", "cpu"), [1, 2], a.rounds[1], cfg=1.5, top_k=900, top_p=0.96)
    report("d16 shape, random weights, B=2", results["d16, B=2"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
