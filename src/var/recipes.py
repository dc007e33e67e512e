"""Training recipes: the bundled Fashion-MNIST model's configurations, and the reference's settings by depth."""
from __future__ import annotations

from dataclasses import dataclass

from .transformer import ADALN_GAMMA_BY_DEPTH as ALNG, VARConfig
from .vqvae import VQVAEConfig

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# 28x28 images, 4x down-sampling: the finest token map is 7x7.
FASHION_MNIST_PATCH_NUMS = (1, 2, 3, 4, 5, 7)


def fashion_mnist_configs() -> tuple[VQVAEConfig, VARConfig, list[str]]:
    """The bundled model's tokenizer and transformer configurations, and its class names."""
    vae = VQVAEConfig(in_channels=1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16, vocab_size=4096,
                      patch_nums=FASHION_MNIST_PATCH_NUMS, share_quant_resi=4, using_sa=False, using_mid_sa=True)
    var = VARConfig(vocab_size=4096, latent_channels=16, num_classes=10, depth=8, embed_dim=224, num_heads=7,
                    patch_nums=FASHION_MNIST_PATCH_NUMS)
    return vae, var, list(FASHION_MNIST_CLASSES)


@dataclass(frozen=True)
class DepthRecipe:
    """The settings the reference's training commands (its README) give a transformer of one depth.
    ``final_weight_decay`` None: the weight decay stays where it starts."""
    adaln_gamma: float          # --alng: initial scale of the AdaLN gates
    final_lr_ratio: float       # --wpe: the learning rate ends at peak x this
    final_weight_decay: float | None  # --twde


# The reference's README commands for its ImageNet models: d16 and d20 (--alng 1e-3 --wpe 0.1), d24 (--alng 1e-4
# --wpe 0.01), d30 (--alng 1e-5 --wpe 0.01 --twde 0.08), d36 at 512 px (--alng 5e-6 --wpe 0.01 --twde 0.08).
REFERENCE_BY_DEPTH = {16: DepthRecipe(ALNG[16], 0.1, None), 20: DepthRecipe(ALNG[20], 0.1, None),
                      24: DepthRecipe(ALNG[24], 0.01, None), 30: DepthRecipe(ALNG[30], 0.01, 0.08),
                      36: DepthRecipe(ALNG[36], 0.01, 0.08)}


def reference_recipe(depth: int) -> DepthRecipe:
    """The reference's settings for ``depth``: those of the deepest listed depth at or below it (16, 20, 24, 30,
    36), so depths 21-23 take d20's and 37 and deeper d36's; depths below 16 take d16's. ValueError for a
    depth below 1."""
    if not (isinstance(depth, int) and depth >= 1):
        raise ValueError(f"depth={depth!r}: expected an integer >= 1")
    listed = [d for d in sorted(REFERENCE_BY_DEPTH) if d <= depth]
    return REFERENCE_BY_DEPTH[listed[-1] if listed else min(REFERENCE_BY_DEPTH)]
