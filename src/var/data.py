"""Training data: Fashion-MNIST from its IDX files, any folder of images, or a prepared data set.

All give a :class:`ImageArrayDataset`: uint8 images at the model's resolution (in memory, or memory-mapped
from a folder written by ``var prepare-data``, see :mod:`var.prepare_data`), with labels, returned as float
tensors in [0, 1], (channels, H, W). Nothing is downloaded: Fashion-MNIST comes from Debian's
``dataset-fashion-mnist`` package or a folder holding its four IDX files.
"""
from __future__ import annotations

import gzip
import logging
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import to_8bit
from .schedule import as_hw

log = logging.getLogger(__name__)
# A data set written by ``var prepare-data`` (see :mod:`var.prepare_data`).
FORMAT = "var-prepared"
MANIFEST, IMAGES, LABELS = "manifest.json", "images.npy", "labels.npy"

FASHION_MNIST_DIRS = ["/usr/share/datasets/fashion-mnist"]
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# Random-crop augmentation (the reference's): images kept at this multiple of the model's size, a window of
# the model's size cut from each at every step (var train --crop, var prepare-data --crop). The reference
# resizes to that size with a Lanczos filter; so do we, from the source image.
CROP_RATIO = 1.125
CROP_RESAMPLE = Image.LANCZOS
RESAMPLE = Image.BICUBIC  # images decoded at the model's size
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x0000TTNN (type TT, NN dimensions), sizes, data."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            raw = f.read()
    else:
        raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims)} but holds {data.size} values")
    return data.reshape(tuple(dims))


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the Fashion-MNIST IDX files: ``root``, $VAR_FASHION_MNIST, or Debian's."""
    candidates = [Path(root)] if root else [Path(p) for p in ([os.environ.get("VAR_FASHION_MNIST")] if
                                                              os.environ.get("VAR_FASHION_MNIST") else [])
                                            + FASHION_MNIST_DIRS]
    for c in candidates:
        if all(_find_idx(c, s) for pair in FASHION_MNIST_FILES.values() for s in pair):
            return c
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {[str(c) for c in candidates]}: install them with "
        f"`apt-get install -y dataset-fashion-mnist` or pass --data FOLDER holding "
        f"{', '.join(s + '.gz' for pair in FASHION_MNIST_FILES.values() for s in pair)}")


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the ``train`` (60,000) or ``test`` (10,000) split."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    folder = find_fashion_mnist(root)
    img_stem, lbl_stem = FASHION_MNIST_FILES[split]
    images, labels = read_idx(_find_idx(folder, img_stem)), read_idx(_find_idx(folder, lbl_stem))
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"unexpected Fashion-MNIST shapes in {folder}: {images.shape}, {labels.shape}")
    return images, labels.astype(np.int64)


