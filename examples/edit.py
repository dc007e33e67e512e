"""Zero-shot editing with the bundled model: inpainting, outpainting and variations of test images.

Writes three small PNG panels to samples/ (``--out docs/images`` regenerates the README's figures).
Usage: python examples/edit.py [--out samples]
"""
import argparse
from pathlib import Path

import torch

from var import VARPipeline, box_mask
from var.data import fashion_mnist_dataset
from var.images import grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="samples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pipe = VARPipeline.from_pretrained("fashion-mnist")
    test = fashion_mnist_dataset(split="test")
    picks = [0, 1, 2, 3, 4, 8]                                   # a few test images of different classes
    images, labels = test.batch(picks)
    S, n = pipe.image_size, len(picks)
    scale = 3

    # Inpainting: regenerate the centre, class-conditionally (each image's own class).
    hole = box_mask(S, S, 0.25, 0.25, 0.75, 0.75)                # the box of the README and the web demo
    inpainted = pipe.inpaint(images, hole, class_labels=labels, seed=args.seed).images
    shown = images * (1 - 0.6 * hole)                            # the hole darkened in the input row
    grid(torch.cat([images, shown, inpainted]), nrow=n, scale=scale,
         row_labels=["input", "mask", "inpainted"]).save(out / "inpaint.png")

    # Outpainting: keep the centre, generate everything around it.
    keep = box_mask(S, S, 0.25, 0.25, 0.75, 0.75)
    outpainted = pipe.inpaint(images, 1 - keep, class_labels=labels, seed=args.seed).images
    grid(torch.cat([images, images * keep, outpainted]), nrow=n, scale=scale,
         row_labels=["input", "kept", "outpainted"]).save(out / "outpaint.png")

    # Variations: keep the first scales (the layout), regenerate the finer ones.
    rows = [images] + [pipe.vary(images, keep_scales=k, class_labels=labels, seed=args.seed).images for k in (2, 3, 4)]
    grid(torch.cat(rows), nrow=n, scale=scale,
         row_labels=["input", "keep 2 scales", "keep 3 scales", "keep 4 scales"]).save(out / "vary.png")
    print(f"wrote {out}/inpaint.png, outpaint.png, vary.png")


if __name__ == "__main__":
    main()
