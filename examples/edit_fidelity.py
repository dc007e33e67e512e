"""How much of the image an edit keeps: PSNR of the kept pixels against the tokenizer's reconstruction.

The bundled model on 32 Fashion-MNIST test images (``make data`` installs them), null class, seed 0:
inpainting the README's box (0.25-0.75) and 24 seeded random boxes of 10-50% of the image, outpainting
around the same boxes, and class-conditional inpainting (own class: PSNR, and how often the judge
classifier sees the class asked for; another class: the same).
Usage: python examples/edit_fidelity.py [--images 32] [--boxes 24] [--seed 0]
"""
import argparse

import numpy as np
import torch

from var import VARPipeline, box_mask
from var.data import fashion_mnist_dataset
from var.editing import random_boxes
from var.evaluation import classify, load_classifier
from var.metrics import psnr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--boxes", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    pipe = VARPipeline.from_pretrained("fashion-mnist")
    classifier, _ = load_classifier()
    images, labels = fashion_mnist_dataset(split="test").batch(np.arange(100, 100 + args.images))
    other = (labels + 1 + torch.arange(len(labels)) % 9) % 10  # a class other than each image's own
    reconstruction = pipe.decode(pipe.encode(images))
    H, W = pipe.image_hw
    readme_box = (0.25, 0.25, 0.75, 0.75)
    boxes = random_boxes(args.boxes, seed=0)

    def kept_psnr(mask, class_labels=None):
        out = pipe.inpaint(images, mask, class_labels=class_labels, seed=args.seed).images
        return psnr(out, reconstruction, where=1 - mask), out

    for name, flip in (("inpaint", False), ("outpaint", True)):
        masks = [box_mask(H, W, *b) for b in [readme_box, *boxes]]
        masks = [1 - m for m in masks] if flip else masks
        scores = np.array([kept_psnr(m)[0] for m in masks])
        print(f"{name}, null class: README box {scores[0]:.1f} dB; {len(boxes)} random boxes median "
              f"{np.median(scores[1:]):.1f}, worst {scores[1:].min():.1f}, mean {scores[1:].mean():.1f} dB")
    hole = box_mask(H, W, *readme_box)
    for name, asked in (("own class", labels), ("another class", other)):
        score, out = kept_psnr(hole, asked)
        judged = classify(classifier, out)[0].argmax(1)
        print(f"inpaint the README box, {name}: kept {score:.1f} dB; judged as the class asked for "
              f"{(judged == asked).float().mean():.0%}")


if __name__ == "__main__":
    main()
