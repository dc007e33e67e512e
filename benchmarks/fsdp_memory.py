"""Peak memory and step time of the transformer's training step under DDP and under FSDP (``var train --fsdp``)
on 2 CPU processes (gloo), beside the theoretical weights + gradients + AdamW figure, and the losses of the
same steps from one seed under both.

Each (shape, mode) runs in fresh processes: VARTrainer.train_step on random tokens and labels (the batch of
step s on process r is drawn from the seed (s, r), the same in both modes), the released shapes (d16: depth 16,
width 1024; d20: 1280), fp32, no EMA, the default class dropout and stochastic depth. The tokenizer is a narrow
one (ch 32): a run trains from cached tokens, so only its quantizer (the 4096 x 32 codebook) takes part.
Peak memory is each process's peak RSS (VmHWM, which includes what PyTorch itself takes; its RSS before
the model is built is given as the baseline), twice: over the training steps ("step peak": after the setup,
i.e. the model built and sharded or wrapped, the optimizer made and one warm-up step run so that AdamW's
moments and the buffers exist, the freed memory the C allocator kept is returned (malloc_trim) and the
kernel's high-water mark reset (writing 5 to /proc/self/clear_refs), then the remaining steps run), and over
the process's whole life ("lifetime peak", which includes building the whole unsharded model before FSDP
shards it). Where the mark cannot be reset, the step peak is left out and said so. A mode whose theoretical
need exceeds the memory available (MemAvailable) is not run, and said so; "single" is one process training
the whole model alone (what each DDP process holds, without DDP's gradient buckets).

Usage (about 30 minutes on 2 cores): PYTHONPATH=src python benchmarks/fsdp_memory.py --configs d16 d20 \\
    --steps 20 3 --modes ddp fsdp --single d20 --json bench_out/fsdp_memory.json
d16 alone, 3 steps (about 8 minutes): ... --configs d16 --steps 3 --modes ddp fsdp --single --json ...
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import json
import os
import socket
import statistics
import time
from pathlib import Path

import torch

GB = 1e9


def _status_kb(field: str) -> int:
    """A field of /proc/self/status, in kB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> str | None:
    """Return freed heap memory to the system and reset this process's VmHWM to its VmRSS; None when done,
    else why it could not be (not Linux, no permission, a kernel that ignores it)."""
    libc = ctypes.util.find_library("c")
    if libc is not None:
        ctypes.CDLL(libc).malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as e:
        return f"writing 5 to /proc/self/clear_refs failed: {e}"
    hwm, rss = _status_kb("VmHWM"), _status_kb("VmRSS")
    if hwm > rss + 1024:  # a MB of slack for what the reads themselves allocate
        return f"writing 5 to /proc/self/clear_refs left VmHWM at {hwm} kB above VmRSS {rss} kB"
    return None


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parameter_counts(config: str) -> tuple[int, int, int]:
    """(all, one block's, outside the blocks) parameters of the shape's transformer."""
    from var.recipes import model_configs
    from var.transformer import VAR

    with torch.device("meta"):
        model = VAR(model_configs(config)[1])
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.blocks[0].parameters())
    return total, block, total - block * len(model.blocks)


def theory_bytes(config: str, mode: str, world: int) -> dict:
    """Per process, float32: weights, gradients and AdamW's two moments (16 bytes a parameter): whole under
    DDP (plus its gradient buckets, 4 bytes a parameter) and alone; 1/world of them under FSDP, plus what
    FSDP gathers at a time (the weights outside the blocks, two blocks' weights with the prefetch, and the
    unreduced gradients of those and of one block)."""
    total, block, outside = parameter_counts(config)
    if mode == "fsdp":
        state = 16 * total / world
        return {"state": state, "with_gathered": state + 4 * (outside + 2 * block) + 4 * (outside + block)}
    state = 16 * total
    return {"state": state, "with_gathered": state + (4 * total if mode == "ddp" else 0)}


