"""The web demo's logic (var.serve.Demo) without a server: edits of painted regions and its reproduce commands."""
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from var import VARPipeline
from var.cli import build_parser, main as cli
from var.cmd import common
from var.editing import load_mask
from var.images import load_image
from var.serve import Demo, INPAINT, OUTPAINT, PAINTED
from conftest import small_pipe


@pytest.fixture(scope="module")
def pipe():
    """The tiny random one-channel pipeline (8x8 images, scales 1-4)."""
    return small_pipe(channels=1)


@pytest.fixture
def upload(tmp_path):
    """A 16x16 upload (twice the model's side) and a brush layer painting its top 9 rows: model row 4 is
    half painted (upload row 8) and half not (upload row 9)."""
    grey = (np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "bg.png")
    layer = np.zeros((16, 16, 4), np.uint8)
    layer[:9] = (255, 59, 48, 255)
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    Image.fromarray(np.where(layer[..., 3] > 0, 255, 0).astype(np.uint8)).save(tmp_path / "painted.png")
    return tmp_path


def mask_of(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("L")) > 127).float()


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


def test_demo_outpaint_regenerates_every_model_pixel_with_an_unpainted_upload_pixel(pipe, upload):
    """Outpainting keeps the painted region: a model pixel that also covers unpainted upload pixels must be
    regenerated, as ``var edit --mask --outpaint`` (load_mask inverts before it resizes) does."""
    demo = Demo(pipe)
    editor = {"background": str(upload / "bg.png"), "layers": [str(upload / "layer.png")]}
    _, shown, result, _ = demo.edit(editor, PAINTED, operation=OUTPAINT, seed=3)
    expected = load_mask(upload / "painted.png", size=8, invert=True)      # the command line's mask
    assert expected[4].all() and not expected[3].any()                      # row 4 holds unpainted pixels
    assert torch.equal(mask_of(shown), expected)
    image, _ = load_image(upload / "bg.png", 1, 8)
    want = pipe.inpaint(image, expected, seed=3, **{k: pipe.sampling_defaults[k] for k in ("cfg", "top_k", "top_p",
                                                                                           "temperature")})
    assert np.array_equal(np.asarray(result.convert("L")), want.images[0, 0].mul(255).round().byte().numpy())
    # Inpainting the same strokes regenerates every model pixel that any painted upload pixel touches.
    _, shown, _, _ = demo.edit(editor, PAINTED, operation=INPAINT, seed=3)
    assert torch.equal(mask_of(shown), load_mask(upload / "painted.png", size=8))


def test_demo_outpaint_with_nothing_painted_is_refused_not_a_new_image(pipe, upload):
    """Outpainting keeps the painted region: with nothing painted nothing of the upload would be kept, and
    the result would silently be a plain generation; the page says so instead, as it does for inpainting."""
    demo = Demo(pipe)
    with pytest.raises(ValueError, match="nothing to keep: the painted region is empty"):
        demo.edit({"background": str(upload / "bg.png"), "layers": []}, PAINTED, operation=OUTPAINT, seed=0)


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


def test_the_demos_edits_say_when_the_model_does_not_know_the_upload(tmp_path):
    """A colour photo uploaded to the bundled model's Edit and Vary: the note that the model (trained on
    fashion-mnist) does not know it, and that it was made grey, follows the reproduce command."""
    y, x = np.mgrid[0:30, 0:40]
    Image.fromarray(np.stack([x * 6, y * 8, (x + y) * 3], -1).astype(np.uint8)).save(tmp_path / "photo.png")
    bundled = Demo(VARPipeline.from_pretrained("fashion-mnist"))
    edited = bundled.edit({"background": str(tmp_path / "photo.png"), "layers": []}, "box", seed=0)[3]
    varied = bundled.vary(str(tmp_path / "photo.png"), 3, 1, seed=0)[1]
    for info in edited, varied:
        assert shown_command(info)[0] in ("edit", "vary")
        assert info.split("\n\n")[1].startswith("note: the tokenizer reconstructs the image at ")
        assert "trained on fashion-mnist; the image is outside what it knows" in info and "greyscale" in info
    sample = bundled.pipe(class_labels=[3], seed=0).images
    Image.fromarray(sample[0, 0].mul(255).round().byte().numpy()).save(tmp_path / "dress.png")
    assert "\n\n" not in bundled.vary(str(tmp_path / "dress.png"), 3, 1, seed=0)[1]


def test_the_demos_fast_switch_reaches_the_pipeline_and_its_command(demo, tmp_path, monkeypatch):
    """The Sampling panel's fast box: the images are the --fast ones, and the reproduce command says --fast."""
    monkeypatch.chdir(tmp_path)
    gallery, _, info, _ = demo.generate("Dress", 2, seed=3, fast=True)
    assert "--fast" in shown_command(info)
    assert cli(shown_command(info) + ["--npz", "samples.npz", "--no-grid"]) == 0
    with np.load("samples.npz") as npz:
        assert np.array_equal(npz["arr_0"], np.stack([np.asarray(im.convert("RGB")) for im, _ in gallery]))
    plain, _, plain_info, _ = demo.generate("Dress", 2, seed=3)
    assert "--fast" not in shown_command(plain_info)
    assert not np.array_equal(np.asarray(plain[0][0]), np.asarray(gallery[0][0]))
