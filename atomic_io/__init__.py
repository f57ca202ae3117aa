"""Atomic file writes shared by the training, export and serving tools.

Everything that matters (checkpoints, exports, results) is written to a temporary
path in the destination folder first and then moved into place with `os.replace`,
so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_directory", "atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file + `os.replace`).

    Args:
        path: destination file. Its parent folder is created if missing.
        data: the bytes to write.

    Returns:
        The destination as a `Path`.

    Example:

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_bytes(d / "a.bin", b"xyz").read_bytes()
    b'xyz'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically.

    Args:
        path: destination file.
        text: the text to write.
        encoding: text encoding.

    Returns:
        The destination as a `Path`.

    Example:

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_text(d / "a.txt", "hello").read_text()
    'hello'
    """
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place on success.

    The body of the `with` block fills the yielded temporary folder (a sibling of
    `path`). On normal exit it is renamed to `path`; on error it is deleted and
    nothing is left behind.

    Args:
        path: final folder name.
        overwrite: if False (default) an existing `path` raises `FileExistsError`
            before anything is written.

    Example:

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_directory(d / "out") as tmp:
    ...     _ = (tmp / "f.txt").write_text("x")
    >>> (d / "out" / "f.txt").read_text()
    'x'
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"Refusing to overwrite existing folder {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"Refusing to overwrite existing folder {str(path)!r}.")
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
