"""Training data at scale: the figures of the README's "Prepared data sets" section.

    PYTHONPATH=src python benchmarks/data_scale.py --work /tmp/data-scale --json bench_out/data_scale.json

Writes JPEG folders made from Fashion-MNIST (28 px grayscale, and 256 px RGB upscaled copies), then measures
``var prepare-data`` images/s with 1 and 2 worker processes; the peak RSS (``/usr/bin/time -v``) of a few
``var train-vae`` steps (the bundled tokenizer) on prepared data sets of several sizes (and on raw folders); the
time from the command to the end of the first training step, prepared data set against the raw folder;
and the loader's images/s (the training run's batch getter on the memory map, page cache warm) against
the images/s a training step consumes, at the bundled and at a 256 px configuration. Timing lives here,
never in tests/.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
VAE_256 = ["--preset", "custom", "--image-size", "256", "--channels", "3", "--ch", "32", "--ch-mult", "1,2,2,2,2",
           "--patch-nums", "1,2,3,4,6,8,10,13,16", "--no-attn"]


def var_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "var", *args]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="2")


def write_jpegs(out: Path, n: int, size: int | None = None) -> Path:
    """``n`` Fashion-MNIST training images as JPEGs, one sub-folder per class; ``size``: upscaled RGB."""
    from var.data import load_fashion_mnist
    from var.recipes import FASHION_MNIST_CLASSES
    if out.is_dir():
        return out
    images, labels = load_fashion_mnist()
    tmp = out.with_name(out.name + ".tmp")
    for c, name in enumerate(FASHION_MNIST_CLASSES):
        (tmp / name.replace("/", "-")).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.fromarray(images[i % len(images)])
        if size:
            im = im.resize((size, size), Image.BICUBIC).convert("RGB")
        im.save(tmp / FASHION_MNIST_CLASSES[labels[i % len(labels)]].replace("/", "-") / f"{i:06d}.jpg", quality=90)
    tmp.rename(out)
    return out


def timed(cmd: list[str], first_step_file: Path | None = None) -> dict:
    """Wall time and peak RSS of ``cmd`` (under /usr/bin/time -v); with ``first_step_file``, also the time
    until it appears (metrics.jsonl: the first logged step is done)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and first_step_file is not None and first_step_file.exists():
            first = time.perf_counter() - t0
        time.sleep(0.05)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    return {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(rss_kb / 1024, 1),
            **({"first_step_s": round(first, 2)} if first is not None else {})}


def prepare(folder: Path, out: Path, size: int, channels: int, workers: int) -> dict:
    r = timed(var_cmd("prepare-data", str(folder), "--image-size", str(size), "--channels", str(channels),
                      "--out", str(out), "--workers", str(workers)))
    n = json.loads((out / "manifest.json").read_text())["count"]
    return {"images": n, "workers": workers, "wall_s": r["wall_s"], "images_per_s": round(n / r["wall_s"], 1)}


def train_vae(data: Path, out: Path, model: list[str], steps: int, batch: int) -> dict:
    """A few tokenizer steps: wall, peak RSS, time to the first step, and images/s of the steps."""
    r = timed(var_cmd("train-vae", "--data", str(data), "--out", str(out), *model, "--steps", str(steps),
                      "--batch-size", str(batch), "--warmup", "1", "--log-every", "1", "--save-every", "1000",
                      "--sample-every", "1000", "--seed", "0"), out / "metrics.jsonl")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "images_per_s" in line]
    return {**r, "step_images_per_s": rows[-1]["images_per_s"]}


def loader_rate(data: Path, batch: int, steps: int = 200) -> float:
    """Images/s of the training run's batch getter on a prepared data set (flips on, one thread)."""
    import torch
    from var.data import split_holdout
    from var.data import open_prepared
    from var.training.common import DistInfo, Schedule
    from var.training.runs import _batch_getter
    torch.set_num_threads(1)
    train, _ = split_holdout(open_prepared(data))
    get = _batch_getter(train.batch, len(train), Schedule(batch_size=batch), DistInfo(), flip=True)
    get(0)
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        get(s)
    return round(steps * batch / (time.perf_counter() - t0), 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="scratch folder (JPEGs, data sets, runs)")
    p.add_argument("--counts", type=lambda t: [int(v) for v in t.split(",")], default=[5000, 20000, 50000],
                   help="data set sizes of the RSS comparison; the last one is also the prepare-data and the "
                        "first-step folder")
    p.add_argument("--n256", type=int, default=8000, help="images of the 256 px folder")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    bundled = ["--preset", "fashion-mnist"]
    res: dict = {"machine": next((l.split(":", 1)[1].strip() for l in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name")), "?"),
        "cores": os.cpu_count()}

    def step(name, value):
        res[name] = value
        print(name, json.dumps(value), flush=True)
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(res, indent=2) + "\n")

    folders = {n: write_jpegs(w / f"jpeg{n}", n) for n in a.counts}
    large = a.counts[-1]
    big = write_jpegs(w / f"jpeg256_{a.n256}", a.n256, 256)
    for workers in (1, 2):
        step(f"prepare_28px_w{workers}", prepare(folders[large], w / f"ds{large}_w{workers}", 28, 1, workers))
    for workers in (1, 2):
        step(f"prepare_256px_w{workers}", prepare(big, w / f"ds256_{a.n256}_w{workers}", 256, 3, workers))
    for n in a.counts[:-1]:
        prepare(folders[n], w / f"ds{n}_w2", 28, 1, 2)
    for n in a.counts:
        step(f"train_vae_prepared_{n}", train_vae(w / f"ds{n}_w2", w / f"run_prepared_{n}", bundled, a.steps, 64))
    step(f"train_vae_folder_{large}", train_vae(folders[large], w / f"run_folder_{large}", bundled, a.steps, 64))
    step(f"train_vae_folder_{a.counts[0]}", train_vae(folders[a.counts[0]], w / f"run_folder_{a.counts[0]}", bundled,
                                                      a.steps, 64))
    step("loader_28px_images_per_s", loader_rate(w / f"ds{large}_w2", 64))
    step("train_vae_256px", train_vae(w / f"ds256_{a.n256}_w2", w / "run_256", VAE_256, 3, 16))
    step("loader_256px_images_per_s", loader_rate(w / f"ds256_{a.n256}_w2", 16))
    return 0


if __name__ == "__main__":
    sys.exit(main())
