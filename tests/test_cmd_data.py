"""`var prepare-data`: unreadable inputs, a disk without room, folders holding other files."""
import errno
import os
import shutil
import signal
from contextlib import contextmanager

import numpy as np

import var.cli
import var.prepare_data
from var.cli import main as cli
from var.data import open_prepared
from conftest import error_lines, image_folder, logged_error, make_folder


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
