"""Storage faults: a disk that is or becomes full (prepare-data, training checkpoints, exports, run.json), a
folder holding someone else's files, a symlink planted at a temporary file's name, and damaged files that
errors must name (metrics.jsonl, run.json, an npz, a manifest).

A full disk is real where this process can mount a small tmpfs (root), and injected otherwise: the
writer raises what it raises on a full disk, or a decoding process dies as a memory-mapped write past a
full disk kills it."""
import errno
import gc
import logging
import os
import shutil
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from var.cli import main as cli
from var.files import WriteFailed, leftover_temporaries, write_atomically
from var.images import write_npz
from var.inception import load_npz_images
from var.data import open_prepared
from var.training import common
from var.training.common import CheckpointWriteFailed, DistInfo, Schedule, fit, load_checkpoint_file
from var.training.plot import read_metrics
from conftest import VAE_ARGS, batch, make_folder, tiny_trainer


TRAIN_VAE = [*VAE_ARGS, "--batch-size", "4", "--warmup", "1", "--adv-weight", "0"]


@pytest.fixture
def small_disk(tmp_path):
    """``make(size)``: a folder on a new tmpfs of ``size`` (e.g. "64k"), or None where this process cannot
    mount one (not root, no mount command): the test then injects the fault instead."""
    mounted = []

    def make(size: str) -> Path | None:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        if shutil.which("mount") is None:
            return None
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            return None
        mounted.append(folder)
        return folder

    yield make
    gc.collect()  # a failed run's frames (memory maps of files on the disk among them) may sit in reference cycles
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=False)  # detached now, freed when unused


def free_space_seen(monkeypatch, *free: int | None) -> None:
    """shutil.disk_usage reports ``free[i]`` bytes free at its i-th call (the last one from then on; None: the
    disk's own answer)."""
    real, calls = shutil.disk_usage, []

    def usage(path):
        calls.append(path)
        seen = free[min(len(calls), len(free)) - 1]
        return real(path) if seen is None else real(path)._replace(free=seen)

    monkeypatch.setattr(shutil, "disk_usage", usage)


@contextmanager
def deadline(seconds: int):
    """TimeoutError in the main thread after ``seconds``: a hang fails the test instead of blocking the suite."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ----------------------------------------------------------------------------------- prepare-data
def test_prepare_data_refuses_a_disk_without_room_before_any_work(tmp_path, small_disk, monkeypatch, caplog):
    data = make_folder(tmp_path / "data", n_per_class=4)
    disk = small_disk("8k")
    if disk is None:
        disk = tmp_path
        free_space_seen(monkeypatch, 8192)
    out = disk / "ds"
    with deadline(60):
        rc = cli(["prepare-data", str(data), "--image-size", "64", "--out", str(out), "--workers", "1"])
    assert rc == 2
    [line] = error_lines(caplog)
    assert line.startswith(f"error: cannot write {out}: 8 images of 64x64x3 (uint8): 1") and "kB needed, its disk " \
        "has" in line, line
    assert not out.exists()  # refused before any file was made


def test_prepare_data_stops_with_one_line_when_the_disk_fills_while_decoding(tmp_path, small_disk, monkeypatch,
                                                                             caplog):
    """The disk fills after the check (another writer): a worker writing its memory-mapped rows past it dies of
    SIGBUS, and the command must say so and exit, not wait for the dead worker's chunk for ever."""
    import var.prepare_data as prepared

    data = make_folder(tmp_path / "data", n_per_class=12)
    disk = small_disk("256k")  # 24 images of 64x64x3: 295 kB of pixels
    if disk is None:
        disk = tmp_path
        monkeypatch.setattr(prepared, "decode_or_none", lambda *args: os.kill(os.getpid(), signal.SIGBUS))
        free_space_seen(monkeypatch, 1 << 40, 0)  # room at the check, none once the worker died
    else:
        free_space_seen(monkeypatch, 1 << 40, None)  # room at the check, then the tmpfs's own answer
    out = disk / "ds"
    with deadline(60):
        rc = cli(["prepare-data", str(data), "--image-size", "64", "--out", str(out), "--workers", "1"])
    assert rc == 2
    [line] = error_lines(caplog)
    assert line.startswith(f"error: cannot write {out / 'staging.npy'}: the disk filled while decoding (0 B free, ")
    assert "run the command again to resume" in line


