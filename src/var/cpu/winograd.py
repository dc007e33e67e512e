"""3x3 convolutions by Winograd's minimal filtering, F(4x4, 3x3), for the decoder on CPU.

A 3x3 convolution producing a 4x4 output tile needs 16 * 9 = 144 multiplies per channel pair when done
directly, 36 after Winograd's transforms (Lavin & Gray, 2016): each 6x6 input tile is transformed
(B^T d B), multiplied per position with the transformed kernels (G g G^T), and transformed back
(A^T m A). The multiplies become 36 matrix products (tiles x C_in) @ (C_in x C_out). The image is
processed in strips of tile rows so that the transformed tiles stay in cache.
The result differs from a direct convolution by float rounding (about 1e-5 relative in float32).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .weight_cache import DerivedWeight

# Transforms of F(4, 3) for the interpolation points 0, 1, -1, 2, -2 and infinity.
_BT = torch.tensor([[4, 0, -5, 0, 1, 0],
                    [0, -4, -4, 1, 1, 0],
                    [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0],
                    [0, 2, -1, -2, 1, 0],
                    [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
_G = torch.tensor([[1 / 4, 0, 0],
                   [-1 / 6, -1 / 6, -1 / 6],
                   [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6],
                   [0, 0, 1]], dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0],
                    [0, 1, -1, 2, -2, 0],
                    [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
# On a tile flattened row-major, the two-sided transforms are single matrices (Kronecker products).
INPUT_TRANSFORM = torch.kron(_BT, _BT).float()    # (36, 36): 6x6 input tile -> 36 positions
OUTPUT_TRANSFORM = torch.kron(_AT, _AT).float()   # (16, 36): 36 positions -> 4x4 output tile
TILE_ROWS_TARGET = 128  # tiles per strip: ~3 MB of transformed tiles at 160 channels


def winograd_weight(weight_OI33: torch.Tensor) -> torch.Tensor:
    """Kernels (O, I, 3, 3) transformed to the 36 positions: (36, I, O)."""
    g = _G.to(weight_OI33)
    O, I = weight_OI33.shape[:2]
    return torch.einsum("ak,oikl,bl->abio", g, weight_OI33, g).reshape(36, I, O).contiguous()


def winograd_conv3x3(x_NCHW: torch.Tensor, weight_36IO: torch.Tensor, bias_O: torch.Tensor | None) -> torch.Tensor:
    """A 3x3, stride-1, padding-1 convolution of ``x`` (H and W multiples of 4) with kernels from
    :func:`winograd_weight`; the output has the input's memory format. Shape letters: N batch, C/I input and O output
    channels, T tiles (4x4 output pixels each), P tiles of one strip."""
    N, C, H, W = x_NCHW.shape
    O = weight_36IO.shape[-1]
    if H % 4 or W % 4:
        raise ValueError(f"winograd_conv3x3 takes sides that are multiples of 4, got {H}x{W}")
    Th, Tw = H // 4, W // 4
    rows = max(1, min(Th, TILE_ROWS_TARGET // (N * Tw)))
    bt, at = INPUT_TRANSFORM.to(x_NCHW), OUTPUT_TRANSFORM.to(x_NCHW)
    x_NHWC = x_NCHW.permute(0, 2, 3, 1)
    out = torch.empty(N, O, H, W, dtype=x_NCHW.dtype, device=x_NCHW.device, memory_format=torch.channels_last)
    out_NHWO = out.permute(0, 2, 3, 1)
    # Work buffers, reused by every strip: the padded input rows, the tiles, and the products.
    strip = x_NCHW.new_zeros(N, 4 * rows + 2, W + 2, C)
    P_max = N * rows * Tw
    tiles, trans, prod = (x_NCHW.new_empty(36 * P_max * c) for c in (C, C, O))
    for r0 in range(0, Th, rows):
        r = min(rows, Th - r0)
        P = N * r * Tw
        lo, hi = 4 * r0 - 1, 4 * (r0 + r) + 1        # input rows read by this strip; outside [0, H): zeros
        a, b = max(lo, 0), min(hi, H)
        strip[:, a - lo:b - lo, 1:W + 1].copy_(x_NHWC[:, a:b])
        strip[:, b - lo:].zero_()                     # the bottom padding (only the last strip has any)
        if lo < 0:
            strip[:, :a - lo].zero_()
        sN, sH, sW, sC = strip.stride()
        tiles_66NrTC = strip.as_strided((6, 6, N, r, Tw, C), (sH, sW, sN, 4 * sH, 4 * sW, sC))
        d = tiles[:36 * P * C].view(36, P * C)
        d.view(6, 6, N, r, Tw, C).copy_(tiles_66NrTC)
        v = torch.mm(bt, d, out=trans[:36 * P * C].view(36, P * C)).view(36, P, C)
        m = torch.bmm(v, weight_36IO, out=prod[:36 * P * O].view(36, P, O))
        y_44NrTO = (at @ m.view(36, P * O)).view(4, 4, N, r, Tw, O)
        dest = out_NHWO[:, 4 * r0:4 * (r0 + r)].view(N, r, 4, Tw, 4, O)
        if bias_O is None:
            dest.copy_(y_44NrTO.permute(2, 3, 0, 4, 1, 5))
        else:
            torch.add(y_44NrTO.permute(2, 3, 0, 4, 1, 5), bias_O, out=dest)
    channels_last = x_NCHW.is_contiguous(memory_format=torch.channels_last)
    return out if channels_last else out.contiguous()  # as nn.Conv2d: the input's memory format


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 ``nn.Conv2d`` (same parameters and state dict) that runs
    :func:`winograd_conv3x3` where that gives the same function faster: float32 on the CPU without autograd,
    sides multiples of 4 and at least ``MIN_SIDE``, at least ``MIN_CHANNELS`` input channels, not inside
    ``torch.compile`` (which generates its own convolution code); elsewhere the direct convolution. The
    transformed kernels (4x the weight's memory) are made on first use and re-made when the weight changes."""

    MIN_SIDE = 32
    MIN_CHANNELS = 128

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, 1, 1)
        self._transformed = DerivedWeight(winograd_weight)

    def _applies(self, x: torch.Tensor) -> bool:
        H, W = x.shape[-2:]
        return (not torch.is_grad_enabled() and x.device.type == "cpu"
                and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
                and self.in_channels >= self.MIN_CHANNELS
                and H % 4 == 0 and W % 4 == 0 and min(H, W) >= self.MIN_SIDE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._applies(x):
            return super().forward(x)
        return winograd_conv3x3(x, self._transformed.get(self.weight), self.bias)

    def _apply(self, fn, recurse=True):
        self._transformed.clear()  # moved or cast: free the kernels now; they are re-made on next use
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._transformed.clear()  # a load into inference tensors moves no version counter
        super()._load_from_state_dict(*args, **kwargs)
