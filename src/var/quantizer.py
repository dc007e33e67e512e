"""Multi-scale residual vector quantizer (VAR paper, Algorithm 1).

One codebook serves every scale. Scale k quantizes an area-downsampled view of what the coarser scales
have not explained yet; its codes are upsampled (bicubic) back to the full latent size and refined by a
3x3 "phi" conv before being added to the running reconstruction ``f_hat``.

Shape letters: B batch, C latent channels (Cvae), H W full latent size, h w one scale's size,
V codebook size, K number of scales, N flattened positions. A scale is an (h, w) pair (see :mod:`var.schedule`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .schedule import Scale, compact_patch_nums, normalize_patch_nums

def nearest_row(z_NC: torch.Tensor, w_VC: torch.Tensor) -> torch.Tensor:
    """For each row of ``z_NC``, the index of the row of ``w_VC`` at the smallest squared L2 distance."""
    d_NV = (z_NC.square().sum(dim=1, keepdim=True) + w_VC.square().sum(dim=1)).addmm_(z_NC, w_VC.T, alpha=-2)
    return d_NV.argmin(dim=1)


class Phi(nn.Conv2d):
    """3x3 conv mixed with its input: ``(1 - r) * h + r * conv(h)``, r = ``resi_ratio``."""

    def __init__(self, channels: int, resi_ratio: float = 0.5):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw * (1 - self.resi_ratio) + super().forward(h_BChw) * self.resi_ratio


def phi_ticks(n: int) -> np.ndarray:
    """Positions in [0, 1] that the n phi convs stand for (released rule; n == 4 is spaced tighter)."""
    if n == 4:
        return np.linspace(1 / (3 * n), 1 - 1 / (3 * n), n)
    return np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)


class PhiBank(nn.Module):
    """The phi convs and the rule choosing one per scale.

    ``share = 1``: one conv for all scales (key ``qresi``); ``share >= 2``: ``share`` convs (keys
    ``qresi_ls.{i}``); ``share = 0``: one conv per scale (keys ``{k}``). A scale at relative position
    ``k / (K - 1)`` uses the conv whose tick is nearest.
    """

    def __init__(self, channels: int, num_scales: int, share: int, resi_ratio: float = 0.5):
        super().__init__()
        if share < 0:
            raise ValueError(f"share_quant_resi must be >= 0, got {share}")
        self.share = share
        n = num_scales if share == 0 else share
        self.ticks = phi_ticks(n)
        self.num_scales = num_scales
        if share == 1:
            self.qresi = Phi(channels, resi_ratio)
        elif share == 0:
            # Keys are "quant_resi.{k}": register the convs directly on this module.
            for k in range(n):
                self.add_module(str(k), Phi(channels, resi_ratio))
        else:
            self.qresi_ls = nn.ModuleList(Phi(channels, resi_ratio) for _ in range(n))

    def forward_scale(self, k: int, h_BChw: torch.Tensor) -> torch.Tensor:
        """Apply the phi conv of scale ``k`` (0-based)."""
        return self.for_scale(k)(h_BChw)

    def unused(self) -> list[Phi]:
        """The convs no scale uses (e.g. one of 4 shared convs with 3 scales): they never get a gradient."""
        used = {id(self.for_scale(k)) for k in range(self.num_scales)}
        return [m for m in self.modules() if isinstance(m, Phi) and id(m) not in used]

    def for_scale(self, k: int) -> Phi:
        if self.share == 1:
            return self.qresi
        at = k / (self.num_scales - 1) if self.num_scales > 1 else 0.0
        i = int(np.argmin(np.abs(self.ticks - at)))
        return getattr(self, str(i)) if self.share == 0 else self.qresi_ls[i]


class MultiScaleQuantizer(nn.Module):
    """Residual quantization over the scales ``patch_nums`` with one shared codebook."""

    def __init__(self, vocab_size: int, channels: int, patch_nums: Sequence, share_quant_resi: int = 4,
                 beta: float = 0.25, resi_ratio: float = 0.5, cosine_lookup: bool = False):
        super().__init__()
        self.cosine_lookup = cosine_lookup
        self.vocab_size = vocab_size
        self.channels = channels
        self.scales = normalize_patch_nums(patch_nums)
        self.patch_nums = compact_patch_nums(self.scales)
        self.beta = beta
        self.embedding = nn.Embedding(vocab_size, channels)
        # Uniform(+-1/V), as VQGAN: codes start near the origin, inside the latents' spread, so that most of
        # them are someone's nearest code at initialisation (N(0, 1) codes, far outside it, left 1-125 of
        # 512 in use per scale on Fashion-MNIST, and the dead-code restart had to rescue the rest).
        nn.init.uniform_(self.embedding.weight, -1 / vocab_size, 1 / vocab_size)
        self.quant_resi = PhiBank(channels, len(self.patch_nums), share_quant_resi, resi_ratio)
        # Per-scale codebook hit rate (exponential moving average), updated in training.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for each row: by squared L2 distance, or with
        ``cosine_lookup`` by cosine similarity (the code itself, not its direction, is still what is added)."""
        w_VC = self.embedding.weight
        if self.cosine_lookup:
            return (F.normalize(z_NC, dim=1) @ F.normalize(w_VC, dim=1).T).argmax(dim=1)
        return nearest_row(z_NC, w_VC)

    @property
    def latent_hw(self) -> Scale:
        """The full latent size (H, W): the last scale's."""
        return self.scales[-1]

    def _upsampled_code(self, k: int, idx_Bl: torch.Tensor) -> torch.Tensor:
        """phi_k(bicubic(embedding(idx))) at the full latent size: what scale k adds to f_hat."""
        h, w = self.scales[k]
        h_BChw = self.embedding(idx_Bl).transpose(1, 2).reshape(idx_Bl.shape[0], self.channels, h, w)
        return self.code_map_to_residual(k, h_BChw)

    def code_map_to_residual(self, k: int, h_BChw: torch.Tensor) -> torch.Tensor:
        """Upsample one scale's code map (B, C, h, w) to the latent size and apply that scale's phi conv."""
        if k != self.num_scales - 1:
            h_BChw = F.interpolate(h_BChw, size=self.latent_hw, mode="bicubic")
        return self.quant_resi.forward_scale(k, h_BChw)

    def _area(self, f_BCHW: torch.Tensor, k: int) -> torch.Tensor:
        """``f`` area-averaged to scale k's size (the last scale's is the latent's own)."""
        return f_BCHW if k == self.num_scales - 1 else F.interpolate(f_BCHW, size=self.scales[k], mode="area")

    def _check_latent(self, f_BChw: torch.Tensor) -> None:
        if f_BChw.ndim != 4 or f_BChw.shape[1] != self.channels:
            raise ValueError(f"expected a latent of shape (B, {self.channels}, H, W), got {tuple(f_BChw.shape)}")
        H, W = f_BChw.shape[-2:]
        if (H, W) != self.latent_hw:
            raise ValueError(f"latent is {H}x{W} but the last scale of patch_nums {self.patch_nums} is "
                             f"{self.latent_hw[0]}x{self.latent_hw[1]}: the image size does not fit this tokenizer")

    @torch.no_grad()
    def latent_to_indices(self, f_BChw: torch.Tensor) -> list[torch.Tensor]:
        """Quantize a latent into K index maps, each (B, h_k * w_k), row-major. Always in float32, also
        under autocast: the tokens of an image must not depend on the compute dtype of the caller."""
        self._check_latent(f_BChw)
        B, C = f_BChw.shape[:2]
        f_rest = f_BChw.float().clone()
        indices = []
        with torch.autocast(f_BChw.device.type, enabled=False):
            for k, (h, w) in enumerate(self.scales):
                z_BChw = self._area(f_rest, k)
                idx_Bl = self.nearest_code(z_BChw.permute(0, 2, 3, 1).reshape(-1, C)).view(B, h * w)
                f_rest -= self._upsampled_code(k, idx_Bl)
                indices.append(idx_Bl)
        return indices

    def indices_to_latent(self, indices: Sequence[torch.Tensor], upto: int | None = None) -> torch.Tensor:
        """Sum of the first ``upto`` scales' contributions (all by default): f_hat, (B, C, H, W)."""
        self.check_indices(indices, allow_prefix=upto is not None)
        n = len(indices) if upto is None else upto
        f_hat = None
        for k in range(n):
            r_BCHW = self._upsampled_code(k, indices[k])
            f_hat = r_BCHW if f_hat is None else f_hat + r_BCHW
        return f_hat

    def split_sequence(self, tokens_BL: torch.Tensor) -> list[torch.Tensor]:
        """A (B, L) token sequence, scales concatenated coarse to fine, as its K maps (B, h_k * w_k)."""
        sizes = [h * w for h, w in self.scales]
        if tokens_BL.ndim != 2 or tokens_BL.shape[1] != sum(sizes):
            raise ValueError(f"a token sequence of this tokenizer is (B, L) with L = {sum(sizes)} tokens (scales "
                             f"{self.patch_nums}), got shape {tuple(tokens_BL.shape)}")
        return list(tokens_BL.split(sizes, dim=1))

    def check_indices(self, indices: Sequence[torch.Tensor], allow_prefix: bool = False) -> None:
        """ValueError unless ``indices`` are K (or, with ``allow_prefix``, the first k) maps (B, h_k * w_k)
        of integer ids (int64 or int32) in [0, vocab_size)."""
        if not allow_prefix and len(indices) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} token maps (one per scale of {self.patch_nums}), "
                             f"got {len(indices)}")
        B = indices[0].shape[0] if len(indices) else 0
        for k, idx in enumerate(indices):
            h, w = self.scales[k]
            if idx.ndim != 2 or idx.shape != (B, h * w):
                raise ValueError(f"token map of scale {k} must have shape ({B}, {h * w}), got {tuple(idx.shape)}")
            if idx.dtype not in (torch.int64, torch.int32):  # ids index the codebook: a float one is no id
                raise ValueError(f"token map of scale {k} must hold integer token ids (int64), got {idx.dtype}")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size):
                raise ValueError(f"token map of scale {k} has ids outside [0, {self.vocab_size})")

    def teacher_forcing_input(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """The transformer's input for scales 2..K from ground-truth indices: (B, L - h_1 w_1, C).

        Entry k is ``area(f_hat after scales 1..k, (h_{k+1}, w_{k+1}))``, flattened row-major.
        """
        self.check_indices(indices)
        B = indices[0].shape[0]
        f_hat = torch.zeros(B, self.channels, *self.latent_hw, device=self.embedding.weight.device)
        inputs = []
        for k in range(self.num_scales - 1):
            f_hat = f_hat + self._upsampled_code(k, indices[k])
            inputs.append(self._area(f_hat, k + 1).flatten(2).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def codes_toward(self, k: int, f_hat: torch.Tensor, target_BCHW: torch.Tensor,
                     fit_Bl: torch.Tensor, other_Bl: torch.Tensor) -> torch.Tensor:
        """Scale k's ids (B, h_k * w_k) that bring ``f_hat`` (B, C, H, W: the sum of scales < k) closest to
        ``target`` where ``fit_Bl`` (bool) is True; ``other_Bl`` are the ids of the other positions.

        The nearest code to the area-averaged residual, as encoding does. At the last scale, whose phi conv
        mixes each code with its 3x3 neighbours, one more step picks each code for what is left of the
        residual once its neighbours' share (fitted or other) is taken out. Returns the fitted positions'
        ids merged with ``other_Bl``.
        """
        B, C = f_hat.shape[:2]
        h, w = self.scales[k]
        residual = self._area(target_BCHW.float() - f_hat.float(), k)
        ids_Bl = self.nearest_code(residual.permute(0, 2, 3, 1).reshape(-1, C)).view(B, h * w)
        ids_Bl = torch.where(fit_Bl, ids_Bl, other_Bl)
        if k != self.num_scales - 1:
            return ids_Bl
        phi = self.quant_resi.for_scale(k)
        # phi(h) at a position is A @ h there plus what its neighbours (and the bias) add.
        centre_CC = phi.weight[:, :, 1, 1].float()
        own_CC = (1 - phi.resi_ratio) * torch.eye(C, device=f_hat.device) + phi.resi_ratio * centre_CC
        h_BChw = self.embedding(ids_Bl).transpose(1, 2).reshape(B, C, h, w)
        from_neighbours = phi(h_BChw).float() - torch.einsum("oc,bchw->bohw", own_CC, h_BChw)
        wanted_NC = (residual - from_neighbours).permute(0, 2, 3, 1).reshape(-1, C)
        fitted_Bl = nearest_row(wanted_NC, self.embedding.weight.float() @ own_CC.T).view(B, h * w)
        return torch.where(fit_Bl, fitted_Bl, other_Bl)

    def next_input(self, k: int, f_hat: torch.Tensor, h_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add scale k's code map (B, C, h_k, w_k) to f_hat; return f_hat and the next scale's input map."""
        f_hat = f_hat + self.code_map_to_residual(k, h_BChw)
        return f_hat, f_hat if k == self.num_scales - 1 else self._area(f_hat, k + 1)

    def forward(self, f_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training pass: straight-through f_hat, the multi-scale VQ loss, and the indices per scale.

        The loss averages over scales ``beta * ||sg(f_hat) - f||^2 + ||f_hat - sg(f)||^2`` (commitment
        and codebook terms), measured on the running reconstruction after each scale.
        """
        self._check_latent(f_BChw)
        with torch.autocast(f_BChw.device.type, enabled=False):  # nearest codes in float32, as inference
            return self._quantize(f_BChw.float())

    def _quantize(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        B, C = f.shape[:2]
        f_detached = f.detach()
        f_rest = f_detached.clone()
        f_hat = torch.zeros_like(f)
        vq_loss = f.new_zeros(())
        indices = []
        for k, (h, w) in enumerate(self.scales):
            z_BChw = self._area(f_rest, k)
            with torch.no_grad():
                idx_Bl = self.nearest_code(z_BChw.permute(0, 2, 3, 1).reshape(-1, C)).view(B, h * w)
            r_BCHW = self._upsampled_code(k, idx_Bl)
            f_hat = f_hat + r_BCHW
            f_rest = f_rest - r_BCHW.detach()
            vq_loss = vq_loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_detached)
            indices.append(idx_Bl)
        if self.training:
            self._update_usage(indices)
        f_hat_st = (f_hat.detach() - f_detached) + f  # straight-through: value of f_hat, gradient to f
        # Codebook and phi receive gradients through the loss term above; the decoder's gradient reaches
        # the encoder through the straight-through estimator.
        return f_hat_st, vq_loss / self.num_scales, indices

    @torch.no_grad()
    def reinit_dead_codes(self, candidates_NC: torch.Tensor, dead_fraction: float = 0.03) -> torch.Tensor:
        """Move codes used less than ``dead_fraction / V`` of the time at every scale onto randomly
        chosen candidate vectors (e.g. encoder latents), so a collapsed codebook recovers. Their usage
        statistic is reset to the uniform rate. Returns the ids of the codes moved."""
        usage_V = self.ema_vocab_hit_SV.max(dim=0).values
        dead = (usage_V < dead_fraction / self.vocab_size).nonzero().flatten()
        if len(dead) == 0 or len(candidates_NC) == 0:
            return dead[:0]
        pick = torch.randint(len(candidates_NC), (len(dead),), device=candidates_NC.device)
        noise = torch.randn(len(dead), self.channels, device=candidates_NC.device) * candidates_NC.std() * 0.01
        self.embedding.weight.data[dead] = (candidates_NC[pick] + noise).to(self.embedding.weight.dtype)
        self.ema_vocab_hit_SV[:, dead] = 1.0 / self.vocab_size
        return dead

    @torch.no_grad()
    def _update_usage(self, indices: Sequence[torch.Tensor], momentum: float = 0.99) -> None:
        """Fold this batch's code hits per scale into ``ema_vocab_hit_SV``. Under torchrun the hits of every
        process are summed first (as the reference does): each process sees only its share of the batch, and
        DDP overwrites every process's buffers with rank 0's at each forward, so a local update would leave
        the statistic (and the dead-code restarts it decides) with rank 0's codes alone."""
        hits_SV = torch.stack([torch.bincount(idx.flatten(), minlength=self.vocab_size).float() for idx in indices])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(hits_SV)
        for k, hits_V in enumerate(hits_SV):
            hits_V /= hits_V.sum().clamp_min(1)
            if self.ema_vocab_hit_SV[k].sum() == 0:
                self.ema_vocab_hit_SV[k].copy_(hits_V)
            else:
                self.ema_vocab_hit_SV[k].mul_(momentum).add_(hits_V, alpha=1 - momentum)
