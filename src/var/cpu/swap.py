"""The CPU layers swapped into a model for inference on the CPU (:func:`accelerate`), and out again (:func:`plain`).

Each CPU layer subclasses the plain layer it replaces and takes over that layer's parameter objects: state
dict keys, parameter identity (optimizers, EMA copies) and ``load_state_dict`` are the same either way.
"""
from __future__ import annotations

import copy
import itertools
import logging

import torch
import torch.nn as nn

from ..transformer import Linear
from ..vqvae import ResnetBlock, Upsample
from .int8_linear import Int8Linear, int8_available
from .packed_linear import PackedLinear, packing_available, total_memory_bytes
from .upsample import FoldedUpsample
from .winograd import WinogradConv2d

log = logging.getLogger(__name__)

CPU_LAYERS = (PackedLinear, WinogradConv2d, FoldedUpsample)  # Int8Linear is a PackedLinear


def accelerate(module: nn.Module) -> nn.Module:
    """Swap the CPU layers into ``module``'s submodules, in place: a :class:`PackedLinear` for every
    :class:`var.transformer.Linear` (where oneDNN's packed ops run and the packed copies take at most a
    quarter of the machine's RAM), a :class:`WinogradConv2d` for the 3x3 convolutions of every
    :class:`var.vqvae.ResnetBlock` and a :class:`FoldedUpsample` for every :class:`var.vqvae.Upsample`.
    Layers swapped before are left as they are. Returns ``module``; ValueError when it holds a parameter or
    buffer off the CPU."""
    devices = sorted({str(t.device) for t in (*module.parameters(), *module.buffers())} - {"cpu"})
    if devices:
        raise ValueError(f"accelerate swaps in layers for the CPU, but the module holds tensors on {devices}: "
                         "move it to the CPU first (var.cpu.plain undoes the swap for other devices)")
    pack = _packing_fits(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            with torch.device("meta"):  # the new layer's own parameters are placeholders for the old layer's
                layer = _cpu_layer(parent, child, pack)
            if layer is not None:
                setattr(parent, name, _holding_parts_of(child, layer))
                if isinstance(layer, PackedLinear):
                    layer.pack()
    return module


def plain(module: nn.Module) -> nn.Module:
    """Swap every CPU layer of ``module``'s submodules back for the plain layer it replaced, in place, freeing
    the packed and transformed copies of the weights. Returns ``module``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CPU_LAYERS):
                with torch.device("meta"):
                    layer = _plain_layer(child)
                setattr(parent, name, _holding_parts_of(child, layer))
    return module


def int8_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose linear layers (:class:`var.transformer.Linear` and :class:`PackedLinear`)
    multiply in int8 (:class:`~var.cpu.int8_linear.Int8Linear`): the module tree is new, its parameters and
    buffers are ``module``'s own (the same tensors, so later weight changes show in both), and a copied
    :class:`PackedLinear` shares its packed weight with the original's. What ``fast`` generation runs.
    RuntimeError where :func:`~var.cpu.int8_linear.int8_available` is False."""
    if not int8_available():
        raise RuntimeError("int8 linear layers need oneDNN's packed linear ops and torch._int_mm on the CPU, "
                           "which this PyTorch build lacks")
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    twin = copy.deepcopy(module, shared)
    originals = dict(module.named_modules())
    for parent_name, parent in list(twin.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) not in (Linear, PackedLinear):
                continue
            with torch.device("meta"):
                layer = Int8Linear(child.in_features, child.out_features, bias=child.bias is not None)
            original = originals[f"{parent_name}.{name}" if parent_name else name]
            if isinstance(original, PackedLinear):
                layer._packed = original._packed
            setattr(parent, name, _holding_parts_of(child, layer))
    return twin


def _cpu_layer(parent: nn.Module, child: nn.Module, pack: bool) -> nn.Module | None:
    """An empty CPU layer of ``child``'s configuration (``child`` being ``parent``'s submodule), or None where
    none replaces it."""
    if type(child) is Linear and pack:
        return PackedLinear(child.in_features, child.out_features, bias=child.bias is not None)
    if type(child) is nn.Conv2d and isinstance(parent, ResnetBlock) and _is_plain_3x3(child):
        return WinogradConv2d(child.in_channels, child.out_channels)
    if type(child) is Upsample:
        return FoldedUpsample(child.conv.in_channels)
    return None


def _plain_layer(child: nn.Module) -> nn.Module:
    """An empty plain layer of the CPU layer ``child``'s configuration."""
    if isinstance(child, PackedLinear):
        return Linear(child.in_features, child.out_features, bias=child.bias is not None)
    if isinstance(child, WinogradConv2d):
        return nn.Conv2d(child.in_channels, child.out_channels, 3, 1, 1)
    if isinstance(child, FoldedUpsample):
        return Upsample(child.conv.in_channels)
    raise TypeError(f"{type(child).__name__} is not one of the CPU layers {[c.__name__ for c in CPU_LAYERS]}")


def _holding_parts_of(old: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` with ``old``'s own parameters and submodules (the same objects) in place of its own, and its
    training mode."""
    for name, p in old.named_parameters(recurse=False):
        setattr(new, name, p)
    for name, child in old.named_children():
        setattr(new, name, child)
    return new.train(old.training)


def _is_plain_3x3(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is the convolution :class:`WinogradConv2d` computes: 3x3, stride 1, padding 1, dense."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def _packing_fits(module: nn.Module) -> bool:
    """Whether ``module``'s linear layers are to be packed: oneDNN's packed ops run in this PyTorch build, and
    the packed copies (the weights' size again) take at most a quarter of the machine's RAM."""
    linears = [m for m in module.modules() if type(m) is Linear]
    if not linears:
        return False
    if not packing_available():
        log.info("oneDNN packed linear layers do not run in this PyTorch build: the linear layers stay plain")
        return False
    extra, ram = sum(m.weight.numel() * m.weight.element_size() for m in linears), total_memory_bytes()
    if ram is not None and extra > ram / 4:
        log.info("not packing the linear layers' weights: the copy would take %.1f GiB of %.1f GiB RAM",
                 extra / 2 ** 30, ram / 2 ** 30)
        return False
    return True
