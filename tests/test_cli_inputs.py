"""Inputs and faults named before any work, in one line with exit status 2: unreadable folders, output paths
that cannot be written (a read-only disk, a folder, two options naming one file, a non-image suffix), devices
this machine lacks, sample runs too large for a grid; and the Python API's checks of transparency, class
labels, seeds and token ids."""
import errno
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import var.cmd.edit
import var.cmd.evaluate
import var.cmd.sample
import var.prepare_data
import var.training.plot
import var.cli
import var.images
from var.cli import build_parser, main as cli
from var.cmd.common import check_output_files
from var.data import list_image_files
from var.images import grid, load_image
from var.sampling import make_generator
from conftest import small_pipe


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def logged_error(caplog) -> str:
    """The one error the command logged, which is one line, with no traceback."""
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and not errors[0].exc_info, caplog.text
    return one_error_line(errors[0].getMessage())


def no_work(*args, **kwargs):
    pytest.fail("started the work before checking the options")


@pytest.fixture(scope="module")
def pipe():
    return small_pipe()


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    return pipe.save_pretrained(tmp_path_factory.mktemp("model"))


def image_folder(root: Path, classes=("a", "b")) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), 40 * i).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def unreadable(monkeypatch):
    """Makes a folder unreadable: chmod 000, which binds every user but root; as root (who reads it anyway)
    its listing fails with the error chmod 000 gives other users."""
    blocked, changed, real_scandir = set(), [], os.scandir

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and os.path.abspath(path) in blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_scandir(path)

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0)
            changed.append(folder)
        else:
            blocked.add(os.path.abspath(folder))

    monkeypatch.setattr(os, "scandir", scandir)
    yield make
    for folder in changed:
        folder.chmod(0o755)


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nothing can be written in: a read-only tmpfs mounted there where this process may (root),
    chmod 555 for other users; root without mount rights gets a folder whose files fail to be made as a
    read-only disk's do."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = bool(shutil.which("mount")) and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        real = tempfile.TemporaryFile

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == folder.resolve():
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)


# ------------------------------------------------------------------------------ unreadable folders
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


def test_an_unreadable_data_folder_is_named(tmp_path, unreadable, caplog):
    root = image_folder(tmp_path / "data")
    unreadable(root)
    assert cli(["prepare-data", str(root), "--image-size", "8", "--out", str(tmp_path / "out")]) == 2
    assert logged_error(caplog) == f"error: cannot read folder {root}: Permission denied"


def test_a_file_the_system_refuses_is_one_line_naming_it(tmp_path, monkeypatch, caplog):
    """What Python raises for a file it may not read (an IDX file of an unreadable data folder) is a user's
    error: FILE: reason, exit 2, not a traceback."""
    denied = str(tmp_path / "data" / "train-images-idx3-ubyte.gz")

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), denied)

    monkeypatch.setattr(var.prepare_data, "prepare_dataset", refused)
    assert cli(["prepare-data", str(tmp_path / "data"), "--image-size", "8", "--out", str(tmp_path / "out")]) == 2
    assert logged_error(caplog) == f"error: {denied}: Permission denied"
    assert var.cli.error_text(ValueError("bad value")) == "bad value"


# --------------------------------------------------------------------------------- output paths
@pytest.fixture
def nothing_runs(monkeypatch):
    for module in (var.cmd.sample, var.cmd.edit, var.cmd.evaluate):
        monkeypatch.setattr(module, "load_pipeline", no_work)
    monkeypatch.setattr(var.training.plot, "plot_run", no_work)


def test_outputs_on_a_read_only_disk_are_named_before_any_work(read_only, tmp_path, nothing_runs, caplog):
    Image.new("L", (8, 8)).save(tmp_path / "in.png")
    edit = ["--image", str(tmp_path / "in.png"), "--out"]
    tries = [(["sample", "--no-grid", "--npz"], "s.npz", "--npz"), (["sample", "--out"], "g.png", "--out"),
             (["sample", "--out"], "new/g.png", "--out"), (["sample", "--progression"], "p.png", "--progression"),
             (["sample", "--no-grid", "--png-dir"], "pngs", "--png-dir"),
             (["edit", "--box", "0,0,0.5,0.5", *edit], "e.png", "--out"), (["vary", "--keep-scales", "2", *edit],
                                                                             "v.png", "--out"),
             (["plot", str(tmp_path), "--out"], "loss.png", "--out"), (["eval", "--json"], "r.json", "--json"),
             (["eval", "--save-npz"], "s.npz", "--save-npz")]
    for argv, name, flag in tries:
        caplog.clear()
        assert cli([*argv, str(read_only / name)]) == 2, argv
        line = logged_error(caplog)
        assert line.startswith(f"error: cannot write {read_only / name} ({flag}): no file can be made in "
                               f"{read_only}: "), line
        assert line.endswith(("Read-only file system", "Permission denied")), line


