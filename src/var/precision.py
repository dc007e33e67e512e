"""Compute precision: the one place that names the dtypes, runs code under autocast, and decides whether a
lower precision pays on a device.

bf16 is fast on GPUs that have it natively and on CPUs with AMX or AVX512-BF16. A CPU without either
emulates it (converting to and from float32 around every op), which runs slower than plain float32, so
asking for bf16 there falls back to float32 with a note unless it is forced (to study bf16's numerics on
such a machine). float32 runs with no autocast at all, so its results are exactly those of code that
never heard of this module.
"""
from __future__ import annotations

import contextlib
import logging
from typing import ContextManager

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The dtypes the pipeline and its commands offer; fp16 is for var bench only.
PIPELINE_DTYPES = ("fp32", "bf16")


def default_device() -> str:
    """Where models run when no device is given: the GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(value: str | torch.dtype, choices: tuple[str, ...] = tuple(DTYPES)) -> torch.dtype:
    """A dtype given by name (``"bf16"``) or as a ``torch.dtype``, checked against ``choices``."""
    allowed = {DTYPES[name]: name for name in choices}
    dtype = DTYPES.get(value) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype) or dtype not in allowed:
        raise ValueError(f"unknown dtype {value!r}; expected one of {list(choices)} "
                         f"(or {', '.join(str(d) for d in allowed)})")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The short name (``fp32``, ``bf16``, ``fp16``) of a dtype of :data:`DTYPES`."""
    return next(name for name, d in DTYPES.items() if d == dtype)


def autocast(device: torch.device | str, dtype: torch.dtype) -> ContextManager:
    """Autocast to ``dtype`` on ``device``'s type; float32 is no autocast at all (bit-identical results)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def emulated_reason(dtype: torch.dtype, device: torch.device | str) -> str | None:
    """Why ``dtype`` would be emulated (slower than float32) on ``device``, or None where it runs natively
    (float32 always; devices other than CPU and CUDA are trusted)."""
    device = torch.device(device)
    if dtype == torch.float32:
        return None
    if device.type == "cpu":
        if dtype == torch.bfloat16 and not (torch.cpu._is_amx_tile_supported()
                                            or torch.cpu._is_avx512_bf16_supported()):
            return "this CPU has neither AMX nor AVX512-BF16, so bf16 would be emulated"
        if dtype == torch.float16 and not torch.cpu._is_amx_fp16_supported():
            return "this CPU has no AMX-FP16, so fp16 would be emulated"
        return None
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        return f"this GPU ({torch.cuda.get_device_name(device)}) has no native bf16, so bf16 would be emulated"
    return None


def choose_dtype(dtype: str | torch.dtype, device: torch.device | str, force: bool = False,
                  choices: tuple[str, ...] = tuple(DTYPES)) -> torch.dtype:
    """The dtype to compute in when ``dtype`` is asked for on ``device``: ``dtype`` where the device runs
    it natively; where it would be emulated, float32 with a note, or ``dtype`` anyway (slower, with a
    note) when ``force`` is set."""
    dtype = resolve_dtype(dtype, choices)
    reason = emulated_reason(dtype, device)
    if reason is None:
        return dtype
    name = dtype_name(dtype)
    if force:
        log.warning("note: %s: running %s anyway, slower than fp32", reason, name)
        return dtype
    log.warning("note: %s and run slower than fp32: running fp32 instead (force %s with --force-dtype, or "
                "force_dtype=True in Python)", reason, name)
    return torch.float32
