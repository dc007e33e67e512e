"""CPU speed-ups, kept apart from the models they speed up.

- :mod:`~var.cpu.packed_linear`: linear layers whose weights are packed once for oneDNN's GEMM.
- :mod:`~var.cpu.winograd`: 3x3 convolutions by Winograd F(4x4, 3x3) for the tokenizer's decoder.
- :mod:`~var.cpu.streams`: a batch split into concurrent single-threaded streams.
- :mod:`~var.cpu.weight_cache`: the cache of weight-derived tensors the first two rely on.

Each falls back to plain PyTorch where it does not apply (another device, gradients, an unsupported shape
or compiled code), so the models compute the same function with or without them, up to float rounding.
"""
