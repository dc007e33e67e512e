"""Writing prepared data sets: an image folder decoded once, in parallel, into memory-mappable files.

``var prepare-data`` (:func:`prepare_dataset`) writes a folder holding

- ``images.npy``: uint8 (N, H, W, C) pixels, each image resized to cover H x W and centre-cropped, exactly
  as :func:`var.data.image_folder_dataset` does in memory;
- ``labels.npy``: int64 (N,) class ids;
- ``manifest.json``: format, image size, channels, count, class names, source folder, the files that could
  not be decoded (skipped), a digest of the pixels (the token cache's key, so that it never reads them all)
  and ``crop_size``: null, or the model's size when the images are stored larger for random crops.

Training memory-maps ``images.npy`` (:func:`var.data.open_prepared`) and reads only the rows of each batch, so its
memory does not grow with the number of images. The manifest is written last: a folder without one is
unfinished, and the same command resumes it. Until then the folder holds ``plan.json`` (the files and
options), ``staging.npy`` (a slot per file) and ``status.npy`` (per file: pending, decoded or skipped,
written after the chunk's pixels are on disk). A folder holding anything else is refused, as is a disk
without room for the pixels (checked before any work: a memory-mapped write past a full disk kills its
process).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from .data import (CROP_RESAMPLE, FORMAT, IMAGES, LABELS, MANIFEST, RESAMPLE, crop_source_side, decode_or_none,
                   is_prepared, list_image_files, read_manifest, warn_skipped)
from .files import WriteFailed, check_free_space, format_size, free_space, write_atomically
from .schedule import as_hw

log = logging.getLogger(__name__)

_PLAN, _STAGING, _STATUS = "plan.json", "staging.npy", "status.npy"
PENDING, DECODED, SKIPPED = 0, 1, 2
CHUNK = 256  # files per worker task: the unit of progress and of resuming


def prepare_dataset(folder: str | os.PathLike, size: int | tuple[int, int], out: str | os.PathLike,
                    channels: int = 3, workers: int | None = None, for_crop: bool = False) -> dict:
    """Decode every image of ``folder`` (see :func:`var.data.list_image_files`) at ``size`` with ``workers``
    processes (default: every core) into the prepared data set ``out``; returns its manifest. An unfinished
    ``out`` is resumed; a finished one is left as it is (ValueError if it was made from other options).

    ``for_crop`` stores square images at ``CROP_RATIO`` x ``size`` instead, resized from the files with the
    reference's Lanczos filter (the manifest's ``crop_size`` is ``size``): the reference's random-crop
    augmentation (``var train --crop``) then cuts its windows from images decoded at that size, with no
    resizing per step."""
    out, (H, W) = Path(out), as_hw(size)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    crop_size = None
    if for_crop:
        crop_size, H = H, crop_source_side((H, W))
        W = H
    source = str(Path(folder).resolve())
    wanted = {"source": source, "image_size": [H, W], "channels": channels, "crop_size": crop_size}
    if is_prepared(out):
        manifest = read_manifest(out)
        _check_same(out, {k: manifest.get(k) for k in wanted}, wanted)
        log.info("%s is already prepared (%d images from %s): nothing to do", out, manifest["count"], source)
        return manifest
    _check_ours(out)
    files, class_names = list_image_files(folder)
    plan = {**wanted, "class_names": class_names, "files": [str(f) for f, _ in files],
            "labels": [c for _, c in files]}
    status = _start_or_resume(out, plan)
    _decode_pending(out, plan, status, workers or os.cpu_count() or 1)
    return _finish(out, plan, status)


def _check_same(out: Path, found: dict, wanted: dict) -> None:
    """ValueError naming what differs (file lists by their length) when ``out`` was made from other options."""
    def show(v):
        return f"{len(v)} entries" if isinstance(v, list) and len(v) > 3 else repr(v)
    diff = [f"{k} {show(found.get(k))} (asked: {show(wanted[k])})" for k in wanted if found.get(k) != wanted[k]]
    if diff:
        raise ValueError(f"{out} holds a data set prepared with other options: {'; '.join(diff)}; choose another "
                         f"--out or delete it")


def _check_ours(out: Path) -> None:
    """ValueError when ``out`` holds what ``var prepare-data`` did not write: without a plan (an unfinished
    data set) or a manifest it must be empty, but for the staging files of a start stopped before its plan
    (regular files: a symlink is never written through)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file: expected a folder (new, or one var prepare-data wrote)")
    if (out / _PLAN).is_file():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (_STAGING, _STATUS) or p.is_symlink()
                     or not p.is_file())
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"{out} holds files var prepare-data did not write ({shown}): choose a new or empty --out")


def _pixel_bytes(plan: dict) -> int:
    """Bytes of the staging file's pixels: a uint8 (N, H, W, C) array."""
    H, W = plan["image_size"]
    return len(plan["files"]) * H * W * plan["channels"]


def _check_room(out: Path, plan: dict) -> None:
    """WriteFailed (ENOSPC) when the disk of ``out`` has no room for the rest of the preparation."""
    H, W = plan["image_size"]
    check_free_space(out, _unwritten_bytes(out, plan), f"{len(plan['files'])} images of {H}x{W}x{plan['channels']} "
                     "(uint8)")


def _unwritten_bytes(out: Path, plan: dict) -> int:
    """Bytes the preparation still writes into ``out``: the staging pixels not on disk yet (the file is
    sparse until decoded rows fill it), then the labels and the bookkeeping files (a margin)."""
    staging = out / _STAGING
    on_disk = staging.stat().st_blocks * 512 if staging.is_file() else 0
    return max(0, _pixel_bytes(plan) - on_disk) + 9 * len(plan["files"]) + 2 * len(json.dumps(plan)) + (1 << 16)


