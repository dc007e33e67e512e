"""Writing files safely: atomically, under names no one else can plant, with failures that name the file,
and folders that one process at a time may work in."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError

log = logging.getLogger(__name__)

# The name of write_atomically's temporary file for `name`: `name.<8 hex digits>.tmp`, in the same folder.
_TEMPORARY = re.compile(r"^.+\.[0-9a-f]{8}\.tmp$")
# The prefix of torch's C++ errors ("[enforce fail at inline_container.cc:672] . unexpected pos ..."): no reason.
_TORCH_ENFORCE = re.compile(r"^\[enforce fail at [^\]]*\]\s*\.?\s*")


class WriteFailed(OSError):
    """A file could not be written (a full disk, a read-only folder, ...). ``str()`` is one line naming the
    file and the reason; ``errno`` is the system's error number where one is known."""

    def __init__(self, path: str | os.PathLike, reason: str, error_number: int | None = None):
        super().__init__(error_number, f"cannot write {path}: {reason}")
        self.path, self.reason = Path(path), reason

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.errno)

    @classmethod
    def from_error(cls, path: str | os.PathLike, error: BaseException) -> "WriteFailed":
        """The failure of writing ``path`` that ``error`` reports: an OSError, or what a library's file writer
        raises instead (torch.save's RuntimeError "unexpected pos" on a full disk, safetensors' error); the
        free space of the disk is added where the reason may be a full disk."""
        number = error.errno if isinstance(error, OSError) else None
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        reason = _TORCH_ENFORCE.sub("", reason) or type(error).__name__
        if number in (None, errno.ENOSPC, errno.EDQUOT):
            try:
                reason += f", {format_size(free_space(path))} free on its disk"
            except OSError:  # the disk cannot say: the reason stands alone
                pass
        return cls(path, reason, number)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a new temporary file beside ``path`` (its folder made if missing), then rename it to
    ``path``: a process killed while writing (training overwrites its exported model at every snapshot)
    leaves the previous file whole.

    The temporary file gets a name no other file has (it is created with O_EXCL: a file or symlink planted
    at a predictable name is never opened) and the permissions a new file gets from the umask. A failed
    write removes it and raises :class:`WriteFailed` for an OSError and for the errors torch.save and
    safetensors raise on a full disk (others propagate unchanged); a failure to remove it is logged, never
    raised in place of the write's error."""
    tmp = _new_temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        failed = None  # made before the removal, so that the free space it states is the disk's at the failure
        if isinstance(e, (OSError, RuntimeError, SafetensorError)) and not isinstance(e, WriteFailed):
            failed = WriteFailed.from_error(path, e)
        try:
            tmp.unlink(missing_ok=True)
        except OSError as cleanup:
            log.warning("could not remove the temporary file %s: %s", tmp, cleanup.strerror or cleanup)
        if failed is not None:
            raise failed from e
        raise


def _new_temporary(path: Path, tries: int = 100) -> Path:
    """Create an empty file named ``path.name.<random>.tmp`` beside ``path`` (its folder made if missing)
    that did not exist before."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteFailed.from_error(path, e) from e
    for _ in range(tries):
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise WriteFailed.from_error(path, e) from e
    raise WriteFailed(path, f"no unused temporary name after {tries} tries", errno.EEXIST)


def leftover_temporaries(folder: Path) -> list[Path]:
    """The temporary files :func:`write_atomically` left in ``folder`` when its process was killed mid-write."""
    return sorted(p for p in Path(folder).iterdir() if _TEMPORARY.match(p.name) and not p.is_dir())


def free_space(path: str | os.PathLike) -> int:
    """Bytes free (to this user) on the disk that holds, or will hold, ``path``."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_free_space(path: str | os.PathLike, needed: int, what: str) -> None:
    """:class:`WriteFailed` (ENOSPC) naming both sizes when the disk that will hold ``path`` has fewer than
    ``needed`` bytes free; ``what`` says what they are for."""
    free = free_space(path)
    if needed > free:
        raise WriteFailed(path, f"{what}: {format_size(needed)} needed, its disk has {format_size(free)} free",
                          errno.ENOSPC)


def format_size(n: int) -> str:
    """A byte count as people read it: 512 B, 3.4 MB, 360.0 GB (powers of 1000)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


class FolderInUse(ValueError):
    """Another live process holds the folder's lock; the message names it."""


class FolderLock:
    """An exclusive lock on a folder for one process at a time: the file ``path`` (e.g. ``RUN/run.lock``),
    locked with flock and holding its holder's PID, host and start time. The kernel releases a flock
    when its process dies however it dies, so a lock file left behind by a killed process is stale by
    construction and the next :meth:`acquire` takes it over. Use as a context manager, or
    :meth:`acquire` / :meth:`release`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> dict | None:
        """Take the lock. Returns the record of a previous holder that died holding it (its file was left
        behind), else None. Raises :class:`FolderInUse` naming the holder when a live process holds it."""
        import fcntl

        while True:
            try:  # never through a symlink planted at the lock's name
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            except OSError as e:
                raise WriteFailed.from_error(self.path, e) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd)
                os.close(fd)
                raise FolderInUse(f"{self.path.parent} is in use by {_describe(holder)} (its lock: {self.path}); "
                                  "wait for it to end or stop it, or choose another folder") from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the file may have been removed by its holder's release between open and flock: start again
                now, opened = os.stat(self.path, follow_symlinks=False), os.fstat(fd)
                same = (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_record(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as e:
            failed = WriteFailed.from_error(self.path, e)
            self.release()
            raise failed from e
        return previous

    def release(self) -> None:
        """Remove the lock file and release the lock (nothing when not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_record(fd: int) -> dict | None:
    """The holder's record in an open lock file; None when it is empty (no holder ever wrote one)."""
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    return record if isinstance(record, dict) else {"unreadable": text[:80]}


def _describe(record: dict | None) -> str:
    """A lock holder as a message names it: process 1234 on host (since ...)."""
    if not record or "pid" not in record:
        return "another process (its lock file names none)"
    return f"process {record['pid']} on {record.get('host', 'an unknown host')} (since {record.get('since', '?')})"
