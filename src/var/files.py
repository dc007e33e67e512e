"""Writing files so that a process killed mid-write never leaves a half-written one under the final name."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``: a process killed while
    writing (training overwrites its exported model at every snapshot) leaves the previous file whole. A
    failed write removes the temporary file and raises."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
