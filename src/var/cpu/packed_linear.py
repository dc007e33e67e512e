"""Linear layers that run on a copy of their weight packed once for oneDNN's GEMM, for CPU inference.

A plain GEMM call re-lays the weight out into the library's blocked format every time. At the few tokens
of VAR's early scales that repacking costs about as much as the multiply itself; oneDNN can instead be
given the weight packed once, and it then also applies tanh-GELU in the same pass as fc1. The packed copy
costs the weight's size again in memory. Results match ``F.linear`` to float rounding.
"""
from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F

from ..transformer import Linear
from .weight_cache import DerivedWeight

log = logging.getLogger(__name__)


@functools.cache
def packing_available() -> bool:
    """Whether this PyTorch build can run packed linear layers: the oneDNN ops exist and give F.linear's
    result on a tiny example (some builds ship the ops without a working float32 kernel)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        w = torch.linspace(-1, 1, 32, device="cpu").view(8, 4)  # no RNG draws; on the CPU whatever the default
        x = torch.linspace(-2, 2, 12, device="cpu").view(3, 4)
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


class PackedLinear(Linear):
    """:class:`var.transformer.Linear` (same parameters and state dict, same call) that runs on a packed copy
    of its weight, with the bias override and tanh-GELU in the same oneDNN call.

    The packed path is taken only where it gives the same function: no autograd, float32 on the CPU, no
    autocast, not inside ``torch.compile`` (whose CPU backend packs weights itself); elsewhere the plain
    ``Linear`` runs. The copy follows the weight (see :class:`~var.cpu.weight_cache.DerivedWeight`): it is
    re-packed when the weight has changed since. RuntimeError where :func:`packing_available` is False.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kw):
        if not packing_available():
            raise RuntimeError("PackedLinear needs oneDNN's packed linear ops, which this PyTorch build lacks")
        super().__init__(in_features, out_features, bias=bias, **kw)
        self._packed = DerivedWeight(_pack_weight)

    def pack(self) -> None:
        """Pack the weight as it is now (a float32 weight on the CPU), rather than in the next call."""
        self._packed.clear()
        if self.weight.device.type == "cpu" and self.weight.dtype == torch.float32:
            self._packed.get(self.weight)

    def _derived(self) -> tuple[DerivedWeight, ...]:
        """The copies made from the weight, which moving, casting or loading it makes useless."""
        return (self._packed,)

    def _apply(self, fn, recurse=True):
        # Moving or casting the module (.to, .cuda, .double, ...) makes the copies useless: free them now
        # (they are re-made on the next CPU float32 call) instead of holding them until then.
        for copy in self._derived():
            copy.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        # A load into inference tensors (a model made under torch.inference_mode) moves no version counter.
        for copy in self._derived():
            copy.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _applies(self, x: torch.Tensor) -> bool:
        """Whether a CPU inference path applies to this call: no autograd, float32 input and weight on the
        CPU, no autocast, not inside ``torch.compile``."""
        return not (torch.is_grad_enabled() or x.device.type != "cpu" or x.shape[-1] != self.in_features
                    or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                    or self.weight.device.type != "cpu" or torch.is_autocast_enabled("cpu")
                    or torch.compiler.is_compiling())

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The packed weight when it applies to this call (re-packed if the weight changed), else None."""
        return self._packed.get(self.weight) if self._applies(x) else None

    def forward(self, x: torch.Tensor, *, bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
        """``x @ W^T + b``, with ``bias`` in place of the module's own when given, then tanh-GELU if ``gelu``."""
        packed = self._packed_weight(x)
        if packed is None:
            return super().forward(x, bias=bias, gelu=gelu)
        b = self.bias if bias is None else bias
        b = None if b is None else b.contiguous()  # oneDNN reads the bias as dense, whatever its strides
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), packed, b,
                                               "gelu" if gelu else "none", [], "tanh" if gelu else "")
        return y.view(*x.shape[:-1], self.out_features)
