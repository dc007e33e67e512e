"""CPU speed-ups, kept apart from the models they speed up: the models hold plain PyTorch layers, and
:func:`accelerate` swaps in these where a model runs on the CPU (:func:`plain` swaps them back).

- :mod:`~var.cpu.packed_linear`: linear layers whose weights are packed once for oneDNN's GEMM.
- :mod:`~var.cpu.int8_linear`: linear layers that multiply in int8, for ``fast`` generation
  (:func:`int8_copy` makes a transformer of them that shares the original's weights).
- :mod:`~var.cpu.winograd`: 3x3 convolutions by Winograd F(4x4, 3x3) for the tokenizer's decoder.
- :mod:`~var.cpu.upsample`: the decoder's upsampling and its convolution as one transposed convolution.
- :mod:`~var.cpu.streams`: a batch split into concurrent single-threaded streams.
- :mod:`~var.cpu.weight_cache`: the cache of weight-derived tensors the layers rely on.

Each layer falls back to the plain computation where it does not apply (another device, gradients, an
unsupported shape or compiled code), so a model computes the same function with or without them, up to
float rounding.
"""
from .int8_linear import int8_available
from .swap import CPU_LAYERS, accelerate, int8_copy, plain

__all__ = ["CPU_LAYERS", "accelerate", "int8_available", "int8_copy", "plain"]
