"""The multi-scale VQ-VAE tokenizer: a convolutional encoder/decoder around the multi-scale quantizer.

The autoencoder is the latent-diffusion style one the released ``vae_ch160v4096z32.pth`` uses; every
size is configurable so that small data sets (e.g. 28x28 Fashion-MNIST, 4x down-sampling) fit too.
Images enter and leave the modules in [-1, 1]; the pipeline converts from and to [0, 1].

Shape letters: B batch, C channels, H W spatial size, K scales, l one scale's tokens.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quantizer import MultiScaleQuantizer
from .schedule import Scale, compact_patch_nums, normalize_patch_nums


@dataclass
class VQVAEConfig:
    """Sizes of the tokenizer. Defaults are the released ImageNet tokenizer (16x down-sampling).

    ``patch_nums`` takes ints (square scales) or (h, w) pairs; it is stored in the compact spelling of
    :func:`var.schedule.compact_patch_nums` (ints when square) and :attr:`scales` gives the pairs."""

    in_channels: int = 3
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 32
    vocab_size: int = 4096
    patch_nums: tuple[int, ...] | tuple[Scale, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    share_quant_resi: int = 4
    using_sa: bool = True       # attention blocks at the lowest-resolution level
    using_mid_sa: bool = True   # attention block in the middle
    beta: float = 0.25          # commitment weight of the VQ loss
    norm_groups: int = 32
    cosine_lookup: bool = False  # nearest code by cosine similarity (the reference's using_znorm)

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.patch_nums = compact_patch_nums(normalize_patch_nums(self.patch_nums))
        widths = {self.ch * m for m in self.ch_mult}
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"every width ch*ch_mult {sorted(widths)} must be divisible by norm_groups={self.norm_groups}")

    @property
    def downsample(self) -> int:
        """Image pixels per latent position along one side."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def scales(self) -> tuple[Scale, ...]:
        """The schedule as (h, w) pairs."""
        return normalize_patch_nums(self.patch_nums)

    @property
    def image_hw(self) -> Scale:
        """The image (height, width) the scale schedule implies (last scale times the down-sampling)."""
        h, w = self.scales[-1]
        return h * self.downsample, w * self.downsample

    @property
    def image_size(self) -> int:
        """The image side of a square schedule; a non-square one raises ValueError (use :attr:`image_hw`)."""
        return square_side(self.image_hw)

    def to_dict(self) -> dict:
        return asdict(self)


def square_side(hw: Scale) -> int:
    """The side of a square (H, W); ValueError for a non-square one, for callers that take squares only."""
    if hw[0] != hw[1]:
        raise ValueError(f"this model's images are {hw[0]}x{hw[1]} (height x width), not square: "
                         "use image_hw (this call takes square models only)")
    return hw[0]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = _norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place where the input is a fresh intermediate: fewer full-size allocations (page faults on CPU).
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        # Position-major views: free for channels-last activations, one copy for contiguous ones.
        qkv_BN3C = self.qkv(self.norm(x_BCHW)).permute(0, 2, 3, 1).reshape(B, H * W, 3, C)
        q, k, v = qkv_BN3C.unsqueeze(1).unbind(3)  # each (B, 1, N, C)
        h_B1NC = F.scaled_dot_product_attention(q, k, v)  # softmax scale C^-0.5, the SDPA default
        return x_BCHW + self.proj_out(h_B1NC.view(B, H, W, C).permute(0, 3, 1, 2))


