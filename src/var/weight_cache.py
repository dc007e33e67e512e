"""A tensor derived from a weight (packed, transformed), kept between calls and remade when the weight changes."""
from __future__ import annotations

import weakref
from typing import Callable

import torch


class DerivedWeight:
    """``fn(weight)``, cached. The cache belongs to one weight tensor object, its storage and its version
    counter: replacing the parameter, loading a state dict, an optimizer step or any in-place edit makes the
    next :meth:`get` recompute it."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn
        self.value: torch.Tensor | None = None
        self._source: tuple[weakref.ref, int, int] | None = None

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        source = self._source
        if source is None or source[0]() is not weight or source[1:] != (weight.data_ptr(), weight._version):
            # Value first, source second: a concurrent reader that sees the new source sees the new value.
            self.value = self.fn(weight.detach())
            self._source = (weakref.ref(weight), weight.data_ptr(), weight._version)
        return self.value