def _start_or_resume(out: Path, plan: dict) -> np.memmap:
    """The per-file status array of ``out``: created with the staging pixel file, or read back to resume.
    WriteFailed (ENOSPC) first when the disk has no room for the rest of the preparation."""
    n, (H, W) = len(plan["files"]), plan["image_size"]
    if (out / _PLAN).is_file():
        _check_same(out, json.loads((out / _PLAN).read_text()), plan)
        _check_room(out, plan)
        status = np.load(out / _STATUS, mmap_mode="r+")
        log.info("resuming %s: %d of %d files done", out, int((status != PENDING).sum()), n)
        return status
    _check_room(out, plan)
    out.mkdir(parents=True, exist_ok=True)
    np.lib.format.open_memmap(out / _STAGING, "w+", np.uint8, (n, H, W, plan["channels"])).flush()
    status = np.lib.format.open_memmap(out / _STATUS, "w+", np.uint8, (n,))
    status.flush()
    (out / _PLAN).write_text(json.dumps(plan))  # last: a plan on disk means the other two files exist
    return status


def _decode_pending(out: Path, plan: dict, status: np.memmap, workers: int) -> None:
    """Decode the chunks that still hold pending files, ``workers`` processes writing into the staging
    file; a chunk's status is written once its pixels are flushed."""
    from tqdm.auto import tqdm
    n = len(plan["files"])
    starts = [s for s in range(0, n, CHUNK) if (status[s:s + CHUNK] == PENDING).any()]
    resample = CROP_RESAMPLE if plan["crop_size"] is not None else RESAMPLE
    tasks = [(str(out / _STAGING), s, plan["files"][s:s + CHUNK], tuple(plan["image_size"]), plan["channels"],
              resample) for s in starts]
    if not tasks:
        return
    done = int((status != PENDING).sum())
    pool = ProcessPoolExecutor(workers)
    try:
        with tqdm(total=n, initial=done, desc="preparing", unit="img") as bar:
            for future in as_completed([pool.submit(_decode_chunk, task) for task in tasks]):
                start, ok = future.result()
                status[start:start + len(ok)] = np.where(ok, DECODED, SKIPPED)
                status.flush()
                bar.update(len(ok))
    except BrokenProcessPool:  # a worker was killed: what it was doing is lost, the chunks done are kept
        raise _worker_died(out, plan) from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _worker_died(out: Path, plan: dict) -> OSError:
    """The error of a decoding process that died: WriteFailed when the disk is full (writing a memory-mapped
    file past a full disk kills its process), else ChildProcessError; both say the command resumes."""
    needed, free = _unwritten_bytes(out, plan), free_space(out)
    if needed > free:
        return WriteFailed(out / _STAGING, f"the disk filled while decoding ({format_size(free)} free, "
                           f"{format_size(needed)} more needed) and a decoding process writing it died; make room "
                           "and run the command again to resume", errno.ENOSPC)
    return ChildProcessError(f"a decoding process of {out} died (killed, e.g. by the system when out of memory); "
                             "run the command again to resume from the chunks done (fewer --workers use less memory)")


def _decode_chunk(task: tuple) -> tuple[int, np.ndarray]:
    """In a worker: decode one chunk of files into their rows of the staging file; which ones decoded."""
    staging_path, start, files, size, channels, resample = task
    staging = np.load(staging_path, mmap_mode="r+")
    ok = np.zeros(len(files), bool)
    for i, path in enumerate(files):
        arr = decode_or_none(path, size, channels, resample)
        if arr is not None:
            staging[start + i] = arr
            ok[i] = True
    staging.flush()
    return start, ok


def _finish(out: Path, plan: dict, status: np.memmap) -> dict:
    """Turn the staging file into ``images.npy`` (dropping skipped files' rows), write the labels and, last,
    the manifest; remove the bookkeeping files."""
    decoded = np.flatnonzero(status == DECODED)
    skipped = [plan["files"][i] for i in np.flatnonzero(status == SKIPPED)]
    warn_skipped(skipped)
    if len(decoded) == 0:
        raise ValueError(f"none of the {len(status)} image files in {plan['source']} could be decoded")
    if skipped:
        check_free_space(out / IMAGES, _pixel_bytes(plan) // len(status) * len(decoded),
                         f"a copy of the {len(decoded)} images decoded, without the {len(skipped)} skipped")
        _copy_rows(out / _STAGING, decoded, out / IMAGES)
    elif (out / _STAGING).exists():
        os.replace(out / _STAGING, out / IMAGES)
    np.save(out / LABELS, np.asarray(plan["labels"], np.int64)[decoded])
    manifest = {"format": FORMAT, "version": 1, **{k: plan[k] for k in ("image_size", "channels", "crop_size")},
                "count": len(decoded), "class_names": plan["class_names"], "source": plan["source"],
                "skipped": skipped, "digest": _digest(out / IMAGES)}
    write_atomically(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    for name in (_STAGING, _STATUS, _PLAN):
        (out / name).unlink(missing_ok=True)
    log.info("prepared %d images (%dx%dx%d) in %s", len(decoded), *plan["image_size"], plan["channels"], out)
    return manifest


def _copy_rows(src: Path, rows: np.ndarray, dst: Path, chunk: int = 4096) -> None:
    """``src``'s ``rows`` into a new .npy ``dst``, chunk by chunk (bounded memory), written atomically."""
    staging = np.load(src, mmap_mode="r")

    def write(tmp: Path) -> None:
        images = np.lib.format.open_memmap(tmp, "w+", np.uint8, (len(rows), *staging.shape[1:]))
        for s in range(0, len(rows), chunk):
            images[s:s + chunk] = staging[rows[s:s + chunk]]
        images.flush()

    write_atomically(dst, write)


def _digest(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-1 of a file, read in chunks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
