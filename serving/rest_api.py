"""TF Serving's REST API on FastAPI, backed by a `ModelRepository` of onnxruntime sessions.

Routes (same URLs, bodies and error shape `{"error": "..."}` as `tensorflow_model_server`):

    GET  /v1/models/NAME[/versions/V]             model status
    GET  /v1/models/NAME[/versions/V]/metadata    signature metadata
    POST /v1/models/NAME[/versions/V]:predict     `instances` or `inputs`
    GET  /healthz                                 200 when a version is loaded, else 503

Sessions run in the repository's worker threads (batched, see `serving.batching`), so the event
loop is never blocked by inference.
Request bodies are read incrementally and rejected with 413 beyond `max_body_bytes`.
The predict response carries an extra `X-Model-Version` header naming the version used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.codec import (
    ServingError,
    format_predict_response,
    metadata_json,
    parse_predict_body,
    parse_version,
    resolve_signature,
    status_json,
)
from serving.model_repo import ModelRepository, ModelVersion

__all__ = ["create_app"]

log = logging.getLogger("serving")

_PATH = re.compile(
    r"^(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>/metadata|:predict|:classify|:regress)?$"
)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(obj, allow_nan=False).encode(), status_code=status,
                    media_type="application/json", headers=headers)


def _error(err: ServingError) -> Response:
    return _json({"error": err.message}, err.http_status)


def create_app(repo: ModelRepository, max_body_bytes: int = 8 << 20,
               max_batch_size: int = 256) -> FastAPI:
    """Build the FastAPI app serving `repo` with TF Serving's REST API.

    Args:
        repo: the model repository (its `refresh()` is driven by the caller).
        max_body_bytes: largest accepted request body; larger bodies get 413.
        max_batch_size: largest accepted batch (examples per request); larger get 400.

    Returns:
        The app.

    Example:

    >>> app = create_app(ModelRepository("/tmp/no_such_export", name="m"))  # doctest: +SKIP
    """
    if max_body_bytes < 1:
        raise ValueError(f"Argument `max_body_bytes` must be >= 1; received {max_body_bytes}.")
    if max_batch_size < 1:
        raise ValueError(f"Argument `max_batch_size` must be >= 1; received {max_batch_size}.")
    app = FastAPI(title="keras_nrnn onnxruntime model server", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"Not found: {request.method} {request.url.path}",
                   405: f"Method {request.method} is not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        return _json({"error": message}, exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        log.exception("Internal error on %s", request.url.path)
        return _json({"error": f"Internal error: {type(exc).__name__}: {exc}"}, 500)

    def _lookup(name: str, version_text: str | None, label: str | None) -> ModelVersion:
        if name != repo.name:
            raise ServingError(
                f"Servable not found for request: model '{name}' (this server serves "
                f"'{repo.name}').", "NOT_FOUND")
        if label is not None:
            raise ServingError(
                f"Unrecognized servable version label: {label} (labels are not configured).",
                "NOT_FOUND")
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
                                "model": repo.name, "versions": versions}
        if repo.batcher is not None:
            body["batching"] = {"batches_run": repo.batcher.batches_run,
                                "requests_run": repo.batcher.requests_run}
        return _json(body, 200 if versions else 503)

    @app.get("/v1/models/{path:path}")
    async def get_model(path: str) -> Response:
        m = _PATH.match(path)
        try:
            if m is None or m["verb"] not in (None, "/metadata"):
                raise ServingError(f"Malformed request: GET /v1/models/{path}", "NOT_FOUND")
            if m["verb"] == "/metadata":
                mv = _lookup(m["name"], m["version"], m["label"])
                return _json(metadata_json(repo.name, mv))
            if m["name"] != repo.name or m["label"] is not None:
                _lookup(m["name"], None, m["label"])  # raises NOT_FOUND
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
            return _json(status_json(loaded))
        except ServingError as err:
            return _error(err)

    @app.post("/v1/models/{path:path}")
    async def post_model(path: str, request: Request) -> Response:
        try:
            m = _PATH.match(path)
            if m is None or m["verb"] is None or m["verb"] == "/metadata":
                raise ServingError(f"Malformed request: POST /v1/models/{path}", "NOT_FOUND")
            if m["verb"] != ":predict":
                raise ServingError(
                    f"{m['verb'][1:]} is not supported by this server (the models are not "
                    "classification/regression Example signatures); use :predict.",
                    "UNIMPLEMENTED")
            mv = _lookup(m["name"], m["version"], m["label"])
            body = await _read_body(request, max_body_bytes)
            try:
                payload = json.loads(body)
            except (UnicodeDecodeError, ValueError) as err:
                raise ServingError(f"Malformed JSON in request body: {err}") from None
            sig, feeds, columnar = parse_predict_body(
                payload, lambda s: resolve_signature(mv, s), max_batch_size)
            try:
                outputs = await asyncio.wrap_future(repo.submit(sig, feeds))
            except Exception as err:  # onnxruntime rejects something validation missed
                if "INVALID_ARGUMENT" in str(err) or "Invalid" in type(err).__name__:
                    raise ServingError(f"Invalid input for the model: {err}") from None
                raise
            return _json(format_predict_response(outputs, columnar),
                         headers={"X-Model-Version": str(mv.version)})
        except ServingError as err:
            return _error(err)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ServingError(
            f"Request body of {int(length)} bytes exceeds the limit of {limit} bytes "
            "(--max-body-bytes).", "RESOURCE_EXHAUSTED")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServingError(
                f"Request body exceeds the limit of {limit} bytes (--max-body-bytes).",
                "RESOURCE_EXHAUSTED")
        chunks.append(chunk)
    return b"".join(chunks)
