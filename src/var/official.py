"""Reading the released checkpoints: configurations inferred from the state dicts themselves.

A user passes only the two files (``vae_ch160v4096z32.pth``, ``var_d16.pth`` ... ``var_d36.pth``); depth,
width, vocabulary, shared AdaLN, phi sharing and the scale schedule (from the ``lvl_1L`` buffer) are all
read off the tensors. Files are opened with ``weights_only=True`` or safetensors: loading never runs code.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import re
from collections import Counter
from typing import Mapping, Union

import torch

from .transformer import VAR, VARConfig
from .vqvae import VQVAE, VQVAEConfig

log = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]
PathOrStateDict = Union[str, os.PathLike, StateDict]


def load_state_dict(src: PathOrStateDict) -> dict[str, torch.Tensor]:
    """A state dict from a path (.pth/.pt via ``weights_only=True``, or .safetensors) or a mapping."""
    if isinstance(src, Mapping):
        return dict(src)
    path = os.fspath(src)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    obj = _read_torch_file(path)
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "ema"):  # common wrappers around a plain state dict
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return dict(obj)


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or corrupt file is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is truncated or corrupt, not a readable safetensors file ({e})") from e


def _read_torch_file(path: str):
    """``torch.load`` with ``weights_only=True``. A file that is not a PyTorch checkpoint (or is cut short)
    and a pickle that would run code both become a ValueError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} is refused: it holds Python objects other than tensors, which loading would "
                         "have to run as code (a plain PyTorch checkpoint / state dict was expected)") from e
    except Exception as e:  # noqa: BLE001 - the unpickler fails on garbage with any exception (KeyError, IndexError...)
        raise ValueError(f"{path} is not a PyTorch checkpoint / state dict, or is truncated "
                         f"({type(e).__name__}: {e})") from e


def _need(sd: StateDict, key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"not a {what} checkpoint: key {key!r} is missing")
    return sd[key]


def _indices(sd: StateDict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def patch_nums_from_lvl(lvl_1L: torch.Tensor) -> tuple[int, ...]:
    """The scale schedule from the per-token scale index buffer: p_k = sqrt(#tokens of scale k)."""
    counts = Counter(lvl_1L.flatten().tolist())
    patch_nums = []
    for k in range(len(counts)):
        p = math.isqrt(counts.get(k, 0))
        if p * p != counts.get(k, 0) or p == 0:
            raise ValueError(f"lvl_1L has {counts.get(k, 0)} tokens at scale {k}: not a square token map")
        patch_nums.append(p)
    return tuple(patch_nums)


def vqvae_config_from_state_dict(sd: StateDict, patch_nums: tuple[int, ...]) -> VQVAEConfig:
    """The tokenizer configuration a (released) state dict implies: widths, levels and codebook from its shapes."""
    w_in = _need(sd, "encoder.conv_in.weight", "VQ-VAE")
    ch, in_channels = w_in.shape[0], w_in.shape[1]
    levels = _indices(sd, r"encoder\.down\.(\d+)\.")
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    num_res_blocks = len(_indices(sd, r"encoder\.down\.0\.block\.(\d+)\."))
    vocab_size, z_channels = _need(sd, "quantize.embedding.weight", "VQ-VAE").shape
    if "quantize.quant_resi.qresi.weight" in sd:
        share = 1
    elif any(k.startswith("quantize.quant_resi.qresi_ls.") for k in sd):
        share = len(_indices(sd, r"quantize\.quant_resi\.qresi_ls\.(\d+)\."))
    else:
        share = 0
    if "quantize.ema_vocab_hit_SV" in sd and sd["quantize.ema_vocab_hit_SV"].shape[0] != len(patch_nums):
        raise ValueError(f"the VQ-VAE was trained with {sd['quantize.ema_vocab_hit_SV'].shape[0]} scales, "
                         f"the transformer uses {len(patch_nums)}: {patch_nums}")
    return VQVAEConfig(
        in_channels=in_channels, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=z_channels,
        vocab_size=vocab_size, patch_nums=patch_nums, share_quant_resi=share,
        using_sa=f"encoder.down.{levels[-1]}.attn.0.qkv.weight" in sd,
        using_mid_sa="encoder.mid.attn_1.qkv.weight" in sd,
        norm_groups=min(32, ch),
    )


def var_config_from_state_dict(sd: StateDict, num_heads: int | None = None) -> VARConfig:
    """Every size of the transformer from its tensors. Heads are read from ``scale_mul_1H11`` when the
    model normalizes q/k; otherwise they are not stored, and the released rule (head size 64, i.e.
    heads = depth for width 64 * depth) applies unless ``num_heads`` is given."""
    C, Cvae = _need(sd, "word_embed.weight", "VAR transformer").shape
    depth = len(_indices(sd, r"blocks\.(\d+)\."))
    vocab_size = _need(sd, "head.weight", "VAR transformer").shape[0]
    num_classes = _need(sd, "class_emb.weight", "VAR transformer").shape[0] - 1
    patch_nums = patch_nums_from_lvl(_need(sd, "lvl_1L", "VAR transformer"))
    attn_l2_norm = "blocks.0.attn.scale_mul_1H11" in sd
    if num_heads is None:
        if attn_l2_norm:
            num_heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1]
        elif C % 64 == 0:
            num_heads = C // 64
            if C != 64 * depth:  # outside the released family (width = 64 * depth) the rule is a guess
                log.warning("head count is not stored for a model without L2-normalized attention: assuming head "
                            "size 64, %d heads for width %d and depth %d (pass num_heads, --num-heads, to override)",
                            num_heads, C, depth)
        else:
            num_heads = depth
            log.warning("head count is not stored for a model without L2-normalized attention and width %d is "
                        "not a multiple of 64: assuming heads = depth = %d (pass num_heads to override)", C, depth)
    return VARConfig(
        vocab_size=vocab_size, latent_channels=Cvae, num_classes=num_classes, depth=depth, embed_dim=C,
        num_heads=num_heads, mlp_ratio=sd["blocks.0.ffn.fc1.weight"].shape[0] / C, patch_nums=patch_nums,
        shared_aln="shared_ada_lin.1.weight" in sd, attn_l2_norm=attn_l2_norm,
    )


