"""`var edit` / `var vary`: class names given on the command line."""
import numpy as np
import pytest

from var import VARPipeline
from var.cli import main as cli
from conftest import small_pipe


NAMES = ["tench, Tinca tinca", "goldfish", "Ankle boot", "hen", "Eel"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    p = small_pipe()
    return VARPipeline(p.vqvae, p.var, class_names=NAMES).save_pretrained(tmp_path_factory.mktemp("model"))


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


def test_edit_and_vary_say_before_editing_whether_the_model_knows_the_image(tmp_path, caplog):
    """A colour photo for the bundled (grey, Fashion-MNIST) model: the grey conversion and a note that the
    model does not know the image, both before the result; a sample of the model's own: its PSNR, no note."""
    from PIL import Image

    y, x = np.mgrid[0:30, 0:40]
    Image.fromarray(np.stack([x * 6, y * 8, (x + y) * 3], -1).astype(np.uint8)).save(tmp_path / "photo.png")
    common = ["--device", "cpu", "--out", str(tmp_path / "out.png")]
    with caplog.at_level("INFO"):
        assert cli(["edit", "--image", str(tmp_path / "photo.png"), "--box", "0.25,0.25,0.75,0.75", *common]) == 0
    text = caplog.text
    assert f"note: converted {tmp_path / 'photo.png'} to grey (luminance): this model takes 1 channel" in text
    note = text.index("this model was trained on fashion-mnist; the image is outside what it knows: expect the "
                      "kept part to change too; the image was converted to greyscale")
    assert note < text.index("wrote ")
    sample = VARPipeline.from_pretrained("fashion-mnist")(class_labels=[3], seed=0).images
    Image.fromarray(sample[0, 0].mul(255).round().byte().numpy()).save(tmp_path / "dress.png")
    caplog.clear()
    with caplog.at_level("INFO"):
        assert cli(["vary", "--image", str(tmp_path / "dress.png"), "--keep-scales", "3", *common]) == 0
    assert f"reconstructs {tmp_path / 'dress.png'} at " in caplog.text and "outside what it knows" not in caplog.text
    assert "converted" not in caplog.text
