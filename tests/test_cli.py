"""The command line (var.cli): help, version, presets, FID files, short-run warnings, device and output checks."""
import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import var.cmd.edit
import var.cmd.evaluate
import var.cmd.sample
import var.training.plot
from var import __version__
from var.cli import build_parser, main as cli
from var.cmd.common import HelpFormatter, check_output_files
from var.cmd.train import VAE_RECIPES, VAR_RECIPES, resolve_preset_defaults
from var.recipes import CUSTOM_VAE_MODEL
from var.data import build_dataset
from conftest import VAE_ARGS, VAR_ARGS, logged_error, no_work, one_error_line, subcommands


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_option_says_what_it_does_and_its_default_once(name):
    parser = subcommands()[name]
    assert parser.description, f"var {name} --help has no description line"
    formatter = HelpFormatter(parser.prog)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        text = formatter._expand_help(action) if action.help else ""
        label = "/".join(action.option_strings) or action.dest
        assert text and text.strip(), f"var {name} {label} has no help"
        assert text.count("(default") <= 1 and "(default: None)" not in text, f"var {name} {label}: {text}"
        shown = action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS)
        assert not shown or "(default" in text, f"var {name} {label} hides its default {action.default!r}"
        assert action.nargs != 0 or "(default: True)" not in text, f"var {name} {label}: {text}"


def test_vary_panel_help_does_not_mention_a_mask():
    help_text = subcommands()["vary"].format_help()
    assert "mask" not in help_text.lower()


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"var {__version__}"


def parse(argv: list[str], recipes: dict) -> argparse.Namespace:
    return resolve_preset_defaults(build_parser().parse_args(argv), recipes)


def test_preset_defaults_build_new_options_and_leave_the_parsed_ones_alone():
    """The options are built, not mutated: what the command line gave stays as parsed."""
    given = build_parser().parse_args(["train", "--lr", "1e-3"])
    resolved = resolve_preset_defaults(given, VAR_RECIPES)
    assert given.steps is None and given.warmup is None and given.lr == 1e-3
    assert resolved.steps == VAR_RECIPES["fashion-mnist"]["steps"] and resolved.lr == 1e-3 and resolved is not given


def test_fashion_mnist_preset_defaults_are_the_bundled_models_recipe():
    """docs/model-card.md's commands, with the options they give left out, are the defaults."""
    vae = parse(["train-vae"], VAE_RECIPES)
    assert (vae.steps, vae.batch_size, vae.lr, vae.warmup, vae.save_every, vae.sample_every) == \
        (8000, 64, 3e-4, 100, 250, 500)
    assert (vae.adv_weight, vae.ema, vae.disc_start) == (0.5, 0.999, None)  # None: a quarter of the steps
    var = parse(["train"], VAR_RECIPES)
    assert (var.steps, var.batch_size, var.lr, var.warmup, var.ema, var.save_every, var.sample_every) == \
        (2500, 64, 5e-4, 150, 0.998, 250, 500)


def test_other_presets_keep_the_generic_schedule_and_options_override_presets():
    small = parse(["train", "--preset", "small"], VAR_RECIPES)
    assert (small.steps, small.lr, small.ema) == (6000, 4e-4, 0)
    custom = parse(["train-vae", "--preset", "custom"], VAE_RECIPES)
    assert (custom.steps, custom.lr) == (8000, 2e-4)
    given = parse(["train", "--steps", "2", "--ema", "0", "--lr", "1e-3"], VAR_RECIPES)
    assert (given.steps, given.ema, given.lr, given.warmup) == (2, 0, 1e-3, 150)


def test_the_fashion_mnist_tokenizer_takes_width_and_codebook_overrides_but_not_geometry():
    from var.cmd.train import _custom_vae_config, _preset_vae_config
    from var.recipes import fashion_mnist_configs

    preset = fashion_mnist_configs()[0]
    assert _preset_vae_config(parse(["train-vae"], VAE_RECIPES)) == preset
    wide = _preset_vae_config(parse(["train-vae", "--ch", "64", "--z-channels", "32"], VAE_RECIPES))
    assert (wide.ch, wide.z_channels) == (64, 32)
    assert (wide.patch_nums, wide.ch_mult, wide.using_sa, wide.share_quant_resi) == \
        (preset.patch_nums, preset.ch_mult, preset.using_sa, preset.share_quant_resi)
    with pytest.raises(ValueError, match="--image-size, --max-scale: only with --preset custom"):
        _preset_vae_config(parse(["train-vae", "--image-size", "64", "--max-scale", "8"], VAE_RECIPES))
    with pytest.raises(ValueError, match="divisible by norm_groups"):   # the config's checks still apply
        _preset_vae_config(parse(["train-vae", "--ch", "40"], VAE_RECIPES))
    custom = _custom_vae_config(parse(["train-vae", "--preset", "custom"], VAE_RECIPES), CUSTOM_VAE_MODEL)
    assert (custom.image_hw, custom.in_channels, custom.ch, custom.vocab_size) == ((32, 32), 3, 64, 4096)


