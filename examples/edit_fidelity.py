"""How much of the image an edit keeps: PSNR of the kept pixels against the tokenizer's reconstruction.

Runs the bundled model on the first Fashion-MNIST test images (``make data`` installs them) for a centred
inpainting hole and for outpainting around a centred box, over a few seeds, with default sampling.
Usage: python examples/edit_fidelity.py [--images 128] [--seeds 3]
"""
import argparse

import numpy as np

from var import VARPipeline, box_mask
from var.data import fashion_mnist_dataset
from var.editing import keep_masks_from_mask
from var.evaluation import psnr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()

    pipe = VARPipeline.from_pretrained("fashion-mnist")
    images, labels = fashion_mnist_dataset(split="test").batch(np.arange(args.images))
    S = pipe.image_size
    reconstruction = pipe.decode(pipe.encode(images))
    hole = box_mask(S, S, 0.3, 0.3, 0.7, 0.7)
    around = 1 - box_mask(S, S, 0.25, 0.25, 0.75, 0.75)
    cases = [("inpaint the centre, no label", hole, None),
             ("inpaint the centre, own class", hole, labels),
             ("outpaint around the centre, no label", around, None)]
    for name, mask, class_labels in cases:
        kept = [int(k[0].sum()) for k in keep_masks_from_mask(mask.bool()[None, None], pipe.patch_nums)]
        scores = [psnr(pipe.inpaint(images, mask, class_labels=class_labels, seed=seed).images, reconstruction,
                       where=1 - mask) for seed in range(args.seeds)]
        print(f"{name}: tokens kept per scale {kept}; kept-region PSNR {np.mean(scores):.1f} dB "
              f"(per seed {', '.join(f'{s:.2f}' for s in scores)})")


if __name__ == "__main__":
    main()
