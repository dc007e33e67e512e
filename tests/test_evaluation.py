"""The evaluation tools: Frechet distance, PSNR, the classifier, evaluate_pipeline, var eval."""
import json
import logging
import sys
import types

import numpy as np
import pytest
import torch

from var import bundled_models
from var.data import ImageArrayDataset
from var.evaluation import (Classifier, ClassifierConfig, accuracy, balanced_indices, classify, evaluate_pipeline,
                            frechet_distance, load_classifier, psnr, save_classifier)
from var.inception import InceptionUnavailable, find_backend, inception_metrics, load_npz_images
from conftest import mnist_sized_pipe, random_dataset


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


def test_classifier_shapes_and_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(class_names=[f"c{i}" for i in range(10)])).eval()
    x = torch.rand(3, 1, 28, 28)
    logits, feats = model(x)
    assert logits.shape == (3, 10) and feats.shape == (3, 128)
    save_classifier(model, tmp_path / "clf", info={"test_accuracy": 0.5})
    loaded, info = load_classifier(tmp_path / "clf")
    assert info == {"test_accuracy": 0.5} and loaded.config == model.config
    torch.testing.assert_close(classify(loaded, x), classify(model, x))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        classify(model, torch.rand(3, 3, 28, 28))


def test_bundled_models_lists_pipelines_only(tmp_path, monkeypatch):
    import var.pipeline

    save_classifier(Classifier(ClassifierConfig()), tmp_path / "a-classifier")
    (tmp_path / "a-pipeline").mkdir()
    (tmp_path / "a-pipeline" / "config.json").write_text(json.dumps({"format": "var-pipeline"}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    monkeypatch.setattr(var.checkpoints, "BUNDLED_DIR", tmp_path)
    assert bundled_models() == ["a-pipeline"]


def test_balanced_indices_are_per_class_and_seeded():
    labels = np.repeat(np.arange(3), 5)
    idx = balanced_indices(labels, 2, 3, seed=0)
    assert list(labels[idx]) == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(idx, balanced_indices(labels, 2, 3, seed=0))
    with pytest.raises(ValueError, match="class 0 has 5 images"):
        balanced_indices(labels, 6, 3, seed=0)


def test_evaluate_pipeline_on_a_tiny_random_model(tmp_path):
    pipe = mnist_sized_pipe()
    torch.manual_seed(0)
    classifier = Classifier(ClassifierConfig(widths=(8, 16), feature_dim=16)).eval()
    test, train = random_dataset(6, seed=1), random_dataset(6, seed=2)
    kw = dict(n_per_class=3, seed=0, batch_size=16)
    r = evaluate_pipeline(pipe, classifier, test, train, save_npz=tmp_path / "samples.npz", **kw)
    assert r["num_samples"] == 30 and r["reference_images"] == 60
    assert 0 <= r["class_accuracy"] <= 1 and len(r["class_accuracy_per_class"]) == 10
    for key in ("frechet_samples", "frechet_real_train", "frechet_reconstructions"):
        assert np.isfinite(r[key]) and r[key] > -1e-6, key
    assert 0 < r["tokenizer_psnr"] < 100 and r["settings"]["dtype"] == "fp32"
    assert r == {**evaluate_pipeline(pipe, classifier, test, train, **kw), "sampling_time_s": r["sampling_time_s"]}
    hot = evaluate_pipeline(pipe, classifier, test, train, temperature=5.0, **kw)   # reaches the sampler
    assert hot["settings"]["temperature"] == 5.0 and r["settings"]["temperature"] == 1.0
    assert hot["frechet_samples"] != r["frechet_samples"]
    assert hot["frechet_reconstructions"] == r["frechet_reconstructions"]
    bf16 = evaluate_pipeline(pipe.use_dtype("bf16", force=True), classifier, test, train, **kw)
    assert bf16["settings"]["dtype"] == "bf16" and bf16["tokenizer_psnr"] != r["tokenizer_psnr"]   # made in bf16
    pipe.use_dtype("fp32")
    saved = load_npz_images(tmp_path / "samples.npz")
    assert saved.shape == (30, 28, 28, 3) and saved.dtype == np.uint8

    wrong = Classifier(ClassifierConfig(image_size=32, widths=(8,), feature_dim=8))
    with pytest.raises(ValueError, match="32x32 images"):
        evaluate_pipeline(pipe, wrong, test, train, **kw)


def test_evaluate_pipeline_refuses_what_would_be_wrong_before_sampling(monkeypatch, caplog):
    """More images per class than the data holds, a zero batch, or the classifier's classes in another order
    (class folders sort by name) fail at once, not after generating every sample."""
    pipe = mnist_sized_pipe()
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: pytest.fail("sampled before checking"))
    names = [f"class {i}" for i in range(10)]
    classifier = Classifier(ClassifierConfig(widths=(8, 16), feature_dim=16, class_names=names)).eval()
    test, train = random_dataset(6, seed=1), random_dataset(6, seed=2)
    with pytest.raises(ValueError, match="class 0 has 6 images, fewer than n_per_class=7"):
        evaluate_pipeline(pipe, classifier, test, train, n_per_class=7)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        evaluate_pipeline(pipe, classifier, test, train, n_per_class=3, batch_size=0)
    pipe.class_names = names[::-1]
    with pytest.raises(ValueError, match="in another order"):
        evaluate_pipeline(pipe, classifier, test, train, n_per_class=3)
    pipe.class_names = [n.upper() for n in names]  # the same names, spelled in capitals: accepted
    with pytest.raises(pytest.fail.Exception, match="sampled before checking"):
        evaluate_pipeline(pipe, classifier, test, train, n_per_class=3)
    pipe.class_names = [f"other {i}" for i in range(10)]
    with caplog.at_level(logging.WARNING), pytest.raises(pytest.fail.Exception):
        evaluate_pipeline(pipe, classifier, test, train, n_per_class=3)
    assert "differ from the classifier's" in caplog.text


def test_bundled_classifier_reaches_90_percent():
    from var.data import fashion_mnist_dataset

    try:
        test = fashion_mnist_dataset(split="test")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    model, info = load_classifier()
    idx = np.random.default_rng(0).choice(len(test), 3000, replace=False)
    subset = ImageArrayDataset(test.images[idx], test.labels[idx])
    assert accuracy(model, subset) >= 0.90
    assert info["test_accuracy"] >= 0.90


def test_inception_metrics_need_local_weights(monkeypatch):
    import var.inception

    monkeypatch.setattr(var.inception, "_installed", lambda module: False)
    with pytest.raises(InceptionUnavailable, match="torch-fidelity is not installed; clean-fid is not installed"):
        find_backend()


def test_inception_metrics_pass_local_weights_to_torch_fidelity(monkeypatch, tmp_path):
    """With a stand-in torch_fidelity module: the found weights file and uint8 (3, H, W) images reach it."""
    import var.inception

    weights = tmp_path / "checkpoints" / var.inception.TORCH_FIDELITY_WEIGHTS
    weights.parent.mkdir()
    weights.write_bytes(b"")
    seen = {}

    def calculate_metrics(**kw):
        seen.update(kw)
        return {"frechet_inception_distance": 1.5, "inception_score_mean": 2.0, "inception_score_std": 0.1}

    monkeypatch.setitem(sys.modules, "torch_fidelity", types.SimpleNamespace(calculate_metrics=calculate_metrics))
    monkeypatch.setattr(var.inception, "_installed", lambda module: module == "torch_fidelity")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    out = inception_metrics(images, images)
    assert out == {"backend": "torch-fidelity", "fid": 1.5, "is_mean": 2.0, "is_std": 0.1}
    assert seen["feature_extractor_weights_path"] == str(weights) and seen["cache"] is False
    first = seen["input1"][0]
    assert first.dtype == torch.uint8 and first.shape == (3, 8, 8)


def test_var_eval_says_plainly_when_fid_is_not_computed(tmp_path, monkeypatch, capsys):
    from var.cli import main
    import var.inception

    monkeypatch.setattr(var.inception, "_installed", lambda module: False)
    arr = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=arr)
    np.savez(tmp_path / "b.npz", arr_0=arr)
    out_json = tmp_path / "r.json"
    assert main(["eval", "--per-class", "0", "--npz", str(tmp_path / "a.npz"), "--npz-ref", str(tmp_path / "b.npz"),
                 "--json", str(out_json)]) == 0
    assert "were not computed: torch-fidelity is not installed" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["inception"]["computed"] is False
    np.savez(tmp_path / "bad.npz", arr_0=arr.astype(np.float32))
    assert main(["eval", "--per-class", "0", "--npz", str(tmp_path / "bad.npz")]) == 2


def test_classifier_training_is_seeded_and_leaves_the_callers_random_state_alone():
    from var.evaluation import train_classifier

    data = random_dataset(4, seed=0)
    small = dict(epochs=1, batch_size=8, config=ClassifierConfig(widths=(8, 16), feature_dim=16))
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, record = train_classifier(data, seed=1, **small)
    assert torch.equal(torch.rand(3), expected_next)  # as if it had not run
    b, _ = train_classifier(data, seed=1, **small)
    c, _ = train_classifier(data, seed=2, **small)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.head.weight, c.head.weight) and record["seed"] == 1 and not a.training