# ------------------------------------------------------------------------------------ training
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def test_a_checkpoint_failing_as_torch_save_fails_on_a_full_disk_names_the_file_and_the_intact_one(tmp_path,
                                                                                                    monkeypatch):
    """torch.save on a full disk raises RuntimeError("... unexpected pos ..."), not OSError."""
    real, saves = torch.save, []

    def save(obj, path):  # the second checkpoint: part of the file, then torch's error
        saves.append(path)
        if len(saves) == 1:
            return real(obj, path)
        Path(path).write_bytes(b"partial")
        raise RuntimeError(TORCH_FULL_DISK)

    monkeypatch.setattr(common.torch, "save", save)
    sched = Schedule(steps=4, batch_size=2, warmup=1, save_every=2, sample_every=100, log_every=100)
    with pytest.raises(CheckpointWriteFailed) as e:
        fit(tiny_trainer(), sched, tmp_path, DistInfo(), batch)
    assert str(e.value).startswith(f"cannot write {tmp_path / 'checkpoint.pt'}: unexpected pos 576 vs 534, ")
    assert str(e.value).endswith("free on its disk (the checkpoint of step 4); the checkpoint of step 2 is intact")
    assert leftover_temporaries(tmp_path) == [] and load_checkpoint_file(tmp_path / "checkpoint.pt")["step"] == 2


def test_cli_training_whose_export_hits_a_full_disk_exits_with_one_line(tmp_path, monkeypatch, caplog):
    def no_space(tensors, filename, *args, **kwargs):  # what safetensors raises on a full disk
        Path(filename).write_bytes(b"partial")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    data, out = make_folder(tmp_path / "data", n_per_class=4), tmp_path / "run"
    assert cli(["train-vae", "--data", str(data), "--out", str(out), *TRAIN_VAE, "--steps", "2",
                "--sample-every", "2"]) == 1
    [line] = error_lines(caplog)
    assert line.startswith(f"cannot write {out / 'vqvae.safetensors'}: Error while serializing: I/O error: No space "
                           "left on device (os error 28), ")
    assert line.endswith("free on its disk (the snapshot of step 2); no checkpoint exists yet")
    assert leftover_temporaries(out) == [] and not (out / "run.lock").exists()


def test_cli_training_that_cannot_write_run_json_exits_with_one_line(tmp_path, small_disk, monkeypatch, caplog):
    data = make_folder(tmp_path / "data", n_per_class=4)
    disk = small_disk("4k")  # one page: the lock file takes it
    if disk is None:
        disk, real = tmp_path, Path.write_text

        def no_space(path, text, *args, **kwargs):
            if not path.name.startswith("run.json"):
                return real(path, text, *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(Path, "write_text", no_space)
    out = disk / "run"
    assert cli(["train-vae", "--data", str(data), "--out", str(out), *TRAIN_VAE, "--steps", "2"]) == 1
    [line] = error_lines(caplog)
    assert line.startswith(f"cannot write {out / 'run.json'}: No space left on device, ")
    assert line.endswith(" free on its disk (the run's configuration); no checkpoint exists yet")
    assert sorted(os.listdir(out)) == []  # no temporary file, and the lock released


# --------------------------------------------------------------------- folders and temporary files
def test_prepare_data_refuses_a_folder_holding_files_it_did_not_write(tmp_path, caplog):
    data, out = make_folder(tmp_path / "data", n_per_class=2), tmp_path / "ds"
    out.mkdir()
    np.save(out / "images.npy", np.arange(10))  # someone's
    before = (out / "images.npy").read_bytes()
    args = ["prepare-data", str(data), "--image-size", "8", "--out", str(out), "--workers", "1"]
    assert cli(args) == 2
    assert error_lines(caplog) == [f"error: {out} holds files var prepare-data did not write (images.npy): choose a "
                                   "new or empty --out"]
    assert (out / "images.npy").read_bytes() == before and sorted(os.listdir(out)) == ["images.npy"]
    (out / "images.npy").unlink()
    (tmp_path / "victim").write_text("precious")
    (out / "staging.npy").symlink_to(tmp_path / "victim")  # a link at the staging file's name is not ours either
    assert cli(args) == 2 and (tmp_path / "victim").read_text() == "precious"
    (out / "staging.npy").unlink()
    (out / "staging.npy").write_bytes(b"cut short")  # a start stopped before its plan was written: ours
    assert cli(args) == 0 and open_prepared(out).images.shape == (4, 8, 8, 3)


def test_a_symlink_planted_at_a_temporary_name_is_never_written_through(tmp_path):
    victim, target = tmp_path / "victim", tmp_path / "s.npz"
    victim.write_text("precious")
    for name in ("s.npz.tmp", "s.npz.tmp.npz", ".s.npz.tmp"):
        (tmp_path / name).symlink_to(victim)
    write_atomically(target, lambda tmp: write_npz(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int64), tmp))
    assert victim.read_text() == "precious" and not target.is_symlink()
    assert load_npz_images(target).shape == (2, 4, 4, 3)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as a file opened for writing gets, not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.npz.tmp", "s.npz", "s.npz.tmp", "s.npz.tmp.npz",
                                                          "victim"]


