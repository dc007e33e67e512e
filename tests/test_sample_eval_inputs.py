"""var sample / var eval inputs: class names holding commas, input files named before an evaluation's
long work, and the class-order check for a model trained on Fashion-MNIST's class folders."""
import logging

import numpy as np
import pytest
import torch

from var import VARPipeline
from var.cli import main as cli
from var.evaluation import Classifier, ClassifierConfig, evaluate_pipeline
from var.recipes import fashion_mnist_configs
from conftest import mnist_sized_pipe, random_dataset, small_pipe


NAMES = ["tench, Tinca tinca", "goldfish", "Ankle boot", "hen", "Eel"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    p = small_pipe()
    return VARPipeline(p.vqvae, p.var, class_names=NAMES).save_pretrained(tmp_path_factory.mktemp("model"))


def test_sample_classes_accept_a_class_name_holding_a_comma(saved, tmp_path):
    """A class folder named "tench, Tinca tinca" gives a class of that name: --classes split it at its comma
    into 'tench' and 'Tinca tinca', so that class could not be sampled by name at all."""
    npz = tmp_path / "s.npz"
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "1", "--no-grid", "--npz",
                str(npz), "--classes", "tench, Tinca tinca,hen", "goldfish", "Tench, Tinca Tinca", "4"]) == 0
    with np.load(npz) as f:
        assert f["labels"].tolist() == [0, 3, 1, 0, 4]


def test_sample_and_the_pipeline_seed_each_chunk_alike(saved, tmp_path):
    """`var sample` and a pipeline call (which `var eval` makes) seed chunk i with chunk_seed(seed, i): the
    same labels, seed and batch size give the same images, chunk after chunk (var eval drew every chunk from
    one generator, so the same seed gave other images than var sample)."""
    from var.images import to_rgb_uint8
    npz = tmp_path / "s.npz"
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "2", "--no-grid", "--npz",
                str(npz), "--batch-size", "3", "--seed", "7", "--top-k", "0", "--top-p", "0"]) == 0
    pipe = VARPipeline.from_pretrained(saved)
    with np.load(npz) as f:
        images, labels = f["arr_0"], f["labels"].tolist()
    out = pipe(class_labels=labels, seed=7, batch_size=3, top_k=0, top_p=0)
    assert np.array_equal(images, to_rgb_uint8(out.images))


def test_sample_classes_still_split_names_and_name_an_unknown_piece(saved, tmp_path, caplog):
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "1", "--no-grid",
                "--classes", "tench,goldfish"]) == 2
    assert "unknown class 'tench'" in caplog.text


@pytest.mark.parametrize("flag", ["--npz", "--npz-ref"])
def test_eval_names_a_missing_npz_before_evaluating_the_model(tmp_path, caplog, monkeypatch, flag):
    """A typo in --npz / --npz-ref was found only after the whole model evaluation (an hour at 50 samples
    per class), whose results, --json included, were then lost."""
    import var.cmd.evaluate
    monkeypatch.setattr(var.cmd.evaluate, "load_pipeline", lambda args: pytest.fail("loaded a model first"))
    real = tmp_path / "real.npz"
    np.savez(real, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    files = {"--npz": str(real), "--npz-ref": str(real), flag: str(tmp_path / "typo.npz")}
    argv = ["eval", "--per-class", "1", "--json", str(tmp_path / "r.json")]
    assert cli([*argv, *(x for kv in files.items() for x in kv)]) == 2
    assert f"{flag} {tmp_path / 'typo.npz'}: no such file" in caplog.text
    caplog.clear()
    assert cli([*argv, "--npz-ref", str(real)]) == 2     # a reference with nothing to compare: not ignored
    assert "--npz-ref" in caplog.text and "give --npz too" in caplog.text


def test_eval_npz_may_be_the_file_this_run_saves(tmp_path, monkeypatch):
    """var eval --save-npz s.npz --npz s.npz: the samples of this run, through Inception."""
    import var.cmd.evaluate
    npz = tmp_path / "s.npz"
    made = {}
    monkeypatch.setattr(var.cmd.evaluate, "_evaluate_model",
                        lambda args: made.update(model=True) or np.savez(npz, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
                        or {})
    monkeypatch.setattr(var.cmd.evaluate, "_inception", lambda args: made.update(inception=args.npz) or {})
    assert cli(["eval", "--per-class", "1", "--save-npz", str(npz), "--npz", str(npz)]) == 0
    assert made == {"model": True, "inception": str(npz)}


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


def savez_then_full_disk(f, **arrays):
    """np.savez on a disk that fills up part way through the file."""
    f.write(b"PK\x03\x04 partial")
    raise OSError(28, "No space left on device")


def test_sample_npz_on_a_full_disk_leaves_no_truncated_file(saved, tmp_path, monkeypatch, caplog):
    """A full disk while writing the npz (50,000 samples of 256 px are ~10 GB) left a truncated file under the
    name that FID tools read. The command says so in one line, exit status 2."""
    monkeypatch.setattr(np, "savez", savez_then_full_disk)
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "1", "--no-grid", "--npz",
                str(tmp_path / "s.npz")]) == 2
    assert "No space left" in caplog.text and "Traceback" not in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_eval_save_npz_on_a_full_disk_leaves_no_truncated_file(tmp_path, monkeypatch):
    pipe = mnist_sized_pipe()
    torch.manual_seed(0)
    classifier = Classifier(ClassifierConfig(widths=(8, 16), feature_dim=16)).eval()
    test, train = random_dataset(3, seed=1), random_dataset(3, seed=2)
    monkeypatch.setattr(np, "savez", savez_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        evaluate_pipeline(pipe, classifier, test, train, n_per_class=2, save_npz=tmp_path / "e.npz")
    assert list(tmp_path.iterdir()) == []


def test_edit_and_vary_class_accept_a_class_name_holding_a_comma(saved, tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "mask.png")
    asked = []
    for method in ("inpaint", "vary"):
        real = getattr(VARPipeline, method)
        monkeypatch.setattr(VARPipeline, method,
                            lambda self, *a, _real=real, **k: asked.append(k["class_labels"]) or _real(self, *a, **k))
    common = ["--model", str(saved), "--device", "cpu", "--image", str(tmp_path / "in.png"),
              "--class", "tench, Tinca tinca", "--out", str(tmp_path / "out.png")]
    assert cli(["edit", *common, "--mask", str(tmp_path / "mask.png")]) == 0
    assert cli(["vary", *common, "--keep-scales", "1"]) == 0
    assert asked == [["tench, Tinca tinca"]] * 2


def test_sample_png_dir_blocked_by_a_file_fails_before_sampling(saved, tmp_path, caplog):
    (tmp_path / "taken").write_text("")
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "1", "--no-grid",
                "--png-dir", str(tmp_path / "taken")]) == 2
    assert "--png-dir" in caplog.text and "is a file, expected a folder" in caplog.text
