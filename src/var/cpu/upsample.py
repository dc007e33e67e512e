"""Nearest 2x upsampling followed by a 3x3 convolution, computed as one 4x4 stride-2 transposed convolution.

The decoder's upsampling convolves an image with every pixel repeated 2x2; folding the repetition into the
kernel gives the same result from the small image with 2.25x fewer multiply-adds, up to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..vqvae import Upsample
from .weight_cache import DerivedWeight


def transposed_kernel(weight_OI33: torch.Tensor) -> torch.Tensor:
    """The 4x4 stride-2 transposed-conv kernel (I, O, 4, 4) equal to nearest 2x upsampling then the 3x3 conv
    ``weight`` (O, I, 3, 3).

    Output row 2i reads input rows i - 1 (tap 0 of the 3x3 kernel) and i (taps 1 + 2); row 2i + 1
    reads rows i (taps 0 + 1) and i + 1 (tap 2). In the transposed conv (padding 1) input row i'
    reaches output row 2i' - 1 + t, so tap t of the 4x4 kernel sums these 3x3 taps (same for columns).
    """
    fold_43 = weight_OI33.new_tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])
    kernel = torch.einsum("tr,oirq,sq->iots", fold_43, weight_OI33, fold_43)  # (in, out, 4, 4) as conv_transpose wants
    return kernel.contiguous(memory_format=torch.channels_last)


class FoldedUpsample(Upsample):
    """:class:`var.vqvae.Upsample` (same parameters and state dict) that runs as one transposed convolution
    on the CPU (:func:`transposed_kernel`), the plain way elsewhere. The kernel is kept between inference
    calls and re-made when the weight changes; under autograd or ``torch.compile`` it is derived in the call."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self._kernel = DerivedWeight(transposed_kernel)

    def _apply(self, fn, recurse=True):
        self._kernel.clear()  # moved or cast: free the cached kernel now; it is re-made on next use
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        # Runs before the child conv's load: a load into inference tensors moves no version counter.
        self._kernel.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        w = self.conv.weight
        cached = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        kernel = self._kernel.get(w) if cached else transposed_kernel(w)
        return F.conv_transpose2d(x, kernel, self.conv.bias, stride=2, padding=1)
