"""Atomic file writes: a reader sees the old file or the new one, never half of one.

:func:`atomic_write` writes into a temporary file in the destination's folder,
flushes it to disk and moves it into place with ``os.replace``, which POSIX and Windows make atomic
within one file system: a reader sees the old file or the new one, never half of one, and a run
killed mid-write leaves the previous file intact. Files get the mode a plain ``open()`` would give
them (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``. With ``keep_previous``, the
file being replaced is first renamed to that path, so a run keeps its last two checkpoints: the
order (new file complete and fsynced, old -> previous, new -> latest) leaves at least one good
checkpoint on disk at every instant, and a reader finding no latest falls back to the previous.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _umask() -> int:
    # The only portable way to read the umask is to set it and put it back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # A rename is durable once the folder's entry is on disk (POSIX; Windows cannot open folders).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], object],
    *,
    keep_previous: str | os.PathLike[str] | None = None,
) -> Path:
    """Create or replace ``path`` with what ``write(binary_file)`` writes, atomically.

    If ``write`` raises, the temporary file is removed and ``path`` is left as it was.
    Returns ``path`` as a ``Path``; its folder must exist.

    Args:
        path: the destination.
        write: writes the contents into the binary file it is given.
        keep_previous: if given and ``path`` exists, ``path`` is renamed to ``keep_previous``
            (replacing it) once the new contents are safely on disk, and only then is the new
            file moved to ``path``.

    Raises:
        OSError: the folder cannot take the file; the error names ``path``, not the temporary file.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, keep_previous: str | os.PathLike[str] | None = None
) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda fh: fh.write(data), keep_previous=keep_previous)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
