"""``var sample``: a labelled grid of samples (a row per class), optionally an npz and the
coarse-to-fine progression figure."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ..images import grid, progression_grid, save_npz
from .common import add_model_args, add_sampling_args, class_list, load_pipeline, positive_int, sampling_kwargs

log = logging.getLogger("var")


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate a grid of samples, a row per class",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--classes", type=class_list, nargs="+", metavar="IDS_OR_NAMES",
                   help="class ids or names, e.g. 0 7 or Dress,Sandal; the id num_classes is the null class "
                        "(unconditional) (default: every class, at most 10)")
    p.add_argument("--per-class", type=positive_int, default=8, help="samples per class")
    add_sampling_args(p)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--out", default="samples/grid.png", help="PNG grid to write")
    p.add_argument("--npz", default=None, help="also write the samples as arr_0 uint8 (N, H, W, 3) + labels (N,)")
    p.add_argument("--progression", default=None, metavar="PNG",
                   help="also write the coarse-to-fine figure: each scale's decoded image, for a few samples")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_kwargs(args)
    pipe = load_pipeline(args)
    if args.classes is None:
        classes = list(range(min(10, pipe.num_classes)))
    else:
        classes = pipe.class_ids([c for group in args.classes for c in group], allow_null=True).tolist()
    labels = torch.tensor(classes).repeat_interleave(args.per_class)
    out = pipe(class_labels=labels, batch_size=args.batch_size, progress=True, **sampling)
    names = [pipe.label_name(c) for c in classes]
    scale = max(1, 64 // pipe.image_size)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(out.images, nrow=args.per_class, scale=scale, row_labels=names).save(path)
    log.info("wrote %d samples (%d classes x %d) to %s", len(labels), len(classes), args.per_class, path)
    if args.npz:
        log.info("wrote %s (arr_0 %s uint8, labels)", save_npz(out.images, out.labels, args.npz),
                 tuple(out.images.shape[i] for i in (0, 2, 3)) + (3,))
    if args.progression:
        write_progression(pipe, out, classes, args.per_class, Path(args.progression), scale)
    return 0


def write_progression(pipe, out, classes: list[int], per_class: int, path: Path, scale: int) -> None:
    """One row per sample (the first of each class, at most 10): the image after 1, 2, ..., K scales."""
    rows = [i * per_class for i in range(min(10, len(classes)))]
    stages = pipe.decode_per_scale([t[rows] for t in out.tokens])
    names = [pipe.label_name(classes[i]) for i in range(len(rows))]
    path.parent.mkdir(parents=True, exist_ok=True)
    progression_grid(stages, pipe.patch_nums, names, scale).save(path)
    log.info("wrote the coarse-to-fine progression to %s", path)
