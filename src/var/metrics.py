"""Image-quality measures that need no model: PSNR and the Frechet distance between feature sets."""
from __future__ import annotations

import numpy as np
import torch


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D):
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2).

    Computed in float64. The last trace is the sum of the singular values of S_a^1/2 S_b^1/2 (their squares
    are the eigenvalues of S_a^1/2 S_b S_a^1/2): accurate to rounding where that product's eigenvalues are
    zero (fewer vectors than dimensions), whose square roots of rounding noise would each add ~1e-8 |S|,
    and the same whichever set comes first. Tiny negative eigenvalues of S_a, S_b are clamped to zero.
    """
    a = np.asarray(feats_a.detach().cpu() if isinstance(feats_a, torch.Tensor) else feats_a, dtype=np.float64)
    b = np.asarray(feats_b.detach().cpu() if isinstance(feats_b, torch.Tensor) else feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) and (M, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 feature vectors per set for a covariance, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_covmean = np.linalg.svd(_sqrtm_psd(cov_a) @ _sqrtm_psd(cov_b), compute_uv=False).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean)


def _sqrtm_psd(cov_DD: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative rounding noise clamped to 0)."""
    w, v = np.linalg.eigh((cov_DD + cov_DD.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """Mean over images of the PSNR (dB) between [0, 1] image batches (B, C, H, W); the per-image
    MSE is floored at 1e-10, so identical images score 100 dB rather than infinity.

    ``where`` (H, W), (1, 1, H, W) or (B, 1, H, W), True or 1 on the pixels to compare, restricts the MSE
    to them (e.g. the kept region of an edit); every image must have at least one such pixel."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"psnr needs two (B, C, H, W) batches of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    sq_BCHW = (a.float() - b.float()).pow(2)
    if where is None:
        mse_B = sq_BCHW.flatten(1).mean(1)
    else:
        w = torch.as_tensor(where, device=a.device).float()
        w = w.view(1, 1, *w.shape) if w.ndim == 2 else w
        if w.ndim != 4 or w.shape[1] != 1 or w.shape[-2:] != a.shape[-2:] or w.shape[0] not in (1, a.shape[0]):
            raise ValueError(f"psnr's `where` must be (H, W) or (1 or B, 1, H, W) with H, W = {tuple(a.shape[-2:])}, "
                             f"got {tuple(w.shape)}")
        w_B1HW = w.expand(a.shape[0], 1, *a.shape[-2:])
        count_B = w_B1HW.flatten(1).sum(1) * a.shape[1]
        if bool((count_B == 0).any()):
            empty = torch.nonzero(count_B == 0).flatten().tolist()
            raise ValueError(f"psnr's `where` selects no pixel of image(s) {empty[:10]}")
        mse_B = (sq_BCHW * w_B1HW).flatten(1).sum(1) / count_B
    return float((-10 * torch.log10(mse_B.clamp_min(1e-10))).mean())
