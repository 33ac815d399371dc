"""Writing run files so that a failure is named: atomic replaces, and errors that give the path and free space.

Every file a run writes (checkpoints, configs, metrics, prediction maps) goes through :func:`atomic_write`: the
data goes to a temp file next to the target (same file system) that is fsynced and renamed over it, so a crash or a
full disk never leaves a half-written file under the final name. A failed write raises :class:`WriteError`, whose
message names the path, the reason and, when the disk may be full, the free space left.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

__all__ = ["WriteError", "TEMP_SUFFIX", "write_failure", "atomic_write", "write_text", "write_png", "write_npy",
           "remove_stale_temp_files"]

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class WriteError(OSError):
    """A run file could not be written; the message names the path and the cause."""


def _free_space(directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if free < 1024 or unit == "TB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def write_failure(path: str | os.PathLike, exc: BaseException) -> WriteError:
    """The :class:`WriteError` for a failed write of ``path``; names the free space when the disk may be full.

    torch.save reports a full disk as a RuntimeError ("unexpected pos ..."), so any error that is not an OSError
    with a clear cause also gets the free space.
    """
    path = Path(path)
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())[:200]
    message = f"cannot write {path}: {reason or type(exc).__name__}"
    if not isinstance(exc, OSError) or exc.errno in _SPACE_ERRNOS:
        message += f" ({_free_space(path.parent)} free on its file system)"
    return WriteError(exc.errno if isinstance(exc, OSError) else errno.EIO, message)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it and rename it over ``path``.

    On any failure the temp file is removed, ``path`` keeps its previous content, and a :class:`WriteError`
    naming ``path`` is raised (other exceptions, e.g. KeyboardInterrupt, propagate after the clean-up).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise write_failure(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)):
            raise write_failure(path, e) from e
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); skipped where directories cannot be opened (Windows)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Encode ``image`` (H×W or H×W×3 BGR, uint8 or uint16) as PNG and write it atomically."""
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise WriteError(errno.EINVAL, f"cannot encode {path} as PNG (array {image.dtype} {image.shape})")
    return atomic_write(path, lambda f: f.write(data.tobytes()))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as a ``.npy`` file atomically (no pickled objects)."""
    return atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temp files an interrupted :func:`atomic_write` left in ``directory`` (``.<name>.*.tmp``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file())
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    if stale:
        logger.info("removed %d temp file(s) left by an interrupted save in %s: %s", len(stale), directory,
                    ", ".join(p.name for p in stale))
    return stale
