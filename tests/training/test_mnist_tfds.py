"""The TFDS builder `pixel_mnist` yields the loader's arrays, in order, for every split."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed")

import training.data.tfds_mnist  # noqa: E402, F401  (registers `pixel_mnist`)
from training.data import mnist  # noqa: E402


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(mnist, "DOWNLOAD_URL", (tmp_path / "no-such.npz").as_uri())


def _raw_dir(tmp_path, monkeypatch):
    """A folder with a synthetic `mnist.npz` (random digits) trusted by its sha256."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        x_train=rng.integers(0, 256, (60_000, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 60_000).astype(np.uint8),
        x_test=rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 10_000).astype(np.uint8),
    )
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / mnist.NPZ_FILE).write_bytes(buf.getvalue())
    monkeypatch.setitem(
        mnist.EXPECTED_SHA256, mnist.NPZ_FILE, hashlib.sha256(buf.getvalue()).hexdigest()
    )
    return raw


@pytest.mark.slow
def test_tfds_load_matches_loader(tmp_path, monkeypatch):
    raw = _raw_dir(tmp_path, monkeypatch)
    expected = mnist.load_mnist(raw)
    builder = tfds.builder("pixel_mnist", data_dir=tmp_path / "tfds", raw_data_dir=raw)
    builder.download_and_prepare()
    ds = builder.as_dataset(as_supervised=True, batch_size=-1)
    assert builder.info.features["pixels"].shape == (784,)
    assert builder.info.features["label"].num_classes == 10
    for split, n in mnist.SPLIT_SIZES.items():
        x, y = tfds.as_numpy(ds[split])
        x_ref, y_ref = expected.split(split)
        assert x.shape == (n, 784) and x.dtype == np.uint8
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
        assert builder.info.splits[split].num_examples == n


def test_corrupt_raw_file_fails_preparation(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / mnist.PKL_FILE).write_bytes(b"\x1f\x8b not really")
    builder = tfds.builder("pixel_mnist", data_dir=tmp_path / "tfds", raw_data_dir=raw)
    with pytest.raises(mnist.DataIntegrityError, match="sha256 mismatch"):
        builder.download_and_prepare()