def test_a_folder_or_a_non_image_name_as_an_image_output_is_refused_before_any_work(tmp_path, nothing_runs, caplog):
    Image.new("L", (8, 8)).save(tmp_path / "in.png")
    (tmp_path / "adir").mkdir()
    edit = ["edit", "--image", str(tmp_path / "in.png"), "--box", "0,0,0.5,0.5"]
    tries = [(["sample", "--out", "x.txt"], "--out x.txt: expected an image file name ending in .bmp, .jpeg, "
                                            ".jpg, .png, .webp, got '.txt'"),
             (["sample", "--progression", "p"], "--progression p: expected an image file name ending in "
                                                ".bmp, .jpeg, .jpg, .png, .webp, got no suffix"),
             ([*edit, "--out", "x.txt"], "--out x.txt: expected an image file name"),
             ([*edit, "--out", str(tmp_path / "adir")], f"--out {tmp_path / 'adir'}: is a folder, expected a file"),
             (["plot", str(tmp_path), "--out", str(tmp_path / "adir")], f"--out {tmp_path / 'adir'}: is a folder"),
             (["sample", "--out", "same.png", "--npz", "same.png"],
              "--npz same.png: also given as --out: one file would overwrite the other")]
    for argv, message in tries:
        caplog.clear()
        assert cli(argv) == 2, argv
        assert logged_error(caplog).startswith(f"error: {message}"), caplog.text
    check_output_files(images=("out",), out=tmp_path / "grid.JPG", npz=tmp_path / "grid.npz")  # accepted


# ------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("device, gpus, message", [
    ("cuda", 0, "no CUDA device: "), ("cuda:9", 0, "no CUDA device: "),
    ("cuda:9", 1, "no CUDA device 9: this machine has 1 (cuda:0 to cuda:0)"),
    ("tpu", 0, "unknown device 'tpu'; expected cpu, cuda, cuda:N or mps"),
    ("cuda:x", 1, "unknown device 'cuda:x'")])
def test_a_device_this_machine_lacks_is_a_usage_error(device, gpus, message, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(var.cmd.sample, "load_pipeline", no_work)
    with pytest.raises(SystemExit) as e:
        cli(["sample", "--device", device])
    assert e.value.code == 2
    assert f"argument --device: {message}" in one_error_line(capsys.readouterr().err)


def test_a_device_this_machine_has_is_accepted(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("cpu", "cuda", "cuda:1"):
        assert build_parser().parse_args(["sample", "--device", device]).device == device


@pytest.mark.parametrize("port", ["99999", "-1", "0", "http"])
def test_serve_port_out_of_range_is_a_usage_error(port, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["serve", "--port", port])
    assert e.value.code == 2
    assert f"argument --port: expected a port number in [1, 65535], got '{port}'" in \
        one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------- large sample runs
def test_a_grid_too_large_is_refused_before_sampling(saved, monkeypatch, caplog):
    monkeypatch.setattr(var.cmd.sample, "_generate_chunks", no_work)
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "100000"]) == 2
    line = logged_error(caplog)
    assert "--per-class 100000 x 5 classes makes a grid of" in line and "over the limit of 67 M pixels" in line
    assert "add --no-grid and write the samples with --png-dir DIR or --npz FILE" in line


def test_grid_size_is_the_size_of_the_grid():
    images = torch.rand(7, 3, 5, 6)
    names = ["a", "a longer label", "c"]
    for scale, cols in ((1, None), (3, ["x", "y", "z"])):
        drawn = grid(images, nrow=3, scale=scale, row_labels=names, col_labels=cols)
        assert drawn.size == var.images.grid_size(7, 3, (5 * scale, 6 * scale), row_labels=names, col_labels=cols)


def test_a_long_sample_run_says_how_long_after_its_first_chunk(saved, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(var.cmd.sample, "ESTIMATE_AFTER", 0)   # the tiny model's run stands for a long one
    caplog.set_level(logging.INFO)
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--classes", "0", "--per-class", "3",
                "--batch-size", "1", "--no-grid", "--npz", str(tmp_path / "s.npz")]) == 0
    assert "3 samples in 3 chunk(s)" in caplog.text
    assert "the first chunk took " in caplog.text and "the 3 chunks will take about " in caplog.text
    assert [var.cmd.sample.duration(s) for s in (0.4, 45, 59.6, 750, 80_300)] == ["0 s", "45 s", "1 min", "12 min", "22 h 18 min"]


# ---------------------------------------------------------------------------------- the Python API
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


@pytest.mark.parametrize("labels, shown", [([[1, 2], [3, 4]], "a nested sequence holding [1, 2]"),
                                           (torch.tensor([[1, 2], [3, 4]]), "an array of shape (2, 2)"),
                                           (np.array([[1], [2]]), "an array of shape (2, 1)")])
def test_class_labels_of_more_than_one_dimension_are_refused(pipe, labels, shown):
    with pytest.raises(ValueError, match=re.escape(f"class_labels must be one label or a 1-D sequence of labels, "
                                                   f"got {shown}")):
        pipe(class_labels=labels, seed=0)


def test_class_labels_that_are_not_ids_name_the_argument(pipe):
    with pytest.raises(ValueError, match=r"class_labels must hold integers or class names, got 1\.5"):
        pipe.class_ids([1.5])
    assert pipe.class_ids(torch.tensor(3)).tolist() == [3] and pipe.class_ids(np.array([1, 2])).tolist() == [1, 2]


@pytest.mark.parametrize("seed", ["x", 1.5, True, 2.0])
def test_a_seed_that_is_not_an_integer_is_named(pipe, seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[-2\*\*63, 2\*\*64\), got "):
        make_generator(seed, "cpu")
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        pipe(class_labels=[0], seed=seed)
    assert make_generator(np.int64(3), "cpu").initial_seed() == 3


def test_token_ids_that_are_not_integers_are_named(pipe):
    tokens = pipe(class_labels=[0], seed=0).tokens
    for call in (pipe.decode, pipe.decode_per_scale):
        with pytest.raises(ValueError, match=r"token map of scale 0 must hold integer token ids \(int64\), "
                                             r"got torch.float32"):
            call([t.float() for t in tokens])
    assert torch.equal(pipe.decode([t.int() for t in tokens]), pipe.decode(tokens))
