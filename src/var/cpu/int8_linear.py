"""Linear layers that multiply in int8 on the CPU, for ``fast`` generation: a training-free speed-up at a small,
measured cost in quality (docs/performance.md).

The weight is quantized once per output channel (symmetric, scale = the row's largest magnitude / 127) and
kept as an int8 copy beside the float32 weight; each call quantizes its input the same way per row (per
token, from that row's own largest magnitude) and multiplies with ``torch._int_mm`` (int8 x int8 -> int32),
then rescales to float32. The error is that of 8-bit rounding of both operands, about 1% of the output's
norm; docs/performance.md has the speed and what it costs the bundled model's samples.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from .packed_linear import PackedLinear, packing_available
from .weight_cache import DerivedWeight

log = logging.getLogger(__name__)

# Below this many rows a layer with fewer weights than INT8_MIN_WEIGHTS runs in float32 (packed): there
# quantizing the input costs more than the smaller multiply saves.
INT8_MIN_ROWS = 64
INT8_MIN_WEIGHTS = 2 ** 20


@functools.cache
def int8_available() -> bool:
    """Whether this PyTorch build runs :class:`Int8Linear`: packed linear layers (its float32 path) and
    ``torch._int_mm`` on the CPU, checked on a tiny example."""
    if not packing_available():
        return False
    try:
        a = torch.arange(-32, 32, dtype=torch.int8, device="cpu").view(4, 16)
        return bool(torch.equal(torch._int_mm(a, a.t().contiguous()), a.int() @ a.int().t()))
    except (RuntimeError, AttributeError) as e:
        log.info("int8 matrix multiplication does not run in this PyTorch build (%s)", e)
        return False


def quantize_rows(x_MK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of each row of ``x_MK`` and the row's scale (M, 1): ``x ~= codes * scale``."""
    scale_M1 = x_MK.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127)
    return (x_MK / scale_M1).round_().to(torch.int8), scale_M1


def _int8_weight(weight_NK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight's int8 codes transposed (K, N), as ``torch._int_mm`` takes them, and the scales (1, N)."""
    codes_NK, scale_N1 = quantize_rows(weight_NK.float())
    return codes_NK.t().contiguous(), scale_N1.t().contiguous()


class Int8Linear(PackedLinear):
    """:class:`~var.cpu.packed_linear.PackedLinear` (same parameters and call) that multiplies in int8 where
    it applies: no autograd, a float32 input on the CPU, no autocast, not inside ``torch.compile``, and at
    least :data:`INT8_MIN_ROWS` rows or :data:`INT8_MIN_WEIGHTS` weights; elsewhere the packed float32 path
    runs. The int8 copy (a quarter of the weight's size) follows the weight as the packed one does."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kw):
        super().__init__(in_features, out_features, bias=bias, **kw)
        self._int8 = DerivedWeight(_int8_weight)

    def _derived(self) -> tuple[DerivedWeight, ...]:
        return (*super()._derived(), self._int8)

    def forward(self, x: torch.Tensor, *, bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
        """``x @ W^T + b`` in int8 (see the class), with ``bias`` in place of the module's own when given, then
        tanh-GELU if ``gelu``."""
        x_MK = x.reshape(-1, self.in_features)
        small = x_MK.shape[0] < INT8_MIN_ROWS and self.weight.numel() < INT8_MIN_WEIGHTS
        if small or not self._applies(x):
            return super().forward(x, bias=bias, gelu=gelu)
        codes_KN, w_scale_1N = self._int8.get(self.weight)
        codes_MK, x_scale_M1 = quantize_rows(x_MK)
        y = torch._int_mm(codes_MK, codes_KN).float().mul_(x_scale_M1).mul_(w_scale_1N)
        b = self.bias if bias is None else bias
        if b is not None:
            y.add_(b)
        if gelu:
            y = F.gelu(y, approximate="tanh")
        return y.view(*x.shape[:-1], self.out_features)
