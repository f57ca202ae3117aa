"""Hostile and careless clients: allocation claims refused before allocating, decoding off the
event loop, idle and slow connections closed, a connection cap that never unloads the model,
TF Serving's status codes, clean logs, and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import tracemalloc
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from _serving_helpers import ExportInfo, Server, T, copy_export, rss_bytes, run_server, wait_for

from serving._protos import protos, tensor_proto_to_ndarray
from serving.codec import ServingError, check_shape
from serving.model_repo import ModelRepository, SignatureInfo, TensorSpec

BIG_T = 2**27  # (1, 2^27, 1) float32 = 512 MiB if broadcast


@pytest.fixture(scope="module")
def lserver(export_info: ExportInfo, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("limits")
    base = copy_export(export_info, tmp / export_info.name)
    with run_server(base, export_info.name, tmp / "server.log", "--max-batch-size", "64",
                    "--header-timeout-seconds", "1", "--keep-alive-seconds", "1",
                    "--body-timeout-seconds", "1", "--max-connections", "8") as srv:
        yield srv


def _claim_request(name: str, shape: tuple[int, ...], signature: str = "") -> object:
    p = protos()
    req = p.predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = signature
    t = req.inputs["inputs"]
    t.dtype = 1
    for d in shape:
        t.tensor_shape.dim.add(size=d)
    t.float_val.append(1.0)
    return req


def test_grpc_shape_claim_refused_before_allocation(lserver: Server) -> None:
    p = protos()
    req = _claim_request(lserver.name, (1, BIG_T, 1))
    assert len(req.SerializeToString()) < 64
    before = rss_bytes(lserver.proc.pid, "VmHWM")  # the peak: freed memory still counts
    with grpc.insecure_channel(lserver.grpc) as channel:
        stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as exc:
                stub.Predict(req, timeout=20)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"dimension 1 must be {T}" in exc.value.details()
        # The streaming signature's batch axis is dynamic: the batch limit refuses it.
        with pytest.raises(grpc.RpcError) as exc:
            stub.Predict(_claim_request(lserver.name, (BIG_T, 1), "streaming_step"), timeout=20)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Generous: a broadcast would have added 512 MiB.
    assert rss_bytes(lserver.proc.pid, "VmHWM") - before < 128 << 20


def test_decode_refuses_a_large_claim_without_allocating() -> None:
    """A dynamic-length input: only the byte limit stands between the claim and np.full."""
    from serving.grpc_service import _Servicer

    spec = TensorSpec("inputs", np.dtype(np.float32), (None, None, 1))
    sig = SignatureInfo("serving_default", None, [spec], [])
    servicer = _Servicer(None, max_batch_size=256, max_tensor_bytes=8 << 20, metrics=None)
    req = _claim_request("m", (1, BIG_T, 1))
    tracemalloc.start()
    try:
        with pytest.raises(ServingError, match="more than this server's limit"):
            servicer._decode_inputs(sig, req.inputs)
        with pytest.raises(ValueError, match="more than the limit"):
            tensor_proto_to_ndarray(req.inputs["inputs"], max_bytes=8 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    # Python ints: a claim whose size overflows int64 is refused, not wrapped around.
    with pytest.raises(ServingError, match="bytes"):
        check_shape((2**40, 2**40, 1), spec, "input 'inputs'", max_bytes=8 << 20)


def test_json_claimed_shape_refused_without_allocating() -> None:
    from serving.codec import to_array

    spec = TensorSpec("inputs", np.dtype(np.float32), (None, T, 1))
    row = [[0.5]] * 1000  # one shared row: the lists take little memory, an array 40 MB
    value = [row] * 5000
    tracemalloc.start()
    try:
        with pytest.raises(ServingError, match=f"dimension 1 must be {T}"):
            to_array(value, spec, "input 'inputs'")
        with pytest.raises(ServingError, match="nested more than 3 deep"):
            to_array([[[[0.5]]]], spec, "input 'inputs'")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_rest_claimed_shape_checked_before_the_array_is_built(lserver: Server) -> None:
    url = f"{lserver.url}/v1/models/{lserver.name}:predict"
    # 200 rows of T + 1 steps: refused by dimension before anything is converted.
    r = httpx.post(url, json={"instances": [[[0.5]] * (T + 1)] * 200}, timeout=30)
    assert r.status_code == 400 and f"dimension 1 must be {T}" in r.json()["error"]
    r = httpx.post(url, json={"instances": [[[0.5]] * T] * 65}, timeout=30)
    assert r.status_code == 400 and "limit of 64" in r.json()["error"]


def _recv_closed(sock: socket.socket, within: float) -> bool:
    """True if the peer closes `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_silent_and_slow_clients_are_closed(lserver: Server) -> None:
    silent = _connect(lserver)
    slow_head = _connect(lserver)
    slow_head.sendall(b"POST /v1/models/x:predict HTTP/1.1\r\nHost: a\r\n")
    slow_body = _connect(lserver)
    slow_body.sendall(f"POST /v1/models/{lserver.name}:predict HTTP/1.1\r\nHost: a\r\n"
                      "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                      '{"instances": '.encode())
    try:
        assert _recv_closed(silent, 15), "a socket that never sent a byte was kept open"
        assert _recv_closed(slow_head, 15), "a socket with a partial request head was kept"
        slow_body.settimeout(15)
        head = slow_body.recv(65536)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        assert _recv_closed(slow_body, 15)
    finally:
        for s in (silent, slow_head, slow_body):
            s.close()
    assert httpx.get(lserver.url + "/healthz").status_code == 200


def test_connection_cap_evicts_idle_sockets_not_good_clients(lserver: Server,
                                                              export_info: ExportInfo) -> None:
    idle = [_connect(lserver) for _ in range(30)]
    try:
        # At most 8 connections stay open: the others are closed at once, long before the
        # 1 s head timeout could matter for most of them.
        r = httpx.post(f"{lserver.url}/v1/models/{lserver.name}:predict",
                       json={"instances": export_info.x[:1].tolist()}, timeout=10)
        assert r.status_code == 200, r.text
        closed = sum(_recv_closed(s, 0.5) for s in idle)
        assert closed >= 22, closed
    finally:
        for s in idle:
            s.close()


@pytest.mark.slow
def test_descriptor_exhaustion_never_unloads_the_model(export_info: ExportInfo,
                                                       tmp_path: Path) -> None:
    base = copy_export(export_info, tmp_path / export_info.name)
    with run_server(base, export_info.name, tmp_path / "server.log", "--poll-seconds", "0.1",
                    "--header-timeout-seconds", "30", nofile=200) as srv:
        idle = []
        try:
            for _ in range(320):
                idle.append(_connect(srv))
            time.sleep(2.0)  # many polls while the server sits at its descriptor cap
            with httpx.Client(timeout=10) as http:
                for _ in range(5):
                    r = http.post(f"{srv.url}/v1/models/{srv.name}:predict",
                                  json={"instances": export_info.x[:1].tolist()})
                    assert r.status_code == 200, r.text
                assert http.get(srv.url + "/healthz").json()["versions"] == [1]
        finally:
            for s in idle:
                s.close()
    log = srv.log.read_text()
    assert "Unloaded" not in log, log[-3000:]
    assert log.count("\n") < 50, log[-3000:]


def test_disconnect_mid_body_is_one_info_line(lserver: Server) -> None:
    s = _connect(lserver)
    s.sendall(f"POST /v1/models/{lserver.name}:predict HTTP/1.1\r\nHost: a\r\n"
              "Content-Length: 100000\r\n\r\n".encode() + b"[" * 5000)
    time.sleep(0.3)
    s.close()
    wait_for(lambda: "disconnected after" in lserver.log.read_text(), 10, "disconnect line")
    log = lserver.log.read_text()
    assert "Traceback" not in log and "Internal error" not in log, log[-3000:]
    line = next(x for x in log.splitlines() if "disconnected after" in x)
    assert " INFO " in line, line


def test_405_has_allow_header(lserver: Server) -> None:
    r = httpx.delete(f"{lserver.url}/v1/models/{lserver.name}")
    assert r.status_code == 405 and set(r.headers["allow"].replace(" ", "").split(",")) == {
        "GET", "POST"}, r.headers
    r = httpx.put(lserver.url + "/healthz")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def _app_for(export_info: ExportInfo, tmp_path: Path, **kwargs: object):
    from serving.rest_api import create_app

    repo = ModelRepository(copy_export(export_info, tmp_path / "m"), name="m",
                           inference_threads=1, batching=False, wait_for_stable=False)
    repo.refresh()
    return repo, create_app(repo, **kwargs)


def test_500_bodies_carry_no_exception_text(export_info: ExportInfo, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    repo, app = _app_for(export_info, tmp_path)

    def boom(version: object) -> None:
        raise RuntimeError("secret /etc/path detail")

    monkeypatch.setattr(repo, "get", boom)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.post("/v1/models/m:predict", json={"instances": [[[0.0]] * T]})
            assert r.status_code == 500
            assert "secret" not in r.text and "RuntimeError" not in r.text, r.text
            assert r.json() == {"error": "Internal error; the server log has the details."}
    finally:
        app.state.decode_pool.shutdown()
        repo.close()


def test_decode_runs_off_the_event_loop(export_info: ExportInfo, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    import serving.rest_api as rest_api

    seen: list[bool] = []
    real = rest_api.decode_predict

    def spy(*args: object):
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return real(*args)

    monkeypatch.setattr(rest_api, "decode_predict", spy)
    repo, app = _app_for(export_info, tmp_path)
    try:
        with TestClient(app) as client:
            r = client.post("/v1/models/m:predict",
                            json={"instances": export_info.x[:2].tolist()})
            assert r.status_code == 200, r.text
    finally:
        app.state.decode_pool.shutdown()
        repo.close()
    assert seen == [False]


@pytest.mark.slow
def test_healthz_answers_while_large_bodies_are_parsed(export_info: ExportInfo,
                                                       tmp_path: Path) -> None:
    base = copy_export(export_info, tmp_path / export_info.name)
    body = json.dumps({"instances": np.random.default_rng(0).random(
        (30000, T, 1)).round(7).tolist()}).encode()
    assert 7 << 20 < len(body) <= 9 << 20, len(body)
    with run_server(base, export_info.name, tmp_path / "server.log", "--max-body-bytes",
                    str(9 << 20), "--max-batch-size", "40000") as srv:
        url = f"{srv.url}/v1/models/{srv.name}:predict"
        done: list[int] = []

        def post() -> None:
            with contextlib.suppress(httpx.HTTPError):
                done.append(httpx.post(url, content=body, timeout=120).status_code)

        threads = [threading.Thread(target=post) for _ in range(6)]
        for t in threads:
            t.start()
        worst = 0.0
        while any(t.is_alive() for t in threads):
            start = time.perf_counter()
            assert httpx.get(srv.url + "/healthz", timeout=30).status_code == 200
            worst = max(worst, time.perf_counter() - start)
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert len(done) == 6 and all(c in (200, 429) for c in done), done
        assert worst < 5.0, worst  # loose: the loop was never held for long


def test_prometheus_metrics(lserver: Server, export_info: ExportInfo) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from serving.client import ServingClient

    url = f"{lserver.url}/v1/models/{lserver.name}:predict"
    for _ in range(3):
        assert httpx.post(url, json={"instances": export_info.x[:2].tolist()}).status_code == 200
    assert httpx.post(url, json={"instances": [[[1.0]]]}).status_code == 400
    with ServingClient(lserver.grpc, lserver.name) as client:
        client.predict(export_info.x[:1])
        client.metadata()
    r = httpx.get(lserver.url + "/monitoring/prometheus/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = [s for f in text_string_to_metric_families(r.text) for s in f.samples]

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    count = ":tensorflow:serving:request_count_total"
    ok = dict(model_name=lserver.name, model_version="1", signature_name="serving_default",
              API="predict", status="OK")
    assert value(count, entrypoint="REST", **ok) >= 3
    assert value(count, entrypoint="GRPC", **ok) >= 1
    assert value(count, entrypoint="GRPC", API="metadata", status="OK") >= 1
    assert value(count, entrypoint="REST", API="predict", status="INVALID_ARGUMENT") >= 1
    assert value(":tensorflow:serving:request_latency_count", API="predict",
                 entrypoint="REST") >= 4
    assert value(":tensorflow:serving:batching_session:processed_batch_size_count",
                 signature_name="serving_default") >= 4
    assert value(":tensorflow:serving:batching_session:processed_batch_size_sum",
                 signature_name="serving_default") >= 7
    assert value(":tensorflow:serving:model_load_count_total", model_version="1",
                 status="OK") == 1
    assert value(":tensorflow:serving:model_versions_available") == 1


def test_inflight_byte_budget_refuses_with_429_when_full() -> None:
    from serving.rest_api import _ByteBudget

    async def scenario() -> None:
        budget = _ByteBudget(1000)
        await budget.acquire(800, timeout=1)
        with pytest.raises(ServingError) as exc:
            await budget.acquire(300, timeout=0.1)
        assert exc.value.code == "RESOURCE_EXHAUSTED" and exc.value.http_status == 429
        waiter = asyncio.create_task(budget.acquire(300, timeout=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # waits for room rather than failing at once
        await budget.release(800)
        await asyncio.wait_for(waiter, 5)
        assert budget.used == 300

    asyncio.run(scenario())
