"""``var sample``: generate a labelled grid of samples (a row per class)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ..images import grid
from .common import add_model_args, add_sampling_args, load_pipeline, sampling_kwargs

log = logging.getLogger("var")


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate a grid of samples, a row per class",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--classes", type=int, nargs="+", help="class ids (default: every class, at most 10)")
    p.add_argument("--per-class", type=int, default=8, help="samples per class")
    add_sampling_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default="samples/grid.png", help="PNG grid to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args)
    classes = args.classes if args.classes is not None else list(range(min(10, pipe.num_classes)))
    labels = torch.tensor(classes).repeat_interleave(args.per_class)
    out = pipe(class_labels=labels, batch_size=args.batch_size, progress=True, **sampling_kwargs(args))
    names = [pipe.class_names[c] if pipe.class_names else f"class {c}" for c in classes]
    scale = max(1, 64 // pipe.image_size)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(out.images, nrow=args.per_class, scale=scale, row_labels=names).save(path)
    log.info("wrote %d samples (%d classes x %d) to %s", len(labels), len(classes), args.per_class, path)
    return 0
