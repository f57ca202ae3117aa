"""Fixtures for the serving tests: one real export of a tiny keras_nrnn model (session scope)
and a real server process (`python -m serving.onnx_server`) on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _serving_helpers import (
    CLASSES,
    MODEL_NAME,
    UNITS,
    ExportInfo,
    F,
    Server,
    T,
    copy_export,
    run_server,
)


@pytest.fixture(scope="session")
def export_info(tmp_path_factory: pytest.TempPathFactory) -> ExportInfo:
    try:
        from export import export_model
    except Exception as err:  # the exporter is developed in parallel
        pytest.skip(f"export package not available: {type(err).__name__}: {err}")
    import keras

    import keras_nrnn

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((T, F)),
        keras.layers.RNN(keras_nrnn.LipschitzCell(UNITS)),
        keras.layers.Dense(CLASSES),
    ])
    x = np.random.default_rng(1).standard_normal((4, T, F)).astype(np.float32)
    logits = np.asarray(model(x, training=False))
    base = tmp_path_factory.mktemp("export") / MODEL_NAME
    # Fixed-length model.onnx (the default is any length since issue 11): these tests
    # check the server's validation of a fixed time dimension.
    path = export_model(model, base, name=MODEL_NAME, version=1, onnx_time_steps="fixed")
    assert Path(path) == base / "1", path
    return ExportInfo(base, MODEL_NAME, x, logits)


@pytest.fixture(scope="module")
def server(export_info: ExportInfo, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    base = copy_export(export_info, tmp / export_info.name)
    with run_server(base, export_info.name, tmp / "server.log", "--max-batch-size", "64",
                    "--max-body-bytes", "2000000", "--poll-seconds", "0.5") as srv:
        yield srv
