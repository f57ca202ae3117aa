"""The server runs `model_fixed.onnx` for requests of the trained length T, `model.onnx` else.

A default export (any length: `model.onnx` with an `If` between the unrolled graph and a loop)
also writes `model_fixed.onnx`, the unrolled graph for T only. Every prediction is compared
with Keras (at T the trained model, at another length the same weights in a model of any
length); which file ran is read from the REST header `X-Onnx-Graph`, the gRPC trailing
metadata `x-onnx-graph` and the `onnx_session_run_count` metric.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving_helpers import CLASSES, MODEL_NAME, UNITS, F, T, run_server, wait_for
from test_workers import _children, _healthz_by_pid

pytestmark = pytest.mark.timeout(300)

OTHER_T = 13  # a length the model was not built for


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A default export (model.onnx of any length + model_fixed.onnx) and Keras references."""
    import keras

    import keras_nrnn
    from export import export_model

    keras.utils.set_random_seed(0)

    def build(t: int | None) -> keras.Model:
        return keras.Sequential(
            [
                keras.Input((t, F)),
                keras.layers.RNN(keras_nrnn.LipschitzCell(UNITS)),
                keras.layers.Dense(CLASSES),
            ]
        )

    model, any_length = build(T), build(None)
    any_length.set_weights(model.get_weights())
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, T, F)).astype(np.float32)
    x_other = rng.standard_normal((3, OTHER_T, F)).astype(np.float32)
    base = tmp_path_factory.mktemp("hybrid") / MODEL_NAME
    export_model(model, base, name=MODEL_NAME, version=1, formats=("onnx",))
    assert (base / "1" / "model_fixed.onnx").is_file()
    return {
        "base": base,
        "x": x,
        "logits": np.asarray(model(x, training=False)),
        "x_other": x_other,
        "logits_other": np.asarray(any_length(x_other, training=False)),
    }


