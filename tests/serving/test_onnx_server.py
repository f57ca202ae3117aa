"""The onnxruntime server process over HTTP: TF Serving's REST API, errors, hot reload."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving_helpers import CLASSES, UNITS, ExportInfo, F, Server, T, copy_export, run_server


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _predict_url(server: Server, version: int | None = None) -> str:
    v = f"/versions/{version}" if version is not None else ""
    return f"{server.url}/v1/models/{server.name}{v}:predict"


def _good_request(server: Server, info: ExportInfo) -> None:
    r = httpx.post(_predict_url(server), json={"instances": info.x[:1].tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"][0]["logits"], info.logits[0], atol=1e-4)


def test_healthz_and_status(server: Server) -> None:
    r = httpx.get(server.url + "/healthz")
    assert r.status_code == 200 and r.json()["versions"] == [1]
    r = httpx.get(f"{server.url}/v1/models/{server.name}")
    assert r.status_code == 200
    assert r.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                          "error_message": ""}}]}
    assert httpx.get(f"{server.url}/v1/models/{server.name}/versions/1").json() == r.json()


def test_metadata(server: Server) -> None:
    r = httpx.get(f"{server.url}/v1/models/{server.name}/metadata")
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"] == {"name": server.name, "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "streaming_step"}
    sd = sigs["serving_default"]
    assert sd["method_name"] == "tensorflow/serving/predict"
    assert sd["inputs"]["inputs"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sd["inputs"]["inputs"]["tensor_shape"]["dim"]][::2] == ["-1", "1"]
    assert set(sd["outputs"]) == {"logits", "probabilities", "classes"}
    assert sd["outputs"]["classes"]["dtype"] == "DT_INT64"
    st = sigs["streaming_step"]
    assert set(st["inputs"]) == {"inputs", "state"}
    assert st["inputs"]["state"]["tensor_shape"]["dim"][1]["size"] == str(UNITS)


def test_predict_row_format_matches_keras(server: Server, export_info: ExportInfo) -> None:
    r = httpx.post(_predict_url(server), json={"instances": export_info.x.tolist()})
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == "1"
    preds = r.json()["predictions"]
    assert len(preds) == len(export_info.x)
    assert all(set(p) == {"logits", "probabilities", "classes"} for p in preds)
    logits = np.array([p["logits"] for p in preds])
    np.testing.assert_allclose(logits, export_info.logits, atol=1e-4)
    np.testing.assert_allclose([p["probabilities"] for p in preds], _softmax(logits),
                               atol=1e-5)
    assert [p["classes"] for p in preds] == export_info.logits.argmax(-1).tolist()


def test_concurrent_requests_get_their_own_rows(server: Server,
                                                export_info: ExportInfo) -> None:
    """With server-side batching, each request must get exactly its own outputs."""
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort

    sess = ort.InferenceSession(str(export_info.base / "1" / "model.onnx"))
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((int(rng.integers(1, 4)), 20, 1)).astype(np.float32)
          for _ in range(24)]
    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(
            lambda x: http.post(_predict_url(server), json={"inputs": x.tolist()}), xs))
    for x, r in zip(xs, bodies, strict=True):
        assert r.status_code == 200, r.text
        expected = sess.run(["logits"], {"inputs": x})[0]
        np.testing.assert_allclose(r.json()["outputs"]["logits"], expected, atol=1e-5)
    stats = httpx.get(server.url + "/healthz").json()["batching"]
    assert stats["requests_run"] >= len(xs) >= 1 and stats["batches_run"] >= 1


def test_predict_columnar_and_named_rows(server: Server, export_info: ExportInfo) -> None:
    x = export_info.x[:2]
    cols = httpx.post(_predict_url(server, 1), json={"inputs": x.tolist()}).json()["outputs"]
    named_cols = httpx.post(_predict_url(server),
                            json={"inputs": {"inputs": x.tolist()}}).json()["outputs"]
    rows = httpx.post(_predict_url(server), json={
        "signature_name": "serving_default",
        "instances": [{"inputs": xi.tolist()} for xi in x]}).json()["predictions"]
    assert set(cols) == {"logits", "probabilities", "classes"}
    np.testing.assert_allclose(cols["logits"], export_info.logits[:2], atol=1e-4)
    assert cols == named_cols
    assert [r["logits"] for r in rows] == cols["logits"]
    assert cols["classes"] == export_info.logits[:2].argmax(-1).tolist()


def test_streaming_signature_equals_full_sequence(server: Server,
                                                  export_info: ExportInfo) -> None:
    x = export_info.x[:2]
    state = np.zeros((2, UNITS)).tolist()
    for t in range(x.shape[1]):
        r = httpx.post(_predict_url(server), json={
            "signature_name": "streaming_step",
            "inputs": {"inputs": x[:, t].tolist(), "state": state}})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"]
        state = out["new_state"]
    np.testing.assert_allclose(out["logits"], export_info.logits[:2], atol=1e-4)


BIG = 2_000_001


def _bad_requests(server: Server, info: ExportInfo) -> list[tuple[str, dict, int, str]]:
    """(id, httpx request kwargs, expected status, expected substring of the error)."""
    x = info.x[:1]
    nan = x.copy()
    nan[0, 3, 0] = np.nan
    marked = x.tolist()
    marked[0][5][0] = "MARK"
    inf_body = json.dumps({"instances": marked}).replace('"MARK"', "-Infinity")
    url = _predict_url(server)
    return [
        ("malformed_json", {"url": url, "content": b'{"instances": [[[1.0]'}, 400,
         "Malformed JSON"),
        ("not_utf8", {"url": url, "content": b"\xff\xfe{}"}, 400, "Malformed JSON"),
        ("body_is_list", {"url": url, "json": [1, 2]}, 400, "JSON object"),
        ("neither_key", {"url": url, "json": {"examples": []}}, 400, "`instances`"),
        ("both_keys", {"url": url, "json": {"instances": x.tolist(), "inputs": x.tolist()}},
         400, "received both"),
        ("empty_instances", {"url": url, "json": {"instances": []}}, 400, "non-empty"),
        ("wrong_rank", {"url": url, "json": {"instances": x[:, :, 0].tolist()}}, 400,
         "3-D tensor"),
        ("wrong_features", {"url": url, "json": {"instances": np.zeros((1, 20, 3)).tolist()}},
         400, "dimension 2 must be 1"),
        ("ragged", {"url": url, "json": {"instances": [[[1.0]] * T, [[1.0]] * (T - 1)]}}, 400,
         "rectangular"),
        ("strings", {"url": url, "json": {"instances": [[["a"]] * 20]}}, 400, "strings"),
        ("booleans", {"url": url, "json": {"instances": [[[True]] * 20]}}, 400, "booleans"),
        ("nulls", {"url": url, "json": {"instances": [[[None]] * 20]}}, 400, "mixed/null"),
        ("nan", {"url": url, "content": json.dumps({"instances": nan.tolist()}).encode()},
         400, "NaN or infinite"),
        ("infinity", {"url": url, "content": inf_body.encode()}, 400, "NaN or infinite"),
        ("overflow_float32", {"url": url, "json": {"instances": np.full(x.shape, 1e39).tolist()}},
         400, "NaN or infinite"),
        ("unknown_input_name", {"url": url, "json": {"inputs": {"x": x.tolist()}}}, 400,
         "unknown: ['x']"),
        ("unknown_signature", {"url": url, "json": {"signature_name": "nope",
                                                    "instances": x.tolist()}}, 400,
         "not found in signature def"),
        ("streaming_missing_state", {"url": url, "json": {
            "signature_name": "streaming_step", "inputs": {"inputs": [[1.0]]}}}, 400,
         "missing: ['state']"),
        ("streaming_batch_mismatch", {"url": url, "json": {
            "signature_name": "streaming_step",
            "inputs": {"inputs": [[1.0]], "state": np.zeros((2, UNITS)).tolist()}}}, 400,
         "same batch size"),
        ("batch_too_large", {"url": url, "json": {"instances": np.zeros((65, T, F)).tolist()}},
         400, "exceeds this server's limit of 64"),
        # RESOURCE_EXHAUSTED is 429 in TF Serving's HTTP mapping.
        ("body_too_large", {"url": url, "content": b" " * BIG}, 429, "--max-body-bytes"),
        ("body_too_large_chunked", {"url": url, "content": (b" " * 100_000 for _ in range(21))},
         429, "--max-body-bytes"),
        ("unknown_model", {"url": f"{server.url}/v1/models/other:predict",
                           "json": {"instances": x.tolist()}}, 404, "Servable not found"),
        ("unknown_version", {"url": _predict_url(server, 7), "json": {"instances": x.tolist()}},
         404, "version 7"),
        ("bad_version", {"url": f"{server.url}/v1/models/{server.name}/versions/x:predict",
                         "json": {"instances": x.tolist()}}, 400, "non-negative integer"),
        # TF Serving: an unknown label is INVALID_ARGUMENT (400), so is a malformed version.
        ("label", {"url": f"{server.url}/v1/models/{server.name}/labels/stable:predict",
                   "json": {"instances": x.tolist()}}, 400, "Unrecognized servable version label"),
        ("non_ascii_version", {"url": f"{server.url}/v1/models/{server.name}/versions/%C2%B2"
                                      ":predict", "json": {"instances": x.tolist()}}, 400,
         "ASCII digits"),
        ("huge_version", {"url": f"{server.url}/v1/models/{server.name}/versions/"
                                 f"{2**64}:predict", "json": {"instances": x.tolist()}}, 400,
         "Failed to convert version"),
        ("deep_nesting", {"url": url, "content": b'{"instances": ' + b"[" * 5000 + b"]" * 5000
                          + b"}"}, 400, None),
        ("deep_nesting_parser", {"url": url, "content": b'{"instances": ' + b"[" * 100_000
                                 + b"]" * 100_000 + b"}"}, 400, "Malformed JSON"),
        ("claimed_huge_rows", {"url": url, "json": {"instances": [[[1.0]] * 5000]}}, 400,
         "dimension 1 must be 20"),
        ("classify", {"url": f"{server.url}/v1/models/{server.name}:classify",
                      "json": {"examples": []}}, 501, ":predict"),
    ]


BAD_IDS = [
    "malformed_json", "not_utf8", "body_is_list", "neither_key", "both_keys", "empty_instances",
    "wrong_rank", "wrong_features", "ragged", "strings", "booleans", "nulls", "nan", "infinity",
    "overflow_float32", "unknown_input_name", "unknown_signature", "streaming_missing_state",
    "streaming_batch_mismatch", "batch_too_large", "body_too_large", "body_too_large_chunked",
    "unknown_model", "unknown_version", "bad_version", "label", "classify", "non_ascii_version",
    "huge_version", "deep_nesting", "deep_nesting_parser", "claimed_huge_rows",
]


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_request_then_good(server: Server, export_info: ExportInfo, case: str) -> None:
    cases = {c[0]: c[1:] for c in _bad_requests(server, export_info)}
    assert set(cases) == set(BAD_IDS)
    kwargs, status, fragment = cases[case]
    r = httpx.post(timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    if fragment is not None:
        assert fragment in body["error"], body["error"]
    _good_request(server, export_info)  # the server keeps serving


def test_get_errors(server: Server) -> None:
    for path, status, fragment in [
        ("/v1/models/other", 404, "other"),
        (f"/v1/models/{server.name}/versions/9", 404, "version 9"),
        ("/v1/models/other/metadata", 404, "Servable not found"),
        (f"/v1/models/{server.name}/versions/9/metadata", 404, "version 9"),
        ("/v2/nothing", 404, "Not found"),
    ]:
        r = httpx.get(server.url + path)
        assert r.status_code == status and fragment in r.json()["error"], (path, r.text)
    r = httpx.delete(f"{server.url}/healthz")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]


def test_server_does_not_load_tensorflow(server: Server) -> None:
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc on this platform")
    text = maps.read_text()
    assert "onnxruntime" in text
    assert "_pywrap_tensorflow_internal" not in text and "libtensorflow" not in text


def _wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_hot_reload_new_version(export_info: ExportInfo, tmp_path: Path) -> None:
    from serving.client import ServingClient

    base = copy_export(export_info, tmp_path / export_info.name)
    with run_server(base, export_info.name, tmp_path / "server.log", "--poll-seconds",
                    "0.3", "--no-batching") as srv:
        status_url = f"{srv.url}/v1/models/{srv.name}"
        assert [s["version"] for s in httpx.get(status_url).json()["model_version_status"]] \
            == ["1"]
        # Copy under a non-integer name, then rename into place (what an exporter does).
        shutil.copytree(base / "1", base / ".incoming-2")
        os.rename(base / ".incoming-2", base / "2")
        _wait_for(lambda: [s["version"] for s in
                           httpx.get(status_url).json()["model_version_status"]] == ["2"])
        r = httpx.post(_predict_url(srv), json={"instances": export_info.x.tolist()})
        assert r.status_code == 200 and r.headers["x-model-version"] == "2"
        np.testing.assert_allclose([p["logits"] for p in r.json()["predictions"]],
                                   export_info.logits, atol=1e-4)
        with ServingClient(srv.grpc, srv.name) as client:
            assert client.metadata()["model_spec"]["version"] == "2"
        # Only the latest version is served (TF Serving's default policy).
        assert httpx.post(_predict_url(srv, 1), json={"instances": export_info.x.tolist()}
                          ).status_code == 404
        # A folder that is not a loadable model does not disturb serving.
        (base / "3").mkdir()
        (base / "3" / "model.onnx").write_bytes(b"not an onnx model")
        time.sleep(1.5)
        r = httpx.post(_predict_url(srv), json={"instances": export_info.x[:1].tolist()})
        assert r.status_code == 200 and r.headers["x-model-version"] == "2"
        assert srv.proc.poll() is None
    assert CLASSES == 2
