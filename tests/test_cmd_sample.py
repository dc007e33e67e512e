"""`var sample`: option checks, class names, seeds per chunk, output files and long runs."""
import logging

import numpy as np
import pytest
from PIL import Image

import var.cmd.sample
from var import VARPipeline
from var.cli import main as cli
from var.images import grid_size
from conftest import logged_error, no_work, one_error_line, savez_then_full_disk, small_pipe


def sample_cli(saved, *argv) -> int:
    return cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "1", *argv])


NAMES = ["tench, Tinca tinca", "goldfish", "Ankle boot", "hen", "Eel"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    p = small_pipe()
    return VARPipeline(p.vqvae, p.var, class_names=NAMES).save_pretrained(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def greek_saved(tmp_path_factory):
    """The same model with the class names Alpha to Epsilon."""
    p = small_pipe()
    return VARPipeline(p.vqvae, p.var, class_names=["Alpha", "Beta", "Gamma", "Delta", "Epsilon"]).save_pretrained(
        tmp_path_factory.mktemp("greek"))


def test_cli_per_class_must_be_positive(saved, capsys):
    with pytest.raises(SystemExit) as e:
        sample_cli(saved, "--per-class", "-1")
    assert e.value.code == 2
    assert "--per-class: expected an integer >= 1, got '-1'" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv, message", [(["--cfg", "nan"], "cfg must be a finite number"),
                                           (["--top-p", "2"], r"top_p must be in [0, 1]"),
                                           (["--top-k", "-5"], "top_k must be an integer >= 0")])
def test_cli_sampling_options_are_checked_before_the_model_loads(tmp_path, caplog, argv, message):
    # The model folder does not exist: the option is reported first, so no model was loaded.
    assert cli(["sample", "--model", str(tmp_path / "none"), *argv]) == 2
    assert message in one_error_line(caplog.text)


@pytest.mark.parametrize("text", ["1.0", "0.5,x", "", "-0.2"])
def test_cli_prune_takes_fractions_below_one(saved, capsys, text):
    with pytest.raises(SystemExit):
        sample_cli(saved, "--prune", text)
    assert f"--prune: expected comma-separated fractions in [0, 1) such as 0.5 or 0.25,0.5, got {text!r}" in \
        one_error_line(capsys.readouterr().err)


def test_cli_prune_and_fast_make_the_pipelines_images(saved, tmp_path):
    """--prune F,... and --fast reach the pipeline's call: the command's images are the call's."""
    pipe = VARPipeline.from_pretrained(saved)
    for argv, options in ((["--prune", "0.5,0.25"], dict(prune=(0.5, 0.25))), (["--fast"], dict(fast=True))):
        assert sample_cli(saved, "--classes", "0,1,2", "--seed", "4", "--out", str(tmp_path / "g.png"),
                          "--npz", str(tmp_path / "s.npz"), *argv) == 0
        want = pipe(class_labels=[0, 1, 2], seed=4, **options).images
        with np.load(tmp_path / "s.npz") as npz:
            assert np.array_equal(npz["arr_0"][..., 0], want[:, 0].mul(255).round().byte().numpy()), argv


def test_cli_classes_take_names(greek_saved, tmp_path, caplog):
    with caplog.at_level("INFO"):
        assert sample_cli(greek_saved, "--classes", "beta,Delta", "--out", str(tmp_path / "g.png")) == 0
    assert "2 classes x 1" in caplog.text
    caplog.clear()
    assert sample_cli(greek_saved, "--classes", "Beta,Zeta", "--out", str(tmp_path / "g.png")) == 2
    assert "unknown class 'Zeta'" in one_error_line(caplog.text)


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


def test_sample_npz_on_a_full_disk_leaves_no_truncated_file(saved, tmp_path, monkeypatch, caplog):
    """A full disk while writing the npz (50,000 samples of 256 px are ~10 GB) left a truncated file under the
    name that FID tools read. The command says so in one line, exit status 2."""
    monkeypatch.setattr(np, "savez", savez_then_full_disk)
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "1", "--no-grid", "--npz",
                str(tmp_path / "s.npz")]) == 2
    assert "No space left" in caplog.text and "Traceback" not in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_sample_png_dir_blocked_by_a_file_fails_before_sampling(saved, tmp_path, caplog):
    (tmp_path / "taken").write_text("")
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "1", "--no-grid",
                "--png-dir", str(tmp_path / "taken")]) == 2
    assert "--png-dir" in caplog.text and "is a file, expected a folder" in caplog.text


def test_a_grid_too_large_is_refused_before_sampling(saved, monkeypatch, caplog):
    monkeypatch.setattr(var.cmd.sample, "_generate_chunks", no_work)
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--per-class", "100000"]) == 2
    line = logged_error(caplog)
    assert "--per-class 100000 x 5 classes makes a grid of" in line and "over the limit of 67 M pixels" in line
    assert "add --no-grid and write the samples with --png-dir DIR or --npz FILE" in line


def test_a_long_sample_run_says_how_long_after_its_first_chunk(saved, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(var.cmd.sample, "ESTIMATE_AFTER", 0)   # the tiny model's run stands for a long one
    caplog.set_level(logging.INFO)
    assert cli(["sample", "--model", str(saved), "--device", "cpu", "--classes", "0", "--per-class", "3",
                "--batch-size", "1", "--no-grid", "--npz", str(tmp_path / "s.npz")]) == 0
    assert "3 samples in 3 chunk(s)" in caplog.text
    assert "the first chunk took " in caplog.text and "the 3 chunks will take about " in caplog.text
    assert [var.cmd.sample.duration(s) for s in (0.4, 45, 59.6, 750, 80_300)] == ["0 s", "45 s", "1 min", "12 min", "22 h 18 min"]


def test_one_class_is_a_square_grid_and_several_classes_a_row_each(saved, tmp_path):
    """--per-class 16 of one class: 4 rows of 4 (not one row of 16); two classes keep a row per class."""
    pipe = VARPipeline.from_pretrained(saved)
    tile = tuple(s * max(1, 64 // max(pipe.image_hw)) for s in pipe.image_hw)
    for classes, per_class, columns in (["2"], 16, 4), (["0,2"], 3, 3):
        out = tmp_path / f"{len(classes[0])}.png"
        assert sample_cli(saved, "--classes", *classes, "--per-class", str(per_class), "--out", str(out)) == 0
        names = [NAMES[int(c)] for c in classes[0].split(",")]
        with Image.open(out) as im:
            assert im.size == grid_size(len(names) * per_class, columns, tile, row_labels=names)
    assert grid_size(16, 4, tile, row_labels=names[:1]) != grid_size(16, 16, tile, row_labels=names[:1])


@pytest.mark.parametrize("argv", [["--out", "same.png", "--progression", "same.png"],
                                  ["--progression", "samples/grid.png"]])       # --out's default
def test_the_progression_never_overwrites_the_grid(saved, tmp_path, monkeypatch, caplog, argv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(var.cmd.sample, "load_pipeline", no_work)
    assert cli(["sample", "--model", str(saved), "--device", "cpu", *argv]) == 2
    assert "--progression " in logged_error(caplog) and "also given as --out: one file would overwrite the other" \
        in logged_error(caplog)
    assert not list(tmp_path.rglob("*.png"))
