"""``var sample``: a labelled grid of samples (a row per class; one class as a square), optionally every sample
as a PNG file and an npz for FID tools, and the coarse-to-fine progression figure."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import grid, grid_size, progression_grid, square_columns, to_rgb_uint8, write_npz
from ..files import write_atomically
from ..sampling import chunk_seed
from .common import (add_command, add_model_args, add_sampling_args, check_output_files, check_output_folder,
                     class_list, class_text, load_pipeline, positive_int, sampling_kwargs)

log = logging.getLogger("var")
# The largest grid written: 64 Mi pixels (192 MiB as RGB in memory), below Pillow's decompression-bomb warning
# (89.5 M pixels), so that the grid opens again. Larger runs write --png-dir / --npz instead (--no-grid).
MAX_GRID_PIXELS = 2 ** 26
# A run whose first chunk says it will take longer than this says how long, in seconds.
ESTIMATE_AFTER = 60


def register(sub) -> None:
    p = add_command(sub, "sample", "generate a grid of samples, a row per class or one class as a square (and PNG "
                                   "files / an npz for FID)")
    add_model_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--classes", type=class_text, nargs="+", metavar="IDS_OR_NAMES",
                       help="class ids or names, e.g. 0 7 or Dress,Sandal; the id num_classes is the null class "
                            "(unconditional) (default: every class, at most 10)")
    which.add_argument("--all-classes", action="store_true",
                       help="every class of the model (1000 for the released ones), for FID")
    p.add_argument("--per-class", type=positive_int, default=8, help="samples per class")
    add_sampling_args(p)
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="images generated per call; call i is seeded from --seed and i (call 0 with --seed itself), "
                        "so results depend on it")
    p.add_argument("--out", default="samples/grid.png", help="PNG grid to write")
    p.add_argument("--no-grid", dest="grid", action="store_false",
                   help="write no grid (for many samples: the files below are what FID tools read)")
    p.add_argument("--png-dir", metavar="DIR", type=Path,
                   help="also write every sample as DIR/NNNNNN_cCCCC.png (index, class)")
    p.add_argument("--npz", metavar="FILE", help="also write the samples as arr_0 uint8 (N, H, W, 3) + labels (N,)")
    p.add_argument("--progression", default=None, metavar="PNG",
                   help="also write the coarse-to-fine figure: each scale's decoded image, for a few samples")
    p.set_defaults(run=run)


def _classes(args: argparse.Namespace, pipe) -> list[int]:
    if args.all_classes:
        return list(range(pipe.num_classes))
    if args.classes is None:
        return list(range(min(10, pipe.num_classes)))
    return pipe.class_ids([c for text in args.classes for c in class_list(text, pipe.class_names)],
                          allow_null=True).tolist()


def _write_pngs(images_NHW3: np.ndarray, labels: torch.Tensor, folder: Path, start: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (img, c) in enumerate(zip(images_NHW3, labels.tolist())):
        Image.fromarray(img).save(folder / f"{start + i:06d}_c{c:04d}.png")


def run(args: argparse.Namespace) -> int:
    """Generate in chunks of ``--batch-size`` (chunk i seeded with :func:`var.sampling.chunk_seed`). Under
    torchrun the chunks are dealt out round-robin over the processes and gathered on rank 0, so the files are
    identical to one process's with the same seed."""
    from ..training.common import setup_distributed

    sampling = sampling_kwargs(args)
    check_output_files(images=("out", "progression"), out=args.out if args.grid else None, npz=args.npz,
                       progression=args.progression)
    check_output_folder("png_dir", args.png_dir)
    info = setup_distributed(args.device)
    if info.world > 1:
        args.device = str(info.device)
    pipe = load_pipeline(args)
    classes = _classes(args, pipe)
    names = [pipe.label_name(c) for c in classes]
    scale = max(1, 64 // max(pipe.image_hw))
    if args.grid:
        check_grid_size(len(classes), args.per_class, pipe.image_hw, scale, names)
    labels = torch.tensor(classes).repeat_interleave(args.per_class)
    firsts = set(range(0, len(labels), args.per_class)[:10])      # the rows of the progression figure
    starts = list(range(0, len(labels), args.batch_size))
    if info.is_main:
        log.info("%d samples in %d chunk(s) of up to %d, over %d process(es)", len(labels), len(starts),
                 args.batch_size, info.world)
    mine = _generate_chunks(pipe, labels, starts, range(info.rank, len(starts), info.world), firsts, args, sampling,
                            show=info.is_main)
    chunks = _gather_on_main(mine, info)
    if not info.is_main:
        return 0
    images_NHW3 = np.concatenate([chunks[i][0] for i in range(len(starts))])
    tokens = [torch.cat(t) for t in zip(*(chunks[i][1] for i in range(len(starts))))]
    if args.png_dir:
        log.info("wrote %d PNG files to %s", len(labels), args.png_dir)
    if args.npz:
        # Through a temporary file: a full disk part way through leaves no truncated npz for FID tools to read.
        write_atomically(Path(args.npz), lambda tmp: write_npz(images_NHW3, labels.numpy(), tmp))
        log.info("wrote %s (arr_0 %s uint8, labels)", args.npz, images_NHW3.shape)
    if args.grid:
        as_float = torch.from_numpy(images_NHW3).permute(0, 3, 1, 2).float() / 255
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        grid(as_float, nrow=grid_columns(len(classes), args.per_class), scale=scale, row_labels=names).save(path)
        log.info("wrote %d samples (%d classes x %d) to %s", len(labels), len(classes), args.per_class, path)
    if args.progression:
        write_progression(pipe, tokens, names[:len(firsts)], Path(args.progression), scale)
    return 0


def grid_columns(num_classes: int, per_class: int) -> int:
    """Samples a row of the grid: a row per class, or one class's samples as a square-ish grid (its name on
    the first row)."""
    return per_class if num_classes > 1 else square_columns(per_class)


def check_grid_size(num_classes: int, per_class: int, image_hw: tuple[int, int], scale: int,
                    names: list[str]) -> None:
    """ValueError, before any sampling, when the grid of ``num_classes`` classes of ``per_class`` samples
    (:func:`grid_columns`) would exceed ``MAX_GRID_PIXELS``: it names the size and the options that write many
    samples instead."""
    width, height = grid_size(num_classes * per_class, grid_columns(num_classes, per_class),
                              (image_hw[0] * scale, image_hw[1] * scale), row_labels=names)
    if width * height > MAX_GRID_PIXELS:
        raise ValueError(f"--per-class {per_class} x {num_classes} classes makes a grid of {width:,} x {height:,} "
                         f"pixels, over the limit of {MAX_GRID_PIXELS / 1e6:.0f} M pixels: add --no-grid and "
                         f"write the samples with --png-dir DIR or --npz FILE")


def _say_how_long(first_s: float, chunks: int) -> None:
    """After the first of ``chunks`` chunks took ``first_s`` seconds: the run's expected length, when long."""
    total = first_s * chunks
    if total > ESTIMATE_AFTER:
        log.info("the first chunk took %.1f s: the %d chunks will take about %s; Ctrl-C stops the run", first_s,
                 chunks, duration(total))


def duration(seconds: float) -> str:
    """``seconds`` as people say it: 45 s, 12 min, 22 h 18 min."""
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _generate_chunks(pipe, labels: torch.Tensor, starts: list[int], chunk_ids, firsts: set[int],
                     args: argparse.Namespace, sampling: dict, show: bool) -> dict[int, tuple]:
    """Chunk i -> (uint8 images (n, H, W, 3), its progression rows' tokens) for the chunks ``chunk_ids``;
    PNG files are written as each chunk is made."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    out_chunks, chunk_ids = {}, list(chunk_ids)
    with logging_redirect_tqdm():  # the estimate is printed above the progress bar, not through it
        for n, i in enumerate(tqdm(chunk_ids, desc="generating", unit="batch", disable=not show)):
            began = time.perf_counter()
            out_chunks[i] = _generate_chunk(pipe, labels, starts[i], i, firsts, args, sampling)
            if n == 0 and show:
                _say_how_long(time.perf_counter() - began, len(chunk_ids))
    return out_chunks


def _generate_chunk(pipe, labels: torch.Tensor, start: int, i: int, firsts: set[int], args: argparse.Namespace,
                    sampling: dict) -> tuple:
    """Chunk ``i``, the samples from ``start``: (uint8 images (n, H, W, 3), its progression rows' tokens)."""
    part = labels[start:start + args.batch_size]
    out = pipe(class_labels=part, **{**sampling, "seed": chunk_seed(args.seed, i)})
    rgb = to_rgb_uint8(out.images)                              # uint8: 50,000 samples fit in memory
    if args.png_dir:
        _write_pngs(rgb, part, args.png_dir, start)
    rows = [r for r in range(len(part)) if start + r in firsts]
    return rgb, [t[rows].cpu() for t in out.tokens]


def _gather_on_main(chunks: dict[int, tuple], info) -> dict[int, tuple]:
    """Every process's chunks, merged on rank 0 (other ranks get an empty dict); a no-op for one process."""
    if info.world == 1:
        return chunks
    import torch.distributed as dist

    gathered: list = [None] * info.world if info.is_main else None
    dist.gather_object(chunks, gathered, dst=0)
    dist.barrier()
    dist.destroy_process_group()
    return {i: c for part in gathered for i, c in part.items()} if info.is_main else {}


def write_progression(pipe, tokens: list[torch.Tensor], names: list[str], path: Path, scale: int) -> None:
    """One row per sample (the first of each class, at most 10): the image after 1, 2, ..., K scales."""
    stages = pipe.decode_per_scale(tokens)                  # K tensors (R, C, H, W)
    path.parent.mkdir(parents=True, exist_ok=True)
    progression_grid(stages, pipe.patch_nums, names, scale).save(path)
    log.info("wrote the coarse-to-fine progression to %s", path)
