"""Sharded training of the transformer (``var train --fsdp``): PyTorch's FSDP2 and distributed checkpoints.

:func:`shard_transformer` applies ``torch.distributed.fsdp.fully_shard`` to every block and to the whole
model: each process then holds 1/N of every parameter, of its gradient and of AdamW's two moments, and a
block's full weights exist only while it runs (gathered before, freed after). A sharded run's checkpoint is
written by every process with ``torch.distributed.checkpoint`` (DCP), which also reshards it when a run
resumes on another number of processes.

On disk (beside the run's other files; every process must see the run folder, as under DDP):

* ``checkpoint-sharded.pt``: the index, written last and atomically by the main process: step, every
  process's RNG states, the optimizers' parameter groups and the name of the shard folder. It loads with
  ``weights_only=True``.
* ``checkpoint-shards/step_NNNNNNNN/``: DCP's files (tensors only: each process's shards and ``.metadata``).

A save that stops half way leaves the index naming the previous complete folder; the next save removes
the unfinished one.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from ..files import WriteFailed
from ..transformer import VAR
from .common import SHARDED_CHECKPOINT, DistInfo, atomic_save

log = logging.getLogger(__name__)

SHARDS = "checkpoint-shards"
# --dtype: the dtype of the gathered weights a block computes with. Gradients are reduced and the sharded
# weights, gradients and AdamW moments kept in float32 either way.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def shard_transformer(model: VAR, param_dtype: torch.dtype = torch.float32) -> VAR:
    """``fully_shard`` every block and then the whole model (the embeddings, the head and what no block
    holds), in place, over all processes of the default process group; returns ``model``. With a
    ``param_dtype`` other than float32 the gathered weights are cast to it for the forward and backward
    passes and the gradients reduced in float32 (``MixedPrecisionPolicy``). A block's ``modulation`` runs
    outside its ``forward`` (the model computes every block's AdaLN modulation first), so it is
    registered as a forward method too: its weights are gathered for it."""
    policy = MixedPrecisionPolicy(param_dtype=None if param_dtype == torch.float32 else param_dtype,
                                  reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
        register_fsdp_forward_method(block, "modulation")
    fully_shard(model, mp_policy=policy)
    return model


# glibc's malloc serves allocations of at least this many bytes by mmap once :func:`free_gathers_at_once` ran.
MMAP_THRESHOLD = 4 * 2 ** 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def free_gathers_at_once(threshold: int = MMAP_THRESHOLD) -> bool:
    """On the CPU with glibc: have ``malloc`` serve every allocation of at least ``threshold`` bytes by mmap,
    so that freeing it returns the memory to the system at once. FSDP gathers and frees each block's weights
    and gradients every step (4-17 MB a tensor at d16); by default glibc raises its mmap threshold to the
    size of such freed buffers (up to 32 MB) and then serves them from its heap, which keeps the freed memory:
    0.7 GB more peak memory per process at d16 (docs/training.md). Process-wide; a ``MALLOC_MMAP_THRESHOLD_``
    set by the user is left as it is. Returns whether the threshold was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False  # not glibc: its allocator has its own rules
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module`` (its parameters are then shards, DTensors)."""
    return isinstance(module, FSDPModule)


def _plain_class(model: VAR) -> type[VAR]:
    """The model's class before ``fully_shard`` (which makes it an instance of a subclass, FSDP<class>)."""
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def sharded_copy(model: VAR) -> VAR:
    """A copy of a sharded transformer, sharded the same way (the EMA weights of a sharded run): built on the
    meta device, so that no full copy exists at any moment and no random number is drawn."""
    with torch.device("meta"):
        copy = _plain_class(model)(model.config)
    shard_transformer(copy)
    device = next(model.parameters()).device
    copy.to_empty(device=device)
    with torch.no_grad():
        for mine, theirs in zip(copy.parameters(), model.parameters(), strict=True):
            mine.copy_(theirs)
        for mine, theirs in zip(copy.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
    return copy


def full_model(model: VAR, info: DistInfo) -> VAR | None:
    """The whole transformer as a plain (unsharded) model on ``info.device``, on the main process; None on the
    others. Every process must call it: the weights are gathered from all of them (through CPU memory)."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return None
    with torch.device("meta"):
        plain = _plain_class(model)(model.config)
    plain.load_state_dict(state, assign=True)
    return plain.to(info.device).train(model.training)


@contextlib.contextmanager
def quiet_view_outputs() -> Iterator[None]:
    """Silence FSDP2's warning that a wrapped module returned a view: the transformer's modulations and
    logits are views, and nothing changes them in place (which is what the warning is about)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor",
                                category=UserWarning)
        yield


@contextlib.contextmanager
def process_group_of_one(info: DistInfo, wanted: bool) -> Iterator[None]:
    """A one-process group for the block when ``wanted`` and the process is alone (not under torchrun):
    ``fully_shard`` and DCP work on process groups; with one process the shards are the whole weights, and
    the checkpoint is the same as a run on several processes writes. Nothing to do otherwise."""
    if not wanted or info.world > 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if info.device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- checkpoints
def save_checkpoint(index: Path, step: int, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], rng_per_rank: list[dict]) -> None:
    """Every process writes its shards of ``modules`` and of the optimizers' moments into a new folder of
    ``SHARDS``; then the main process writes the ``index`` (atomically) and removes the other shard folders.
    An optimizer's name is that of the module it trains. :class:`var.files.WriteFailed` names the folder or
    file that could not be written (on every process when DCP's write failed, else on the main one)."""
    folder = index.parent / SHARDS / f"step_{step:08d}"
    main = dist.get_rank() == 0
    if main and folder.exists():  # left by a save interrupted at this step before the run went back
        shutil.rmtree(folder)
    dist.barrier()
    states = {"models": {k: get_model_state_dict(m) for k, m in modules.items()},
              "optimizers": {k: get_optimizer_state_dict(modules[k], o)["state"] for k, o in optimizers.items()}}
    try:
        dcp.save(states, storage_writer=dcp.FileSystemWriter(folder))
    except CheckpointException as e:  # a BaseException: turned into the error a failed write is
        rank, (error, _) = next(iter(e.failures.items()))
        failed = WriteFailed.from_error(folder, error)
        raise WriteFailed(folder, f"{failed.reason} (process {rank})", failed.errno) from None
    if not main:
        return
    groups = {k: get_optimizer_state_dict(modules[k], o)["param_groups"] for k, o in optimizers.items()}
    atomic_save({"step": step, "models": sorted(modules), "optimizers": sorted(optimizers), "param_groups": groups,
                 "shards": folder.name, "world": dist.get_world_size(), "rng_per_rank": rng_per_rank}, index)
    for other in folder.parent.iterdir():
        if other != folder:
            shutil.rmtree(other, ignore_errors=True)


