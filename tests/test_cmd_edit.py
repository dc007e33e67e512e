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
