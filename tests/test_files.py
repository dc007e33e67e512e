"""Writing files (var.files): atomic writes, temporary files, folder locks."""
import errno
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from var.files import FolderInUse, FolderLock, WriteFailed, write_atomically
from var.images import write_npz
from var.inception import load_npz_images
from conftest import hold_lock


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
