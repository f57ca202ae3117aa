"""TF Serving request/response encoding shared by the REST and gRPC front ends.

Implements the JSON bodies of TF Serving's REST API (`instances` row format ->
`{"predictions": ...}`, `inputs` columnar format -> `{"outputs": ...}`, model status and
metadata) and the validation of inputs against a signature: dtype, rank, fixed dimensions,
finite values, batch and size limits. Shapes are checked before anything is allocated: the
claimed shape of a TensorProto or of nested JSON lists is compared with the signature and the
limits first (`check_shape`), so a small request cannot make the server allocate a large array.
Every problem is a `ServingError` whose message names what was wrong, with a canonical gRPC
code name that maps to an HTTP status as TF Serving's HTTP front end maps it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.model_repo import DEFAULT_SIGNATURE, ModelVersion, SignatureInfo, TensorSpec

__all__ = [
    "HTTP_STATUS",
    "ServingError",
    "check_shape",
    "format_predict_response",
    "metadata_json",
    "parse_predict_body",
    "parse_version",
    "resolve_signature",
    "signature_def_json",
    "status_json",
    "to_array",
    "validate_feeds",
]

# Canonical gRPC code name -> HTTP status, as TF Serving's HTTP front end maps them
# (tensorflow_serving/model_servers/http_server.cc, ToHTTPStatusCode).
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}

# Deepest JSON nesting worth looking at: a signature input has at most this many dimensions.
MAX_RANK = 32

_DTYPE_NAMES = {
    np.dtype(np.float32): "DT_FLOAT",
    np.dtype(np.float64): "DT_DOUBLE",
    np.dtype(np.float16): "DT_HALF",
    np.dtype(np.int32): "DT_INT32",
    np.dtype(np.int64): "DT_INT64",
    np.dtype(np.bool_): "DT_BOOL",
}


class ServingError(Exception):
    """A request error with a gRPC canonical code name (`INVALID_ARGUMENT`, `NOT_FOUND`, ...).

    Args:
        message: what was wrong, for the client.
        code: canonical code name; `http_status` follows from it.

    Example:

    >>> ServingError("bad", "NOT_FOUND").http_status
    404
    """

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def http_status(self) -> int:
        """The HTTP status for this error."""
        return HTTP_STATUS.get(self.code, 500)


def _shape_str(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("batch" if i == 0 and d is None else ("?" if d is None else str(d))
                           for i, d in enumerate(shape)) + "]"


def check_shape(shape: tuple[int, ...] | list[int], spec: TensorSpec, where: str,
                max_batch_size: int | None = None, max_bytes: int | None = None) -> None:
    """Check a claimed shape against `spec` and the limits, before anything is allocated.

    Args:
        shape: the claimed shape (e.g. a TensorProto's dims, or the nesting of JSON lists).
        spec: the expected input.
        where: how to name the value in messages.
        max_batch_size: largest accepted dimension 0 (None: no limit).
        max_bytes: largest accepted size in bytes at `spec.dtype` (None: no limit).

    Raises:
        ServingError: wrong rank, a fixed dimension that differs, a dynamic non-batch dimension
            below 1, a negative dimension, too large a batch, or too many bytes.

    Example:

    >>> spec = TensorSpec("x", np.dtype(np.float32), (None, 2))
    >>> check_shape((3, 2), spec, "input 'x'", max_batch_size=8)
    """
    shape = [int(d) for d in shape]
    if len(shape) != len(spec.shape):
        raise ServingError(
            f"{where}: expected a {len(spec.shape)}-D tensor of shape {_shape_str(spec.shape)}; "
            f"received shape {shape}."
        )
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if got < 0 or (axis and want is None and got < 1):
            raise ServingError(
                f"{where}: dimension {axis} must be >= 1 (expected shape "
                f"{_shape_str(spec.shape)}); received shape {shape}."
            )
        if want is not None and got != want:
            raise ServingError(
                f"{where}: dimension {axis} must be {want} (expected shape "
                f"{_shape_str(spec.shape)}); received shape {shape}."
            )
    if max_batch_size is not None and shape and shape[0] > max_batch_size:
        raise ServingError(
            f"Batch size {shape[0]} exceeds this server's limit of {max_batch_size} examples "
            "per request (--max-batch-size); split the request."
        )
    if max_bytes is not None:
        size = spec.dtype.itemsize
        for d in shape:  # Python ints: no overflow however large the claim
            size *= d
        if size > max_bytes:
            raise ServingError(
                f"{where}: shape {shape} of {_DTYPE_NAMES.get(spec.dtype, spec.dtype)} is "
                f"{size} bytes, more than this server's limit of {max_bytes} bytes per tensor "
                "(--max-body-bytes)."
            )


def _nested_shape(value: list, max_rank: int) -> list[int]:
    """The shape nested lists claim, read along the first elements (no recursion, no copy)."""
    shape: list[int] = []
    while isinstance(value, list):
        if len(shape) > max_rank:
            break
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def to_array(value: Any, spec: TensorSpec, where: str, max_batch_size: int | None = None,
             max_bytes: int | None = None) -> np.ndarray:
    """Convert a JSON value (nested lists) or array to an array checked against `spec`.

    The shape the lists claim is checked (`check_shape`) before the array is built.

    Args:
        value: nested lists of numbers or a numpy array.
        spec: the expected input.
        where: how to name the value in messages (e.g. "input 'inputs'").
        max_batch_size: largest accepted dimension 0 (None: no limit).
        max_bytes: largest accepted size in bytes (None: no limit).

    Returns:
        The array, cast to `spec.dtype`.

    Raises:
        ServingError: ragged lists, non-numeric values, bad rank or dimension, too large, or
            NaN/inf.

    Example:

    >>> spec = TensorSpec("x", np.dtype(np.float32), (None, 2))
    >>> to_array([[1, 2]], spec, "input 'x'").dtype
    dtype('float32')
    """
    if isinstance(value, list):
        claimed = _nested_shape(value, len(spec.shape))
        if len(claimed) > len(spec.shape):
            raise ServingError(
                f"{where}: expected a {len(spec.shape)}-D tensor of shape "
                f"{_shape_str(spec.shape)}; received lists nested more than "
                f"{len(spec.shape)} deep."
            )
        check_shape(claimed, spec, where, max_batch_size, max_bytes)
    elif isinstance(value, np.ndarray):
        check_shape(value.shape, spec, where, max_batch_size, max_bytes)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, RecursionError) as err:
        raise ServingError(
            f"{where}: values must form a rectangular array of numbers (all rows the same "
            f"length); {err}"
        ) from None
    expected_kinds = "iuf" if spec.dtype.kind == "f" else ("iu" if spec.dtype.kind in "iu" else "b")
    if arr.dtype.kind not in expected_kinds:
        kind = {"U": "strings", "S": "bytes", "O": "mixed/null/nested values or ragged lists",
                "b": "booleans", "f": "non-integer numbers"}.get(arr.dtype.kind, str(arr.dtype))
        raise ServingError(
            f"{where}: expected numbers of dtype {_DTYPE_NAMES.get(spec.dtype, spec.dtype)}; "
            f"received {kind}."
        )
    check_shape(arr.shape, spec, where, max_batch_size, max_bytes)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(spec.dtype, copy=False)
    if out.dtype.kind == "f" and out.size and not np.isfinite(out).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        raise ServingError(
            f"{where}: contains NaN or infinite values (or values that overflow "
            f"{_DTYPE_NAMES.get(spec.dtype, spec.dtype)}), first at index {list(bad)}; all "
            "values must be finite."
        )
    return out


def resolve_signature(version: ModelVersion, signature_name: Any) -> SignatureInfo:
    """Look up a signature of a loaded version ("" or None means `serving_default`).

    Args:
        version: the loaded model version.
        signature_name: the requested signature name.

    Returns:
        The signature.

    Raises:
        ServingError: not a string, or not one of the version's signatures.
    """
    if signature_name in (None, ""):
        signature_name = DEFAULT_SIGNATURE
    if not isinstance(signature_name, str):
        raise ServingError(
            f"`signature_name` must be a string; received {type(signature_name).__name__}."
        )
    sig = version.signatures.get(signature_name)
    if sig is None:
        raise ServingError(
            f'Serving signature name: "{signature_name}" not found in signature def; '
            f"available: {sorted(version.signatures)}."
        )
    return sig


def validate_feeds(sig: SignatureInfo, raw: dict[str, Any], max_batch_size: int,
                   source: str, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Check named input values against a signature and return the session feeds.

    Args:
        sig: the signature.
        raw: input name -> JSON value or array.
        max_batch_size: largest accepted batch (dimension 0).
        source: `instances` or `inputs` (for messages).
        max_bytes: largest accepted size of one input in bytes (None: no limit).

    Returns:
        Input name -> validated array.

    Raises:
        ServingError: unknown/missing inputs, bad values, inconsistent or too large batch.
    """
    names = [s.name for s in sig.inputs]
    unknown = sorted(set(raw) - set(names))
    missing = [n for n in names if n not in raw]
    if unknown or missing:
        raise ServingError(
            f"`{source}` must provide exactly the inputs {names} of signature '{sig.name}'; "
            f"unknown: {unknown}, missing: {missing}."
        )
    feeds = {s.name: to_array(raw[s.name], s, f"input '{s.name}'", max_batch_size, max_bytes)
             for s in sig.inputs}
    batches = {n: a.shape[0] for n, a in feeds.items() if a.ndim}
    if len(set(batches.values())) > 1:
        raise ServingError(f"All inputs must have the same batch size; received {batches}.")
    batch = next(iter(batches.values()), 1)
    if batch < 1:
        raise ServingError(f"`{source}` must hold at least one example; received batch size 0.")
    if batch > max_batch_size:
        raise ServingError(
            f"Batch size {batch} exceeds this server's limit of {max_batch_size} examples per "
            "request (--max-batch-size); split the request."
        )
    return feeds


def parse_predict_body(body: Any, sig_lookup: Any, max_batch_size: int,
                       max_bytes: int | None = None
                       ) -> tuple[SignatureInfo, dict[str, np.ndarray], bool]:
    """Parse a TF Serving REST predict body.

    Args:
        body: the decoded JSON.
        sig_lookup: callable `signature_name -> SignatureInfo` (raises `ServingError`).
        max_batch_size: largest accepted batch.
        max_bytes: largest accepted size of one input in bytes (None: no limit).

    Returns:
        `(signature, feeds, columnar)`; `columnar` is True for the `inputs` format.

    Raises:
        ServingError: anything malformed.

    Example:

    >>> spec = TensorSpec("inputs", np.dtype(np.float32), (None, 2))
    >>> sig = SignatureInfo("serving_default", None, [spec], [])
    >>> _, feeds, columnar = parse_predict_body({"instances": [[1, 2]]}, lambda n: sig, 8)
    >>> feeds["inputs"].shape, columnar
    ((1, 2), False)
    """
    if not isinstance(body, dict):
        raise ServingError(
            "Request body must be a JSON object with an `instances` (row format) or `inputs` "
            f"(columnar format) key; received a JSON {type(body).__name__}."
        )
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows and has_cols:
        raise ServingError(
            "Request body must contain only one of `instances` (row format) or `inputs` "
            "(columnar format); received both."
        )
    if not (has_rows or has_cols):
        raise ServingError(
            "Request body must contain `instances` (row format) or `inputs` (columnar "
            f"format); received keys {sorted(body)}."
        )
    sig = sig_lookup(body.get("signature_name"))
    names = [s.name for s in sig.inputs]
    if has_rows:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise ServingError(
                "`instances` must be a non-empty list with one entry per example; received "
                f"{'an empty list' if isinstance(rows, list) else type(rows).__name__}."
            )
        if all(isinstance(r, dict) for r in rows):
            keys = set(rows[0])
            for i, r in enumerate(rows):
                if set(r) != keys:
                    raise ServingError(
                        f"`instances` entries must all name the same inputs; entry 0 has "
                        f"{sorted(keys)}, entry {i} has {sorted(r)}."
                    )
            raw = {k: [r[k] for r in rows] for k in keys}
        elif any(isinstance(r, dict) for r in rows):
            raise ServingError(
                "`instances` must be either all objects (named inputs) or all values; received "
                "a mix."
            )
        elif len(names) == 1:
            raw = {names[0]: rows}
        else:
            raise ServingError(
                f"Signature '{sig.name}' has {len(names)} inputs {names}; each entry of "
                "`instances` must be an object naming them."
            )
        return sig, validate_feeds(sig, raw, max_batch_size, "instances", max_bytes), False
    cols = body["inputs"]
    if isinstance(cols, dict):
        raw = cols
    elif len(names) == 1:
        raw = {names[0]: cols}
    else:
        raise ServingError(
            f"Signature '{sig.name}' has {len(names)} inputs {names}; `inputs` must be an "
            "object naming them."
        )
    return sig, validate_feeds(sig, raw, max_batch_size, "inputs", max_bytes), True


def format_predict_response(outputs: dict[str, np.ndarray], columnar: bool) -> dict[str, Any]:
    """Build the TF Serving REST predict response.

    Args:
        outputs: output name -> array (batch first).
        columnar: True for the `inputs` request format.

    Returns:
        `{"outputs": ...}` (columnar: the value itself if there is one output, else a dict) or
        `{"predictions": [...]}` (row: one value per example if there is one output, else one
        dict of output name -> value per example).

    Example:

    >>> format_predict_response({"y": np.array([1, 2])}, columnar=False)
    {'predictions': [1, 2]}
    """
    lists = {k: v.tolist() for k, v in outputs.items()}
    if columnar:
        return {"outputs": next(iter(lists.values())) if len(lists) == 1 else lists}
    if len(lists) == 1:
        return {"predictions": next(iter(lists.values()))}
    batch = len(next(iter(lists.values())))
    return {"predictions": [{k: v[i] for k, v in lists.items()} for i in range(batch)]}


def _tensor_info_json(spec: TensorSpec) -> dict[str, Any]:
    return {
        "dtype": _DTYPE_NAMES.get(spec.dtype, "DT_INVALID"),
        "tensor_shape": {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape],
            "unknown_rank": False,
        },
        "name": spec.name,
    }


