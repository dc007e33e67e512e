"""The educational VAR README's quick start, on this package. The models are untrained, so the images are noise.

The one change to that quick start: our transformer builds each scale's input with the tokenizer, so
generate() is given it (``vqvae=vqvae``). Writes samples/generate_simple.png: top row, the last scale's
tokens decoded alone (the finest residual, as the quick start does); bottom row, the whole sequence decoded.
For a trained model see examples/generate.py or ``var sample``.
"""
from pathlib import Path

import torch

from var import VAR, VQVAE
from var.images import grid

device = torch.device("cpu")  # the models are built on the CPU; on a GPU, .to(device) both first

vqvae = VQVAE(num_embeddings=512)                                                # 32x32 RGB, 8x8 last scale
var = VAR(vocab_size=512, d_model=256, n_layers=6, n_heads=8, max_scale=8)

tokens = var.generate(batch_size=4, temperature=1.0, top_k=100, top_p=0.95, device=device, vqvae=vqvae)
final_scale_tokens = tokens[:, -64:].reshape(4, 8, 8)
images = vqvae.decode_from_indices(final_scale_tokens)

full_images = vqvae.decode_from_indices(tokens)
out = Path("samples") / "generate_simple.png"
out.parent.mkdir(exist_ok=True)
grid(torch.cat((images, full_images)), nrow=4, scale=4).save(out)
print(f"tokens {tuple(tokens.shape)}, images {tuple(images.shape)} in [0, 1]; wrote {out}")