def _worker(rank: int, world: int, port: int, config: str, mode: str, steps: int, batch: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    from torch.nn.parallel import DistributedDataParallel

    from var.recipes import model_configs
    from var.training.common import Schedule, setup_distributed
    from var.training.fsdp import free_gathers_at_once, shard_transformer
    from var.training.runs import VAR_BETAS, make_optimizer
    from var.training.trainers import VARTrainer
    from var.transformer import VAR
    from var.vqvae import VQVAE

    baseline = _status_kb("VmRSS") * 1024
    setup_distributed("cpu")
    vae_cfg, var_cfg = model_configs(config)
    torch.manual_seed(0)  # the same tokenizer (its codebook makes the inputs) and transformer in every mode
    vqvae = VQVAE(dataclasses.replace(vae_cfg, ch=32, using_sa=False, using_mid_sa=False))
    var = VAR(var_cfg)
    torch.manual_seed(1 + rank)  # each process its own class dropout, as var train seeds them
    ddp_model = None
    if mode == "fsdp":
        shard_transformer(var)
        free_gathers_at_once()  # as var train --fsdp does on the CPU
    elif world > 1:
        ddp_model = DistributedDataParallel(var)
    schedule = Schedule(steps=steps, batch_size=batch * world, lr=1e-4, warmup=1)
    trainer = VARTrainer(var, vqvae, make_optimizer(var, schedule, VAR_BETAS), "cpu", ddp_model=ddp_model,
                         schedule=schedule)
    losses, seconds = [], []
    for step in range(steps):
        if step == 1:  # after the warm-up step: the steps' own peak from here
            setup_rss, lifetime_before_reset = _status_kb("VmRSS") * 1024, _status_kb("VmHWM") * 1024
            reset_failure = _reset_peak()
            trimmed_rss = _status_kb("VmRSS") * 1024
        g = torch.Generator().manual_seed(step * 1000 + rank)
        tokens = torch.randint(0, var_cfg.vocab_size, (batch, var_cfg.seq_len), generator=g)
        labels = torch.randint(0, var_cfg.num_classes, (batch,), generator=g)
        start = time.perf_counter()
        losses.append(trainer.train_step((tokens, labels))["loss"])
        seconds.append(time.perf_counter() - start)
    peak = _status_kb("VmHWM") * 1024
    result = {"config": config, "mode": mode, "rank": rank, "world": world, "batch_per_process": batch,
              "losses": losses, "step_seconds": seconds, "baseline_rss": baseline,
              "rss_after_warmup": setup_rss, "rss_after_trim": trimmed_rss,
              "step_peak_rss": None if reset_failure else peak, "step_peak_note": reset_failure,
              "lifetime_peak_rss": max(peak, lifetime_before_reset)}
    Path(out, f"{config}-{mode}-{rank}.json").write_text(json.dumps(result))
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run(config: str, mode: str, world: int, steps: int, batch: int, work: Path) -> list[dict]:
    """The per-process results of ``steps`` training steps of ``config`` in ``mode`` on ``world`` processes."""
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(world, _free_port(), config, mode, steps, batch, str(work)), nprocs=world,
                       start_method="spawn")
    return [json.loads((work / f"{config}-{mode}-{r}.json").read_text()) for r in range(world)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["d16", "d20"])
    p.add_argument("--steps", nargs="+", type=int, default=[20, 3],
                   help="steps of each config, in order, the first a warm-up (at least 2)")
    p.add_argument("--modes", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--single", nargs="*", default=["d20"], help="configs also trained by one process alone")
    p.add_argument("--batch", type=int, default=1, help="images per process")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path("/tmp/fsdp_memory"))
    a = p.parse_args()
    if min(a.steps) < 2:
        p.error(f"--steps {a.steps}: each must be at least 2 (a warm-up step, then the measured ones)")
    a.work.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for config, steps in zip(a.configs, a.steps, strict=True):
        plan = [(mode, a.world) for mode in a.modes] + ([("single", 1)] if config in a.single else [])
        for mode, world in plan:
            need = theory_bytes(config, mode, world)["with_gathered"] * world * 1.15  # + activations, roughly
            if need > _available_bytes():
                skipped.append(f"{config} {mode} x{world}: needs about {need / GB:.1f} GB of weights, gradients and "
                               f"AdamW state in all, {_available_bytes() / GB:.1f} GB available: not run")
                print(skipped[-1], flush=True)
                continue
            print(f"{config} {mode} x{world}: {steps} steps ...", flush=True)
            results = run(config, mode, world, steps, a.batch, a.work)
            theory = theory_bytes(config, mode, world)
            rows.append({"config": config, "mode": mode, "world": world, "steps": steps,
                         "parameters": parameter_counts(config)[0], "theory": theory, "processes": results,
                         "median_step_s": statistics.median(s for r in results for s in r["step_seconds"][1:] or
                                                            r["step_seconds"])})
            r0 = results[0]
            step_peaks = ([round(r["step_peak_rss"] / GB, 2) for r in results] if r0["step_peak_rss"] else
                          f"not measured ({r0['step_peak_note']})")
            print(f"  per process: step peak RSS {step_peaks} GB, lifetime peak RSS "
                  f"{[round(r['lifetime_peak_rss'] / GB, 2) for r in results]} GB, RSS after the warm-up step "
                  f"{[round(r['rss_after_warmup'] / GB, 2) for r in results]} GB "
                  f"({[round(r['rss_after_trim'] / GB, 2) for r in results]} trimmed), baseline "
                  f"{r0['baseline_rss'] / GB:.2f} GB; theory {theory['state'] / GB:.2f} GB state, "
                  f"{theory['with_gathered'] / GB:.2f} with {'gathered blocks' if mode == 'fsdp' else 'buckets'}, "
                  f"median step {rows[-1]['median_step_s']:.2f} s", flush=True)
    for config in a.configs:
        by_mode = {r["mode"]: r for r in rows if r["config"] == config}
        if "ddp" in by_mode and "fsdp" in by_mode:
            diffs = [abs(x - y) for d, f in zip(by_mode["ddp"]["processes"], by_mode["fsdp"]["processes"])
                     for x, y in zip(d["losses"], f["losses"])]
            peaks = {k: [max(r[k] or 0 for r in by_mode[m]["processes"]) for m in ("ddp", "fsdp")]
                     for k in ("step_peak_rss", "lifetime_peak_rss")}
            step_ratio = (f"{peaks['step_peak_rss'][1] / peaks['step_peak_rss'][0]:.2f}"
                          if min(peaks["step_peak_rss"]) else "not measured")
            print(f"{config}: max |loss DDP - loss FSDP| over {len(diffs)} (step, process) pairs: {max(diffs):.2e}; "
                  f"peak RSS FSDP / DDP: steps {step_ratio}, lifetime "
                  f"{peaks['lifetime_peak_rss'][1] / peaks['lifetime_peak_rss'][0]:.2f}; step time FSDP / DDP "
                  f"{by_mode['fsdp']['median_step_s'] / by_mode['ddp']['median_step_s']:.2f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=1))


if __name__ == "__main__":
    main()
