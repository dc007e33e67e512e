"""Checks of the web demo's reproduce commands, the Frechet distance's numerics, the quick start's class labels
and ``var bench``'s option checks."""
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from var import VAR, VQVAE, VARPipeline
from var.cli import build_parser
from var.cli import main as cli
from var.cmd import common
from var.metrics import frechet_distance


def relu_features(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    """Classifier-like features (ReLU outputs) of fewer vectors than dimensions: a rank-deficient covariance."""
    return np.maximum(np.random.default_rng(seed).standard_normal((n, d)) + shift, 0)


# ------------------------------------------------------------------------------------- Frechet distance
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


# ----------------------------------------------------------------------------------- the quick start
def tiny_models():
    torch.manual_seed(0)
    vqvae = VQVAE(num_embeddings=48, embedding_dim=8, max_scale=4, ch=32, ch_mult=(1, 2), num_res_blocks=1)
    var = VAR(vocab_size=48, d_model=64, n_layers=2, n_heads=2, max_scale=4, num_classes=5, latent_channels=8)
    return var, vqvae


@pytest.mark.parametrize("labels, shown", [([1.7, 2.0], "1.7"), (torch.tensor([0.5, 1.0]), "0.5"),
                                           ([True, False], "True"), (["Dress", "Bag"], "'Dress'")])
def test_quick_start_generate_refuses_class_labels_that_are_not_whole_ids(labels, shown):
    """VAR.generate(class_labels=[1.7, ...]) silently generated class 1 (the float was truncated); the pipeline
    refuses such a label by name, and so must the quick start's call."""
    var, vqvae = tiny_models()
    with pytest.raises(ValueError, match=f"class_labels must be whole class ids.*{shown}"):
        var.generate(batch_size=2, class_labels=labels, seed=0, vqvae=vqvae)
    # Whole numbers, as floats (JSON) or any integer type, are still ids.
    whole = var.generate(batch_size=2, class_labels=[1.0, np.int64(2)], seed=0, vqvae=vqvae)
    assert torch.equal(whole, var.generate(batch_size=2, class_labels=[1, 2], seed=0, vqvae=vqvae))


# -------------------------------------------------------------------------------------- the web demo
@pytest.fixture(scope="module")
def demo():
    pytest.importorskip("gradio", reason='the web demo needs the web extra: pip install -e ".[web]"')
    from var import serve

    return serve.Demo(VARPipeline.from_pretrained("fashion-mnist"))


@pytest.fixture()
def garment(tmp_path) -> str:
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 8:20] = 180
    Image.fromarray(image).save(tmp_path / "input.png")
    return str(tmp_path / "input.png")


def shown_command(info: str) -> list[str]:
    """The arguments of the ``var`` command in a result's info line."""
    argv = shlex.split(info.split("`")[1])
    assert argv[0] == "var"
    return argv[1:]


def test_the_demos_reproduce_commands_run_and_make_the_same_images(demo, garment, tmp_path, monkeypatch):
    """The Vary tab's command lacked --out, which var vary requires: it stopped with a usage error."""
    monkeypatch.chdir(tmp_path)                              # where input.png is and result.png goes
    gallery, _, info, _ = demo.generate("Dress", 2, cfg=2.0, seed=3)
    assert cli(shown_command(info) + ["--npz", "samples.npz", "--no-grid"]) == 0
    with np.load("samples.npz") as npz:
        assert np.array_equal(npz["arr_0"], np.stack([np.asarray(im.convert("RGB")) for im, _ in gallery]))

    variations, info = demo.vary(garment, 3, 2, temperature=1.3, seed=4)
    assert cli(shown_command(info)) == 0, info
    made = np.asarray(Image.open("result.png").convert("RGB"))
    assert np.array_equal(made, np.asarray(variations[0][0].convert("RGB")))

    # The Edit tab's command (the same omission), run on the input and mask the page offers for download.
    given, mask, result, info = demo.edit({"background": garment, "layers": []}, "box", 0.25, 0.25, 0.75, 0.75,
                                          "outpaint", "Bag", seed=5)
    given.save("input.png")
    mask.save("mask.png")
    assert cli(shown_command(info)) == 0, info
    assert np.array_equal(np.asarray(Image.open("result.png").convert("RGB")), np.asarray(result.convert("RGB")))


def test_the_demos_reproduce_commands_name_the_device_the_images_were_made_on(demo, garment, monkeypatch):
    """A demo served with --device cpu on a machine with a GPU showed commands without --device: run there,
    they generated on the GPU, whose random stream differs from the CPU's, so they made other images."""
    monkeypatch.setattr(common, "default_device", lambda: "cuda")   # where the command is run: a GPU machine
    for info in (demo.generate("Dress", 1, seed=1)[2], demo.vary(garment, 5, 1, seed=1)[1]):
        args = build_parser().parse_args(shown_command(info))
        assert torch.device(args.device or common.default_device()) == demo.pipe.device, info


# ------------------------------------------------------------------------------------------- var bench
@pytest.mark.parametrize("option, value", [("--train-batch-size", "-1"), ("--batch-size", "0"), ("--repeats", "0"),
                                           ("--streams", "0")])
def test_var_bench_names_a_bad_count_before_building_a_model(monkeypatch, caplog, option, value):
    """--train-batch-size -1 crashed with torch's traceback after the whole generation benchmark; the other
    counts were named only after the (d16: ~10 GiB) model had been built."""
    import var.bench

    monkeypatch.setattr(var.bench, "build_pipeline", lambda *a, **k: pytest.fail("built a model before checking"))
    assert cli(["bench", "--config", "fashion-mnist", option, value]) == 2
    assert f"{option} must be" in caplog.text and f"got {value}" in caplog.text