def flat_folder(root, n: int):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / f"{i:02d}.png")
    return root


def test_an_image_folder_has_no_test_split(tmp_path):
    folder = flat_folder(tmp_path / "imgs", 3)
    assert len(build_dataset(str(folder), 16, 3, "train")) == 3
    with pytest.raises(ValueError, match="no 'test' split"):
        build_dataset(str(folder), 16, 3, "test")


def test_tokenizer_on_a_folder_holds_images_out_and_train_says_it_tokenizes_first(tmp_path, caplog):
    folder = flat_folder(tmp_path / "imgs", 40)
    common = ["--data", str(folder), "--steps", "2", "--batch-size", "4", "--warmup", "1", "--device", "cpu"]
    with caplog.at_level("INFO"):
        assert cli(["train-vae", *common, "--out", str(tmp_path / "vae"), *VAE_ARGS]) == 0
    assert "38 training images, held-out 2" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert cli(["train", *common, "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "var"),
                    "--cache-dir", str(tmp_path / "cache"), *VAR_ARGS]) == 0
    note = caplog.text.index("before its first step, var train tokenizes the 40 images")
    assert str(tmp_path / "cache") in caplog.text[note:] and note < caplog.text.index("cached tokens")


def test_plot_of_a_single_logged_step_says_why_it_shows_no_curve(tmp_path, caplog):
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 1.0, "lr": 1e-4}) + "\n")
    with caplog.at_level("WARNING"):
        assert cli(["plot", str(tmp_path)]) == 0
    assert "holds 1 logged step(s) (2): a curve needs at least two" in caplog.text
    assert (tmp_path / "loss.png").is_file()


def test_sample_writes_every_image_for_fid_tools(tmp_path):
    npz, pngs = tmp_path / "s.npz", tmp_path / "pngs"
    assert cli(["sample", "--classes", "0,7", "--per-class", "3", "--batch-size", "4", "--no-grid", "--npz",
                str(npz), "--png-dir", str(pngs), "--out", str(tmp_path / "grid.png"), "--device", "cpu"]) == 0
    with np.load(npz) as f:
        arr, labels = f["arr_0"], f["labels"]
    assert arr.shape == (6, 28, 28, 3) and arr.dtype == np.uint8 and labels.tolist() == [0, 0, 0, 7, 7, 7]
    files = sorted(p.name for p in pngs.iterdir())
    assert files[0] == "000000_c0000.png" and files[-1] == "000005_c0007.png"
    assert (np.asarray(Image.open(pngs / files[4]).convert("RGB")) == arr[4]).all()
    assert not (tmp_path / "grid.png").exists()


def test_sample_runs_with_nearby_seeds_share_no_chunk(tmp_path):
    """Chunk 0 is seeded with --seed itself (as one pipeline call with that seed); the later chunks take seeds
    drawn from (seed, i): with seed + i, chunk 1 of seed 0 was chunk 0 of seed 1, the same images."""
    from var import VARPipeline
    from var.images import to_rgb_uint8

    runs = {}
    for seed in (0, 1):
        npz = tmp_path / f"s{seed}.npz"
        assert cli(["sample", "--classes", "0", "--per-class", "2", "--batch-size", "1", "--no-grid", "--npz", str(npz),
                    "--seed", str(seed), "--device", "cpu"]) == 0
        with np.load(npz) as f:
            runs[seed] = f["arr_0"]
    assert not np.array_equal(runs[0][1], runs[1][0])
    pipe = VARPipeline.from_pretrained("fashion-mnist")
    assert np.array_equal(runs[1][0], to_rgb_uint8(pipe(class_labels=[0], seed=1).images)[0])


