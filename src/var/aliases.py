"""The constructor keywords of the educational VAR README, mapped onto ours.

Readers of that README write ``VAR(vocab_size=512, d_model=256, n_layers=6, n_heads=8, max_scale=8)`` and
``VQVAE(num_embeddings=512)``. Each function here turns such keywords into ``VARConfig`` / ``VQVAEConfig``
keywords, so both spellings build the same model. Giving a keyword under both names is an error.

The educational models of :mod:`var.quickstart` take these keywords; the plain models take ours only.
"""
from __future__ import annotations

from typing import Any, Mapping

from .recipes import QUICKSTART_VQVAE
from .schedule import patch_nums_from_max_scale

# request keyword -> our keyword
VAR_ALIASES = {"d_model": "embed_dim", "n_layers": "depth", "n_heads": "num_heads", "d_ff": "mlp_ratio",
               "max_scale": "patch_nums"}
VQVAE_ALIASES = {"num_embeddings": "vocab_size", "embedding_dim": "z_channels", "max_scale": "patch_nums"}


def _rename(given: Mapping[str, Any], aliases: Mapping[str, str]) -> dict[str, Any]:
    """``given`` with each alias replaced by our name; an alias given together with our name is an error."""
    for alias, name in aliases.items():
        if alias in given and name in given:
            raise TypeError(f"{alias}= is another name for {name}=: give one of them, not both "
                            f"(got {alias}={given[alias]!r} and {name}={given[name]!r})")
    return {aliases.get(k, k): v for k, v in given.items()}


def _max_scale_to_patch_nums(kw: dict[str, Any], given: Mapping[str, Any]) -> None:
    """max_scale=N (already renamed to patch_nums) becomes the schedule (1, ..., N); max_scale=(H, W) the
    non-square one ending at (H, W) (:func:`var.schedule.patch_nums_from_max_scale`)."""
    if "max_scale" in given:
        kw["patch_nums"] = patch_nums_from_max_scale(given["max_scale"])


def _mlp_ratio_from_d_ff(kw: dict[str, Any]) -> None:
    """d_ff (already renamed to mlp_ratio) becomes mlp_ratio = d_ff / width; the FFN's hidden size is
    round(width * mlp_ratio), which must give d_ff back."""
    d_ff, width = kw["mlp_ratio"], kw.get("embed_dim")
    if width is None:
        raise TypeError(f"d_ff={d_ff!r} needs d_model= (or embed_dim=) in the same call: "
                        f"it is converted to mlp_ratio = d_ff / d_model")
    if not isinstance(d_ff, int) or d_ff < 1 or round(width * (d_ff / width)) != d_ff:
        raise ValueError(f"d_ff must be a positive integer hidden size, got {d_ff!r} (with d_model={width!r})")
    kw["mlp_ratio"] = d_ff / width


def var_config_kwargs(given: Mapping[str, Any]) -> dict[str, Any]:
    """VARConfig keywords for ``VAR(**given)``: d_model -> embed_dim, n_layers -> depth, n_heads -> num_heads,
    d_ff -> mlp_ratio = d_ff / d_model, max_scale=N -> patch_nums (1, ..., N)."""
    kw = _rename(given, VAR_ALIASES)
    if "d_ff" in given:
        _mlp_ratio_from_d_ff(kw)
    _max_scale_to_patch_nums(kw, given)
    return kw


def vqvae_config_kwargs(given: Mapping[str, Any]) -> dict[str, Any]:
    """VQVAEConfig keywords for ``VQVAE(**given)``: num_embeddings -> vocab_size, embedding_dim -> z_channels,
    max_scale=N -> patch_nums (1, ..., N).

    A call using any of these names describes the README's small tokenizer, so what it leaves out comes from
    :data:`QUICKSTART_VQVAE`; a call with our names only starts from VQVAEConfig's defaults (the released
    ImageNet tokenizer), as before."""
    kw = _rename(given, VQVAE_ALIASES)
    _max_scale_to_patch_nums(kw, given)
    if any(alias in given for alias in VQVAE_ALIASES):
        kw = {**QUICKSTART_VQVAE, **kw}
    return kw
