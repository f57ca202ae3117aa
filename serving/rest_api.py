"""TF Serving's REST API on FastAPI, backed by a `ModelRepository` of onnxruntime sessions.

Routes (same URLs, bodies and error shape `{"error": "..."}` as `tensorflow_model_server`):

    GET  /v1/models/NAME[/versions/V]             model status
    GET  /v1/models/NAME[/versions/V]/metadata    signature metadata
    POST /v1/models/NAME[/versions/V]:predict     `instances` or `inputs`
    GET  /monitoring/prometheus/metrics           Prometheus metrics (see `serving.metrics`)
    GET  /healthz                                 200 when a version is loaded, else 503

The event loop only moves bytes: request bodies are read incrementally (RESOURCE_EXHAUSTED,
HTTP 429 as TF Serving maps it, beyond `max_body_bytes`; 408 when the body does not arrive
within `body_timeout_s`), then JSON decoding and validation run in a small
thread pool (`decode_threads`), and sessions run in the repository's worker threads (batched,
see `serving.batching`). The bytes of bodies being read or decoded are bounded by
`max_inflight_bytes`: a request waits for room, and gets 429 if none frees up in time.
The predict response carries extra headers: `X-Model-Version` naming the version used and
`X-Onnx-Graph` the ONNX file that ran (`model_fixed.onnx` for inputs of the trained length
when the version has it, else `model.onnx` or `model_streaming.onnx`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from serving._ratelimit import RateLimitedLogger
from serving.codec import (
    ServingError,
    format_predict_response,
    metadata_json,
    parse_predict_body,
    parse_version,
    resolve_signature,
    status_json,
)
from serving.metrics import CONTENT_TYPE, METRICS_PATH, ServerMetrics
from serving.model_repo import ModelRepository, ModelVersion, SignatureInfo

__all__ = ["create_app", "decode_predict"]

log = logging.getLogger("serving")
_errors = RateLimitedLogger(log, interval_s=10.0)

# Version: one or more characters other than / and :, checked by `parse_version` (TF Serving's
# own pattern is \d+; anything else is a malformed request, 400).
_PATH = re.compile(
    r"^(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>/metadata|:predict|:classify|:regress)?$"
)


class _DisconnectedError(Exception):
    """The client went away while its body was being read."""


class _ByteBudget:
    """At most `limit` bytes of request bodies being read or decoded at once (asyncio)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int, timeout: float) -> None:
        async with self._cond:
            try:
                await asyncio.wait_for(
                    self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit),
                    timeout)
            except TimeoutError:
                raise ServingError(
                    f"Server busy: {self.used} bytes of request bodies are being processed "
                    f"(limit {self.limit}, --max-inflight-bytes); retry later.",
                    "RESOURCE_EXHAUSTED") from None
            self.used += n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(obj, allow_nan=False).encode(), status_code=status,
                    media_type="application/json", headers=headers)


def _error(err: ServingError) -> Response:
    return _json({"error": err.message}, err.http_status)


def decode_predict(body: bytes, version: ModelVersion, max_batch_size: int,
                   max_bytes: int | None = None
                   ) -> tuple[SignatureInfo, dict[str, Any], bool]:
    """Decode and validate a REST predict body (runs in the decode pool, not on the loop).

    Args:
        body: the raw request body.
        version: the loaded version the request is for.
        max_batch_size: largest accepted batch.
        max_bytes: largest accepted size of one input tensor in bytes.

    Returns:
        `(signature, feeds, columnar)` as `serving.codec.parse_predict_body`.

    Raises:
        ServingError: malformed JSON (including nesting too deep for the parser) or any
            validation error.
    """
    try:
        payload = json.loads(body)
    except RecursionError:
        raise ServingError("Malformed JSON in request body: nested too deeply.") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise ServingError(f"Malformed JSON in request body: {err}") from None
    return parse_predict_body(payload, lambda s: resolve_signature(version, s), max_batch_size,
                              max_bytes)


