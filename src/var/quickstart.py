"""The educational VAR README's models: ``VAR`` and ``VQVAE`` with its keywords, ``VAR.generate`` and
``VQVAE.decode_from_indices``. They extend the plain models of :mod:`var.transformer` and :mod:`var.vqvae`
(same weights, same state_dict) and are what ``from var import VAR, VQVAE`` gives.

That README's tokens are one (B, L) sequence, every scale's map concatenated coarse to fine. Its transformer
generates without the tokenizer; ours, like the released one, builds each next scale's input from the
tokenizer's codebook and phi convolutions, so :meth:`VAR.generate` needs the VQVAE: passed as ``vqvae=``,
or the one a ``VARPipeline`` or ``VARTrainer`` paired the transformer with (:meth:`VAR.pair_tokenizer`).
Sampling itself is :func:`var.sampling.generate`.

Shape letters: B batch, L all tokens, p the last scale's side, K scales.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch

from . import transformer, vqvae as tokenizer
from .aliases import var_config_kwargs, vqvae_config_kwargs
from .quantizer import MultiScaleQuantizer
from .sampling import check_batch_size, class_ids, generate, make_generator
from .transformer import VARConfig
from .vqvae import VQVAEConfig

NO_TOKENIZER = ("VAR.generate needs the tokenizer (the VQVAE) this transformer works with: each scale's input is "
                "built from its codebook. Pass it: var.generate(..., vqvae=vqvae). A VARPipeline or VARTrainer "
                "made of the two pairs them, and then it is found without vqvae=.")


class TokenizerLink:
    """A weak reference to the tokenizer a transformer was paired with. Not a module, so it is not in the
    transformer's state_dict; weak, so it keeps no tokenizer alive. Deep copies (a trainer's EMA model)
    share it; pickles drop it, since a saved transformer does not carry its tokenizer."""

    def __init__(self, vqvae: tokenizer.VQVAE | None = None):
        self._ref = None if vqvae is None else weakref.ref(vqvae)

    def get(self) -> tokenizer.VQVAE | None:
        """The tokenizer, or None when none was paired or it no longer exists."""
        return None if self._ref is None else self._ref()

    def __deepcopy__(self, memo: dict) -> "TokenizerLink":
        return self  # immutable: a copied transformer keeps the same tokenizer

    def __reduce__(self):
        return TokenizerLink, ()


def check_pair(var: transformer.VAR, vqvae: tokenizer.VQVAE) -> None:
    """Raise when ``vqvae`` cannot serve ``var``: another vocabulary, latent width or scale schedule."""
    have = (vqvae.config.vocab_size, vqvae.config.z_channels, tuple(vqvae.patch_nums))
    want = (var.config.vocab_size, var.config.latent_channels, tuple(var.patch_nums))
    if have != want:
        raise ValueError(f"the tokenizer (vocabulary, latent channels, scales) {have} does not fit the "
                         f"transformer's {want}")


def _tokenizer(var: "VAR", vqvae: tokenizer.VQVAE | None) -> tokenizer.VQVAE:
    """``vqvae`` if given, else the paired one; without either, the error that shows the fix."""
    vqvae = vqvae if vqvae is not None else var.paired_tokenizer
    if vqvae is None:
        raise ValueError(NO_TOKENIZER)
    check_pair(var, vqvae)
    return vqvae


def _device(var: transformer.VAR, vqvae: tokenizer.VQVAE, device: str | torch.device | None) -> torch.device:
    """The device both models are on; ``device``, when given, must be it (nothing is moved)."""
    have = var.head.weight.device
    tokenizer_device = vqvae.quantize.embedding.weight.device
    if tokenizer_device != have:
        raise ValueError(f"the transformer is on {have} but the tokenizer on {tokenizer_device}: move both")
    if device is not None:
        want = torch.device(device)
        if want.type != have.type or want.index not in (None, have.index):
            raise ValueError(f"device={want} but the models are on {have}: move them first "
                             f"(var.to({str(want)!r}); vqvae.to({str(want)!r}))")
    return have


def _labels(var: transformer.VAR, class_labels, batch_size: int, generator: torch.Generator,
            device: torch.device) -> torch.Tensor:
    """``class_labels`` as a (batch_size,) tensor; None draws classes uniformly with the call's generator."""
    check_batch_size(batch_size)
    if class_labels is None:
        return torch.randint(0, var.num_classes, (batch_size,), generator=generator, device=device)
    labels = class_ids(class_labels, var.num_classes, allow_null=True).to(device)
    if labels.numel() != batch_size:
        raise ValueError(f"{labels.numel()} class labels for batch_size={batch_size}: give one per sample")
    return labels


def generate_sequence(var: "VAR", batch_size: int, *, temperature: float, top_k: int, top_p: float,
                      device: str | torch.device | None, class_labels, cfg: float, seed: int | None,
                      vqvae: tokenizer.VQVAE | None) -> torch.Tensor:
    """What :meth:`VAR.generate` does: every scale's tokens, concatenated coarse to fine, (B, L)."""
    vqvae = _tokenizer(var, vqvae)
    on = _device(var, vqvae, device)
    generator = make_generator(seed, on)
    labels = _labels(var, class_labels, batch_size, generator, on)
    was_training = var.training
    var.eval()  # generation is inference, whatever mode training left the model in
    try:
        _, tokens = generate(var, vqvae, labels, cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature,
                             generator=generator)
    finally:
        var.train(was_training)
    return torch.cat(tokens, dim=1)


