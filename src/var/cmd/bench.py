"""``var bench``: generation and training speed on this device, as a table and as JSON."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from .. import bench, precision
from ..precision import default_device
from ..recipes import CONFIGS
from .common import add_command, add_device_arg

log = logging.getLogger("var")


def register(sub) -> None:
    p = add_command(sub, "bench", "measure generation and training speed on this device")
    p.add_argument("--config", default="d16", choices=CONFIGS,
                   help="model shape, with random weights (fashion-mnist: the bundled model when installed); "
                        "the default d16 needs about 10 GiB of memory on a CPU (its training step; "
                        "--train-batch-size 0 skips it, and --config fashion-mnist needs under 1 GiB) "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=2, help="images per generation call")
    p.add_argument("--train-batch-size", type=int, help="images per training step (default: --batch-size; 0 skips)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; medians are reported")
    p.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance strength")
    p.add_argument("--top-k", type=int, default=900, help="top-k sampling (0 disables)")
    p.add_argument("--top-p", type=float, default=0.96, help="top-p sampling (0 disables)")
    p.add_argument("--dtype", default="fp32", choices=list(precision.DTYPES),
                   help="autocast dtype: bf16 pays on GPUs with bf16 and on CPUs with AMX or AVX512-BF16 (elsewhere "
                        "it is emulated, measured as such, with a note); only fp32 keeps results exact")
    p.add_argument("--compile", action="store_true", help="torch.compile the tokenizer's decoder (on CPU it then uses direct convolutions instead of Winograd: 3.6 s instead of 2.0 s for d16 on the 2-core development CPU)")
    p.add_argument("--fast", action="store_true",
                   help="generate as --fast does: the transformer's linear layers in int8 (on the CPU)")
    p.add_argument("--streams", type=int, help="batch streams on CPU (default: one per thread; 1 turns them off)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    add_device_arg(p)
    p.add_argument("--json", type=Path, help="also write the full report (every run) here")
    p.set_defaults(run=run)


def _check_counts(args: argparse.Namespace) -> None:
    """Name a bad count before the model is built (d16: ~10 GiB) and timed: a negative --train-batch-size
    otherwise failed in torch, with a traceback, after the whole generation benchmark."""
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--repeats", args.repeats, 1),
                               ("--train-batch-size", args.train_batch_size, 0), ("--streams", args.streams, 1),
                               ("--threads", args.threads, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be >= {least}" + (" (0 skips the training step)" if least == 0 else "")
                             + f", got {value}")


def run(args: argparse.Namespace) -> int:
    _check_counts(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or default_device()
    dtype = precision.choose_dtype(args.dtype, device, force=True)   # a benchmark measures what it is asked
    settings = bench.GenerationSettings(batch_size=args.batch_size, cfg=args.cfg, top_k=args.top_k,
                                        top_p=args.top_p, dtype=dtype, streams=args.streams, fast=args.fast)
    report = bench.run_benchmark(args.config, device, settings, repeats=args.repeats,
                                 train_batch_size=args.train_batch_size, compile=args.compile)
    print(bench.format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", args.json)
    return 0
