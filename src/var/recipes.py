"""The configurations of the bundled Fashion-MNIST model (tokenizer and transformer)."""
from __future__ import annotations

from .transformer import VARConfig
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
