"""A tensor derived from a weight (packed, transformed), kept between calls and remade when the weight changes."""
from __future__ import annotations

from typing import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef


class DerivedWeight:
    """``fn(weight)``, cached. The cache is tied to the weight's storage (held weakly, so a freed storage's
    address cannot be mistaken for a new one), its offset and its version counter: replacing the
    parameter or its ``.data``, loading a state dict, an optimizer step or any in-place edit makes the next
    :meth:`get` recompute it. Inference tensors have no version counter: in-place edits of those, made
    inside ``torch.inference_mode``, are not seen. Copies and pickles keep ``fn`` only (the value is
    recomputed on first use), so modules holding one can be deep-copied and saved."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn
        self.clear()

    def clear(self) -> None:
        """Forget the value (and its memory)."""
        self._entry: tuple[StorageWeakRef, int, int | None, torch.Tensor] | None = None

    @property
    def value(self) -> torch.Tensor | None:
        return None if self._entry is None else self._entry[-1]

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        version = None if weight.is_inference() else weight._version  # read before fn: edits during it count
        storage = weight.untyped_storage()
        entry = self._entry  # one read: another thread may replace it meanwhile
        if (entry is None or entry[0].expired() or entry[0].cdata != storage._cdata
                or entry[1:3] != (weight.data_ptr(), version)):
            entry = (StorageWeakRef(storage), weight.data_ptr(), version, self.fn(weight.detach()))
            self._entry = entry
        return entry[-1]

    def __getstate__(self) -> dict:
        return {"fn": self.fn}

    def __setstate__(self, state: dict) -> None:
        self.fn = state["fn"]
        self.clear()