def load_checkpoint(index: Path, ckpt: dict, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Load the shards that ``ckpt`` (the ``index`` file's contents) names into ``modules`` and
    ``optimizers``, resharded over this run's processes by DCP. ValueError names a shard folder that is
    missing or whose metadata holds anything but tensor descriptions (loading it could run code)."""
    if not re.fullmatch(r"step_\d{8}", str(ckpt["shards"])):
        raise ValueError(f"{index} names the shard folder {ckpt['shards']!r}, expected step_NNNNNNNN in {SHARDS}")
    folder = index.parent / SHARDS / ckpt["shards"]
    check_shard_metadata(folder)
    states = {"models": {k: get_model_state_dict(m) for k, m in modules.items()},
              "optimizers": {k: get_optimizer_state_dict(modules[k], o)["state"] for k, o in optimizers.items()}}
    dcp.load(states, storage_reader=dcp.FileSystemReader(folder))
    for k, m in modules.items():
        set_model_state_dict(m, states["models"][k])
    for k, o in optimizers.items():
        set_optimizer_state_dict(modules[k], o, {"state": states["optimizers"][k],
                                                 "param_groups": ckpt["param_groups"][k]})
    if ckpt["world"] != dist.get_world_size() and dist.get_rank() == 0:
        log.info("%s: the shards of %d process(es) resharded over %d", folder, ckpt["world"], dist.get_world_size())


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's ``.metadata`` is a pickle: this reads it allowing only the classes DCP describes tensors with."""

    MODULES = ("torch.distributed.checkpoint.metadata",)
    NAMES = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
             ("pathlib", "WindowsPath"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}

    def find_class(self, module: str, name: str):
        if module in self.MODULES or (module, name) in self.NAMES or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def check_shard_metadata(folder: Path) -> None:
    """ValueError unless ``folder`` holds DCP metadata describing tensors alone: a run folder from someone
    else must not run code when resumed (DCP unpickles the metadata and any non-tensor entry)."""
    path = folder / ".metadata"
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: the checkpoint's shards are incomplete; move {folder.parent} and "
                         f"{folder.parent.parent / SHARDED_CHECKPOINT} away to start over") from None
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} holds Python objects other than DCP's tensor descriptions ({e}; loading it "
                         "would run code): refused") from None
    except (EOFError, OSError) as e:
        raise ValueError(f"{path} is truncated or unreadable ({e}); move {folder.parent} and "
                         f"{folder.parent.parent / SHARDED_CHECKPOINT} away to start over") from None
    if not isinstance(metadata, Metadata) or any(
            isinstance(entry, BytesStorageMetadata) for entry in metadata.state_dict_metadata.values()):
        raise ValueError(f"{path} describes entries other than tensors (loading them would unpickle Python "
                         "objects): refused, a var train --fsdp checkpoint holds tensors alone")
