"""Score a tokenizer (a `var train-vae` run folder or a saved pipeline) on the Fashion-MNIST test split.

Prints the PSNR of the reconstructions of 100 test images per class, their Frechet distance to all 10,000
test images in the features of `var eval`'s classifier (the figures `var eval` reports for a pipeline),
and how many codes each scale uses over the test split. Usage: python examples/score_tokenizer.py RUN
"""
import argparse
import json

import torch

from var.data import fashion_mnist_dataset
from var.evaluation import balanced_indices, classify, dataset_images, load_classifier
from var.metrics import frechet_distance, psnr
from var.checkpoints import load_vqvae


@torch.no_grad()
def reconstruct(vqvae, images01: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, list[set]]:
    """Reconstructions in [0, 1] through the tokens, and the codes seen at each scale."""
    recs, used = [], [set() for _ in vqvae.patch_nums]
    for s in range(0, len(images01), batch):
        tokens = vqvae.img_to_indices(images01[s:s + batch] * 2 - 1)
        for k, idx in enumerate(tokens):
            used[k].update(idx.unique().tolist())
        recs.append(((vqvae.indices_to_img(tokens) + 1) / 2).clamp(0, 1))
    return torch.cat(recs), used


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a var train-vae run folder or a saved pipeline folder")
    args = ap.parse_args()
    vqvae, _ = load_vqvae(args.run)
    vqvae.eval()
    classifier, _ = load_classifier()
    test = fashion_mnist_dataset(split="test")
    test_images, _ = dataset_images(test)
    _, used = reconstruct(vqvae, test_images)
    originals, _ = dataset_images(test, balanced_indices(test.labels, 100, 10, 0))
    recs, _ = reconstruct(vqvae, originals)
    _, test_feats = classify(classifier, test_images)
    _, rec_feats = classify(classifier, recs)
    print(json.dumps({"run": args.run, "psnr": round(psnr(recs, originals), 2),
                      "frechet_reconstructions": round(frechet_distance(rec_feats, test_feats), 2),
                      "codes_used_per_scale": [len(u) for u in used]}))


if __name__ == "__main__":
    main()
