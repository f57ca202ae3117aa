"""`ServingClient` and `python -m serving.client` against the real server, REST and gRPC,
including TF Serving's gRPC PredictionService error codes."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
from _serving_helpers import ROOT, UNITS, ExportInfo, F, Server, T, env

from serving._protos import ndarray_to_tensor_proto, protos
from serving.client import ServingClient, ServingError, load_inputs


@pytest.fixture(params=["rest", "grpc"])
def client(request: pytest.FixtureRequest, server: Server):
    target = server.url if request.param == "rest" else server.grpc
    with ServingClient(target, server.name, timeout=30) as c:
        yield c


def test_status_and_metadata_same_over_rest_and_grpc(server: Server) -> None:
    with ServingClient(server.url, server.name) as rest, \
            ServingClient(server.grpc, server.name) as rpc:
        assert rest.status() == rpc.status() == {"model_version_status": [
            {"version": "1", "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}]}
        assert rest.status(version=1) == rpc.status(version=1)
        m_rest, m_rpc = rest.metadata(), rpc.metadata()
        assert m_rest["model_spec"]["version"] == m_rpc["model_spec"]["version"] == "1"
        sig_rest = m_rest["metadata"]["signature_def"]["signature_def"]
        sig_rpc = m_rpc["metadata"]["signature_def"]["signature_def"]
        assert set(sig_rest) == set(sig_rpc) == {"serving_default", "streaming_step"}
        for name in sig_rest:
            for kind in ("inputs", "outputs"):
                for tensor, info in sig_rest[name][kind].items():
                    other = sig_rpc[name][kind][tensor]
                    assert info["dtype"] == other["dtype"]
                    assert info["tensor_shape"]["dim"] == other["tensor_shape"]["dim"]
        # The export unrolls model.onnx for the model's fixed T, so the time axis is T, not -1.
        assert rest.input_specs() == rpc.input_specs() == {"inputs": ("DT_FLOAT", [-1, T, F])}


def test_predict_matches_keras(client: ServingClient, export_info: ExportInfo) -> None:
    out = client.predict(export_info.x)
    assert set(out) == {"logits", "probabilities", "classes"}
    np.testing.assert_allclose(out["logits"], export_info.logits, atol=1e-4)
    np.testing.assert_array_equal(out["classes"], export_info.logits.argmax(-1))
    assert out["classes"].dtype.kind == "i"
    again = client.predict(export_info.x, version=1)
    np.testing.assert_allclose(again["logits"], out["logits"], atol=1e-6)


def test_predict_streaming_named_inputs(client: ServingClient, export_info: ExportInfo) -> None:
    x = export_info.x[:2]
    state = np.zeros((2, UNITS), np.float32)
    for t in range(x.shape[1]):
        out = client.predict({"inputs": x[:, t], "state": state},
                             signature_name="streaming_step")
        state = out["new_state"].astype(np.float32)
    np.testing.assert_allclose(out["logits"], export_info.logits[:2], atol=1e-4)


def test_rest_columnar_equals_rows(server: Server, export_info: ExportInfo) -> None:
    with ServingClient(server.url, server.name) as c:
        rows = c.predict(export_info.x)
        cols = c.predict(export_info.x, columnar=True)
    for k in rows:
        np.testing.assert_array_equal(rows[k], cols[k])


@pytest.mark.parametrize("kind", ["unknown_model", "unknown_version", "bad_shape", "nan",
                                  "batch_too_large", "unknown_signature"])
def test_client_errors_then_good(server: Server, export_info: ExportInfo, kind: str) -> None:
    expected = {
        "unknown_model": ("NOT_FOUND", 404), "unknown_version": ("NOT_FOUND", 404),
        "bad_shape": ("INVALID_ARGUMENT", 400), "nan": ("INVALID_ARGUMENT", 400),
        "batch_too_large": ("INVALID_ARGUMENT", 400),
        "unknown_signature": ("INVALID_ARGUMENT", 400),
    }[kind]
    for target in (server.url, server.grpc):
        name = "other" if kind == "unknown_model" else server.name
        with ServingClient(target, name) as c:
            x = export_info.x[:1].copy()
            kwargs = {}
            if kind == "unknown_version":
                kwargs["version"] = 42
            elif kind == "bad_shape":
                x = np.zeros((1, 20, 3), np.float32)
            elif kind == "nan":
                x[0, 2, 0] = np.nan
            elif kind == "batch_too_large":
                x = np.zeros((65, 2, 1), np.float32)
            elif kind == "unknown_signature":
                kwargs["signature_name"] = "nope"
            with pytest.raises(ServingError) as info:
                if kind == "unknown_model" and not c.rest:
                    # No metadata lookup for the input name: send a raw request.
                    c.predict({"inputs": x}, **kwargs)
                else:
                    c.predict(x, **kwargs)
            err = info.value
            if c.rest:
                assert err.http_status == expected[1] and err.code == f"HTTP_{expected[1]}"
            else:
                assert err.code == expected[0], err
            assert err.message
        with ServingClient(target, server.name) as good:
            np.testing.assert_allclose(good.predict(export_info.x)["logits"],
                                       export_info.logits, atol=1e-4)


def test_grpc_raw_stub_details(server: Server, export_info: ExportInfo) -> None:
    p = protos()
    with grpc.insecure_channel(server.grpc) as channel:
        stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        req = p.predict_pb2.PredictRequest()
        req.model_spec.name = server.name
        req.inputs["inputs"].CopyFrom(ndarray_to_tensor_proto(export_info.x))
        req.output_filter.append("classes")
        resp = stub.Predict(req, timeout=30)
        assert set(resp.outputs) == {"classes"}
        assert resp.model_spec.version.value == 1
        assert resp.model_spec.signature_name == "serving_default"
        # float_val with a single value broadcasts (TensorFlow semantics).
        req2 = p.predict_pb2.PredictRequest()
        req2.model_spec.name = server.name
        t = req2.inputs["inputs"]
        t.dtype = 1
        for d in (2, 20, 1):
            t.tensor_shape.dim.add(size=d)
        t.float_val.append(0.5)
        resp2 = stub.Predict(req2, timeout=30)
        assert [d.size for d in resp2.outputs["logits"].tensor_shape.dim] == [2, 2]
        def string_tensor(r):
            t = r.inputs["inputs"]
            t.Clear()
            t.dtype = 7  # DT_STRING
            t.tensor_shape.dim.add(size=1)
            t.string_val.append(b"x")

        def short_content(r):
            r.inputs["inputs"].tensor_content = r.inputs["inputs"].tensor_content[:-4]

        for bad, fragment in [
            (lambda r: r.output_filter.append("nope"), "output_filter"),
            (lambda r: r.inputs["inputs"].CopyFrom(
                ndarray_to_tensor_proto(np.ones((1, 20, 1), np.int32))), "DT_INT32"),
            (string_tensor, "dtype"),
            (short_content, "bytes"),
            (lambda r: r.inputs.pop("inputs"), "missing"),
        ]:
            r = p.predict_pb2.PredictRequest()
            r.CopyFrom(req)
            del r.output_filter[:]
            bad(r)
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(r, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert fragment in info.value.details()
            assert stub.Predict(req, timeout=30).outputs["classes"].tensor_content
        md = p.get_model_metadata_pb2.GetModelMetadataRequest()
        md.model_spec.name = server.name
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelMetadata(md, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "metadata_field" in info.value.details()


def test_client_cli(server: Server, export_info: ExportInfo, tmp_path) -> None:
    npy = tmp_path / "x.npy"
    np.save(npy, export_info.x[:, :, 0])  # [batch, T]: reshaped to [batch, T, 1] by the CLI
    csv = tmp_path / "x.csv"
    header = "label," + ",".join(f"t{i}" for i in range(export_info.x.shape[1]))
    np.savetxt(csv, np.c_[np.arange(len(export_info.x)), export_info.x[:, :, 0]],
               delimiter=",", header=header, comments="")
    base = [sys.executable, "-m", "serving.client"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], cwd=ROOT, env=env(), capture_output=True,
                              text=True, timeout=120)

    r = run("--url", server.url, "--model", server.name, "status")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model_version_status"][0]["state"] == "AVAILABLE"
    r = run("--grpc", server.grpc, "--model", server.name, "predict", "--input", str(npy),
            "--batch-size", "3")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(json.loads(r.stdout)["logits"], export_info.logits, atol=1e-4)
    out = tmp_path / "y.json"
    r = run("--url", server.url, "--model", server.name, "predict", "--input", str(csv),
            "--drop-column", "0", "--columnar", "--out", str(out))
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(json.loads(out.read_text())["logits"], export_info.logits,
                               atol=1e-4)
    r = run("--url", server.url, "--model", "other", "status")
    assert r.returncode == 1 and json.loads(r.stderr)["code"] == "HTTP_404"


def test_load_inputs(tmp_path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("1,2,3\n4,5,6\n")
    np.testing.assert_array_equal(load_inputs(f), [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match=r"\.npy or \.csv"):
        load_inputs(tmp_path / "a.txt")
