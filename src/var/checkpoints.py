"""Every on-disk format of a model, in one place: a pipeline folder (``config.json`` + ``vqvae.safetensors``
+ ``var.safetensors``), a tokenizer folder (``vqvae.json`` + ``vqvae.safetensors``) and the bundled models
shipped in the package; reading them with errors that name the file. Atomic writes are :mod:`var.files`'.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from . import official
from .files import write_atomically
from .vqvae import VQVAE, VQVAEConfig

BUNDLED_DIR = Path(__file__).parent / "weights"
CONFIG_NAME, VQVAE_WEIGHTS, VAR_WEIGHTS = "config.json", "vqvae.safetensors", "var.safetensors"
VQVAE_JSON = "vqvae.json"
FORMAT_VERSION = 1


def _is_pipeline_folder(path: Path) -> bool:
    """Whether ``path`` holds a pipeline's config.json (weights/ also holds the evaluation classifier)."""
    try:
        return json.loads((path / CONFIG_NAME).read_text()).get("format") == "var-pipeline"
    except (OSError, ValueError, AttributeError):
        return False


def read_config(path: Path, fmt: str = "var-pipeline") -> dict:
    """A saved model's JSON description (a pipeline's config.json, a tokenizer's vqvae.json), with errors
    that name the file (and the line of a JSON syntax error); it must say ``"format": fmt``."""
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file: {e}") from e
    if not isinstance(cfg, dict) or cfg.get("format") != fmt:
        raise ValueError(f"{path} is not a {fmt} config (no \"format\": \"{fmt}\")")
    return cfg


def load_module(build: Callable[[], torch.nn.Module], weights: Path, described_by: Path,
                what: str) -> torch.nn.Module:
    """``build()`` (a model of the configuration in ``described_by``) made on the meta device, then the
    ``weights`` file loaded into it; ValueError names a configuration that is not ``what`` and weights that do
    not match it."""
    try:
        with torch.device("meta"):
            module = build()
    except (KeyError, TypeError) as e:
        raise ValueError(f"{described_by} does not describe {what}: {e}") from e
    official.load_strict(module, official.load_state_dict(weights), f"{weights} does not match {described_by}")
    return module


def for_storage(name: str, tensor: torch.Tensor, store: torch.dtype) -> torch.Tensor:
    """``tensor`` as saved, floating point in ``store``. Refuses a finite value that ``store`` cannot hold
    (float16 ends at 65504): it would be saved as inf, and the model would load broken without a word."""
    tensor = tensor.detach()
    if not tensor.is_floating_point():
        return tensor.contiguous().cpu()
    stored = tensor.to(store)
    if not torch.equal(torch.isfinite(stored), torch.isfinite(tensor)):
        raise ValueError(f"{name} holds {tensor.abs().max().item():g}, beyond {store}'s largest value "
                         f"{torch.finfo(store).max:g}: save it in bf16 or fp32 (weights_dtype)")
    return stored.contiguous().cpu()


def bundled_folder(name: str | os.PathLike) -> Path | None:
    """The folder of the bundled model called ``name``, or None when ``name`` names none (a path does not)."""
    folder = BUNDLED_DIR / str(name)
    return folder if Path(name).name == str(name) and (folder / CONFIG_NAME).is_file() else None


def bundled_models() -> list[str]:
    """Names of the pipelines shipped inside the package."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if _is_pipeline_folder(p))


def export_vqvae(vqvae: VQVAE, out: Path, class_names: list[str] | None, data: str) -> None:
    """Write the tokenizer's weights and description into ``out``, each file atomically (snapshots overwrite them)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in vqvae.state_dict().items()}
    write_atomically(out / VQVAE_WEIGHTS, lambda tmp: save_file(tensors, tmp))
    meta = {"format": "var-vqvae", "vqvae": vqvae.config.to_dict(), "class_names": class_names, "data": data}
    write_atomically(out / VQVAE_JSON, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))


def load_vqvae(folder: str | os.PathLike) -> tuple[VQVAE, dict]:
    """A tokenizer from a ``train-vae`` run folder (or a saved pipeline folder, or a bundled model's name)
    and its metadata; ValueError names a file that does not describe or match a tokenizer."""
    folder = Path(folder) if Path(folder).is_dir() else bundled_folder(folder) or Path(folder)
    if (folder / VQVAE_JSON).is_file():
        described_by = folder / VQVAE_JSON
        meta = read_config(described_by, "var-vqvae")
    elif (folder / CONFIG_NAME).is_file():
        described_by = folder / CONFIG_NAME
        meta = read_config(described_by)
    else:
        raise FileNotFoundError(f"{folder} holds no trained tokenizer ({VQVAE_JSON} from `var train-vae`)")
    vqvae = load_module(lambda: VQVAE(VQVAEConfig(**meta["vqvae"])), folder / VQVAE_WEIGHTS, described_by,
                        "a tokenizer")
    return vqvae, meta
