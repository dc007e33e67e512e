"""The standard FID and Inception Score, through a maintained library, only when its Inception weights
are already on this machine (nothing is downloaded).

torch-fidelity (FID and IS) is used when its weights file is given or in torch hub's checkpoints folder;
otherwise clean-fid (FID only) when its TorchScript Inception is where clean-fid keeps it (/tmp).
Neither library is a dependency of this package: when neither is usable, :class:`InceptionUnavailable`
says why.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
CLEAN_FID_WEIGHTS = Path("/tmp") / "inception-2015-12-05.pt"  # where clean-fid looks before downloading
TORCHVISION_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class InceptionUnavailable(RuntimeError):
    """No usable FID/IS library with local Inception weights; the message says what is missing."""


def torch_fidelity_weights() -> Path:
    """Where torch-fidelity's Inception weights land when it downloads them (torch hub's checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def find_backend(weights: Path | None = None) -> tuple[str, Path]:
    """The library to use and its local weights file: ``("torch-fidelity", path)`` or ``("clean-fid", path)``.

    ``weights`` is torch-fidelity's Inception weights file where it is not in torch hub's folder.
    Raises :class:`InceptionUnavailable` naming, for each library, whether it is installed and which
    weights file is missing.
    """
    if weights is not None:
        if not Path(weights).is_file():
            raise InceptionUnavailable(f"the Inception weights file {weights} does not exist (expected "
                                       f"torch-fidelity's {TORCH_FIDELITY_WEIGHTS})")
        if not _installed("torch_fidelity"):
            raise InceptionUnavailable("torch-fidelity is not installed (pip install -e '.[fid]')")
        return "torch-fidelity", Path(weights)
    reasons = []
    for name, module, weights in (("torch-fidelity", "torch_fidelity", torch_fidelity_weights()),
                                  ("clean-fid", "cleanfid", CLEAN_FID_WEIGHTS)):
        if not _installed(module):
            reasons.append(f"{name} is not installed")
        elif not weights.is_file():
            reasons.append(f"{name} is installed but its Inception weights are not at {weights}")
        else:
            return name, weights
    raise InceptionUnavailable("; ".join(reasons) + " (nothing is downloaded; pip install -e '.[fid]' installs "
                               "torch-fidelity, and var eval --inception-weights PATH names its weights file)")


def load_npz_images(path: str | os.PathLike) -> np.ndarray:
    """``arr_0`` of an npz file as uint8 RGB (N, H, W, 3); grayscale (N, H, W) or (N, H, W, 1) is repeated.
    ValueError names the file when it is not an npz (a zip of .npy arrays) or its arr_0 cannot be read."""
    with open(path, "rb") as f:
        if not zipfile.is_zipfile(f):
            raise ValueError(f"{path} is not an npz file (a zip archive of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(path) as npz:
            names = npz.files
            arr = npz["arr_0"] if "arr_0" in names else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # object arrays, a damaged zip
        raise ValueError(f"{path}: arr_0 cannot be read ({e})") from e
    if arr is None:
        raise ValueError(f"{path} has no arr_0 array (it holds {names})")
    if arr.dtype != np.uint8:
        raise ValueError(f"{path}: arr_0 must be uint8 images, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or len(arr) < 2:
        raise ValueError(f"{path}: arr_0 must be (N, H, W, 3) uint8 images with N >= 2, got {arr.shape}")
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def inception_metrics(images_NHW3: np.ndarray, reference_NHW3: np.ndarray, device: str = "cpu",
                      weights: Path | None = None) -> dict:
    """FID of ``images`` against ``reference`` and, with torch-fidelity, the Inception Score of ``images``.

    Both are uint8 (N, H, W, 3); ``weights`` as in :func:`find_backend`. Returns ``{"backend", "fid"}``
    plus ``"is_mean", "is_std"`` when the library computes IS. Raises :class:`InceptionUnavailable` when
    no library with local weights exists.
    """
    backend, weights = find_backend(weights)
    log.info("computing FID%s with %s (weights %s)", "/IS" if backend == "torch-fidelity" else "", backend, weights)
    if backend == "torch-fidelity":
        return _torch_fidelity(images_NHW3, reference_NHW3, weights, device)
    return _clean_fid(images_NHW3, reference_NHW3, device)


class _UInt8Images(torch.utils.data.Dataset):
    """uint8 (N, H, W, 3) images as the (3, H, W) uint8 tensors torch-fidelity takes."""

    def __init__(self, images_NHW3: np.ndarray):
        self.images = images_NHW3

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)


def _torch_fidelity(images: np.ndarray, reference: np.ndarray, weights: Path, device: str) -> dict:
    try:
        import torch_fidelity
    except (ImportError, RuntimeError) as e:  # a torchvision built for another torch fails as it loads
        raise InceptionUnavailable(f"torch-fidelity is installed but cannot be imported ({e}): its torchvision must "
                                   f"be built for this torch (for the CPU build, torchvision==0.28.0 from "
                                   f"{TORCHVISION_CPU_INDEX})") from e

    m = torch_fidelity.calculate_metrics(input1=_UInt8Images(images), input2=_UInt8Images(reference), fid=True,
                                         isc=True, cuda=torch.device(device).type == "cuda", cache=False,
                                         feature_extractor_weights_path=str(weights), verbose=False)
    return {"backend": "torch-fidelity", "fid": float(m["frechet_inception_distance"]),
            "is_mean": float(m["inception_score_mean"]), "is_std": float(m["inception_score_std"])}


def _clean_fid(images: np.ndarray, reference: np.ndarray, device: str) -> dict:
    """clean-fid compares folders of image files, so both sets are written as PNGs to a temporary folder."""
    from cleanfid import fid
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="var-fid-") as tmp:
        folders = []
        for name, arr in (("images", images), ("reference", reference)):
            folder = Path(tmp) / name
            folder.mkdir()
            for i, img in enumerate(arr):
                Image.fromarray(img).save(folder / f"{i:06d}.png")
            folders.append(str(folder))
        value = fid.compute_fid(folders[0], folders[1], mode="clean", num_workers=0, device=torch.device(device),
                                verbose=False)
    return {"backend": "clean-fid", "fid": float(value)}
