"""One run at a time in a run folder: a second `var train-vae` / `var train` started in it is refused naming
the process that holds its lock; a lock left by a killed process is taken over and the run resumes."""
import logging
import os
import signal
import subprocess
import sys

import pytest

from var.cli import main as cli
from var.files import FolderInUse, FolderLock
from conftest import VAE_ARGS, VAR_ARGS, make_folder


TRAIN_VAE = [*VAE_ARGS, "--batch-size", "4", "--warmup", "1", "--adv-weight", "0", "--sample-every", "100"]
HOLD = "import sys, time; from var.files import FolderLock; FolderLock(sys.argv[1]).acquire(); print('held', " \
       "flush=True); time.sleep(120)"


def hold_lock(path) -> subprocess.Popen:
    """Another process holding the lock ``path`` (until killed)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_lock_names_its_live_holder_and_is_taken_over_from_a_dead_one(tmp_path):
    path = tmp_path / "run.lock"
    holder = hold_lock(path)
    try:
        with pytest.raises(FolderInUse, match=rf"^{tmp_path} is in use by process {holder.pid} on .* \(its lock: "
                                              rf"{path}\)"):
            FolderLock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert path.is_file()  # the killed holder could not remove it
    lock = FolderLock(path)
    assert lock.acquire()["pid"] == holder.pid  # stale: taken over, its holder's record returned
    with pytest.raises(FolderInUse, match=rf"process {os.getpid()} "):
        FolderLock(path).acquire()  # another open of it, even in this process
    lock.release()
    assert not path.exists()
    with FolderLock(path) as again:
        assert again.path.is_file()


def test_a_second_run_in_the_folder_is_refused_and_a_killed_ones_folder_resumes(tmp_path, caplog):
    data, out = make_folder(tmp_path / "data", n_per_class=4), tmp_path / "run"

    def train(steps: str) -> int:
        return cli(["train-vae", "--data", str(data), "--out", str(out), *TRAIN_VAE, "--steps", steps])

    assert train("1") == 0 and not (out / "run.lock").exists()
    metrics = (out / "metrics.jsonl").read_text()
    holder = hold_lock(out / "run.lock")  # a run in progress
    try:
        caplog.clear()
        assert train("2") == 2
        [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert line.startswith(f"error: {out} is in use by process {holder.pid} on ") and line.endswith(
            f"(its lock: {out / 'run.lock'}); wait for it to end or stop it, or choose another folder")
        assert (out / "metrics.jsonl").read_text() == metrics  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: its lock file stays behind
        holder.wait()
    leftover = out / "checkpoint.pt.0123abcd.tmp"  # as a kill in the middle of a checkpoint leaves
    leftover.write_bytes(b"partial")
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert train("2") == 0
    assert f"{out / 'run.lock'} was left by process {holder.pid} on " in caplog.text
    assert "removed its 1 unfinished temporary file(s)" in caplog.text and not leftover.exists()
    assert f"resuming {out / 'checkpoint.pt'} from step 1" in caplog.text and not (out / "run.lock").exists()


def test_var_train_is_refused_in_a_folder_in_use_before_tokenizing(folder, vae_run, tmp_path, caplog):
    out = tmp_path / "var"
    out.mkdir()
    with FolderLock(out / "run.lock"):
        assert cli(["train", "--data", str(folder), "--vae", str(vae_run), "--out", str(out), *VAR_ARGS, "--steps", "1",
                    "--batch-size", "8", "--warmup", "1", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert f"{out} is in use by process {os.getpid()} on " in caplog.text
    assert not (tmp_path / "cache").exists() and os.listdir(out) == []
