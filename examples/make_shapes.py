"""A small two-class image folder to try training on your own images: coloured discs and squares.

    python examples/make_shapes.py data/shapes                 # 100 + 100 images, 32x32 RGB
    python examples/make_shapes.py data/shapes --per-class 19  # 38 images

Each image is one shape of random colour, size and position on a background of another random colour with a
soft gradient; squares are turned by a random angle. The folder holds one sub-folder per class, as
``var train-vae --data FOLDER`` and ``var train --data FOLDER`` read it (class-conditional training).
"""
from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("discs", "squares")
SUPERSAMPLE = 4  # shapes are drawn this much larger, then reduced: smooth edges


def _colour(rng: np.random.Generator, lightness: tuple[float, float]) -> np.ndarray:
    h, l, s = rng.random(), rng.uniform(*lightness), rng.uniform(0.5, 1.0)
    return np.array(colorsys.hls_to_rgb(h, l, s)) * 255


def draw(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size`` x ``size`` RGB image of a disc or a square (``kind``: an entry of :data:`CLASSES`)."""
    if kind not in CLASSES:
        raise ValueError(f"kind={kind!r}: expected one of {CLASSES}")
    big = size * SUPERSAMPLE
    # Background: a random colour, lighter or darker across the image along a random direction.
    back, shade = _colour(rng, (0.15, 0.85)), rng.uniform(-40, 40)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:big, 0:big] / big - 0.5
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None] * shade
    image = Image.fromarray(np.clip(back + ramp, 0, 255).astype(np.uint8))
    # The shape: a colour at least 100 levels away from the background, so that it always stands out.
    fill = _colour(rng, (0.1, 0.9))
    while np.abs(fill - back).sum() < 100:
        fill = _colour(rng, (0.1, 0.9))
    r = rng.uniform(0.2, 0.38) * big
    cx, cy = rng.uniform(r, big - r, size=2)
    pen = ImageDraw.Draw(image)
    if kind == "discs":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in fill))
    else:
        turn = rng.uniform(0, np.pi / 2)
        half = r * 0.85
        corners = [(cx + half * np.sqrt(2) * np.cos(turn + k * np.pi / 2 + np.pi / 4),
                    cy + half * np.sqrt(2) * np.sin(turn + k * np.pi / 2 + np.pi / 4)) for k in range(4)]
        pen.polygon(corners, fill=tuple(int(v) for v in fill))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def make_shapes(root: Path, per_class: int = 100, size: int = 32, seed: int = 0) -> Path:
    """Write ``per_class`` PNGs of each class into ``root/discs`` and ``root/squares``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        folder = Path(root) / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(kind, size, rng).save(folder / f"{i:04d}.png")
    return Path(root)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder to write (its class sub-folders are made)")
    p.add_argument("--per-class", type=int, default=100, help="images of each class (default: 100)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    a = p.parse_args()
    make_shapes(a.out, a.per_class, a.size, a.seed)
    print(f"wrote {a.per_class} images of each of {', '.join(CLASSES)} ({a.size}x{a.size} RGB) into {a.out}")


if __name__ == "__main__":
    main()
