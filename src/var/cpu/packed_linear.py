"""Linear layers that can keep a pre-packed copy of their weight for fast CPU inference.

A plain GEMM call re-lays the weight out into the library's blocked format every time. At the few tokens
of VAR's early scales that repacking costs about as much as the multiply itself; oneDNN can instead be
given the weight packed once, and it then also applies tanh-GELU in the same pass as fc1. On the 2-core
development CPU this makes the d16 layers 1.1-1.7x faster (most at the smallest scales). The packed copy
costs the weight's size again in memory, so it is opt-in: :meth:`PackedLinear.pack` (or
``VAR.pack_weights``, which ``VARPipeline`` calls on CPU when the copy takes at most a quarter of the
machine's RAM). Results match ``F.linear`` to float rounding.
"""
from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .weight_cache import DerivedWeight

log = logging.getLogger(__name__)


@functools.cache
def packing_available() -> bool:
    """Whether this PyTorch build can run packed linear layers: the oneDNN ops exist and give F.linear's
    result on a tiny example (some builds ship the ops without a working float32 kernel)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        w, x = torch.linspace(-1, 1, 32).view(8, 4), torch.linspace(-2, 2, 12).view(3, 4)  # no RNG draws
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w), None, "none", [], "")
        return bool(torch.allclose(y, F.linear(x, w), atol=1e-5))
    except RuntimeError as e:
        log.info("oneDNN packed linear layers do not run in this PyTorch build (%s)", e)
        return False


def total_memory_bytes() -> int | None:
    """The machine's physical memory, where the OS tells it (POSIX), else None."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight reordered into oneDNN's blocked format (an opaque tensor for ``_linear_pointwise``)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight)


class PackedLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose forward can take an optional bias override and a
    fused tanh-GELU, and which runs on a packed copy of its weight once :meth:`pack` has been called.

    The packed path is taken only where it gives the same function: no autograd, float32 on the CPU, no
    autocast, not inside ``torch.compile`` (whose CPU backend packs weights itself). The copy follows the
    weight (see :class:`~var.cpu.weight_cache.DerivedWeight`): it is re-packed when the weight has changed since.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kw):
        super().__init__(in_features, out_features, bias=bias, **kw)
        self._packed: DerivedWeight | None = None

    @property
    def packed(self) -> bool:
        return self._packed is not None

    def pack(self) -> None:
        """Keep a packed copy of the weight for CPU float32 inference (no-op where oneDNN is missing)."""
        if not packing_available():
            return
        if self._packed is None:
            self._packed = DerivedWeight(_pack_weight)
        self._packed.clear()  # packing is a request for the weight as it is now
        if self.weight.device.type == "cpu" and self.weight.dtype == torch.float32:
            self._packed.get(self.weight)  # now rather than in the first call

    def unpack(self) -> None:
        """Drop the packed copy (and its memory)."""
        self._packed = None

    def _apply(self, fn, recurse=True):
        # Moving or casting the module (.to, .cuda, .double, ...) makes the packed copy useless: free it now
        # (it is re-made on the next CPU float32 call) instead of holding it until then.
        if self._packed is not None:
            self._packed.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        # A load into inference tensors (a model made under torch.inference_mode) moves no version counter.
        if self._packed is not None:
            self._packed.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The packed weight when it applies to this call (re-packed if the weight changed), else None."""
        if self._packed is None or torch.is_grad_enabled() or x.device.type != "cpu" \
                or x.shape[-1] != self.in_features \
                or x.dtype != torch.float32 or self.weight.dtype != torch.float32 or self.weight.device.type != "cpu" \
                or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
            return None
        return self._packed.get(self.weight)

    def forward(self, x: torch.Tensor, *, bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
        """``x @ W^T + b``, with ``bias`` in place of the module's own when given, then tanh-GELU if ``gelu``."""
        b = self.bias if bias is None else bias
        packed = self._packed_weight(x)
        if packed is None:
            y = F.linear(x, self.weight, b)
            return F.gelu(y, approximate="tanh") if gelu else y
        b = None if b is None else b.contiguous()  # oneDNN reads the bias as dense, whatever its strides
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), packed, b,
                                               "gelu" if gelu else "none", [], "tanh" if gelu else "")
        return y.view(*x.shape[:-1], self.out_features)