def test_inception_weights_path_is_used_or_named_when_missing(tmp_path, monkeypatch):
    import var.inception
    from var.inception import InceptionUnavailable, find_backend

    monkeypatch.setattr(var.inception, "_installed", lambda module: module == "torch_fidelity")
    with pytest.raises(InceptionUnavailable, match="nowhere.pth does not exist"):
        find_backend(tmp_path / "nowhere.pth")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    assert find_backend(weights) == ("torch-fidelity", weights)
    seen = {}
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.SimpleNamespace(calculate_metrics=lambda **kw: seen.update(
        kw) or {"frechet_inception_distance": 1.0, "inception_score_mean": 1.0, "inception_score_std": 0.0}))
    arr = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=arr)
    assert cli(["eval", "--per-class", "0", "--npz", str(tmp_path / "a.npz"), "--npz-ref", str(tmp_path / "a.npz"),
                "--inception-weights", str(weights)]) == 0
    assert seen["feature_extractor_weights_path"] == str(weights)


def test_missing_released_checkpoints_say_where_to_get_them(tmp_path, caplog):
    assert cli(["sample", "--official", str(tmp_path / "vae_ch160v4096z32.pth"), "var_d16.pth"]) == 2
    assert "vae_ch160v4096z32.pth" in caplog.text and "huggingface.co/FoundationVision/var" in caplog.text


def test_a_torch_fidelity_that_fails_to_import_is_reported_not_a_traceback(tmp_path, monkeypatch):
    """PyPI's torchvision on the CPU build of torch raises RuntimeError as torch_fidelity imports it."""
    import builtins
    import var.inception
    from var.inception import InceptionUnavailable, inception_metrics

    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "torch_fidelity":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(var.inception, "_installed", lambda module: module == "torch_fidelity")
    monkeypatch.setattr(builtins, "__import__", failing_import)
    arr = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(InceptionUnavailable, match="cannot be imported .*torchvision::nms.*whl/cpu"):
        inception_metrics(arr, arr, weights=weights)


def test_sampling_sharded_over_two_processes_equals_one_process(tmp_path):
    """torchrun --nproc_per_node=2 -m var sample: chunks dealt out over the processes, gathered on rank 0,
    the npz and PNG files identical to one process's with the same seed (the FID protocol on many GPUs)."""
    import os
    import subprocess

    common = ["-m", "var", "sample", "--classes", "0,3,7", "--per-class", "3", "--batch-size", "2", "--no-grid",
              "--device", "cpu", "--seed", "5", "--progression"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {"two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
            "one": [sys.executable]}
    for name, launcher in runs.items():
        cmd = [*launcher, *common, str(tmp_path / f"{name}.png"), "--npz", str(tmp_path / f"{name}.npz"),
               "--png-dir", str(tmp_path / name)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"9 samples in 5 chunk(s) of up to 2, over {1 if name == 'one' else 2} process(es)" in proc.stderr
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        assert one["arr_0"].shape == (9, 28, 28, 3)
        assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["labels"], two["labels"])
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), np.asarray(Image.open(tmp_path / "two.png")))


def test_output_files_that_cannot_be_written_fail_before_any_work(tmp_path, caplog, monkeypatch):
    """A folder given as --json, or a file where a folder would be, is named at once, not after sampling."""
    import var.cmd.evaluate
    import var.cmd.sample
    for module in (var.cmd.evaluate, var.cmd.sample):
        monkeypatch.setattr(module, "load_pipeline", lambda args: pytest.fail("loaded a model first"))
    (tmp_path / "a_file").write_text("")
    assert cli(["eval", "--json", str(tmp_path)]) == 2
    assert f"--json {tmp_path}: is a folder, expected a file name" in caplog.text
    assert cli(["sample", "--npz", str(tmp_path / "a_file" / "s.npz")]) == 2
    assert f"--npz {tmp_path / 'a_file' / 's.npz'}: {tmp_path / 'a_file'} is a file, not a folder" in caplog.text


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


@pytest.fixture
def nothing_runs(monkeypatch):
    for module in (var.cmd.sample, var.cmd.edit, var.cmd.evaluate):
        monkeypatch.setattr(module, "load_pipeline", no_work)
    monkeypatch.setattr(var.training.plot, "plot_run", no_work)


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path, caplog):
    assert cli(["-v", "sample", "--model", str(tmp_path / "none"), "--cfg", "inf"]) == 2
    assert "Traceback" in caplog.text and "cfg must be a finite number" in caplog.text


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
