"""A tensor derived from a weight (packed, transformed), kept between calls and remade when the weight changes."""
from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef


class DerivedWeight:
    """``fn(weight)``, cached. The cache is tied to the weight's storage (held weakly, so a freed storage's
    address cannot be mistaken for a new one), its offset, its version counter and the gradients
    accumulated into it: replacing the parameter or its ``.data``, loading a state dict, an in-place edit
    or a training step makes the next :meth:`get` recompute it. Gradients count because fused optimizers
    (``AdamW(fused=True)``) update weights without bumping the version counter; while a weight holds a
    gradient (an optimizer may step at any moment) the value is recomputed on every call.

    Not seen: in-place edits through ``weight.data`` or of inference tensors (neither has a version
    counter that moves), and fused steps on gradients assigned by hand; call :meth:`clear` (or
    :func:`clear_derived_weights` on the module) after those (the modules holding one clear it on
    ``load_state_dict`` themselves, so a load into inference tensors is seen). Copies and pickles keep ``fn`` only (the
    value is recomputed on first use), so modules holding one can be deep-copied and saved."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn
        self._gradients_seen = 0
        self._watched: weakref.ref | None = None
        self._unhook: weakref.finalize | None = None  # removes the gradient hook: when called, or with this object
        self.clear()

    def clear(self) -> None:
        """Forget the value (and its memory) and stop watching the weight: with no value there is nothing to
        guard, and the weak reference to the weight would make PyTorch refuse to swap it (``.to`` and
        ``load_state_dict`` under ``torch.__future__.set_swap_module_params_on_conversion``)."""
        self._entry: tuple[StorageWeakRef, tuple, torch.Tensor] | None = None
        if self._unhook is not None:
            self._unhook()  # removes the gradient hook
        self._unhook, self._watched = None, None

    @property
    def value(self) -> torch.Tensor | None:
        return None if self._entry is None else self._entry[-1]

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.grad is not None:  # being trained: an optimizer step may come without any other sign
            return self.fn(weight.detach())
        # Whether gradients are counted is part of the key: a value made while the weight was frozen (no
        # hook) is not trusted once the weight can be trained, since a fused step since then went unseen.
        watched = self._watch_gradients(weight)
        version = None if weight.is_inference() else weight._version  # read before fn: edits during it count
        storage = weight.untyped_storage()
        key = (weight.data_ptr(), version, self._gradients_seen, watched)
        entry = self._entry  # one read: another thread may replace it meanwhile
        if entry is None or entry[0].expired() or entry[0].cdata != storage._cdata or entry[1] != key:
            entry = (StorageWeakRef(storage), key, self.fn(weight.detach()))
            self._entry = entry
        return entry[-1]

    def _watch_gradients(self, weight: torch.Tensor) -> bool:
        """Count the gradients accumulated into ``weight`` (a hook on the tensor, holding this object
        weakly so that it never keeps a dropped cache alive, and removed when this object goes). Returns
        whether ``weight`` is watched; a weight that cannot take gradients is not."""
        watched = self._watched() if self._watched is not None else None
        if watched is weight:
            return True
        if not (weight.requires_grad and weight.is_leaf):
            return False
        if self._unhook is not None:
            self._unhook()  # stop counting for the weight watched before
        me = weakref.ref(self)

        def count_gradient(_: torch.Tensor) -> None:
            cache = me()
            if cache is not None:
                cache._gradients_seen += 1

        self._unhook = weakref.finalize(self, weight.register_post_accumulate_grad_hook(count_gradient).remove)
        self._watched = weakref.ref(weight)
        return True

    def __getstate__(self) -> dict:
        return {"fn": self.fn}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["fn"])


def clear_derived_weights(module: torch.nn.Module) -> None:
    """:meth:`DerivedWeight.clear` every cache held by ``module`` and its submodules: after an in-place change
    the caches cannot see, such as loading weights into inference tensors."""
    for m in module.modules():
        for value in vars(m).values():
            if isinstance(value, DerivedWeight):
                value.clear()
