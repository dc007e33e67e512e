"""Scale schedules: the (height, width) of each scale's token map, coarse to fine.

A schedule is written as ints (``p`` is shorthand for the square ``(p, p)``) or as ``(h, w)`` pairs
(lists in JSON). :func:`normalize_patch_nums` turns any spelling into pairs, which is what the models
compute with; :func:`compact_patch_nums` gives the spelling configs store and save: plain ints when every
scale is square (so square configs and their config.json files stay as they were), else pairs.

The rule a schedule follows (:func:`check_schedule`): sides of at least 1; each side never shrinks and the
token count grows from scale to scale; and every scale has the last scale's aspect ratio r = W / H as
closely as whole sides allow: ``w == round(h * r)`` or ``h == round(w / r)`` (rounding half up, at least 1).
So (1, 1), (1, 2), (2, 3), (2, 4), ... all fit a 1:2 last scale, (1, 3) or (4, 4) do not, and a square
schedule has square scales only.

This module imports nothing from the package: configs, the quantizer and the transformer all import it.
"""
from __future__ import annotations

import math
from numbers import Integral
from typing import Any, Sequence

Scale = tuple[int, int]


def as_hw(size: Any) -> Scale:
    """A scale or image size given as a side p (square) or as a pair (h, w), as (h, w); ValueError names
    anything else."""
    bad = ValueError(f"expected a side p or a pair (h, w) of ints, got {size!r}")
    if isinstance(size, bool):
        raise bad
    if isinstance(size, Integral):
        return int(size), int(size)
    try:
        h, w = size
    except (TypeError, ValueError):
        raise bad from None
    if not all(isinstance(v, Integral) and not isinstance(v, bool) for v in (h, w)):
        raise bad
    return int(h), int(w)


def normalize_patch_nums(patch_nums: Any) -> tuple[Scale, ...]:
    """Any spelling of a schedule (ints, pairs, lists from JSON, mixed) as (h, w) pairs, checked by
    :func:`check_schedule`."""
    if isinstance(patch_nums, (int, str)) or not hasattr(patch_nums, "__iter__"):
        raise ValueError(f"patch_nums must be a sequence of scales, got {patch_nums!r}")
    scales = tuple(as_hw(e) for e in patch_nums)
    check_schedule(scales)
    return scales


def compact_patch_nums(scales: Sequence[Scale]) -> tuple[int, ...] | tuple[Scale, ...]:
    """The spelling a config stores: ints when every scale is square, else (h, w) pairs."""
    if all(h == w for h, w in scales):
        return tuple(h for h, _ in scales)
    return tuple((h, w) for h, w in scales)


def _round_half_up(x: float) -> int:
    return max(1, math.floor(x + 0.5))


def fits_aspect(scale: Scale, ratio: float) -> bool:
    """Whether (h, w) has the aspect ratio ``ratio`` = width / height as closely as whole sides allow."""
    h, w = scale
    return w == _round_half_up(h * ratio) or h == _round_half_up(w / ratio)


def check_schedule(scales: Sequence[Scale]) -> None:
    """Raise ValueError naming the first scale that breaks the rule of this module's docstring."""
    if not scales:
        raise ValueError("patch_nums must hold at least one scale")
    for h, w in scales:
        if h < 1 or w < 1:
            raise ValueError(f"scale sides must be >= 1, got ({h}, {w}) in {tuple(scales)}")
    for (h0, w0), (h1, w1) in zip(scales, scales[1:]):
        if h1 < h0 or w1 < w0 or h1 * w1 <= h0 * w0:
            raise ValueError(f"patch_nums must grow from scale to scale (no side shrinking, more tokens each "
                             f"time); ({h0}, {w0}) is followed by ({h1}, {w1}) in {tuple(scales)}")
    H, W = scales[-1]
    for s in scales:
        if not fits_aspect(s, W / H):
            raise ValueError(f"scale {s} does not have the aspect ratio of the last scale ({H}, {W}): the aspect "
                             f"ratio must stay the same across scales (up to rounding), schedule {tuple(scales)}")


def patch_nums_from_max_scale(max_scale: int | Sequence[int]) -> tuple[int, ...] | tuple[Scale, ...]:
    """The schedule ending at ``max_scale``: N gives (1, 2, ..., N); a pair (H, W) steps the short side
    through 1, 2, ..., min(H, W) with the long side at the rounded aspect ratio, e.g. (8, 16) gives
    (1, 2), (2, 4), ..., (8, 16) and (6, 8) gives (1, 1), (2, 3), (3, 4), (4, 5), (5, 7), (6, 8)."""
    H, W = as_hw(max_scale)
    if H < 1 or W < 1:
        raise ValueError(f"max_scale must be >= 1, got {max_scale}")
    short, ratio = min(H, W), max(H, W) / min(H, W)
    steps = [(s, _round_half_up(s * ratio)) for s in range(1, short + 1)]
    scales = steps if H <= W else [(b, a) for a, b in steps]
    return compact_patch_nums(scales)


def schedule_for(image_hw: int | Sequence[int], downsample: int) -> tuple[int, ...] | tuple[Scale, ...]:
    """The default schedule of a tokenizer for images of ``image_hw`` (a side or (H, W)) at ``downsample``x:
    :func:`patch_nums_from_max_scale` of the latent size, e.g. 32x64 at 4x ends at (8, 16)."""
    H, W = as_hw(image_hw)
    if H % downsample or W % downsample:
        raise ValueError(f"image size {H}x{W} is not a multiple of the tokenizer's {downsample}x down-sampling")
    return patch_nums_from_max_scale((H // downsample, W // downsample))


def parse_size(text: str) -> int | Scale:
    """``32`` (a square side) or ``32x64`` (height x width), as the command line takes them."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"expected a size such as 32 or 32x64 (height x width), got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def parse_patch_nums(text: str) -> tuple[int, ...] | tuple[Scale, ...]:
    """``1,2,3,4`` or ``1x2,2x4,4x8`` (height x width per scale), checked, in the compact spelling."""
    entries = [parse_size(t) for t in text.replace(",", " ").split()]
    return compact_patch_nums(normalize_patch_nums(entries))