def _rest(url: str, x: np.ndarray) -> httpx.Response:
    with httpx.Client(timeout=30) as fresh:  # a new connection: any worker may answer
        r = fresh.post(f"{url}/v1/models/{MODEL_NAME}:predict", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    return r


def _grpc(target: str, x: np.ndarray) -> tuple[np.ndarray, str]:
    import grpc

    from serving._protos import ndarray_to_tensor_proto, protos, tensor_proto_to_ndarray

    p = protos()
    request = p.predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["inputs"].CopyFrom(ndarray_to_tensor_proto(x))
    with grpc.insecure_channel(target) as channel:
        stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response, call = stub.Predict.with_call(request, timeout=30)
    graph = dict(call.trailing_metadata()).get("x-onnx-graph", "")
    return tensor_proto_to_ndarray(response.outputs["logits"]), graph


def _graph_runs(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/monitoring/prometheus/metrics", timeout=10).text
    return {
        s.labels["graph"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == ":tensorflow:serving:onnx_session_run_count_total"
    }


def test_trained_length_runs_the_fixed_graph(hybrid: dict, tmp_path: Path) -> None:
    base = shutil.copytree(hybrid["base"], tmp_path / MODEL_NAME)
    with run_server(base, MODEL_NAME, tmp_path / "server.log") as srv:
        r = _rest(srv.url, hybrid["x"])
        assert r.headers["X-Onnx-Graph"] == "model_fixed.onnx"
        np.testing.assert_allclose(r.json()["outputs"]["logits"], hybrid["logits"], atol=1e-4)
        r = _rest(srv.url, hybrid["x_other"])
        assert r.headers["X-Onnx-Graph"] == "model.onnx"
        np.testing.assert_allclose(r.json()["outputs"]["logits"], hybrid["logits_other"], atol=1e-4)
        logits, graph = _grpc(srv.grpc, hybrid["x"][:1])
        assert graph == "model_fixed.onnx"
        np.testing.assert_allclose(logits, hybrid["logits"][:1], atol=1e-4)
        logits, graph = _grpc(srv.grpc, hybrid["x_other"][:2])
        assert graph == "model.onnx"
        np.testing.assert_allclose(logits, hybrid["logits_other"][:2], atol=1e-4)
        assert _graph_runs(srv.url) == {"model_fixed.onnx": 2, "model.onnx": 2}


def test_hot_reload_and_workers_keep_the_fast_path(hybrid: dict, tmp_path: Path) -> None:
    base = shutil.copytree(hybrid["base"], tmp_path / MODEL_NAME)
    with run_server(
        base, MODEL_NAME, tmp_path / "server.log", "--workers", "2", "--poll-seconds", "0.3"
    ) as srv:
        wait_for(lambda: len(_children(srv.proc.pid)) == 2, 60, "two worker processes")
        workers = _children(srv.proc.pid)

        def loaded(version: int) -> bool:
            seen = _healthz_by_pid(srv.url, 12)
            return set(seen) == workers and all(v == [version] for v in seen.values())

        def all_on(version: str, graph: str) -> bool:
            rs = [_rest(srv.url, hybrid["x"]) for _ in range(8)]
            return all(
                r.headers["X-Model-Version"] == version and r.headers["X-Onnx-Graph"] == graph
                for r in rs
            )

        wait_for(lambda: loaded(1), 90, "both workers serve version 1")
        assert all_on("1", "model_fixed.onnx")
        # Version 2 without model_fixed.onnx: every length runs model.onnx, still correct.
        shutil.copytree(base / "1", tmp_path / "v2")
        (tmp_path / "v2" / "model_fixed.onnx").unlink()
        (tmp_path / "v2").rename(base / "2")
        wait_for(lambda: loaded(2), 60, "both workers serve version 2")
        assert all_on("2", "model.onnx")
        r = _rest(srv.url, hybrid["x"])
        np.testing.assert_allclose(r.json()["outputs"]["logits"], hybrid["logits"], atol=1e-4)
        # Version 3 with it again: the trained length is back on the fixed graph.
        shutil.copytree(base / "1", tmp_path / "v3")
        (tmp_path / "v3").rename(base / "3")
        wait_for(lambda: loaded(3), 60, "both workers serve version 3")
        assert all_on("3", "model_fixed.onnx")
        logits, graph = _grpc(srv.grpc, hybrid["x"])
        assert graph == "model_fixed.onnx"
        np.testing.assert_allclose(logits, hybrid["logits"], atol=1e-4)


def test_repository_routes_and_rejects_a_mismatched_fixed_graph(
    hybrid: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from serving.model_repo import ModelRepository

    base = shutil.copytree(hybrid["base"], tmp_path / MODEL_NAME)
    repo = ModelRepository(base, wait_for_stable=False, batching=False, inference_threads=1)
    try:
        repo.refresh()
        sig = repo.latest().signatures["serving_default"]
        assert sig.graph == "model.onnx" and sig.fast.graph == "model_fixed.onnx"
        assert sig.fast.inputs[0].shape == (None, T, F)
        assert sig.route({"inputs": hybrid["x"]}) is sig.fast
        assert sig.route({"inputs": hybrid["x_other"]}) is sig
        out = repo.submit(sig, {"inputs": hybrid["x"]}).result(30)
        np.testing.assert_allclose(out["logits"], hybrid["logits"], atol=1e-4)

        # A file that does not fit serving_default (here the one-step graph) is not used.
        shutil.copytree(base / "1", base / "2")
        shutil.copy(base / "2" / "model_streaming.onnx", base / "2" / "model_fixed.onnx")
        with caplog.at_level(logging.WARNING, logger="serving"):
            assert repo.refresh() == [2]
        sig = repo.latest().signatures["serving_default"]
        assert sig.fast is None
        assert any("model_fixed.onnx" in m and "inputs" in m for m in caplog.messages)
        out = repo.submit(sig, {"inputs": hybrid["x"]}).result(30)
        np.testing.assert_allclose(out["logits"], hybrid["logits"], atol=1e-4)
    finally:
        repo.close()