@dataclass
class ImageArrayDataset(torch.utils.data.Dataset):
    """uint8 images (N, H, W, C) with labels; items are ([0, 1] float (C, H, W), label).

    ``images`` may be a memory map: only :meth:`batch` reads pixels, and only the rows asked for. ``rows``
    (optional) selects the rows of ``images`` this data set holds, in order, so that a subset (such as
    :func:`split_holdout`'s) shares the array instead of copying it. ``fingerprint``, when set, identifies
    the pixels of ``images`` (a prepared data set's digest), so that caches need not read them all."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str] | None = None
    name: str = "images"
    skipped: list[str] = field(default_factory=list)
    rows: np.ndarray | None = None
    fingerprint: str | None = None

    def __post_init__(self):
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if len(self) == 0:
            raise ValueError(f"data set {self.name!r} holds no images")
        held = len(self.images) if self.rows is None else len(self.rows)
        if len(self.labels) != held:
            raise ValueError(f"{len(self.labels)} labels for {held} images")

    def __len__(self) -> int:
        return len(self.labels)

    def image_rows(self, indices: np.ndarray) -> np.ndarray:
        """The rows of ``images`` holding items ``indices`` of this data set."""
        return indices if self.rows is None else self.rows[indices]

    def subset(self, indices: np.ndarray) -> "ImageArrayDataset":
        """Items ``indices`` as a data set sharing this one's pixel array (no copy)."""
        return ImageArrayDataset(self.images, self.labels[indices], self.class_names, self.name,
                                 rows=self.image_rows(np.asarray(indices)), fingerprint=self.fingerprint)

    @property
    def channels(self) -> int:
        return self.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 1

    def batch(self, indices: torch.Tensor | np.ndarray, flips: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch as ([0, 1] images (B, C, H, W), labels (B,)); ``flips`` (B,) bool mirrors chosen items."""
        idx = np.asarray(indices)
        pixels_BHWC = np.ascontiguousarray(self.images[self.image_rows(idx)])
        x = torch.from_numpy(pixels_BHWC).permute(0, 3, 1, 2).float().div_(255)
        if flips is not None:
            x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        return x, torch.from_numpy(self.labels[idx])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(np.array([i]))
        return x[0], int(y[0])


def fashion_mnist_dataset(root: str | os.PathLike | None = None, split: str = "train") -> ImageArrayDataset:
    """Fashion-MNIST's ``split`` ("train" or "test") from its IDX files, with the class names."""
    from .recipes import FASHION_MNIST_CLASSES
    images, labels = load_fashion_mnist(root, split)
    return ImageArrayDataset(images, labels, list(FASHION_MNIST_CLASSES), name=f"fashion-mnist-{split}")


def load_resized(path: str | os.PathLike, size: int | tuple[int, int], channels: int,
                 resample: int = RESAMPLE) -> np.ndarray:
    """Decode, resize to cover ``size`` (a side, or (H, W)) keeping the aspect ratio with the PIL filter
    ``resample``, and centre-crop to H x W: (H, W, C) uint8. For a square size this resizes the short side to it."""
    H, W = as_hw(size)
    with Image.open(path) as im:
        im = to_8bit(im, channels)
        w, h = im.size
        s = max(W / w, H / h)
        im = im.resize((max(W, round(w * s)), max(H, round(h * s))), resample)
        w, h = im.size
        left, top = (w - W) // 2, (h - H) // 2
        arr = np.asarray(im.crop((left, top, left + W, top + H)), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_or_none(path: str | os.PathLike, size: int | tuple[int, int], channels: int,
                   resample: int = RESAMPLE) -> np.ndarray | None:
    """:func:`load_resized`, or None when the file cannot be decoded (the callers skip and list it)."""
    try:
        return load_resized(path, size, channels, resample)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _listing(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; ValueError naming it when it cannot be listed (no read permission):
    an unreadable folder must not pass for an empty one."""
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries)
    except OSError as e:
        raise ValueError(f"cannot read folder {folder}: {e.strerror or e}") from e


def _images_under(folder: Path) -> list[Path]:
    """The image files at any depth of ``folder``, sorted, hidden files and folders (.ipynb_checkpoints,
    .thumbnails, ...) left out: they are not data. ValueError names a folder that cannot be listed."""
    def unreadable(e: OSError) -> None:
        raise ValueError(f"cannot read folder {e.filename}: {e.strerror or e}") from e

    found = []
    for parent, dirs, names in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent, n) for n in names if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def list_image_files(root: str | os.PathLike) -> tuple[list[tuple[Path, int]], list[str]]:
    """The image files of a folder with their class ids, and the class names: one sub-folder per class
    (class-conditional), or a flat folder of images (unconditional: one class named after the folder).
    ValueError names a folder that cannot be read, which would otherwise look like one without images."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    entries = _listing(root)
    subdirs = [d for d in entries if d.is_dir() and not d.name.startswith(".")]
    if subdirs:
        per_dir = [_images_under(d) for d in subdirs]
        empty = [d.name for d, found in zip(subdirs, per_dir) if not found]
        if empty and len(empty) < len(subdirs):  # e.g. __MACOSX of an unzipped archive: not a class
            log.warning("ignoring %d folder(s) of %s without images: %s (a class needs images)", len(empty), root,
                        ", ".join(empty))
        kept = [(d, found) for d, found in zip(subdirs, per_dir) if found]
        class_names = [d.name for d, _ in kept]
        files = [(f, c) for c, (_, found) in enumerate(kept) for f in found]
        loose = [f for f in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            log.warning("ignoring %d image(s) directly in %s (e.g. %s): with class folders, images belong in "
                        "one of them", len(loose), root, loose[0].name)
    else:
        class_names = [root.name or "images"]
        files = [(f, 0) for f in entries if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    return files, class_names


def warn_skipped(skipped: list[str]) -> None:
    if skipped:
        log.warning("skipped %d file(s) that could not be decoded: %s", len(skipped), ", ".join(skipped[:10])
                    + (" ..." if len(skipped) > 10 else ""))


def image_folder_dataset(root: str | os.PathLike, size: int | tuple[int, int], channels: int = 3,
                         resample: int = RESAMPLE) -> ImageArrayDataset:
    """The images of :func:`list_image_files`, decoded in this process and held in memory at ``size`` (a
    side, or (H, W); resized with the PIL filter ``resample``): for small folders (``var prepare-data`` writes
    large ones to disk, in parallel). Files that cannot be decoded are skipped with one warning naming them."""
    files, class_names = list_image_files(root)
    images, labels, skipped = [], [], []
    for path, c in files:
        arr = decode_or_none(path, size, channels, resample)
        if arr is None:
            skipped.append(str(path))
        else:
            images.append(arr)
            labels.append(c)
    warn_skipped(skipped)
    if not images:
        raise ValueError(f"none of the {len(files)} image files in {root} could be decoded")
    return ImageArrayDataset(np.stack(images), np.array(labels, dtype=np.int64), class_names, name=str(root),
                             skipped=skipped)


@dataclass(frozen=True)
class DataSummary:
    """What a data set holds, read without decoding it all: ``count`` images in ``class_names``; ``channels``
    1 (greyscale) or 3 (colour), and ``size_hw`` (height, width), of the images (for a folder: judged from
    up to :data:`SUMMARY_SAMPLE` of its files, the median size)."""
    kind: str                   # "fashion-mnist", "prepared" or "folder"
    count: int
    class_names: list[str]
    channels: int
    size_hw: tuple[int, int]


SUMMARY_SAMPLE = 32  # the files of a folder opened to judge its channels and size
GREY_TOLERANCE = 2   # a decoded RGB image whose channels differ by at most this everywhere is greyscale


def is_fashion_mnist(data: str) -> bool:
    """Whether ``data`` names Fashion-MNIST: ``fashion-mnist``, or a folder holding its training IDX files."""
    path = Path(data)
    return data == "fashion-mnist" or (path.is_dir() and all(_find_idx(path, s) for s in FASHION_MNIST_FILES["train"]))


def describe_data(data: str) -> DataSummary:
    """A :class:`DataSummary` of ``data`` as :func:`build_dataset` reads it; a folder is listed, and a few of
    its files opened (FileNotFoundError / ValueError as :func:`list_image_files`)."""
    from .recipes import FASHION_MNIST_CLASSES
    path = Path(data)
    if is_fashion_mnist(data):
        return DataSummary("fashion-mnist", 60000, list(FASHION_MNIST_CLASSES), 1, (28, 28))
    if is_prepared(path):
        m = read_manifest(path)
        return DataSummary("prepared", m["count"], m["class_names"], m["channels"], tuple(m["image_size"]))
    files, class_names = list_image_files(path)
    picked = [files[i][0] for i in np.linspace(0, len(files) - 1, min(SUMMARY_SAMPLE, len(files))).astype(int)]
    sizes, colour = [], False
    for f in picked:
        try:
            with Image.open(f) as im:
                sizes.append(im.size[::-1])
                if not colour and im.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
                    colour = bool(np.abs(np.diff(rgb, axis=-1)).max() > GREY_TOLERANCE)
        except OSError:  # not decodable: build_dataset skips it with a warning
            continue
    if not sizes:
        raise ValueError(f"none of the {len(picked)} image files of {data} looked at could be opened "
                         f"(e.g. {picked[0]})")
    size_hw = tuple(int(v) for v in np.median(np.array(sizes), axis=0))
    return DataSummary("folder", len(files), class_names, 3 if colour else 1, size_hw)


def is_prepared(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``var prepare-data`` (it holds the manifest)."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a prepared data set; ValueError naming the file when it is not one."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}/{MANIFEST} is not valid JSON ({e}): the folder is damaged; prepare it "
                         "again") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}/{MANIFEST} holds a JSON {type(manifest).__name__}, expected an object: it is not a "
                         "var prepare-data manifest")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}/{MANIFEST} is not a var prepare-data manifest (format {manifest.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return manifest


def open_prepared(path: str | os.PathLike) -> ImageArrayDataset:
    """A prepared data set, its pixels memory-mapped (read-only): nothing is read until a batch asks."""
    path = Path(path)
    manifest = read_manifest(path)
    images = np.load(path / IMAGES, mmap_mode="r")
    labels = np.load(path / LABELS)
    H, W = manifest["image_size"]
    expected = (manifest["count"], H, W, manifest["channels"])
    if images.shape != expected or labels.shape != expected[:1]:
        raise ValueError(f"{path}: {IMAGES} is {images.shape} and {LABELS} {labels.shape}, the manifest says "
                         f"{expected}: the folder is damaged; prepare it again")
    return ImageArrayDataset(images, labels.astype(np.int64), manifest["class_names"], name=str(path),
                             skipped=manifest["skipped"], fingerprint=manifest["digest"])


def build_dataset(data: str, size: int | tuple[int, int] | None = None, channels: int | None = None,
                  split: str = "train", for_crop: bool = False) -> ImageArrayDataset:
    """``data`` is ``fashion-mnist`` (Debian's files or $VAR_FASHION_MNIST), a folder holding the four
    Fashion-MNIST IDX files, a data set written by ``var prepare-data`` (memory-mapped), or an image folder
    (``size`` and ``channels`` then required; decoded into memory).

    ``for_crop``: the images random ``size`` x ``size`` crops are cut from: an image folder is decoded from its
    files at :func:`crop_source_side` (Lanczos, as the reference resizes; ValueError for a size that is not
    square); the other sources hold fixed sizes and come as they are (see :func:`enlarge_for_crop`).

    Image folders and prepared data sets have only a ``train`` split: asking for another raises ValueError,
    so that callers hold images out with :func:`split_holdout` instead of measuring on the training images."""
    if is_fashion_mnist(data):
        return fashion_mnist_dataset(None if data == "fashion-mnist" else data, split)
    path = Path(data)
    if split != "train":
        raise ValueError(f"the image folder {data} has no {split!r} split (only 'train'); hold images out of it "
                         f"with split_holdout")
    if is_prepared(path):
        return open_prepared(path)
    if size is None:
        raise ValueError("an image folder needs the model's image size (--image-size)")
    if for_crop:
        return image_folder_dataset(path, crop_source_side(size), channels or 3, CROP_RESAMPLE)
    return image_folder_dataset(path, size, channels or 3)


def crop_source_side(size: int | tuple[int, int]) -> int:
    """The side of the square images random crops of ``size`` (a side, or a square (H, W)) are cut from:
    ``CROP_RATIO`` x the side, rounded. ValueError for a size that is not square."""
    H, W = as_hw(size)
    if H != W:
        raise ValueError(f"random crops take square images only; got {H}x{W} (height x width)")
    return round(H * CROP_RATIO)


def enlarge_for_crop(images_NHWC: np.ndarray, side: int) -> np.ndarray:
    """uint8 images (N, h, w, C) resized to (N, side, side, C) with the crops' Lanczos filter: the sources of
    random crops for data that holds nothing larger (Fashion-MNIST, a data set prepared at the model's size)."""
    out = np.empty((len(images_NHWC), side, side, images_NHWC.shape[-1]), np.uint8)
    for i, img in enumerate(images_NHWC):
        pil = Image.fromarray(np.ascontiguousarray(img[..., 0] if img.shape[-1] == 1 else img))
        out[i] = np.asarray(pil.resize((side, side), CROP_RESAMPLE)).reshape(side, side, -1)
    return out


def holdout_size(n: int, fraction: float = 0.05, max_items: int = 1000) -> int:
    """How many of ``n`` images :func:`split_holdout` holds out."""
    return min(max_items, max(1, int(n * fraction)))


def split_holdout(ds: ImageArrayDataset, fraction: float = 0.05, seed: int = 0, max_items: int = 1000
                  ) -> tuple[ImageArrayDataset, ImageArrayDataset]:
    """A deterministic (train, held-out) split for data sets without a test split."""
    n = len(ds)
    if n < 2:
        raise ValueError(f"{ds.name} has {n} image(s): holding images out for measuring needs at least 2")
    n_hold = holdout_size(n, fraction, max_items)
    perm = np.random.default_rng(seed).permutation(n)
    return ds.subset(perm[n_hold:]), ds.subset(perm[:n_hold])