def create_app(repo: ModelRepository, max_body_bytes: int = 8 << 20,
               max_batch_size: int = 256, metrics: ServerMetrics | None = None,
               decode_threads: int = 2, max_inflight_bytes: int | None = None,
               body_timeout_s: float = 30.0) -> FastAPI:
    """Build the FastAPI app serving `repo` with TF Serving's REST API.

    Args:
        repo: the model repository (its `refresh()` is driven by the caller).
        max_body_bytes: largest accepted request body; larger bodies get 429
            (RESOURCE_EXHAUSTED, as TF Serving maps it).
        max_batch_size: largest accepted batch (examples per request); larger get 400.
        metrics: where requests are counted (default: a new `ServerMetrics`); served at
            `/monitoring/prometheus/metrics`.
        decode_threads: threads that decode and validate bodies off the event loop (>= 1).
        max_inflight_bytes: most bytes of bodies being read or decoded at once (default:
            4 x `max_body_bytes`; must be >= `max_body_bytes`).
        body_timeout_s: a body that has not fully arrived after this long gets 408 (> 0).

    Returns:
        The app (its decode pool is `app.state.decode_pool`; shut it down after serving).

    Example:

    >>> app = create_app(ModelRepository("/tmp/no_such_export", name="m"))  # doctest: +SKIP
    """
    if max_body_bytes < 1:
        raise ValueError(f"Argument `max_body_bytes` must be >= 1; received {max_body_bytes}.")
    if max_batch_size < 1:
        raise ValueError(f"Argument `max_batch_size` must be >= 1; received {max_batch_size}.")
    if decode_threads < 1:
        raise ValueError(f"Argument `decode_threads` must be >= 1; received {decode_threads}.")
    max_inflight_bytes = 4 * max_body_bytes if max_inflight_bytes is None else max_inflight_bytes
    if max_inflight_bytes < max_body_bytes:
        raise ValueError(f"Argument `max_inflight_bytes` must be >= max_body_bytes "
                         f"({max_body_bytes}); received {max_inflight_bytes}.")
    if body_timeout_s <= 0:
        raise ValueError(f"Argument `body_timeout_s` must be > 0; received {body_timeout_s}.")
    metrics = metrics or ServerMetrics(repo.name)
    app = FastAPI(title="keras_nrnn onnxruntime model server", docs_url=None, redoc_url=None,
                  openapi_url=None)
    decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
    app.state.decode_pool = decode_pool
    app.state.metrics = metrics
    budget: _ByteBudget | None = None  # created on the serving loop

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"Not found: {request.method} {request.url.path}",
                   405: f"Method {request.method} is not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        return _json({"error": message}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        _errors.log(logging.ERROR, type(exc).__name__, "Internal error on %s %s: %s: %s",
                    request.method, request.url.path, type(exc).__name__, exc)
        return _json({"error": "Internal error; the server log has the details."}, 500)

    def _lookup(name: str, version_text: str | None, label: str | None) -> ModelVersion:
        if name != repo.name:
            raise ServingError(
                f"Servable not found for request: model '{name}' (this server serves "
                f"'{repo.name}').", "NOT_FOUND")
        if label is not None:
            raise ServingError(
                f"Unrecognized servable version label: {label} (labels are not configured).")
        version = parse_version(version_text)
        mv = repo.get(version)
        if mv is None:
            loaded = sorted(repo.versions())
            what = f"version {version} of model '{name}'" if version is not None else (
                f"any version of model '{name}'")
            raise ServingError(f"Servable not found for request: {what} is not loaded; loaded "
                               f"versions: {loaded}.", "NOT_FOUND")
        return mv

    @app.get("/healthz")
    async def healthz() -> Response:
        versions = sorted(repo.versions(), reverse=True)
        body: dict[str, Any] = {"status": "ok" if versions else "no model version loaded",
                                "model": repo.name, "versions": versions, "pid": os.getpid()}
        if repo.batcher is not None:
            body["batching"] = {"batches_run": repo.batcher.batches_run,
                                "requests_run": repo.batcher.requests_run}
        return _json(body, 200 if versions else 503)

    @app.get(METRICS_PATH)
    async def prometheus_metrics() -> Response:
        metrics.set_available(len(repo.versions()))
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def _get(path: str) -> tuple[Response, str, int | None]:
        m = _PATH.match(path)
        if m is None or m["verb"] not in (None, "/metadata"):
            raise ServingError(f"Malformed request: GET /v1/models/{path}")
        if m["verb"] == "/metadata":
            mv = _lookup(m["name"], m["version"], m["label"])
            return _json(metadata_json(repo.name, mv)), "metadata", mv.version
        if m["name"] != repo.name or m["label"] is not None:
            _lookup(m["name"], None, m["label"])  # raises
        version = parse_version(m["version"])
        loaded = list(repo.versions())
        if version is not None:
            if version not in loaded:
                raise ServingError(
                    f"Could not find version {version} of model '{repo.name}'; loaded "
                    f"versions: {sorted(loaded)}.", "NOT_FOUND")
            loaded = [version]
        elif not loaded:
            raise ServingError(f"Could not find any versions of model '{repo.name}'.",
                               "NOT_FOUND")
        return _json(status_json(loaded)), "status", version

    async def _predict(path: str, request: Request, state: dict[str, Any]) -> Response:
        nonlocal budget
        m = _PATH.match(path)
        if m is None or m["verb"] is None or m["verb"] == "/metadata":
            raise ServingError(f"Malformed request: POST /v1/models/{path}")
        if m["verb"] != ":predict":
            raise ServingError(
                f"{m['verb'][1:]} is not supported by this server (the models are not "
                "classification/regression Example signatures); use :predict.",
                "UNIMPLEMENTED")
        mv = _lookup(m["name"], m["version"], m["label"])
        state["version"] = mv.version
        if budget is None:
            budget = _ByteBudget(max_inflight_bytes)
        length = request.headers.get("content-length")
        reserve = int(length) if length is not None and length.isascii() and (
            length.isdigit()) and int(length) <= max_body_bytes else max_body_bytes
        _check_length(length, max_body_bytes)
        await budget.acquire(reserve, timeout=body_timeout_s)
        try:
            body = await _read_body(request, max_body_bytes, body_timeout_s)
            loop = asyncio.get_running_loop()
            sig, feeds, columnar = await loop.run_in_executor(
                decode_pool, decode_predict, body, mv, max_batch_size, max_body_bytes)
        finally:
            await budget.release(reserve)
        state["signature"] = sig.name
        sig = sig.route(feeds)  # model_fixed.onnx for the trained length
        try:
            outputs = await asyncio.wrap_future(repo.submit(sig, feeds))
        except Exception as err:  # onnxruntime rejects something validation missed
            if "INVALID_ARGUMENT" in str(err) or "Invalid" in type(err).__name__:
                raise ServingError(f"Invalid input for the model: {err}") from None
            _errors.log(logging.ERROR, f"inference:{type(err).__name__}",
                        "Inference failed for version %d signature %s: %s: %s", mv.version,
                        sig.name, type(err).__name__, err)
            raise ServingError("Inference failed; the server log has the details.",
                               "INTERNAL") from None
        return _json(format_predict_response(outputs, columnar),
                     headers={"X-Model-Version": str(mv.version), "X-Onnx-Graph": sig.graph})

    @app.api_route("/v1/models/{path:path}", methods=["GET", "POST"])
    async def models(path: str, request: Request) -> Response:
        start = time.perf_counter()
        state: dict[str, Any] = {"version": None, "signature": ""}
        api = "predict" if request.method == "POST" else (
            "metadata" if path.endswith("/metadata") else "status")
        status = "OK"
        try:
            if request.method == "GET":
                response, _, state["version"] = _get(path)
            else:
                response = await _predict(path, request, state)
        except ServingError as err:
            status = err.code
            response = _error(err)
        except _DisconnectedError:
            status = "CANCELLED"
            response = Response(status_code=499)
        except TimeoutError:
            status = "DEADLINE_EXCEEDED"
            response = _json({"error": f"Request body not received within {body_timeout_s} s."},
                             408, headers={"Connection": "close"})
        metrics.request(api, "REST", state["version"], state["signature"], status,
                        time.perf_counter() - start)
        return response

    return app


def _check_length(length: str | None, limit: int) -> None:
    if length is not None and length.isascii() and length.isdigit() and int(length) > limit:
        raise ServingError(
            f"Request body of {int(length)} bytes exceeds the limit of {limit} bytes "
            "(--max-body-bytes).", "RESOURCE_EXHAUSTED")


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ServingError(
                        f"Request body exceeds the limit of {limit} bytes (--max-body-bytes).",
                        "RESOURCE_EXHAUSTED")
                chunks.append(chunk)
    except ClientDisconnect:
        client = request.client
        log.info("Client %s disconnected after %d bytes of the body of %s %s; request "
                 "dropped.", f"{client.host}:{client.port}" if client else "?", size,
                 request.method, request.url.path)
        raise _DisconnectedError from None
    return b"".join(chunks)