def test_a_failed_cleanup_never_hides_the_writes_error(tmp_path, monkeypatch, caplog):
    def write(tmp):
        tmp.write_bytes(b"part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "unlink", lambda path, missing_ok=False: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))))
    with pytest.raises(WriteFailed, match=rf"cannot write {tmp_path / 'out.json'}: No space left on device, ") as e:
        write_atomically(tmp_path / "out.json", write)
    assert e.value.errno == errno.ENOSPC
    assert "could not remove the temporary file" in caplog.text and "Permission denied" in caplog.text


# ------------------------------------------------------------------------ files errors must name
def test_plot_skips_a_last_line_cut_short_and_names_the_file_and_line_of_a_bad_one(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    good = '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    path.write_text(good + '{"step": 3, "lo')  # the run was killed while writing step 3
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert f"{path}: its last line is cut short" in caplog.text
    assert cli(["plot", str(tmp_path), "--out", str(tmp_path / "loss.png")]) == 0
    for bad, reason in (("not json\n", "not JSON"), ("[1, 2]\n", "expected a JSON object with an integer step"),
                        ('{"loss": 1.0}\n', "expected a JSON object with an integer step")):
        path.write_text('{"step": 1, "loss": 2.0}\n' + bad + '{"step": 3, "loss": 1.0}\n')
        with pytest.raises(ValueError, match=rf"^{path}, line 2: {reason}"):
            read_metrics(tmp_path)
    caplog.clear()
    assert cli(["plot", str(tmp_path)]) == 2
    assert error_lines(caplog)[0].startswith(f"error: {path}, line 2: expected a JSON object")


@pytest.mark.parametrize("text, reason", [
    ('{"kind": "vqvae", ', "is not valid JSON (Expecting property name"),
    ("[1, 2]", "holds a JSON list, expected an object"),
    ('{"kind": "var", "data": "x", "vae": "v", "var": {}}', "is not the configuration of a var train-vae run"),
    ('{"kind": "vqvae", "data": "x"}', "lacks vqvae")])
def test_an_invalid_run_json_is_named_with_the_reason(tmp_path, caplog, text, reason):
    data, out = make_folder(tmp_path / "data", n_per_class=4), tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(text)
    assert cli(["train-vae", "--data", str(data), "--out", str(out), *TRAIN_VAE, "--steps", "2"]) == 2
    [line] = error_lines(caplog)
    assert line.startswith(f"error: {out / 'run.json'} {reason}"), line


def test_an_npz_that_is_not_one_is_named(tmp_path, caplog):
    text, array, zipped = tmp_path / "text.npz", tmp_path / "array.npy", tmp_path / "objects.npz"
    text.write_text("hello")
    np.save(array, np.zeros(3))
    np.savez(zipped, arr_0=np.array([{"a": 1}], dtype=object))
    for path in (text, array):
        with pytest.raises(ValueError, match=rf"^{path} is not an npz file"):
            load_npz_images(path)
    with pytest.raises(ValueError, match=rf"^{zipped}: arr_0 cannot be read \(Object arrays"):
        load_npz_images(zipped)
    assert cli(["eval", "--per-class", "0", "--npz", str(text)]) == 2
    assert error_lines(caplog) == [f"error: {text} is not an npz file (a zip archive of .npy arrays, as numpy.savez "
                                   "writes)"]


def test_a_damaged_manifest_is_named(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=rf"^{tmp_path}/manifest.json is not valid JSON"):
        open_prepared(tmp_path)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/manifest.json holds a JSON list, expected an object"):
        open_prepared(tmp_path)