def signature_def_json(sig: SignatureInfo) -> dict[str, Any]:
    """A signature as TF Serving's REST metadata shows a `SignatureDef`."""
    return {
        "inputs": {s.name: _tensor_info_json(s) for s in sig.inputs},
        "outputs": {s.name: _tensor_info_json(s) for s in sig.outputs},
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }


def metadata_json(name: str, version: ModelVersion) -> dict[str, Any]:
    """The REST `GetModelMetadataResponse` JSON of a loaded version.

    Example:

    >>> mv = ModelVersion(3, None, {})
    >>> metadata_json("m", mv)["model_spec"]
    {'name': 'm', 'signature_name': '', 'version': '3'}
    """
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version.version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    k: signature_def_json(s) for k, s in sorted(version.signatures.items())
                }
            }
        },
    }


def status_json(versions: list[int]) -> dict[str, Any]:
    """The REST `GetModelStatusResponse` JSON for loaded versions (newest first).

    Example:

    >>> status_json([1])["model_version_status"][0]["state"]
    'AVAILABLE'
    """
    return {
        "model_version_status": [
            {"version": str(v), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}
            for v in sorted(versions, reverse=True)
        ]
    }


INT64_MAX = 2**63 - 1


def parse_version(text: str | None) -> int | None:
    """Parse the `/versions/V` URL part (ASCII digits only, as TF Serving's `\\d+`).

    Raises:
        ServingError: INVALID_ARGUMENT (HTTP 400, as TF Serving answers a malformed path or a
            version it cannot convert) if not ASCII digits or beyond int64.

    Example:

    >>> parse_version("12")
    12
    """
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()):
        raise ServingError(
            f"Malformed request: model version must be a non-negative integer of ASCII digits; "
            f"received version={text!r}."
        )
    value = int(text)
    if value > INT64_MAX:
        raise ServingError(f"Failed to convert version: {text} is beyond int64.")
    return value
