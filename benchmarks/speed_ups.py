"""Speed of guidance at the first scales only (`cfg_scales`): old and new alternating in one process.

The bundled model (80 images, its default sampling) and the d16 shape with random weights (B=2, the
reference's sampling), each timed with every scale guided and with the last one or two scales unguided;
medians of 5 and 3 rounds after a warm-up. Usage: PYTHONPATH=src python benchmarks/cfg_scales.py
"""
import statistics
import time

import torch

from var import VARPipeline
from var.bench import build_pipeline


def medians(pipe: VARPipeline, labels: list[int], options: list[int | None], rounds: int, **sampling) -> dict:
    """Median seconds of ``pipe(labels, cfg_scales=N)`` for each N of ``options``, alternating round by round."""
    pipe(class_labels=labels, seed=0, **sampling)  # warm-up
    times: dict = {n: [] for n in options}
    for r in range(rounds):
        for n in options:
            start = time.perf_counter()
            pipe(class_labels=labels, seed=r, cfg_scales=n, **sampling)
            times[n].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def report(name: str, result: dict) -> None:
    base = result[None]
    print(name + ": " + ", ".join(f"cfg_scales={n}: {t:.3f} s ({base / t:.2f}x)" for n, t in result.items()))


def main() -> None:
    torch.set_grad_enabled(False)
    report("bundled model, 80 images", medians(VARPipeline.from_pretrained("fashion-mnist"), list(range(10)) * 8,
                                               [None, 5, 4], 5))
    report("d16 shape, random weights, B=2", medians(build_pipeline("d16", "cpu"), [1, 2], [None, 9, 8], 3,
                                                     cfg=1.5, top_k=900, top_p=0.96))


if __name__ == "__main__":
    main()
