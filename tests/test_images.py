"""Image files (var.images): transparency read on black, grid sizes."""
import numpy as np
import pytest
import torch
from PIL import Image

import var.images
from var.images import grid, load_image


def test_grid_size_is_the_size_of_the_grid():
    images = torch.rand(7, 3, 5, 6)
    names = ["a", "a longer label", "c"]
    for scale, cols in ((1, None), (3, ["x", "y", "z"])):
        drawn = grid(images, nrow=3, scale=scale, row_labels=names, col_labels=cols)
        assert drawn.size == var.images.grid_size(7, 3, (5 * scale, 6 * scale), row_labels=names, col_labels=cols)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_are_read_on_black(tmp_path, mode):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 128                                   # grey, but fully transparent
    rgba[0, 0] = (200, 200, 200, 255)
    rgba[0, 1] = (200, 200, 200, 128)                     # half transparent: half way to black
    Image.fromarray(rgba, "RGBA").convert(mode).save(tmp_path / "t.png")
    for channels in (1, 3):
        image, _ = load_image(tmp_path / "t.png", channels)
        values = (image[0, 0] * 255).round()
        assert values[0, 0] == 200 and values[0, 1] == 100 and (values[1:] == 0).all()


def test_a_palette_images_transparent_colour_is_read_on_black(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([128, 128, 128, 255, 255, 255])
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png", transparency=0)
    image, _ = load_image(tmp_path / "p.png", 1)
    assert (image[0, 0, 0] * 255).round().tolist() == [0, 255]


def test_square_columns_make_a_square_ish_grid():
    assert [var.images.square_columns(n) for n in (1, 2, 4, 5, 8, 9, 16, 17, 100)] == [1, 2, 2, 3, 3, 3, 4, 5, 10]
    with pytest.raises(ValueError, match="at least 1 tile, got 0"):
        var.images.square_columns(0)


def test_has_colour_sees_colour_not_grey_stored_as_rgb_or_jpeg(tmp_path):
    grey = (np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)
    Image.fromarray(grey).convert("RGB").save(tmp_path / "grey.jpg", quality=75)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    tinted = np.repeat(grey[..., None], 3, -1)
    tinted[3, 4] = (200, 40, 40)                                       # one red pixel
    Image.fromarray(tinted).save(tmp_path / "red.png")
    assert [var.images.has_colour(tmp_path / f) for f in ("grey.jpg", "grey.png", "red.png")] == [False, False, True]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*bad.png"):
        var.images.has_colour(tmp_path / "bad.png")
