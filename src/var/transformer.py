"""The VAR transformer: next-scale prediction with AdaLN-conditioned blocks.

The sequence holds every scale's (h_k, w_k) token map, row-major, coarse to fine: L = sum(h_k * w_k)
tokens. A token attends to all tokens of its own and earlier scales (block-causal). The first h_1 * w_1
positions carry the class
condition (start token); position i of the rest carries the tokenizer's f_hat after the earlier scales,
area-resized to the scale being predicted. Module and parameter names follow the released checkpoints.

Shape letters: B batch, L all tokens, l one scale's tokens, C width, H heads, c head size,
V vocabulary, Cv tokenizer latent channels, K scales.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .schedule import Scale, compact_patch_nums, normalize_patch_nums

@dataclass
class VARConfig:
    """Sizes of the transformer. Defaults are the released d16 model."""

    vocab_size: int = 4096
    latent_channels: int = 32          # Cvae: the tokenizer's codebook width
    num_classes: int = 1000
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_nums: tuple[int, ...] | tuple[Scale, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # ints or (h, w)
    shared_aln: bool = False
    attn_l2_norm: bool = True
    cond_drop_rate: float = 0.1
    norm_eps: float = 1e-6
    drop_path_rate: float | None = None  # stochastic depth in training; None: the reference's 0.1 * depth / 24

    def __post_init__(self):
        self.patch_nums = compact_patch_nums(normalize_patch_nums(self.patch_nums))
        if self.drop_path_rate is None:
            self.drop_path_rate = 0.1 * self.depth / 24
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")


    @property
    def scales(self) -> tuple[Scale, ...]:
        """The schedule as (h, w) pairs."""
        return normalize_patch_nums(self.patch_nums)

    @property
    def seq_len(self) -> int:
        return sum(h * w for h, w in self.scales)

    def to_dict(self) -> dict:
        return asdict(self)


# The initial scale of the AdaLN gates the reference trains each depth with (its README's --alng).
ADALN_GAMMA_BY_DEPTH = {16: 1e-3, 20: 1e-3, 24: 1e-4, 30: 1e-5, 36: 5e-6}


def default_adaln_gamma(depth: int) -> float:
    """The AdaLN gate scale the reference trains ``depth`` with: that of the deepest listed depth at or below
    it (:data:`ADALN_GAMMA_BY_DEPTH`), d16's below 16. ValueError for a depth below 1."""
    if not (isinstance(depth, int) and depth >= 1):
        raise ValueError(f"depth={depth!r}: expected an integer >= 1")
    listed = [d for d in sorted(ADALN_GAMMA_BY_DEPTH) if d <= depth]
    return ADALN_GAMMA_BY_DEPTH[listed[-1] if listed else min(ADALN_GAMMA_BY_DEPTH)]


@dataclass
class KVCache:
    """One block's keys and values of the tokens generated so far: ``kv`` is (2, B, H, L_max, c), keys then
    values, each head's positions contiguous (the layout SDPA reads fastest on CPU: 1.2-1.7x over keys
    strided by the q/k/v projection's layout); the first ``length`` positions are filled. Held by the
    caller, so generation calls are independent."""

    kv: torch.Tensor
    length: int = 0

    def slot(self, start: int, end: int) -> torch.Tensor:
        """Positions [start, end) as a (B, l, 2, H, c) view: the layout the q/k/v projection produces."""
        return self.kv[:, :, :, start:end].permute(1, 3, 0, 2, 4)