def _last_scale_latent(quant: MultiScaleQuantizer, tokens_Bhw: torch.Tensor) -> torch.Tensor:
    """The latent the last scale's map (B, h, w) adds on its own: the finest residual."""
    (h, w), V = quant.latent_hw, quant.vocab_size
    if tokens_Bhw.shape[1:] != (h, w):
        raise ValueError(f"a single token map must be the last scale's, (B, {h}, {w}), got {tuple(tokens_Bhw.shape)}")
    if tokens_Bhw.numel() and (int(tokens_Bhw.min()) < 0 or int(tokens_Bhw.max()) >= V):
        raise ValueError(f"token ids must be in [0, {V}), got [{int(tokens_Bhw.min())}, {int(tokens_Bhw.max())}]")
    code_BChw = quant.embedding(tokens_Bhw).permute(0, 3, 1, 2)
    return quant.code_map_to_residual(quant.num_scales - 1, code_BChw)


def tokens_to_latent(vqvae: tokenizer.VQVAE, tokens: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The latent f_hat (B, Cvae, H, W) of what :meth:`VQVAE.decode_from_indices` takes: a (B, L) sequence,
    the K maps (each (B, h_k * w_k) or (B, h_k, w_k)), or the last scale's (B, h, w) map alone."""
    quant = vqvae.quantize
    on = quant.embedding.weight.device
    if not isinstance(tokens, torch.Tensor):
        return quant.indices_to_latent([t.to(on).long().flatten(1) for t in tokens])
    tokens = tokens.to(on).long()
    if tokens.ndim == 3:
        return _last_scale_latent(quant, tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (B, L), a list of per-scale maps, or the last scale's (B, h, w) map; "
                         f"got shape {tuple(tokens.shape)}")
    return quant.indices_to_latent(quant.split_sequence(tokens))


def pair(var: transformer.VAR, vqvae: tokenizer.VQVAE) -> None:
    """Check that ``vqvae`` serves ``var`` (ValueError otherwise) and, for this module's :class:`VAR`, pair
    them so that ``var.generate(...)`` finds its tokenizer (what VARPipeline and VARTrainer do)."""
    check_pair(var, vqvae)
    if isinstance(var, VAR):
        var.pair_tokenizer(vqvae)


class VAR(transformer.VAR):
    """The transformer, also built from the educational README's keywords (``VAR(vocab_size=512,
    d_model=256, n_layers=6, n_heads=8, max_scale=8)``, see :mod:`var.aliases`), with its ``generate``."""

    _tokenizer_link: TokenizerLink | None = None

    def __init__(self, cfg: VARConfig | None = None, **overrides):
        super().__init__(cfg, **var_config_kwargs(overrides))

    def pair_tokenizer(self, vqvae: tokenizer.VQVAE) -> None:
        """Remember ``vqvae`` as the tokenizer :meth:`generate` uses when it is given none (VARPipeline and
        VARTrainer call this). Held weakly and outside the module tree: not in state_dict, not saved."""
        check_pair(self, vqvae)
        self._tokenizer_link = TokenizerLink(vqvae)

    @property
    def paired_tokenizer(self) -> tokenizer.VQVAE | None:
        """The tokenizer of the last :meth:`pair_tokenizer`, while it exists."""
        return None if self._tokenizer_link is None else self._tokenizer_link.get()

    def generate(self, batch_size: int = 1, temperature: float = 1.0, top_k: int = 900, top_p: float = 0.96,
                 device: str | torch.device | None = None, class_labels=None, cfg: float = 1.5,
                 seed: int | None = None, vqvae: tokenizer.VQVAE | None = None) -> torch.Tensor:
        """Generate ``batch_size`` samples; returns every scale's token map concatenated coarse to fine,
        (B, L) int64, so ``tokens[:, -h * w:]`` is the last (h x w) scale. Decode with
        ``vqvae.decode_from_indices(tokens)``.

        Each scale's input is built from the tokenizer, so one is needed: ``vqvae=``, or the one a
        VARPipeline or VARTrainer paired this model with. ``class_labels=None`` draws the classes uniformly
        (with ``seed``); ``[self.num_classes] * batch_size`` is the null class (unconditional). ``cfg`` is the
        classifier-free guidance strength (0: none); ``top_k`` / ``top_p`` 0 disable the filters; the
        defaults are the reference's. ``device`` must be where both models already are (nothing is
        moved). The model is put in eval mode for the call and returned to its mode after.
        """
        return generate_sequence(self, batch_size, temperature=temperature, top_k=top_k, top_p=top_p,
                                 device=device, class_labels=class_labels, cfg=cfg, seed=seed, vqvae=vqvae)


class VQVAE(tokenizer.VQVAE):
    """The tokenizer, also built from the educational README's keywords (``VQVAE(num_embeddings=512)``
    starts from :data:`var.aliases.QUICKSTART_VQVAE`), with its ``decode_from_indices``."""

    def __init__(self, cfg: VQVAEConfig | None = None, **overrides):
        super().__init__(cfg, **vqvae_config_kwargs(overrides))

    @torch.no_grad()
    def decode_from_indices(self, tokens: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Tokens to images (B, in_channels, H, W) in [0, 1].

        ``tokens`` is the (B, L) sequence :meth:`VAR.generate` returns, the list of K per-scale maps (each
        (B, h_k * w_k) or (B, h_k, w_k)), or the last scale's (B, h, w) map alone. A last-scale map alone
        is decoded as what it is, the finest residual: the detail the coarser scales left over, not the
        image. Pass the whole sequence for the image.
        """
        return (self.decode_latent(tokens_to_latent(self, tokens)) + 1) / 2
