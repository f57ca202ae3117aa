"""Bounded concurrent load test of a TF Serving compatible server (REST or gRPC).

Usage:

    python -m serving.loadtest --url http://127.0.0.1:8501 --model NAME \
        --concurrency 16 --requests 2000 [--batch 1] [--grpc 127.0.0.1:8500] \
        [--input-shape 140,1] [--max-seconds 300] [--out loadtest.json]

`--concurrency` clients (asyncio tasks, each with one request in flight) send `--requests`
predict requests in total (at most 100000) and stop early after `--max-seconds`. Inputs are
random normal data shaped from the model metadata (`--seed`), encoded once before the run so
the client measures the server, not its own encoding. Prints throughput, p50/p95/p99 latency
and errors, and writes the same as JSON (`--out`). With `--grpc TARGET` the gRPC
PredictionService is driven instead of REST (metadata is still read over gRPC).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_CONCURRENCY", "MAX_REQUESTS", "main", "run_loadtest", "summarize"]

MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 256


def summarize(latencies_s: Sequence[float], errors: Sequence[str], elapsed_s: float,
              batch: int) -> dict[str, Any]:
    """Throughput and latency percentiles of a run.

    Args:
        latencies_s: latency of each successful request, in seconds.
        errors: one message per failed request.
        elapsed_s: wall time of the run.
        batch: examples per request.

    Returns:
        A dict with `requests`, `ok`, `errors`, `error_samples`, `elapsed_s`,
        `throughput_rps`, `throughput_examples_per_s` and `latency_ms` (p50, p95, p99, mean,
        min, max; None when nothing succeeded).

    Example:

    >>> r = summarize([0.001, 0.002, 0.003], [], 1.0, 1)
    >>> r["ok"], r["latency_ms"]["p50"], r["throughput_rps"]
    (3, 2.0, 3.0)
    """
    lat = np.asarray(latencies_s, dtype=np.float64) * 1e3
    done = len(lat) + len(errors)
    latency = None
    if lat.size:
        latency = {
            "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean()),
            "min": float(lat.min()), "max": float(lat.max()),
        }
    return {
        "requests": done,
        "ok": int(lat.size),
        "errors": len(errors),
        "error_samples": dict(Counter(errors).most_common(5)),
        "elapsed_s": elapsed_s,
        "throughput_rps": (lat.size / elapsed_s) if elapsed_s > 0 else 0.0,
        "throughput_examples_per_s": (lat.size * batch / elapsed_s) if elapsed_s > 0 else 0.0,
        "latency_ms": latency,
    }


async def _drive(n_requests: int, concurrency: int, max_seconds: float, send: Any
                 ) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n_requests))
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        for _ in counter:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            try:
                err = await send()
            except Exception as exc:
                err = f"{type(exc).__name__}: {exc}"[:300]
            if err is None:
                latencies.append(time.perf_counter() - t0)
            else:
                errors.append(err)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


class _RawHttp:
    """Minimal keep-alive HTTP/1.1 POST client on asyncio streams (plain http only).

    httpx costs about as much CPU per request as the server itself; on a 2-core machine the
    load generator would then measure mostly itself. This client writes a prebuilt request
    and reads `Content-Length` bytes back.
    """

    def __init__(self, host: str, port: int, request: bytes, timeout: float) -> None:
        self.host, self.port, self.request, self.timeout = host, port, request, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_headers: dict[str, str] = {}

    async def post(self) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                return await asyncio.wait_for(self._roundtrip(), self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _roundtrip(self) -> tuple[int, bytes]:
        self.writer.write(self.request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.last_headers = headers
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _run_rest(url: str, model: str, body: bytes, batch: int, n: int, concurrency: int,
                    max_seconds: float, timeout: float, version: int | None,
                    http_client: str = "raw"):
    from urllib.parse import urlsplit

    path = f"/v1/models/{model}"
    if version is not None:
        path += f"/versions/{version}"
    path += ":predict"
    parts = urlsplit(url)
    if http_client == "raw" and parts.scheme == "http":
        host, port = parts.hostname, parts.port or 80
        request = (f"POST {parts.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
        free = [_RawHttp(host, port, request, timeout) for _ in range(concurrency)]

        async def send_raw() -> str | None:
            conn = free.pop()
            try:
                status, content = await conn.post()
            finally:
                free.append(conn)
            if status != 200:
                return f"HTTP {status}: {content[:200].decode(errors='replace')}"
            preds = json.loads(content).get("predictions")
            if not isinstance(preds, list) or len(preds) != batch:
                return f"malformed response: {content[:200]!r}"
            return None

        try:
            return await _drive(n, concurrency, max_seconds, send_raw)
        finally:
            for conn in free:
                await conn.close()
    import httpx

    path = f"{url.rstrip('/')}{path}"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        headers = {"content-type": "application/json"}

        async def send() -> str | None:
            r = await http.post(path, content=body, headers=headers)
            if r.status_code != 200:
                return f"HTTP {r.status_code}: {r.text[:200]}"
            preds = json.loads(r.content).get("predictions")
            if not isinstance(preds, list) or len(preds) != batch:
                return f"malformed response: {r.text[:200]}"
            return None

        return await _drive(n, concurrency, max_seconds, send)


async def _run_grpc(target: str, request: Any, batch: int, n: int, concurrency: int,
                    max_seconds: float, timeout: float):
    import grpc

    from serving._protos import protos

    p = protos()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def send() -> str | None:
            try:
                response = await stub.Predict(request, timeout=timeout)
            except grpc.aio.AioRpcError as err:
                return f"{err.code().name}: {err.details()}"[:300]
            dims = [d.size for d in response.outputs["classes"].tensor_shape.dim]
            if dims[:1] != [batch]:
                return f"malformed response: classes shape {dims}"
            return None

        return await _drive(n, concurrency, max_seconds, send)


def run_loadtest(url: str | None, model: str, concurrency: int = 16, requests: int = 2000,
                 batch: int = 1, grpc_target: str | None = None, max_seconds: float = 300.0,
                 timeout: float = 30.0, seed: int = 0, version: int | None = None,
                 input_shape: Sequence[int] | None = None, http_client: str = "raw"
                 ) -> dict[str, Any]:
    """Run a bounded load test and return the report.

    Args:
        url: REST base URL (used unless `grpc_target` is given).
        model: model name.
        concurrency: concurrent clients, in [1, 256].
        requests: total requests, in [1, 100000].
        batch: examples per request (>= 1).
        grpc_target: `host:port` to drive gRPC Predict instead of REST.
        max_seconds: stop issuing requests after this long (> 0).
        timeout: per-request timeout in seconds.
        seed: seed of the random inputs.
        version: model version (default: latest).
        input_shape: shape of one example (e.g. `(140, 1)`); default: the signature's input
            shape, where a dynamic dimension (such as the time axis of the exports) becomes 1
            with a warning, so pass it for realistic figures.
        http_client: `"raw"` (a minimal asyncio HTTP/1.1 client, low CPU cost) or `"httpx"`.

    Returns:
        `{"config": {...}, **summarize(...)}` plus start/end timestamps.

    Example:

    >>> report = run_loadtest("http://127.0.0.1:8501", "nrnn", 4, 50)  # doctest: +SKIP
    >>> report["errors"]  # doctest: +SKIP
    0
    """
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"Argument `concurrency` must be in [1, {MAX_CONCURRENCY}]; received "
                         f"{concurrency}.")
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"Argument `requests` must be in [1, {MAX_REQUESTS}]; received "
                         f"{requests}.")
    if batch < 1:
        raise ValueError(f"Argument `batch` must be >= 1; received {batch}.")
    if max_seconds <= 0:
        raise ValueError(f"Argument `max_seconds` must be > 0; received {max_seconds}.")
    if http_client not in ("raw", "httpx"):
        raise ValueError(f"Argument `http_client` must be 'raw' or 'httpx'; received "
                         f"{http_client!r}.")
    if url is None and grpc_target is None:
        raise ValueError("One of `url` or `grpc_target` must be given; received neither.")
    from serving.client import ServingClient

    with ServingClient(grpc_target or url, model, timeout=timeout) as client:
        specs = client.input_specs("serving_default", version)
    (input_name, (_, shape)), = specs.items()
    if input_shape is not None:
        inner = [int(d) for d in input_shape]
        if len(inner) != len(shape) - 1 or any(
                d < 1 or (want > 0 and d != want) for d, want in zip(inner, shape[1:],
                                                                      strict=False)):
            raise ValueError(f"Argument `input_shape` must match the model input shape "
                             f"{shape} without the batch axis; received {inner}.")
    else:
        inner = [d if d > 0 else 1 for d in shape[1:]]
        if any(d < 0 for d in shape[1:]):
            print(f"warning: input shape {shape} has dynamic dimensions; sending size 1 "
                  "there. Pass --input-shape (e.g. 140,1) for realistic figures.",
                  file=sys.stderr)
    data = np.random.default_rng(seed).standard_normal([batch, *inner]).astype(np.float32)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    if grpc_target:
        from serving._protos import ndarray_to_tensor_proto, protos

        request = protos().predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = "serving_default"
        if version is not None:
            request.model_spec.version.value = version
        request.inputs[input_name].CopyFrom(ndarray_to_tensor_proto(data))
        coro = _run_grpc(grpc_target, request, batch, requests, concurrency, max_seconds,
                         timeout)
    else:
        body = json.dumps({"instances": data.tolist()}).encode()
        coro = _run_rest(url, model, body, batch, requests, concurrency, max_seconds, timeout,
                         version, http_client)
    latencies, errors, elapsed = asyncio.run(coro)
    report = {
        "config": {"url": None if grpc_target else url, "grpc": grpc_target,
                   "protocol": "grpc" if grpc_target else "rest",
                   "model": model, "version": version, "concurrency": concurrency,
                   "requests": requests, "batch": batch, "input_shape": [batch, *inner],
                   "max_seconds": max_seconds, "seed": seed,
                   "http_client": None if grpc_target else http_client},
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **summarize(latencies, errors, elapsed, batch),
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    """One human-readable paragraph of a report."""
    c = report["config"]
    lines = [
        f"{c['protocol'].upper()} {c['grpc'] or c['url']} model={c['model']} "
        f"concurrency={c['concurrency']} batch={c['batch']} input={c['input_shape']}",
        f"requests={report['requests']} ok={report['ok']} errors={report['errors']} "
        f"elapsed={report['elapsed_s']:.2f}s throughput={report['throughput_rps']:.1f} req/s "
        f"({report['throughput_examples_per_s']:.1f} examples/s)",
    ]
    lat = report["latency_ms"]
    if lat:
        lines.append(f"latency ms: p50={lat['p50']:.2f} p95={lat['p95']:.2f} "
                     f"p99={lat['p99']:.2f} mean={lat['mean']:.2f} max={lat['max']:.2f}")
    for msg, count in report["error_samples"].items():
        lines.append(f"error x{count}: {msg}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m serving.loadtest` (see the module docstring).

    Args:
        argv: arguments (default: `sys.argv[1:]`).

    Returns:
        0 when every request succeeded, else 1.
    """
    ap = argparse.ArgumentParser(prog="python -m serving.loadtest",
                                 description="Bounded load test of a TF Serving compatible "
                                             "server.")
    ap.add_argument("--url", default="http://127.0.0.1:8501", help="REST base URL")
    ap.add_argument("--grpc", nargs="?", const="127.0.0.1:8500", default=None,
                    help="drive gRPC Predict at this target (default 127.0.0.1:8500)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--version", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input-shape", default=None,
                    help="one example's shape without batch, e.g. 140,1 (needed when the "
                         "model's time axis is dynamic)")
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--http-client", choices=["raw", "httpx"], default="raw",
                    help="REST client: minimal asyncio HTTP/1.1 (default) or httpx")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("loadtest.json"),
                    help="JSON report path (default ./loadtest.json)")
    args = ap.parse_args(argv)
    try:
        report = run_loadtest(args.url, args.model, args.concurrency, args.requests, args.batch,
                              args.grpc, args.max_seconds, args.timeout, args.seed, args.version,
                              [int(d) for d in args.input_shape.split(",")]
                              if args.input_shape else None, args.http_client)
    except ValueError as err:
        ap.error(str(err))
    from atomic_io import atomic_write_text

    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    print(format_report(report))
    print(f"report: {args.out}")
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