def load_strict(module: torch.nn.Module, sd: StateDict, context: str) -> None:
    """Load ``sd`` into ``module`` (built on the meta device), or raise a ValueError that starts with
    ``context`` and names the missing, unexpected and wrongly shaped keys with both shapes."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs expected {tuple(v.shape)}"
             for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    problems = [f"{what} {keys[:5]}" for what, keys in
                (("wrong shapes", wrong), ("missing keys", missing), ("unexpected keys", unexpected)) if keys]
    if problems:
        raise ValueError(f"{context}: {'; '.join(problems)}")
    # The module was built on the meta device: take the file's tensors as they are (no copy).
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
                           strict=True, assign=True)


def load_official(vae: PathOrStateDict, var: PathOrStateDict, num_heads: int | None = None) -> tuple[VQVAE, VAR]:
    """Build and load the released tokenizer and transformer (CPU, float32, eval mode)."""
    vae_sd, var_sd = load_state_dict(vae), load_state_dict(var)
    if "encoder.conv_in.weight" not in vae_sd and "word_embed.weight" in vae_sd:
        raise ValueError("the first file is a VAR transformer checkpoint: pass the VQ-VAE first, then the VAR")
    var_cfg = var_config_from_state_dict(var_sd, num_heads)
    vae_cfg = vqvae_config_from_state_dict(vae_sd, var_cfg.patch_nums)
    if (vae_cfg.vocab_size, vae_cfg.z_channels) != (var_cfg.vocab_size, var_cfg.latent_channels):
        raise ValueError(f"tokenizer (vocab {vae_cfg.vocab_size}, {vae_cfg.z_channels} channels) and transformer "
                         f"(vocab {var_cfg.vocab_size}, {var_cfg.latent_channels} channels) do not belong together")
    with torch.device("meta"):  # no random init of weights that are about to be replaced
        vqvae, model = VQVAE(vae_cfg), VAR(var_cfg)
    load_strict(vqvae, vae_sd, "VQ-VAE checkpoint does not match the architecture read from it")
    load_strict(model, var_sd, "VAR checkpoint does not match the architecture read from it")
    return vqvae.eval(), model.eval()
