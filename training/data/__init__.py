"""Datasets and tf.data pipelines used by the experiment runners.

`training.data.ecg5000` loads and splits ECG5000 (offline first, verified by sha256),
`training.data.pipeline` turns arrays into a seeded `tf.data.Dataset`, and
`training.data.tfds_ecg5000` registers the same splits as the TFDS dataset `ecg5000`.
`make_dataset` is imported lazily so that loading the data does not import TensorFlow.
"""

from __future__ import annotations

from typing import Any

from training.data.ecg5000 import (
    DataIntegrityError,
    DataUnavailableError,
    ECG5000Data,
    load_ecg5000,
    resolve_ecg5000_files,
)

__all__ = [
    "DataIntegrityError",
    "DataUnavailableError",
    "ECG5000Data",
    "load_ecg5000",
    "make_dataset",
    "resolve_ecg5000_files",
]


def __getattr__(name: str) -> Any:
    if name == "make_dataset":
        from training.data.pipeline import make_dataset

        return make_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
