"""Named configurations in one place: the bundled Fashion-MNIST model's, the training recipes of ``var train-vae``
and ``var train`` presets, the reference's settings by depth, and the educational README's default tokenizer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schedule import patch_nums_from_max_scale
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


# Schedules that depend on --preset. The fashion-mnist preset's are the bundled model's recipe
# (docs/model-card.md); the other presets keep the generic ones. Options left unset take these.
# The tokenizer's recipe (GAN loss, EMA weights) was chosen by the experiments of docs/tokenizer-recipe.md.
# The quick preset's (the default for data other than Fashion-MNIST) is for folders of tens to a few thousand
# images on a laptop CPU: a small tokenizer, no GAN, a short EMA; --minutes sets its length (docs/training.md).
VAE_RECIPES = {"fashion-mnist": dict(steps=8000, batch_size=64, lr=3e-4, warmup=100, save_every=250, sample_every=500,
                                     adv_weight=0.5, ema=0.999, reinit_every=200, schedule="cos", min_lr_ratio=0.1),
               "custom": dict(steps=8000, batch_size=64, lr=2e-4, warmup=200, save_every=500, sample_every=1000,
                              adv_weight=0.5, ema=0.999, reinit_every=200, schedule="cos", min_lr_ratio=0.1),
               "quick": dict(steps=4000, batch_size=16, lr=5e-4, warmup=50, save_every=500, sample_every=1000,
                             adv_weight=0.0, ema=0.99, reinit_every=200, schedule="cos", min_lr_ratio=0.1)}
# The model options of `var train-vae --preset custom` left unset take these; the fashion-mnist preset's
# tokenizer accepts the ones that keep its 28x28 geometry as overrides (the ablations of tokenizer-recipe.md).
CUSTOM_VAE_MODEL = dict(image_size=32, channels=3, ch=64, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16,
                        vocab_size=4096)
# The quick preset's tokenizer: the model options left unset take these; its channels are the data's (1 for
# greyscale images, else 3), and at 32 px its schedule QUICK_PATCH_NUMS: 130 tokens instead of 1..8's 204.
QUICK_VAE_MODEL = dict(CUSTOM_VAE_MODEL, ch=32, vocab_size=512)
QUICK_PATCH_NUMS = {32: (1, 2, 3, 4, 6, 8), 16: (1, 2, 3, 4)}
PRESET_VAE_OVERRIDES = ("ch", "num_res_blocks", "z_channels", "vocab_size")
# `var train-vae --finetune-decoder`: the schedule that replaces the preset's when only the decoder of an already
# trained tokenizer is trained (GAN from the first step: the reconstructions have long taken shape).
DECODER_FINETUNE = dict(steps=1500, batch_size=64, lr=1e-4, warmup=50, save_every=250, sample_every=500, adv_weight=0.5, ema=0.999,
                        reinit_every=0, disc_start=0, schedule="cos", min_lr_ratio=0.1)
# The small, medium and large presets take the reference's recipe where it does not depend on ImageNet's scale:
# its lin0 schedule with a warm-up of 2% of the run (its --wp, epochs / 50) and, by depth
# (var.recipes.reference_recipe), its AdaLN gate scale, final learning-rate fraction (--wpe) and final weight
# decay (--twde); None below marks these, resolved by var.cmd.train. Their length, peak learning rate
# and batch are ours: the reference's are for 768-1024 images x 200-350 ImageNet epochs. The fashion-mnist preset
# keeps the schedule the bundled model was trained with (docs/training-defaults.md).
REFERENCE_PRESETS = ("small", "medium", "large")
REFERENCE_WARMUP_SHARE = 0.02
_REFERENCE_VAR = dict(steps=6000, batch_size=64, lr=4e-4, warmup=None, save_every=500, sample_every=1000, ema=0, schedule="lin0",
                      min_lr_ratio=None)
VAR_RECIPES = {"fashion-mnist": dict(steps=2500, batch_size=64, lr=5e-4, warmup=150, save_every=250,
                                     sample_every=500, ema=0.998, schedule="cos", min_lr_ratio=0.1),
               **{name: _REFERENCE_VAR for name in REFERENCE_PRESETS},
               "quick": dict(steps=6000, batch_size=16, lr=1e-3, warmup=100, save_every=500, sample_every=1000,
                             ema=0.995, schedule="cos", min_lr_ratio=0.1)}
# The quick preset's transformer (its vocabulary and scales are its tokenizer's).
QUICK_VAR = dict(depth=6, embed_dim=192, num_heads=6)


# The tokenizer ``VQVAE(num_embeddings=512)`` builds: small enough to run in seconds on a CPU, and fitting
# ``VAR(vocab_size=512, ..., max_scale=8)``: 512 codes of width 32 (VARConfig's default latent_channels),
# scales 1..8, 4x down-sampling, so 32x32 RGB images and an 8x8 last scale.
QUICKSTART_VQVAE: dict[str, Any] = dict(in_channels=3, ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, z_channels=32,
                                        vocab_size=512, patch_nums=patch_nums_from_max_scale(8))


# The transformer sizes of the original request (the educational README), by name; max_scale is the last
# scale's side (scales 1 ... max_scale).
PRESETS = {
    "small": dict(vocab_size=512, embed_dim=256, depth=6, num_heads=8, mlp_ratio=4.0, max_scale=8),
    "medium": dict(vocab_size=4096, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4.0, max_scale=16),
    "large": dict(vocab_size=4096, embed_dim=768, depth=24, num_heads=12, mlp_ratio=4.0, max_scale=16),
}


def preset_config(name: str, **overrides) -> VARConfig:
    """The transformer configuration of a named preset (:data:`PRESETS`), with ``overrides`` applied;
    ValueError names an unknown preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    kw = {**PRESETS[name], **overrides}
    max_scale = kw.pop("max_scale")
    kw.setdefault("patch_nums", patch_nums_from_max_scale(max_scale))
    return VARConfig(**kw)


# Model shapes by name, for benchmarks: the released depths, the bundled model's geometry and the presets.
RELEASED_DEPTHS = (16, 20, 24, 30, 36)
CONFIGS = [f"d{d}" for d in RELEASED_DEPTHS] + ["fashion-mnist"] + sorted(PRESETS)


def model_configs(name: str) -> tuple[VQVAEConfig, VARConfig]:
    """Tokenizer and transformer configs of a named shape: a released depth (``d16`` ...), the bundled
    Fashion-MNIST geometry, or a transformer preset (``small``, ``medium``, ``large``)."""
    if name == "fashion-mnist":
        vae, var, _ = fashion_mnist_configs()
        return vae, var
    if name in PRESETS:
        var = preset_config(name)
        return VQVAEConfig(vocab_size=var.vocab_size, z_channels=var.latent_channels, patch_nums=var.patch_nums), var
    if name.startswith("d") and name[1:].isdigit() and int(name[1:]) in RELEASED_DEPTHS:
        depth = int(name[1:])
        return VQVAEConfig(), VARConfig(depth=depth, embed_dim=64 * depth, num_heads=depth)
    raise ValueError(f"unknown config {name!r}; choose one of {CONFIGS}")
