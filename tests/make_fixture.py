"""Write ``tests/data/ref_fixture.pt``: a tiny model of the released architecture with random weights, some
inputs, and what the reference implementation computes from them (the conformance tests compare ours).

It runs the reference's own code, imported from a checkout given on the command line, in this process
only (the reference changes torch classes globally when it builds models, so it never runs inside the
test suite). This project's code is not imported here. The file made for the repository:

    git clone https://github.com/FoundationVision/VAR /work/ref/VAR    # commit 78b95394fc5896192e3a003e4b295f8ea743c48f
    pip install --target /work/ref/pydeps huggingface_hub               # the reference imports it
    PYTHONPATH=/work/ref/pydeps python tests/make_fixture.py /work/ref/VAR tests/data/ref_fixture.pt

The layout is that of FORMAT.md's ``tiny_fixture.pt`` (config, both state dicts, images, labels, expected),
smaller so that the repository can carry it (under 3 MiB): the VQ-VAE's encoder and decoder have one
down-sampling level (8 px images) instead of the released four, still with a channel change (32 to 64), and
the transformer is 32 wide. Both are built from the
reference's own classes, so the keys follow the official layout.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import torch

SEED = 0
LABELS = [0, 3, 9]
CFG = 2.0
VAE = dict(vocab_size=64, z_channels=8, ch=32, share_quant_resi=4, v_patch_nums=[1, 2, 3, 4])
ENCODER = dict(ch_mult=(1, 2), num_res_blocks=1)   # 2x down-sampling: 4x4 latent for 8 px images
VAR = dict(num_classes=10, depth=2, embed_dim=32, num_heads=2, shared_aln=False, attn_l2_norm=True)


def build(ref: Path):
    """The reference's VQ-VAE (with smaller encoder/decoder of its own classes) and transformer."""
    sys.path.insert(0, str(ref))
    from models.basic_vae import Decoder, Encoder
    from models.var import VAR as RefVAR
    from models.vqvae import VQVAE as RefVQVAE

    vae = RefVQVAE(test_mode=True, **VAE)
    dd = dict(dropout=0.0, ch=VAE["ch"], z_channels=VAE["z_channels"], in_channels=3, using_sa=True,
              using_mid_sa=True, **ENCODER)
    vae.encoder, vae.decoder = Encoder(double_z=False, **dd), Decoder(**dd)
    var = RefVAR(vae_local=vae, patch_nums=tuple(VAE["v_patch_nums"]), cond_drop_rate=0.0,
                 flash_if_available=False, fused_if_available=False, **VAR)
    randomize(vae)
    randomize(var)
    return vae.eval(), var.eval()


@torch.no_grad()
def randomize(module: torch.nn.Module) -> None:
    """Random weights large enough that every layer matters: matrices ~ N(0, 1/fan_in), norm gains near 1,
    other vectors ~ N(0, 0.1). The attention's logit scale keeps its initial value."""
    for name, p in module.named_parameters():
        if "scale_mul" in name:
            continue
        if p.ndim >= 2:
            p.normal_(0, 1 / math.sqrt(p[0].numel()))
        elif "norm" in name and name.endswith("weight"):
            p.normal_(1, 0.1)
        else:
            p.normal_(0, 0.1)
    if hasattr(module, "quantize"):
        module.quantize.embedding.weight.normal_(0, 1)


def greedy(var, labels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The reference's generation with top-k 1; its sampling helper is wrapped to record every scale's tokens."""
    import models.var as ref_var

    tokens, sample = [], ref_var.sample_with_top_k_top_p_

    def recording(*args, **kwargs):
        idx = sample(*args, **kwargs)
        tokens.append(idx[:, :, 0].clone())
        return idx

    ref_var.sample_with_top_k_top_p_ = recording
    try:
        image = var.autoregressive_infer_cfg(B=len(labels), label_B=labels, g_seed=SEED, cfg=CFG, top_k=1, top_p=0.0)
    finally:
        ref_var.sample_with_top_k_top_p_ = sample
    return tokens, image


@torch.no_grad()
def make(ref: Path) -> dict:
    torch.manual_seed(SEED)
    vae, var = build(ref)
    size = VAE["v_patch_nums"][-1] * 2 ** (len(ENCODER["ch_mult"]) - 1)
    images = torch.rand(len(LABELS), 3, size, size) * 2 - 1
    labels = torch.tensor(LABELS)
    idx = vae.img_to_idxBl(images)
    tf = vae.quantize.idxBl_to_var_input(idx)
    tokens, image01 = greedy(var, labels)
    return {
        "config": {"vae": {**VAE, **ENCODER}, "var": VAR, "image_size": size, "cfg": CFG, "labels": LABELS,
                   "reference_commit": commit(ref)},
        "vae_state_dict": {k: v.clone() for k, v in vae.state_dict().items()},
        "var_state_dict": {k: v.clone() for k, v in var.state_dict().items()},
        "images": images, "labels": labels,
        "expected": {
            "idx_per_scale": idx,
            "reconstruction": vae.img_to_reconstructed_img(images, last_one=True),
            "decoded_from_idx": vae.idxBl_to_img(idx, same_shape=True, last_one=True),
            "teacher_forcing_input": tf,
            "logits": var(labels, tf),
            "greedy_tokens_per_scale": tokens,
            "greedy_image01": image01,
        },
    }


def commit(ref: Path) -> str:
    """The reference checkout's commit, recorded in the fixture."""
    return subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reference", type=Path, help="a checkout of github.com/FoundationVision/VAR")
    p.add_argument("out", type=Path, help="the fixture to write, e.g. tests/data/ref_fixture.pt")
    a = p.parse_args()
    torch.set_num_threads(1)
    fixture = make(a.reference)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB), reference {fixture['config']['reference_commit']}")


if __name__ == "__main__":
    main()
