"""TF Serving request/response encoding shared by the REST and gRPC front ends.

Implements the JSON bodies of TF Serving's REST API (`instances` row format ->
`{"predictions": ...}`, `inputs` columnar format -> `{"outputs": ...}`, model status and
metadata) and the validation of inputs against a signature: dtype, rank, fixed dimensions,
finite values, batch limits. Every problem is a `ServingError` whose message names what was
wrong, with a canonical gRPC code name that maps to an HTTP status.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.model_repo import DEFAULT_SIGNATURE, ModelVersion, SignatureInfo, TensorSpec

__all__ = [
    "HTTP_STATUS",
    "ServingError",
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

# Canonical gRPC code name -> HTTP status, as TF Serving's HTTP front end maps them.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 413,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
}

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


def to_array(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """Convert a JSON value (nested lists) or array to an array checked against `spec`.

    Args:
        value: nested lists of numbers or a numpy array.
        spec: the expected input.
        where: how to name the value in messages (e.g. "input 'inputs'").

    Returns:
        The array, cast to `spec.dtype`.

    Raises:
        ServingError: ragged lists, non-numeric values, bad rank or dimension, or NaN/inf.

    Example:

    >>> spec = TensorSpec("x", np.dtype(np.float32), (None, 2))
    >>> to_array([[1, 2]], spec, "input 'x'").dtype
    dtype('float32')
    """
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:
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
    if arr.ndim != len(spec.shape):
        raise ServingError(
            f"{where}: expected a {len(spec.shape)}-D tensor of shape {_shape_str(spec.shape)}; "
            f"received shape {list(arr.shape)}."
        )
    for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
        if axis and want is None and got < 1:
            raise ServingError(
                f"{where}: dimension {axis} must be >= 1 (expected shape "
                f"{_shape_str(spec.shape)}); received shape {list(arr.shape)}."
            )
        if want is not None and got != want:
            raise ServingError(
                f"{where}: dimension {axis} must be {want} (expected shape "
                f"{_shape_str(spec.shape)}); received shape {list(arr.shape)}."
            )
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
                   source: str) -> dict[str, np.ndarray]:
    """Check named input values against a signature and return the session feeds.

    Args:
        sig: the signature.
        raw: input name -> JSON value or array.
        max_batch_size: largest accepted batch (dimension 0).
        source: `instances` or `inputs` (for messages).

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
    feeds = {s.name: to_array(raw[s.name], s, f"input '{s.name}'") for s in sig.inputs}
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


def parse_predict_body(body: Any, sig_lookup: Any, max_batch_size: int
                       ) -> tuple[SignatureInfo, dict[str, np.ndarray], bool]:
    """Parse a TF Serving REST predict body.

    Args:
        body: the decoded JSON.
        sig_lookup: callable `signature_name -> SignatureInfo` (raises `ServingError`).
        max_batch_size: largest accepted batch.

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
        return sig, validate_feeds(sig, raw, max_batch_size, "instances"), False
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
    return sig, validate_feeds(sig, raw, max_batch_size, "inputs"), True


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


def parse_version(text: str | None) -> int | None:
    """Parse the `/versions/V` URL part.

    Raises:
        ServingError: not a non-negative integer.

    Example:

    >>> parse_version("12")
    12
    """
    if text is None:
        return None
    if not text.isdigit():
        raise ServingError(
            f"Model version must be a non-negative integer; received version={text!r}."
        )
    return int(text)
