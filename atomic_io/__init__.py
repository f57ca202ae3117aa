"""Atomic file writes shared by the training, export and serving tools.

Everything that matters (checkpoints, exports, results) is written to a temporary
path in the destination folder first and then moved into place with `os.replace`,
so a crash never leaves a half-written file under the final name.

Files and folders get the permissions an ordinary `open(path, "w")` / `os.mkdir` would give
them: `0o666` / `0o777` less the process umask (a file that already exists keeps its mode),
not the `0o600` / `0o700` of `tempfile`. Temporary names follow one pattern,
`.<final name>.<8 random characters>.tmp[<suffix>]`, so that the leftovers of a killed
process can be recognised and removed by `remove_stale_temp_files` without touching anything
else.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_text",
    "current_umask",
    "is_temp_name",
    "new_temp_file",
    "remove_stale_temp_files",
]

# `tempfile.mkstemp(prefix=".<name>.", suffix=".tmp<ext>")`: 8 characters of
# `tempfile._RandomNameSequence` ([a-z0-9_]) between prefix and suffix.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows.

    Returns:
        The umask as an integer (e.g. `0o022`).

    Example:

    >>> 0 <= current_umask() <= 0o777
    True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic set-and-restore
    os.umask(mask)
    return mask


def is_temp_name(name: str) -> bool:
    """Whether `name` is a temporary name made by this package (`.<name>.<random>.tmp[.ext]`).

    Example:

    >>> is_temp_name(".results.json.k3j_9x2a.tmp"), is_temp_name("results.json")
    (True, False)
    """
    return _TEMP_NAME.match(name) is not None


def new_temp_file(path: str | os.PathLike, suffix: str = "") -> Path:
    """Create an empty temporary file next to `path`, with the permissions `path` should get.

    The name is `.<name of path>.<random>.tmp<suffix>` (see `is_temp_name`); its mode is that
    of an existing `path`, else `0o666` less the umask. The caller fills it and moves it into
    place with `os.replace` (or deletes it).

    Args:
        path: the final file the temporary one stands in for. Its parent folder is created
            if missing.
        suffix: appended after `.tmp` (e.g. `".keras"` for writers that check the extension).

    Returns:
        The temporary file's path.

    Example:

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> tmp = new_temp_file(d / "model.keras", suffix=".keras")
    >>> is_temp_name(tmp.name), tmp.name.endswith(".tmp.keras")
    (True, True)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))
    finally:
        os.close(fd)
    return Path(tmp)


def _file_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def remove_stale_temp_files(
    folder: str | os.PathLike, *, recursive: bool = True, min_age_seconds: float = 0.0
) -> list[Path]:
    """Delete the temporary files this package left in `folder` (a killed writer's leftovers).

    Only regular files whose name matches the package's temporary-name pattern (see
    `is_temp_name`) are removed; nothing else is touched. Use `min_age_seconds` when another
    live process may be writing into the same folder.

    Args:
        folder: the folder to clean (missing: nothing to do).
        recursive: also clean its subfolders.
        min_age_seconds: keep temporary files modified more recently than this.

    Returns:
        The removed files.

    Example:

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / ".a.json.abcd1234.tmp").write_text("half"); _ = (d / "keep.tmp").write_text("")
    >>> [p.name for p in remove_stale_temp_files(d)], sorted(p.name for p in d.iterdir())
    (['.a.json.abcd1234.tmp'], ['keep.tmp'])
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    candidates = folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")
    for candidate in sorted(candidates):
        try:
            info = candidate.lstat()
        except FileNotFoundError:
            continue
        if not (stat.S_ISREG(info.st_mode) and is_temp_name(candidate.name)):
            continue
        if now - info.st_mtime < min_age_seconds:
            continue
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed.append(candidate)
    return removed


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
    tmp = new_temp_file(path)
    try:
        with open(tmp, "wb") as f:
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
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0o700
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"Refusing to overwrite existing folder {str(path)!r}.")
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
