"""Edit inputs: outpainting a painted region of an upload larger than the
model, an empty region to keep, and non-integer ``keep_scales`` for variations."""
import numpy as np
import pytest
import torch
from PIL import Image

from var.editing import load_mask
from var.images import load_image
from var.serve import INPAINT, OUTPAINT, PAINTED, Demo
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


@pytest.mark.parametrize("keep", [2.5, True, None, "2"])
def test_vary_names_a_keep_scales_that_is_not_an_integer(pipe, keep):
    """2.5 used to keep 3 scales and True 1 without a word; None and "2" failed with a TypeError."""
    images = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rf"keep_scales must be an integer in \[0, 4\].*got {keep!r}"):
        pipe.vary(images, keep)


def test_vary_accepts_numpy_and_tensor_integers(pipe):
    images = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    source = pipe.encode(images)
    for keep in (np.int64(4), torch.tensor(4)):
        out = pipe.vary(images, keep, seed=0)
        assert all(torch.equal(a, b) for a, b in zip(out.tokens, source))
