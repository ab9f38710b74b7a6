"""Atomic, private file writes for everything kept in the state directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a reader (or a crash) sees old or new, never half.

    Write a temporary file beside it (same file system), fsync it, rename it
    over the target, then fsync the directory so the rename itself survives a
    power cut. The file is created with ``mode`` (0600: tokens live here).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(directory: Path, name: str) -> None:
    """Delete temporary files a crash left behind while writing ``name``."""
    for stale in directory.glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
