"""Zero-shot editing (inpainting, outpainting, variations): which of an image's tokens to keep at each scale.

The paper's recipe needs no training: the tokens to keep are teacher-forced at every scale and the model
samples only the rest (:func:`var.sampling.generate` does the forcing). This module turns pixel masks
into per-scale token masks, and builds or loads such masks.

Masks follow the convention of common inpainting tools: 1 (True) where new content is generated, 0 where
the image is kept. Token masks handed to ``generate`` are the opposite: True = keep.
"""
from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import to_8bit
from .schedule import Scale, as_hw, normalize_patch_nums


def box_mask(h: int, w: int, y0: float, x0: float, y1: float, x1: float) -> torch.Tensor:
    """An (h, w) mask, 1 inside the box (top, left, bottom, right as fractions of the height and width)
    and 0 outside. The box covers every pixel it touches. ``1 - box_mask(...)`` outpaints around it."""
    for name, v in (("y0", y0), ("x0", x0), ("y1", y1), ("x1", x1)):
        if not 0 <= v <= 1:
            raise ValueError(f"box {name}={v} is not a fraction in [0, 1]")
    if not (y0 < y1 and x0 < x1):
        raise ValueError(f"box needs y0 < y1 and x0 < x1, got y0={y0}, x0={x0}, y1={y1}, x1={x1}")
    mask = torch.zeros(h, w)
    mask[_span(y0, y1, h), _span(x0, x1, w)] = 1
    return mask


def random_boxes(n: int, seed: int = 0, min_area: float = 0.1, max_area: float = 0.5
                 ) -> list[tuple[float, float, float, float]]:
    """``n`` seeded boxes (y0, x0, y1, x1 as fractions) of ``min_area`` to ``max_area`` of the image,
    aspect ratio 1:2 to 2:1, placed uniformly: the sweep that measures how much an edit keeps."""
    if not 0 < min_area <= max_area <= 1:
        raise ValueError(f"need 0 < min_area <= max_area <= 1, got {min_area}, {max_area}")
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n):
        area, aspect = rng.uniform(min_area, max_area), math.exp(rng.uniform(-math.log(2), math.log(2)))
        w = min(1.0, math.sqrt(area * aspect))
        h = min(1.0, area / w)
        y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
        boxes.append((y0, x0, y0 + h, x0 + w))
    return boxes


def _span(a: float, b: float, n: int) -> slice:
    """The pixels of n that the interval [a, b) of [0, 1] touches: at least one, however thin the box."""
    eps = 1e-9  # 0.3 * 10 is 3.0000000000000004: do not let rounding noise add a row
    start = min(math.floor(a * n + eps), n - 1)
    return slice(start, max(math.ceil(b * n - eps), start + 1))


def cover(mask_B1HW: torch.Tensor, size: int | Scale) -> torch.Tensor:
    """Resize a 0/1 mask to ``size`` (a side or (h, w)) so that an output cell is 1 when ANY input pixel it
    overlaps is 1 (adaptive max-pooling): shrinking or enlarging never loses a pixel to generate."""
    return F.adaptive_max_pool2d(mask_B1HW.float(), as_hw(size))


def load_mask(path: str | Path, size: int | Scale | None = None, expect: tuple[int, int] | None = None,
              invert: bool = False) -> torch.Tensor:
    """A mask image as an (H, W) 0/1 float tensor: pixels of at least mid-grey (128 of 255) are 1 (generate),
    or with ``invert`` (outpainting: the white part is kept) those below it.

    ``expect`` (width, height) is the size the file must have (its image's); ``size`` (a side or
    (height, width)) resizes the mask with :func:`cover`, after inverting, so that a pixel to regenerate is
    never lost to the resize either way. Raises ValueError naming the file when it cannot be read or has
    the wrong size.
    """
    try:
        with Image.open(path) as im:
            gray_HW = np.asarray(to_8bit(im, channels=1))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read mask {path}: {e}") from e
    h, w = gray_HW.shape
    if expect is not None and (w, h) != tuple(expect):
        raise ValueError(f"mask {path} is {w}x{h} (width x height) but its image is {expect[0]}x{expect[1]}: "
                         "they must have the same size")
    mask_HW = torch.from_numpy((gray_HW < 128) if invert else (gray_HW >= 128)).float()
    if size is None or (h, w) == as_hw(size):
        return mask_HW
    return cover(mask_HW[None, None], size)[0, 0]


