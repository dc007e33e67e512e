"""The evaluation tools (var.evaluation): the classifier, evaluate_pipeline, the Inception backend, var eval."""
import json
import logging
import sys
import types

import numpy as np
import pytest
import torch

from var import bundled_models
from var.data import ImageArrayDataset, split_holdout
from var.pipeline import VAROutput, VARPipeline
from var.evaluation import (Classifier, evaluate_on_data, ClassifierConfig, accuracy, balanced_indices, classify, evaluate_pipeline,
                            load_classifier, save_classifier)
from var.inception import InceptionUnavailable, find_backend, inception_metrics, load_npz_images
from var.recipes import fashion_mnist_configs
from conftest import mnist_sized_pipe, random_dataset, savez_then_full_disk, small_pipe


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
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
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


def test_eval_refuses_a_model_trained_on_fashion_mnists_class_folders(monkeypatch, caplog):
    """Class folders sort by name, and "T-shirt/top" cannot be a folder's name: such a model's classes are the
    classifier's in another order with one spelled differently. The check compared the sorted lists, so it
    only logged a warning, and every class's samples were judged as another class."""
    _, _, fashion = fashion_mnist_configs()
    folders = sorted(n.replace("/", "_") for n in fashion)
    pipe = mnist_sized_pipe()
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: pytest.fail("sampled before checking"))
    torch.manual_seed(0)
    classifier = Classifier(ClassifierConfig(widths=(8, 16), feature_dim=16, class_names=fashion)).eval()
    test, train = random_dataset(6, seed=1), random_dataset(6, seed=2)
    pipe.class_names = folders
    with pytest.raises(ValueError, match="in another order.*'Ankle boot' is class 0 of the model but 9 of the "
                                         "classifier"):
        evaluate_pipeline(pipe, classifier, test, train, n_per_class=3)
    pipe.class_names = [n.replace("/", "_") for n in fashion]   # the same order, one spelled differently
    with caplog.at_level(logging.WARNING), pytest.raises(pytest.fail.Exception, match="sampled before checking"):
        evaluate_pipeline(pipe, classifier, test, train, n_per_class=3)
    assert "differ from the classifier's" in caplog.text


def test_eval_save_npz_on_a_full_disk_leaves_no_truncated_file(tmp_path, monkeypatch):
    pipe = mnist_sized_pipe()
    torch.manual_seed(0)
    classifier = Classifier(ClassifierConfig(widths=(8, 16), feature_dim=16)).eval()
    test, train = random_dataset(3, seed=1), random_dataset(3, seed=2)
    monkeypatch.setattr(np, "savez", savez_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        evaluate_pipeline(pipe, classifier, test, train, n_per_class=2, save_npz=tmp_path / "e.npz")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_on_data_finds_samples_of_their_class_and_names_copies(monkeypatch):
    """Samples that are training images of the class asked for: every nearest real image is of that class,
    and the copy ratio is 0 (their distance to the nearest training image is 0, the held-out images' is not)."""
    pipe = small_pipe(channels=3)                                   # 5 classes, 8x8 RGB
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 8)
    images = (rng.random((40, 8, 8, 3)) * 60 + labels[:, None, None, None] * 45).astype(np.uint8)
    train, heldout = split_holdout(ImageArrayDataset(images, labels), fraction=0.2)

    def copies(self, class_labels, **options):
        rows = [np.flatnonzero(train.labels == int(c))[i % 3] for i, c in enumerate(class_labels)]
        return VAROutput(train.batch(np.array(rows))[0], [], torch.as_tensor(class_labels))

    real = evaluate_on_data(pipe, train, heldout, n_per_class=3, batch_size=5)  # the untrained model's samples
    monkeypatch.setattr(VARPipeline, "__call__", copies)
    copied = evaluate_on_data(pipe, train, heldout, n_per_class=3, batch_size=5)
    assert copied["copy_ratio"] == 0 and real["copy_ratio"] > 0.5
    assert copied["nearest_real_same_class"] == 1 and copied["nearest_real_same_class_per_class"] == \
        {str(k): 3 for k in range(5)}
    assert copied["frechet_samples_train"] < real["frechet_samples_train"]
    assert copied["frechet_train_heldout"] == real["frechet_train_heldout"] > 0     # the floor: real images only
    assert (copied["heldout_images"], copied["train_images"], copied["num_samples"]) == (8, 32, 15)
    assert 0 < copied["tokenizer_psnr_heldout"] < 60
