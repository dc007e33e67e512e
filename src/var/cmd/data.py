"""``var prepare-data``: an image folder decoded once, in parallel, into a memory-mapped training data set."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..schedule import parse_size
from .common import add_command, argument_type, positive_int

log = logging.getLogger("var")


def register(sub) -> None:
    p = add_command(sub, "prepare-data", "decode an image folder once, in parallel, into a data set that "
                    "training memory-maps (for folders too large to hold in memory)")
    p.add_argument("folder", type=Path,
                   help="image folder: one sub-folder per class, or a flat folder of images (one class)")
    p.add_argument("--image-size", type=argument_type(parse_size), required=True,
                   help="the model's image side, or HxW (height x width): images are resized to cover it and "
                        "centre-cropped, as training does with a folder")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 (grayscale) or 3 (RGB)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder to write: images.npy, labels.npy, manifest.json; pass it to --data")
    p.add_argument("--crop", action="store_true",
                   help="store square images at 1.125x --image-size, for var train --crop (random windows of "
                        "--image-size; the reference's augmentation); such a data set serves only that")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="decoding processes (default: one per core)")
    p.set_defaults(run=run_prepare_data)


def run_prepare_data(a: argparse.Namespace) -> int:
    from ..prepare_data import prepare_dataset
    manifest = prepare_dataset(a.folder, a.image_size, a.out, a.channels, a.workers, a.crop)
    log.info("%s: %d images, %d skipped; train with --data %s", a.out, manifest["count"], len(manifest["skipped"]),
             a.out)
    return 0
