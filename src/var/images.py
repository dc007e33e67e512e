"""Image I/O and figures with Pillow and numpy: tensors <-> files, labelled sample grids."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from .schedule import as_hw, normalize_patch_nums

# The grey level (0-255) that transparent pixels of an input image are composited on: black, the background
# of the bundled Fashion-MNIST model's images (see :func:`to_8bit`).
TRANSPARENT_BACKGROUND = 0
# Levels (0-255) by which a pixel's red, green and blue may differ in a grey image: a JPEG's chroma rounding.
GREY_TOLERANCE = 8


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) floats in [0, 1] to (B, H, W, C) uint8."""
    return (images.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())


def to_rgb_uint8(images: torch.Tensor) -> np.ndarray:
    """Like :func:`to_uint8`, with single-channel images repeated to three channels."""
    arr = to_uint8(images)
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def save_npz(images: torch.Tensor, labels: torch.Tensor, path: str | Path) -> Path:
    """Samples as the standard FID tools read them: ``arr_0`` uint8 (N, H, W, 3) and ``labels`` (N,)."""
    return write_npz(to_rgb_uint8(images), labels.cpu().numpy(), path)


def write_npz(rgb_NHW3: np.ndarray, labels: np.ndarray, path: str | Path) -> Path:
    """:func:`save_npz` of images already converted to uint8 (N, H, W, 3)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # an open file: np.savez would otherwise append ".npz" to other names
        np.savez(f, arr_0=rgb_NHW3, labels=labels)
    return path


def to_8bit(im: Image.Image, channels: int) -> Image.Image:
    """``im`` upright and as 8-bit greyscale ("L", ``channels`` 1) or RGB. Upright: turned as its EXIF
    orientation says (cameras and phones store photos sideways and tag them), so that an image, and a mask
    painted over it as displayed, line up. 16-bit greyscale (modes "I;16*", and "I", which Pillow also uses
    for 16-bit PNGs) is scaled by 255/65535 first: Pillow's own convert clips it at 255, which turns all but
    the darkest pixels white.

    Transparency (an alpha channel, or a palette's or PNG's transparent colour) is composited on black,
    ``TRANSPARENT_BACKGROUND``: dropping the alpha would keep whatever colour the transparent pixels hold,
    often grey or white. Black is the background of Fashion-MNIST, the bundled model's training images, and
    images a model is trained on here are read by this function too, so such a model saw transparency as
    black as well."""
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16") or im.mode == "I":
        values = np.asarray(im, dtype=np.float64) * (255 / 65535)
        im = Image.fromarray(values.round().clip(0, 255).astype(np.uint8), "L")
    if "A" in im.getbands() or "transparency" in im.info:
        background = Image.new("RGBA", im.size, (TRANSPARENT_BACKGROUND,) * 3 + (255,))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    return im.convert("L" if channels == 1 else "RGB")


def load_image(path: str | Path, channels: int, size: int | tuple[int, int] | None = None
               ) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image file as (1, channels, H, W) in [0, 1] (resized when ``size``, a side or (H, W), differs)
    and its original (width, height). Raises ValueError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            im = to_8bit(im, channels)
            original = im.size
            if size is not None:
                H, W = as_hw(size)
                if im.size != (W, H):
                    im = im.resize((W, H), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    t = torch.from_numpy(arr)
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    return t.contiguous(), original


def has_colour(path: str | Path) -> bool:
    """Whether an image file holds colour: a pixel whose red, green and blue differ by more than
    ``GREY_TOLERANCE`` levels (as :func:`to_8bit` reads it), so that a grey image stored as RGB or as a JPEG
    does not count. Raises ValueError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(to_8bit(im, 3), dtype=np.int16)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    return bool((rgb.max(axis=-1) - rgb.min(axis=-1)).max() > GREY_TOLERANCE)


def save_image(images: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    """Save one image (C, H, W) or the first of a batch, enlarged ``scale`` times (nearest)."""
    if images.ndim == 4:
        images = images[:1]
    else:
        images = images[None]
    im = Image.fromarray(to_rgb_uint8(images)[0])
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def _margins(row_labels: Sequence[str] | None, col_labels: Sequence[str] | None) -> tuple[int, int]:
    """(left, top) pixels a grid keeps for its row and column labels."""
    font = ImageFont.load_default()
    left = 0 if not row_labels else 8 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font))
                                           for t in row_labels)
    return left, 0 if not col_labels else 16


def square_columns(n: int) -> int:
    """Columns of a square-ish grid of ``n`` >= 1 tiles: ceil(sqrt(n)), so 16 tiles are 4x4 and 8 are 3 rows
    of 3, 3 and 2. ValueError for ``n`` < 1."""
    if n < 1:
        raise ValueError(f"a grid needs at least 1 tile, got {n}")
    return math.isqrt(n - 1) + 1


def grid_size(n: int, nrow: int, tile_hw: tuple[int, int], pad: int = 2, row_labels: Sequence[str] | None = None,
              col_labels: Sequence[str] | None = None) -> tuple[int, int]:
    """(width, height) in pixels of the :func:`grid` of ``n`` tiles of ``tile_hw`` (height, width, as drawn:
    after scaling), ``nrow`` a row, without drawing it."""
    left, top = _margins(row_labels, col_labels)
    rows = (n + nrow - 1) // nrow
    return left + nrow * (tile_hw[1] + pad) + pad, top + rows * (tile_hw[0] + pad) + pad


def grid(images: torch.Tensor, nrow: int, pad: int = 2, scale: int = 1, row_labels: Sequence[str] | None = None,
         col_labels: Sequence[str] | None = None, background: int = 255) -> Image.Image:
    """A grid image of ``images`` (N, C, H, W) with ``nrow`` images per row, optional text labels on
    the left of each row and above each column."""
    arr = to_rgb_uint8(images)
    n, h, w = arr.shape[0], arr.shape[1] * scale, arr.shape[2] * scale
    left, top = _margins(row_labels, col_labels)
    canvas = Image.new("RGB", grid_size(n, nrow, (h, w), pad, row_labels, col_labels), (background,) * 3)
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for i in range(n):
        r, c = divmod(i, nrow)
        tile = Image.fromarray(arr[i])
        if scale != 1:
            tile = tile.resize((w, h), Image.NEAREST)
        canvas.paste(tile, (left + pad + c * (w + pad), top + pad + r * (h + pad)))
    for r, text in enumerate(row_labels or []):
        draw.text((4, top + pad + r * (h + pad) + h // 2 - 5), text, fill=(0, 0, 0), font=font)
    for c, text in enumerate(col_labels or []):
        draw.text((left + pad + c * (w + pad) + 2, 2), text, fill=(0, 0, 0), font=font)
    return canvas


def progression_grid(stages: Sequence[torch.Tensor], patch_nums: Sequence, row_labels: Sequence[str],
                     scale: int = 1) -> Image.Image:
    """The coarse-to-fine figure: a row per sample, a column per scale (labelled height x width). ``stages``
    holds K tensors (R, C, H, W), the images after 1, 2, ..., K scales (``VARPipeline.decode_per_scale``)."""
    images = torch.stack(list(stages), dim=1).flatten(0, 1)    # row-major: sample r, scale k
    return grid(images, nrow=len(stages), scale=scale, row_labels=row_labels,
                col_labels=[f"{h}x{w}" for h, w in normalize_patch_nums(patch_nums)])
