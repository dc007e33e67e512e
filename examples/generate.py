"""Samples of every class and the coarse-to-fine progression, drawn with matplotlib.

Usage: python examples/generate.py [--model fashion-mnist] [--per-class 6] [--cfg 1.5] [--seed 0] [--out samples/generate.png]
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from var import VARPipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--cfg", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("samples/generate.png"))
    args = ap.parse_args()

    pipe = VARPipeline.from_pretrained(args.model)
    classes = list(range(pipe.num_classes))
    labels = torch.tensor(classes).repeat_interleave(args.per_class)
    out = pipe(class_labels=labels, cfg=args.cfg, seed=args.seed)
    names = pipe.class_names or [str(c) for c in classes]

    # The image after 1, 2, ..., K scales, for the first sample of each class.
    firsts = [c * args.per_class for c in classes]
    stages = pipe.decode_per_scale([t[firsts] for t in out.tokens])

    K = len(stages)
    fig, axes = plt.subplots(len(classes), args.per_class + 1 + K,
                             figsize=(0.9 * (args.per_class + 1 + K), 0.9 * len(classes)))
    for r, c in enumerate(classes):
        for j in range(args.per_class):
            axes[r, j].imshow(out.images[c * args.per_class + j].permute(1, 2, 0).squeeze(-1), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(names[c], rotation=0, ha="right", va="center", fontsize=7)
        for k in range(K):
            axes[r, args.per_class + 1 + k].imshow(stages[k][r].permute(1, 2, 0).squeeze(-1), cmap="gray", vmin=0, vmax=1)
            if r == 0:
                p = pipe.patch_nums[k]
                axes[r, args.per_class + 1 + k].set_title(f"{p}x{p}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
    axes[0, args.per_class // 2].set_title(f"samples (cfg {args.cfg})", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
