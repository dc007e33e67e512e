"""Reading data sets (var.data): image files and folders (unreadable, empty or corrupt ones), hold-out, manifests."""
import logging

import numpy as np
import pytest
from PIL import Image

from var.cli import main as cli
from var.data import (ImageArrayDataset, describe_data, image_folder_dataset, list_image_files, load_resized, open_prepared,
                      split_holdout)
from var.editing import load_mask
from var.images import load_image
from conftest import VAE_ARGS, image_folder, logged_error, make_folder, shapes_folder


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


def test_photos_are_read_upright_as_their_exif_orientation_says(tmp_path):
    """A phone photo is stored sideways with an orientation tag: images, data sets and masks must all be
    read as displayed, or a mask painted on the displayed photo misses its region."""
    upright = np.zeros((8, 12), np.uint8)  # 8 rows, 12 columns: a bright block in the top-left corner
    upright[:3, :4] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as the camera wrote it
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "photo.png", exif=exif)
    image, original = load_image(tmp_path / "photo.png", channels=1)
    assert original == (12, 8) and np.array_equal(image[0, 0].mul(255).round().byte().numpy(), upright)
    assert np.array_equal(load_resized(tmp_path / "photo.png", (8, 12), channels=1)[..., 0], upright)
    assert np.array_equal(load_mask(tmp_path / "photo.png").numpy(), upright >= 128)


def test_a_folder_without_images_is_not_a_class(tmp_path, caplog):
    """An unzipped macOS archive holds __MACOSX (only hidden ._ files): it must not become a class that has
    no images, which would shift nothing but leave a class the model can never learn."""
    for name in ("coat", "__MACOSX", "shirt"):
        (tmp_path / name).mkdir()
    for name in ("coat", "shirt"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name / "a.png")
    (tmp_path / "__MACOSX" / "._a.png").write_bytes(b"\x00\x05\x16\x07")
    with caplog.at_level(logging.WARNING):
        files, names = list_image_files(tmp_path)
    assert names == ["coat", "shirt"] and [c for _, c in files] == [0, 1]
    assert "__MACOSX" in caplog.text


def test_an_image_too_large_to_decode_is_named_not_a_traceback(tmp_path, monkeypatch):
    """Pillow refuses images over twice MAX_IMAGE_PIXELS with DecompressionBombError, which is no OSError:
    `var edit` on one printed a traceback instead of naming the file."""
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # so this one counts as a bomb
    with pytest.raises(ValueError, match="cannot read image .*big.png"):
        load_image(tmp_path / "big.png", channels=1)
    with pytest.raises(ValueError, match="cannot read mask .*big.png"):
        load_mask(tmp_path / "big.png")


def test_an_unreadable_class_folder_is_named_not_dropped(tmp_path, unreadable, caplog):
    root = image_folder(tmp_path / "data")
    unreadable(root / "b")
    with pytest.raises(ValueError, match=f"cannot read folder {root / 'b'}: Permission denied"):
        list_image_files(root)
    assert cli(["prepare-data", str(root), "--image-size", "8", "--out", str(tmp_path / "out")]) == 2
    assert logged_error(caplog) == f"error: cannot read folder {root / 'b'}: Permission denied"
    assert not (tmp_path / "out").exists()


def test_an_unreadable_folder_inside_a_class_is_named(tmp_path, unreadable):
    root = image_folder(tmp_path / "data")
    (root / "a" / "more").mkdir()
    unreadable(root / "a" / "more")
    with pytest.raises(ValueError, match=f"cannot read folder {root / 'a' / 'more'}: Permission denied"):
        list_image_files(root)


def test_a_damaged_manifest_is_named(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=rf"^{tmp_path}/manifest.json is not valid JSON"):
        open_prepared(tmp_path)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/manifest.json holds a JSON list, expected an object"):
        open_prepared(tmp_path)


def test_bad_data_is_reported(tmp_path, caplog):
    root = make_folder(tmp_path / "d", n_per_class=2, corrupt=True)
    with caplog.at_level("WARNING"):
        ds = image_folder_dataset(root, 16)
    assert len(ds) == 4 and ds.skipped == [str(root / "circles" / "broken.png")]
    assert "broken.png" in caplog.text and "skipped 1 file" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        image_folder_dataset(tmp_path / "empty", 16)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"xx")
    with pytest.raises(ValueError, match="could be decoded"):
        image_folder_dataset(tmp_path / "junk", 16)
    assert cli(["train-vae", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *VAE_ARGS]) == 2


def test_describe_data_tells_colour_from_greyscale_and_counts_without_decoding_all(tmp_path):
    colour = describe_data(str(shapes_folder(tmp_path / "shapes", 5)))
    assert (colour.kind, colour.count, colour.class_names, colour.channels, colour.size_hw) == \
        ("folder", 10, ["discs", "squares"], 3, (32, 32))
    grey = tmp_path / "grey" / "only"
    grey.mkdir(parents=True)
    for i, size in enumerate([(20, 10), (24, 12), (40, 30)]):   # RGB files whose pixels are grey count as grey
        Image.fromarray(np.full((size[1], size[0], 3), 60 * i, np.uint8)).save(grey / f"{i}.png")
    summary = describe_data(str(tmp_path / "grey"))
    assert (summary.count, summary.channels, summary.size_hw) == (3, 1, (12, 24))   # median height x width
    fm = describe_data("fashion-mnist")
    assert (fm.kind, fm.count, fm.channels, fm.size_hw) == ("fashion-mnist", 60000, 1, (28, 28))