@dataclass(frozen=True)
class BlockCausal:
    """Attention over the whole teacher-forced sequence under VAR's block-causal mask, without computing the
    scores the mask throws away. Each of the last scales sees a prefix of the sequence and all of it: it gets
    its own SDPA call over that prefix with no mask (the mask-free kernels are also the fast ones). The early
    scales, few tokens, share one masked call. At d16's scales this skips a third of the score matrix; the
    result equals masked SDPA to float rounding."""

    sizes: tuple[int, ...]       # query groups along L: the early scales together, then one per late scale
    head_bias: torch.Tensor      # (l0, l0) additive mask of the first group: 0 where allowed, -inf elsewhere

    LATE_SCALES = 2              # how many of the last scales get a call of their own

    @classmethod
    def for_scales(cls, scale_lens: Sequence[int], bias_LL: torch.Tensor) -> "BlockCausal":
        """``scale_lens``: tokens per scale (h * w); ``bias_LL``: the full additive block-causal mask."""
        late = min(cls.LATE_SCALES, len(scale_lens) - 1)
        head = sum(scale_lens[:len(scale_lens) - late])
        sizes = (head, *scale_lens[len(scale_lens) - late:])
        return cls(sizes, bias_LL[:head, :head].contiguous())

    def attend(self, q_BHLc: torch.Tensor, k_BHLc: torch.Tensor, v_BHLc: torch.Tensor, scale: float) -> torch.Tensor:
        # split (not slicing) so that autograd joins the gradients with one cat instead of zero-filled
        # full-length buffers per group; group g's keys are the chunks 0..g.
        qs, ks, vs = (t.split(self.sizes, dim=2) for t in (q_BHLc, k_BHLc, v_BHLc))
        bias = self.head_bias.to(q_BHLc.dtype)
        outs = [F.scaled_dot_product_attention(qs[0], ks[0], vs[0], attn_mask=bias, scale=scale)]
        for g in range(1, len(self.sizes)):
            last = g == len(self.sizes) - 1
            k = k_BHLc if last else torch.cat(ks[:g + 1], dim=2)
            v = v_BHLc if last else torch.cat(vs[:g + 1], dim=2)
            outs.append(F.scaled_dot_product_attention(qs[g], k, v, scale=scale))
        return torch.cat(outs, dim=2)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose call can also take a bias in place of its own and
    end in tanh-GELU: the q/k/v projection's bias is assembled from two parameters and a zero buffer, and the
    MLP's first layer is followed by GELU. Plain ``F.linear`` here; :func:`var.cpu.accelerate` swaps in a
    layer that does each in one oneDNN call."""

    def forward(self, x: torch.Tensor, *, bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
        """``x @ W^T + b`` (``bias`` in place of the module's own when given), then tanh-GELU if ``gelu``."""
        y = F.linear(x, self.weight, self.bias if bias is None else bias)
        return F.gelu(y, approximate="tanh") if gelu else y


class SelfAttention(nn.Module):
    """Multi-head attention with fused q/k/v, optional L2-normalized q/k and a pre-allocated KV cache."""

    def __init__(self, dim: int, num_heads: int, attn_l2_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = Linear(dim, dim)

    def new_cache(self, batch: int, max_len: int, like: torch.Tensor) -> KVCache:
        """An empty cache for ``batch`` sequences of up to ``max_len`` tokens (dtype and device of ``like``)."""
        return KVCache(like.new_empty(2, batch, self.num_heads, max_len, self.head_dim))

    def forward(self, x_BLC: torch.Tensor, mask: BlockCausal | None, cache: KVCache | None = None) -> torch.Tensor:
        """``mask``: the block-causal structure of a full teacher-forced sequence; None with a cache (a new
        scale sees everything cached and itself)."""
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = self.mat_qkv(x_BLC, bias=bias).view(B, L, 3, self.num_heads, self.head_dim)
        if cache is not None:
            # Generation: the new scale's tokens see every cached token and each other; no mask needed.
            start, end = cache.length, cache.length + L
            q, _ = self._project(qkv, kv_out=cache.slot(start, end))
            cache.length = end
            k, v = cache.kv[:, :, :, :end].unbind(0)
        else:
            q, kv = self._project(qkv)
            k, v = kv.transpose(1, 3).unbind(2)
        q = q.transpose(1, 2)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            out = mask.attend(q, k, v, self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))

    def _project(self, qkv_BL3Hc: torch.Tensor, kv_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (B, L, H, c) and keys/values (B, L, 2, H, c, written to ``kv_out`` when given) as attention
        takes them. With ``attn_l2_norm`` queries and keys are L2-normalised (as ``F.normalize`` does) and
        queries take the learned per-head scale, in one pass over q and one over k and v together."""
        q, kv = qkv_BL3Hc[:, :, 0], qkv_BL3Hc[:, :, 1:]
        if not self.attn_l2_norm:
            return q, (kv if kv_out is None else kv_out.copy_(kv))
        norm_BL2H1 = torch.linalg.vector_norm(qkv_BL3Hc[:, :, :2], dim=-1, keepdim=True).clamp_min(1e-12)
        scale_mul_H1 = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp().view(self.num_heads, 1)
        q = q * (scale_mul_H1 / norm_BL2H1[:, :, 0])
        factor_BL2H1 = torch.cat((1 / norm_BL2H1[:, :, 1:], torch.ones_like(norm_BL2H1[:, :, 1:])), dim=2)  # v: x1
        if kv_out is not None and torch.compiler.is_compiling():  # Dynamo cannot trace out= into a strided view
            return q, kv_out.copy_(kv * factor_BL2H1)
        return q, torch.mul(kv, factor_BL2H1, out=kv_out)


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x, gelu=True))


class AdaLNBlock(nn.Module):
    """Attention and FFN, each after a LayerNorm modulated by the condition (scale, shift, gate). In
    training each branch is dropped for a random ``drop_path`` share of the batch (stochastic depth)."""

    def __init__(self, cfg: VARConfig, drop_path: float = 0.0):
        super().__init__()
        C = cfg.embed_dim
        self.drop_path = drop_path
        self.shared_aln = cfg.shared_aln
        self.ln = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(C, cfg.num_heads, cfg.attn_l2_norm)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio))
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.empty(1, 1, 6, C))  # drawn in VAR.init_weights
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), Linear(C, 6 * C))

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, 1, 6, C) modulation: from the class embedding (B, C), or, with shared AdaLN, from the
        shared projection (B, 1, 6, C) plus this block's own offset."""
        if self.shared_aln:
            return cond + self.ada_gss
        return self.ada_lin(cond).view(-1, 1, 6, cond.shape[-1])

    def forward(self, x_BLC: torch.Tensor, mod_B16C: torch.Tensor, mask: BlockCausal | None,
                cache: KVCache | None = None) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod_B16C.unbind(2)
        if self.training and self.drop_path > 0:  # a dropped branch is a gate of zero, a kept one rescaled
            gamma1, gamma2 = gamma1 * self._keep_B11(x_BLC), gamma2 * self._keep_B11(x_BLC)
        # addcmul: modulation and gated residual each in one pass over the activations instead of two.
        h_BLC = self.attn(torch.addcmul(shift1, self.ln(x_BLC), 1 + scale1), mask, cache)
        x_BLC = torch.addcmul(x_BLC, h_BLC, gamma1)
        x_BLC = torch.addcmul(x_BLC, self.ffn(torch.addcmul(shift2, self.ln(x_BLC), 1 + scale2)), gamma2)
        return x_BLC

    def _keep_B11(self, x_BLC: torch.Tensor) -> torch.Tensor:
        """Per-sample 0 (dropped) or 1 / (1 - drop_path) (kept), so the branch's expectation is unchanged."""
        keep = 1 - self.drop_path
        return x_BLC.new_empty(x_BLC.shape[0], 1, 1).bernoulli_(keep).div_(keep)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(dim, 2 * dim))

    def forward(self, x_BLC: torch.Tensor, cond_BC: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BC).view(-1, 1, 2, x_BLC.shape[-1]).unbind(2)
        return self.ln(x_BLC) * (1 + scale) + shift


class VAR(nn.Module):
    """Class-conditional next-scale prediction transformer."""

    # Parameters trained without weight decay besides biases and norms (the reference's list): positions,
    # level embeddings, attention temperatures and the shared-AdaLN offsets. Decay would pull them to 0.
    NO_WEIGHT_DECAY = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul", "ada_gss")

    def __init__(self, cfg: VARConfig | None = None, **overrides):
        super().__init__()
        if cfg is not None and overrides:
            raise TypeError(f"VAR() takes a VARConfig or keyword options, not both (got a config and "
                            f"{sorted(overrides)}); use dataclasses.replace(cfg, ...) to change a config")
        cfg = cfg or VARConfig(**overrides)
        self.config = cfg
        C, K = cfg.embed_dim, len(cfg.patch_nums)
        self.patch_nums, self.scales = cfg.patch_nums, cfg.scales
        self.first_l = self.scales[0][0] * self.scales[0][1]
        self.num_classes = cfg.num_classes
        L = cfg.seq_len
        self.word_embed = Linear(cfg.latent_channels, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # last index: the null class
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        self.lvl_embed = nn.Embedding(K, C)
        if cfg.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), Linear(C, 6 * C))
        # Stochastic depth grows linearly with depth, from 0 at the first block to drop_path_rate at the last.
        rates = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(AdaLNBlock(cfg, rate) for rate in rates)
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = Linear(C, cfg.vocab_size)
        lvl_1L = torch.cat([torch.full((h * w,), k) for k, (h, w) in enumerate(self.scales)]).view(1, L)
        self.register_buffer("lvl_1L", lvl_1L)
        # Block-causal mask as an additive bias: 0 where a token may look, -inf elsewhere (a buffer, as in the
        # released checkpoints; BlockCausal uses its early-scales corner).
        allowed = lvl_1L.view(L, 1) >= lvl_1L.view(1, L)
        self.register_buffer("attn_bias_for_masking", torch.zeros(1, 1, L, L).masked_fill(~allowed, -torch.inf))
        self.init_weights()

    # ----------------------------------------------------------------------------------- init
    @torch.no_grad()
    def init_weights(self, init_std: float | None = None, init_head: float = 0.02, init_adaln: float = 0.5,
                     init_adaln_gamma: float | None = None) -> None:
        """Initialisation for training from scratch, all in one place: truncated normals, a small head,
        near-zero AdaLN gates (blocks start close to the identity; ``init_adaln_gamma`` defaults to
        :func:`default_adaln_gamma`) and depth-scaled output projections. With shared AdaLN the blocks'
        own offsets ``ada_gss`` are scaled, as in the reference; the shared projection stays as drawn."""
        C, depth = self.config.embed_dim, self.config.depth
        gamma = default_adaln_gamma(depth) if init_adaln_gamma is None else init_adaln_gamma
        std = init_std if init_std is not None else math.sqrt(1 / C / 3)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        self.head.weight.mul_(init_head)
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        for b in self.blocks:
            if self.config.shared_aln:                      # (1, 1, 6, C): gates first, then scales and shifts
                nn.init.normal_(b.ada_gss, std=C ** -0.5)
                b.ada_gss[:, :, 2:].mul_(init_adaln)
                b.ada_gss[:, :, :2].mul_(gamma)
            else:                                           # (6C, C) rows in the same order
                b.ada_lin[-1].weight[2 * C:].mul_(init_adaln)
                b.ada_lin[-1].weight[:2 * C].mul_(gamma)
            b.attn.proj.weight.div_(math.sqrt(2 * depth))
            b.ffn.fc2.weight.div_(math.sqrt(2 * depth))

    # ------------------------------------------------------------------------------- helpers
    @torch.compiler.disable  # reads the labels' values: under torch.compile it runs eagerly, between graphs
    def check_labels(self, labels: torch.Tensor, allow_null: bool = False) -> None:
        """ValueError unless ``labels`` is a 1-D tensor of class ids (and the null class if ``allow_null``)."""
        hi = self.num_classes + (1 if allow_null else 0)
        if labels.ndim != 1:
            raise ValueError(f"class labels must be a 1-D tensor, got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= hi):
            null = f" or {self.num_classes} (the null class)" if allow_null else ""
            raise ValueError(f"class labels must be in [0, {self.num_classes}){null}, got {labels.tolist()}")

    def modulations(self, cond_BC: torch.Tensor) -> list[torch.Tensor]:
        """Every block's (B, 1, 6, C) AdaLN modulation for the class embeddings cond_BC."""
        shared = self.shared_ada_lin(cond_BC).view(-1, 1, 6, cond_BC.shape[-1]) if self.config.shared_aln else cond_BC
        return [b.modulation(shared) for b in self.blocks]

    def new_caches(self, batch: int, like: torch.Tensor) -> list[KVCache]:
        """Empty KV caches, one per block, for generating ``batch`` sequences."""
        return [b.attn.new_cache(batch, self.config.seq_len, like) for b in self.blocks]

    def run_blocks(self, x_BLC: torch.Tensor, mods: Sequence[torch.Tensor], mask: BlockCausal | None = None,
                   caches: Sequence[KVCache] | None = None) -> torch.Tensor:
        """All blocks over ``x_BLC`` with their modulations (from :meth:`modulations`) and either the
        block-causal mask (a whole sequence) or, when generating, their KV caches."""
        for i, (block, mod) in enumerate(zip(self.blocks, mods, strict=True)):
            x_BLC = block(x_BLC, mod, mask, None if caches is None else caches[i])
        return x_BLC

    def logits_from_hidden(self, x_BLC: torch.Tensor, cond_BC: torch.Tensor) -> torch.Tensor:
        """The head's float32 logits (B, L, V) from the last block's output, AdaLN-modulated by the class."""
        return self.head(self.head_nm(x_BLC, cond_BC)).float()

    # ------------------------------------------------------------------------------- forward
    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L, V). In training mode labels are dropped to the null class with
        probability ``cond_drop_rate`` (for classifier-free guidance)."""
        self.check_labels(label_B, allow_null=True)
        B = label_B.shape[0]
        L = self.config.seq_len
        if x_BLCv_wo_first_l.shape != (B, L - self.first_l, self.config.latent_channels):
            raise ValueError(f"teacher-forcing input must be ({B}, {L - self.first_l}, {self.config.latent_channels}), "
                             f"got {tuple(x_BLCv_wo_first_l.shape)}")
        if self.training and self.config.cond_drop_rate > 0:
            drop = torch.rand(B, device=label_B.device) < self.config.cond_drop_rate
            label_B = torch.where(drop, torch.full_like(label_B, self.num_classes), label_B)
        cond_BC = self.class_emb(label_B)
        sos = cond_BC.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
        x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
        x_BLC = x_BLC + self.lvl_embed(self.lvl_1L.expand(B, -1)) + self.pos_1LC
        mask = BlockCausal.for_scales([h * w for h, w in self.scales], self.attn_bias_for_masking[0, 0])
        x_BLC = self.run_blocks(x_BLC, self.modulations(cond_BC), mask)
        return self.logits_from_hidden(x_BLC, cond_BC)