class Downsample(nn.Module):
    """Pad right and bottom by one zero, then a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _middle(channels: int, groups: int, attn: bool) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, groups)
    mid.attn_1 = AttnBlock(channels, groups) if attn else nn.Identity()
    mid.block_2 = ResnetBlock(channels, channels, groups)
    return mid


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, 1, 1)
        self.down = nn.ModuleList()
        c_in = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            c_out = cfg.ch * mult
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(c_in, c_out, g))
                c_in = c_out
                if cfg.using_sa and i == levels - 1:
                    level.attn.append(AttnBlock(c_in, g))
            if i != levels - 1:
                level.downsample = Downsample(c_in)
            self.down.append(level)
        self.mid = _middle(c_in, g, cfg.using_mid_sa)
        self.norm_out = _norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.ch_mult)
        c_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, 1, 1)
        self.mid = _middle(c_in, g, cfg.using_mid_sa)
        up = []
        for i in reversed(range(levels)):
            c_out = cfg.ch * cfg.ch_mult[i]
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(c_in, c_out, g))
                c_in = c_out
                if cfg.using_sa and i == levels - 1:
                    level.attn.append(AttnBlock(c_in, g))
            if i != 0:
                level.upsample = Upsample(c_in)
            up.insert(0, level)
        self.up = nn.ModuleList(up)  # indexed by level (0 = full resolution), run from the last index down
        self.norm_out = _norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, cfg.in_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.device.type == "cpu":  # oneDNN convs take channels-last as it is; NCHW costs a reorder each way
            z = z.contiguous(memory_format=torch.channels_last)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True)).contiguous()


class VQVAE(nn.Module):
    """Encoder, multi-scale quantizer and decoder. Images are in [-1, 1] here."""

    # Trained without weight decay besides biases and norms: the codebook (decay would shrink unused codes
    # towards 0, away from the latents, as VQGAN-style training avoids).
    NO_WEIGHT_DECAY = ("quantize.embedding",)
    # The parts that decide an image's tokens and the latent they decode from (the quantizer: codebook and phi
    # convs), and the parts that decode that latent. With the first frozen, the decoder can be fine-tuned while
    # every image's tokens, and a transformer trained on them, stay valid (`var train-vae --finetune-decoder`).
    TOKEN_SIDE = ("encoder", "quant_conv", "quantize")
    DECODER_SIDE = ("post_quant_conv", "decoder")

    def __init__(self, cfg: VQVAEConfig | None = None, **overrides):
        super().__init__()
        if cfg is not None and overrides:
            raise TypeError(f"VQVAE() takes a VQVAEConfig or keyword options, not both (got a config and "
                            f"{sorted(overrides)}); use dataclasses.replace(cfg, ...) to change a config")
        cfg = cfg or VQVAEConfig(**overrides)
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg.vocab_size, cfg.z_channels, cfg.patch_nums,
                                            cfg.share_quant_resi, beta=cfg.beta, cosine_lookup=cfg.cosine_lookup)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)

    @property
    def patch_nums(self) -> tuple[int, ...] | tuple[Scale, ...]:
        return self.config.patch_nums

    @property
    def scales(self) -> tuple[Scale, ...]:
        return self.quantize.scales

    def token_side_difference(self, other: "VQVAE") -> str | None:
        """Where ``other`` would tokenize images differently from this tokenizer: "configuration", the name
        of the first :attr:`TOKEN_SIDE` weight that differs, or None when their tokens are the same."""
        if other.config.to_dict() != self.config.to_dict():
            return "configuration"
        ours = self.state_dict()
        for part in self.TOKEN_SIDE:
            for k, v in getattr(other, part).state_dict().items():
                key = f"{part}.{k}"
                if key != "quantize.ema_vocab_hit_SV" and not torch.equal(v.to(ours[key]), ours[key]):
                    return key  # (the codebook-use statistics above change nothing in the tokens)
        return None

    def check_images(self, img_BCHW: torch.Tensor) -> None:
        """ValueError unless ``img_BCHW`` is a (B, in_channels, H, W) batch of this tokenizer's image size."""
        cfg = self.config
        if img_BCHW.ndim != 4 or img_BCHW.shape[1] != cfg.in_channels:
            raise ValueError(f"expected images of shape (B, {cfg.in_channels}, H, W), got {tuple(img_BCHW.shape)}")
        H, W = img_BCHW.shape[-2:]
        if (H, W) != cfg.image_hw:
            h, w = cfg.scales[-1]
            raise ValueError(f"images are {H}x{W} but this tokenizer takes {cfg.image_hw[0]}x{cfg.image_hw[1]} "
                             f"(last scale {h}x{w} x {cfg.downsample}x down-sampling)")

    def encode_latent(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to the continuous latent f (B, Cvae, h_K, w_K), before quantization."""
        self.check_images(img_BCHW)
        return self.quant_conv(self.encoder(img_BCHW))

    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent f_hat (B, Cvae, h_K, w_K) to an image in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    @torch.no_grad()
    def img_to_indices(self, img_BCHW: torch.Tensor) -> list[torch.Tensor]:
        """Image in [-1, 1] to K index maps, each (B, h_k * w_k)."""
        return self.quantize.latent_to_indices(self.encode_latent(img_BCHW))

    def indices_to_img(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """K index maps (B, h_k * w_k) to images in [-1, 1]."""
        return self.decode_latent(self.quantize.indices_to_latent(indices))

    @torch.no_grad()
    def indices_to_img_per_scale(self, indices: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Decoded image after 1, 2, ..., K scales: the coarse-to-fine progression."""
        return [self.decode_latent(self.quantize.indices_to_latent(indices[: k + 1], upto=k + 1))
                for k in range(len(indices))]

    def forward(self, img_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training pass: reconstruction (unclamped, [-1, 1] scale), VQ loss, indices per scale."""
        f_hat, vq_loss, indices = self.quantize(self.encode_latent(img_BCHW))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss, indices