def check_mask(mask, batch: int, size: int | Scale) -> torch.Tensor:
    """The user's mask as (batch, 1, H, W) bools, True = generate, for images of ``size`` (a side or (H, W)).

    Takes (H, W) or (1, 1, H, W) (one mask for every image) or (batch, 1, H, W), of bools or of the
    numbers 0 and 1; anything else raises ValueError naming the bad shape or value.
    """
    H, W = as_hw(size)
    mask = torch.as_tensor(mask)
    if mask.ndim == 2:
        mask = mask[None, None]
    expected = f"(H, W), (1, 1, H, W) or ({batch}, 1, H, W) with " + (f"H = W = {H}" if H == W else f"H = {H}, W = {W}")
    if mask.ndim != 4 or mask.shape[0] not in (1, batch) or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape {expected}, got {tuple(mask.shape)}")
    if mask.shape[-2:] != (H, W):
        raise ValueError(f"mask is {mask.shape[-2]}x{mask.shape[-1]}, expected {H}x{W} (the image size)")
    if mask.dtype != torch.bool:
        bad = mask[(mask != 0) & (mask != 1)]
        if bad.numel():
            raise ValueError(f"mask values must be 0 (keep) or 1 (generate), got {bad.flatten()[0].item()}")
        mask = mask != 0
    return mask.expand(batch, 1, H, W)


def area_weights(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) box-filter weights: entry (i, j) is the fraction of output cell i (of n_out equal
    cells spanning the axis) that input cell j covers. ``W_h @ m @ W_w.T`` area-averages an (h_in, w_in)
    map to (h_out, w_out) exactly, also where n_in / n_out is not whole (adaptive pooling rounds its windows outwards there)."""
    edges_out = torch.arange(n_out + 1, dtype=torch.float64) * (n_in / n_out)
    lo = torch.maximum(edges_out[:-1, None], torch.arange(n_in, dtype=torch.float64)[None])
    hi = torch.minimum(edges_out[1:, None], torch.arange(1, n_in + 1, dtype=torch.float64)[None])
    return ((hi - lo).clamp_min(0) * (n_out / n_in)).float()


def keep_masks_from_mask(gen_B1HW: torch.Tensor, patch_nums: Sequence, pad: int = 0) -> list[torch.Tensor]:
    """Per-scale keep masks (B, h_k * w_k) for a checked user-size mask (B, 1, H, W), True = generate;
    ``patch_nums`` in any spelling of :mod:`var.schedule`.

    A token is kept when more than half of the pixels it covers are kept (area weights per axis, so cells
    that split pixels count them in part); at the first scale, whatever its shape, when any of them is
    (the coarsest codes hold the image's overall tone, which outpainting needs to keep). An image
    whose hole is never the larger part of any finest token still generates its finest tokens with the
    largest share of hole, so a non-empty hole always regenerates something. The model's border ``pad``
    takes the mask value of the nearest image pixel: an all-ones mask is plain generation, all-zeros the
    reconstruction.
    """
    if pad:
        gen_B1HW = F.pad(gen_B1HW.float(), (pad,) * 4, mode="replicate")
    kept_BHW = 1 - gen_B1HW[:, 0].float()
    H, W = kept_BHW.shape[-2:]
    masks = []
    for k, (h, w) in enumerate(normalize_patch_nums(patch_nums)):
        kept_Bl = (area_weights(h, H).to(kept_BHW) @ kept_BHW @ area_weights(w, W).to(kept_BHW).T).flatten(1)
        masks.append(kept_Bl > (1e-6 if k == 0 else 0.5 + 1e-6))  # a tie (half kept) generates
    least_B1 = kept_Bl.amin(dim=1, keepdim=True)  # the finest scale's
    masks[-1] &= ~((kept_Bl <= least_B1 + 1e-6) & (least_B1 < 1))
    return masks


def keep_masks_for_scales(batch: int, patch_nums: Sequence, keep_scales: int,
                          device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Per-scale keep masks (B, h_k * w_k) that keep the first ``keep_scales`` scales whole and generate the
    finer ones: the layout of an image with new details (variations)."""
    scales = normalize_patch_nums(patch_nums)
    K = len(scales)
    try:  # ints, numpy and 0-d tensor integers; not 2.5 (which kept 3 scales) nor True (1)
        count = None if isinstance(keep_scales, bool) else operator.index(keep_scales)
    except TypeError:
        count = None
    if count is None or not 0 <= count <= K:
        raise ValueError(f"keep_scales must be an integer in [0, {K}] (this model has {K} scales), got {keep_scales!r}")
    keep_scales = count
    return [torch.full((batch, h * w), k < keep_scales, dtype=torch.bool, device=device)
            for k, (h, w) in enumerate(scales)]
