"""PSNR and the Frechet distance (var.metrics)."""
import numpy as np
import pytest
import torch

from var.evaluation import psnr
from var.metrics import frechet_distance


def relu_features(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    """Classifier-like features (ReLU outputs) of fewer vectors than dimensions: a rank-deficient covariance."""
    return np.maximum(np.random.default_rng(seed).standard_normal((n, d)) + shift, 0)


def test_frechet_distance_of_identical_rank_deficient_sets_is_zero_and_symmetric():
    """With fewer vectors than dimensions (a small --per-class), the zero eigenvalues of S_a^1/2 S_b S_a^1/2 come
    out as rounding noise ~1e-16 * |S|^2, whose square roots (~1e-8 * |S| each, hundreds of them) used to be
    summed into the trace: identical sets scored -2e-4 and the distance depended on the argument order."""
    a = relu_features(30, 2048, 0.0, seed=0)
    b = relu_features(30, 2048, 0.1, seed=1)
    scale = np.trace(np.cov(a, rowvar=False))                      # ~700
    assert abs(frechet_distance(a, a)) <= 1e-9 * scale
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab == pytest.approx(ba, rel=1e-12, abs=0)
    small = relu_features(50, 128, 0.0, seed=2)
    assert abs(frechet_distance(small, small)) <= 1e-9 * np.trace(np.cov(small, rowvar=False))


def test_frechet_distance_zero_for_identical_sets():
    feats = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(feats, feats)) < 1e-8


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    n, d = 200_000, 4
    mu_a, mu_b = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 1.0, 0.5, 3.0])
    a = mu_a + sd_a * rng.standard_normal((n, d))
    b = mu_b + sd_b * rng.standard_normal((n, d))
    # For diagonal covariances: |mu_a - mu_b|^2 + sum((sd_a - sd_b)^2).
    expected = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_frechet_distance_survives_rank_deficient_covariances():
    base = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    feats = torch.cat([base, base, torch.zeros(50, 10)], 1)   # covariance of rank 3 in 16 dimensions
    fd = frechet_distance(feats, feats + 1)
    assert np.isfinite(fd) and fd == pytest.approx(16.0, abs=1e-6)


def test_frechet_distance_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(10, 4\) and \(10, 5\)"):
        frechet_distance(torch.zeros(10, 4), torch.zeros(10, 5))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(10, 4))


def test_psnr_of_known_images():
    a = torch.zeros(2, 1, 4, 4)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)           # MSE 0.01
    b = torch.tensor([0.1, 0.01]).view(2, 1, 1, 1).expand_as(a)         # 20 dB and 40 dB: the mean is 30
    assert psnr(a, b) == pytest.approx(30.0, abs=1e-3)
    assert psnr(a, a) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, torch.zeros(2, 1, 4, 5))


def test_psnr_over_a_region_ignores_the_rest():
    a = torch.zeros(2, 1, 4, 4)
    b = a.clone()
    b[:, :, :2] = 0.1                                   # top half off by 0.1, bottom half exact
    top = torch.zeros(4, 4)
    top[:2] = 1
    assert psnr(a, b, where=top) == pytest.approx(20.0, abs=1e-4)
    assert psnr(a, b, where=1 - top) == pytest.approx(100.0)
    per_image = torch.stack([top, 1 - top])[:, None]   # image 0: the top, image 1: the bottom
    assert psnr(a, b, where=per_image) == pytest.approx(60.0, abs=1e-3)
    with pytest.raises(ValueError, match=r"selects no pixel of image\(s\) \[0, 1\]"):
        psnr(a, b, where=torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"selects no pixel of image\(s\) \[1\]"):
        psnr(a, b, where=torch.stack([top, torch.zeros(4, 4)])[:, None])
    with pytest.raises(ValueError, match=r"`where` must be"):
        psnr(a, b, where=torch.ones(3, 3))
