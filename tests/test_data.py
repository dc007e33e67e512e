"""Reading images: 16-bit files, what a folder of images holds, and holding images out."""
import logging

import numpy as np
import pytest
from PIL import Image

from var.data import ImageArrayDataset, list_image_files, load_resized, split_holdout
from var.editing import load_mask
from var.images import load_image


def test_16_bit_greyscale_images_are_scaled_not_clipped(tmp_path):
    """Pillow's convert clips 16-bit values at 255 (a 0..65535 ramp turns white after its first pixel);
    every image reader scales them to 8 bits instead."""
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as im:
        assert im.mode.startswith("I")  # read back as 16 bits
    want = np.linspace(0, 255, 32).round()
    for channels in (1, 3):
        got = load_resized(tmp_path / "ramp16.png", 32, channels)
        assert got.shape == (32, 32, channels) and np.abs(got[0, :, 0] - want).max() <= 1
        image, size = load_image(tmp_path / "ramp16.png", channels)
        assert size == (32, 32) and np.abs(image[0, 0, 0].numpy() * 255 - want).max() <= 1
    assert load_mask(tmp_path / "ramp16.png")[0].tolist() == (want >= 128).tolist()


def test_image_folders_skip_hidden_folders_and_say_what_they_ignore(tmp_path, caplog):
    for rel in ["a/1.png", "a/deep/2.png", "a/.ipynb_checkpoints/1-checkpoint.png", "b/.hidden.png", "b/3.png",
                "loose.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4)).save(tmp_path / rel)
    with caplog.at_level(logging.WARNING):
        files, names = list_image_files(tmp_path)
    assert names == ["a", "b"]
    assert [(str(f.relative_to(tmp_path)), c) for f, c in files] == [("a/1.png", 0), ("a/deep/2.png", 0), ("b/3.png", 1)]
    assert "ignoring 1 image(s) directly in" in caplog.text and "loose.png" in caplog.text


def test_holding_out_needs_two_images():
    one = ImageArrayDataset(np.zeros((1, 4, 4, 1), np.uint8), np.zeros(1, np.int64), ["x"])
    with pytest.raises(ValueError, match="1 image"):
        split_holdout(one)
    train, held = split_holdout(ImageArrayDataset(np.zeros((3, 4, 4, 1), np.uint8), np.zeros(3, np.int64), ["x"]))
    assert (len(train), len(held)) == (2, 1)
