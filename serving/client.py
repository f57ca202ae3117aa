"""Client for TF Serving's REST and gRPC APIs (works against `tensorflow_model_server` and
`python -m serving.onnx_server` alike).

Python API:

    with ServingClient("http://127.0.0.1:8501", "nrnn") as client:     # REST
        client.status(); client.metadata(); client.predict(x)          # x: [batch, T, F]
    ServingClient("127.0.0.1:8500", "nrnn")                             # gRPC

CLI:

    python -m serving.client --url http://127.0.0.1:8501 --model NAME status
    python -m serving.client --url http://127.0.0.1:8501 --model NAME metadata
    python -m serving.client --grpc 127.0.0.1:8500 --model NAME predict --input x.npy
    python -m serving.client --url ... --model NAME predict --input x.csv --drop-column 0 \
        [--version V] [--signature serving_default] [--columnar] [--batch-size 64] [--out y.json]

A CSV has one example per row (a header line is skipped); rows, and 2-D `.npy` arrays, are
reshaped to the signature's input shape from the model metadata (e.g. 140 values ->
[140, 1]). No TensorFlow is imported (see `serving._protos`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ServingClient", "ServingError", "load_inputs", "main"]


class ServingError(Exception):
    """An error answer from the server.

    Attributes:
        message: the server's message (`{"error": ...}` body or gRPC details).
        code: gRPC status code name (`INVALID_ARGUMENT`, `NOT_FOUND`, ...) for gRPC, or
            `HTTP_<status>` for REST.
        http_status: the HTTP status (REST only, else None).
    """

    def __init__(self, message: str, code: str, http_status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.message = message
        self.code = code
        self.http_status = http_status


def _is_rest(target: str) -> bool:
    return target.startswith(("http://", "https://"))


class ServingClient:
    """Talk to a TF Serving compatible server over REST (`http://...`) or gRPC (`host:port`).

    Args:
        target: `http://host:port` for REST, `host:port` (or `grpc://host:port`) for gRPC.
        model_name: the served model's name.
        timeout: seconds per call.
        max_message_bytes: gRPC message size limit.

    Example:

    >>> client = ServingClient("http://127.0.0.1:8501", "nrnn")  # doctest: +SKIP
    >>> client.status()["model_version_status"][0]["state"]  # doctest: +SKIP
    'AVAILABLE'
    >>> client.predict(np.zeros((1, 140, 1), np.float32))["classes"]  # doctest: +SKIP
    array([0])
    """

    def __init__(self, target: str, model_name: str, timeout: float = 30.0,
                 max_message_bytes: int = 64 << 20) -> None:
        if not model_name:
            raise ValueError(f"Argument `model_name` must be non-empty; received {model_name!r}.")
        self.model_name = model_name
        self.timeout = timeout
        self.rest = _is_rest(target)
        if self.rest:
            import httpx

            self.base_url = target.rstrip("/")
            self._http = httpx.Client(timeout=timeout)
        else:
            import grpc

            from serving._protos import protos

            self.target = target.removeprefix("grpc://")
            self._channel = grpc.insecure_channel(
                self.target, options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes)])
            p = protos()
            self._predict_stub = p.prediction_service_pb2_grpc.PredictionServiceStub(
                self._channel)
            self._model_stub = p.model_service_pb2_grpc.ModelServiceStub(self._channel)

    # -- plumbing --------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP client or gRPC channel."""
        if self.rest:
            self._http.close()
        else:
            self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _url(self, version: int | None, suffix: str = "") -> str:
        url = f"{self.base_url}/v1/models/{self.model_name}"
        if version is not None:
            url += f"/versions/{int(version)}"
        return url + suffix

    def _rest(self, method: str, url: str, body: bytes | None = None) -> Any:
        response = self._http.request(method, url, content=body,
                                      headers={"content-type": "application/json"})
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text}
        if response.status_code != 200:
            message = payload.get("error", response.text) if isinstance(payload, dict) else (
                response.text)
            raise ServingError(str(message), f"HTTP_{response.status_code}",
                               response.status_code)
        return payload

    def _grpc(self, method: Any, request: Any) -> Any:
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise ServingError(err.details() or "", err.code().name) from None

    def _spec(self, request: Any, version: int | None) -> None:
        request.model_spec.name = self.model_name
        if version is not None:
            request.model_spec.version.value = int(version)

    # -- API -------------------------------------------------------------------------------
    def status(self, version: int | None = None) -> dict[str, Any]:
        """Model status as TF Serving's REST API returns it.

        Args:
            version: only this version (default: all loaded versions).

        Returns:
            `{"model_version_status": [{"version": "1", "state": "AVAILABLE", "status":
            {"error_code": "OK", "error_message": ""}}, ...]}`.
        """
        if self.rest:
            return self._rest("GET", self._url(version))
        from serving._protos import protos

        p = protos()
        request = p.get_model_status_pb2.GetModelStatusRequest()
        self._spec(request, version)
        response = self._grpc(self._model_stub.GetModelStatus, request)
        state_name = p.get_model_status_pb2.ModelVersionStatus.State.Name
        return {"model_version_status": [
            {"version": str(s.version), "state": state_name(s.state),
             "status": {"error_code": "OK" if s.status.error_code == 0 else str(
                 s.status.error_code), "error_message": s.status.error_message}}
            for s in response.model_version_status]}

    def metadata(self, version: int | None = None) -> dict[str, Any]:
        """Model metadata (signature defs) in TF Serving's REST JSON layout.

        Args:
            version: this version (default: the latest).

        Returns:
            `{"model_spec": {...}, "metadata": {"signature_def": {"signature_def": {...}}}}`.
        """
        if self.rest:
            return self._rest("GET", self._url(version, "/metadata"))
        from google.protobuf import json_format

        from serving._protos import protos

        p = protos()
        request = p.get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"])
        self._spec(request, version)
        response = self._grpc(self._predict_stub.GetModelMetadata, request)
        sdm = p.get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sdm)
        return {
            "model_spec": {"name": response.model_spec.name,
                           "signature_name": response.model_spec.signature_name,
                           "version": str(response.model_spec.version.value)},
            "metadata": {"signature_def": json_format.MessageToDict(
                sdm, preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True)},
        }

    def input_specs(self, signature_name: str = "serving_default",
                    version: int | None = None) -> dict[str, tuple[str, list[int]]]:
        """Input name -> (dtype enum name, shape with -1 for dynamic) from the metadata."""
        sigs = self.metadata(version)["metadata"]["signature_def"]["signature_def"]
        if signature_name not in sigs:
            raise ValueError(f"Argument `signature_name` must be one of {sorted(sigs)}; "
                             f"received {signature_name!r}.")
        return {name: (info["dtype"], [int(d["size"]) for d in info["tensor_shape"]["dim"]])
                for name, info in sigs[signature_name]["inputs"].items()}

    def predict(self, inputs: np.ndarray | Mapping[str, np.ndarray],
                version: int | None = None, signature_name: str | None = None,
                columnar: bool = False) -> dict[str, np.ndarray]:
        """Run the model.

        Args:
            inputs: the array for the signature's single input (`[batch, T, F]` for
                `serving_default`), or input name -> array.
            version: model version (default: the latest).
            signature_name: `serving_default` (default) or `streaming_step`.
            columnar: REST only: send `inputs` (columnar) instead of `instances` (rows).

        Returns:
            Output name -> array (for REST, a single unnamed output is under "outputs").

        Raises:
            ServingError: the server rejected the request.
        """
        named = isinstance(inputs, Mapping)
        if self.rest:
            body: dict[str, Any] = {}
            if signature_name:
                body["signature_name"] = signature_name
            if named:
                lists = {k: np.asarray(v).tolist() for k, v in inputs.items()}
                if columnar:
                    body["inputs"] = lists
                else:
                    n = len(next(iter(lists.values())))
                    body["instances"] = [{k: v[i] for k, v in lists.items()} for i in range(n)]
            else:
                body["inputs" if columnar else "instances"] = np.asarray(inputs).tolist()
            payload = self._rest("POST", self._url(version, ":predict"),
                                 json.dumps(body).encode())
            return _decode_rest(payload)
        from serving._protos import ndarray_to_tensor_proto, protos, tensor_proto_to_ndarray

        p = protos()
        request = p.predict_pb2.PredictRequest()
        self._spec(request, version)
        request.model_spec.signature_name = signature_name or "serving_default"
        items = dict(inputs) if named else {self._single_input_name(signature_name): inputs}
        for name, value in items.items():
            arr = np.asarray(value)
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            request.inputs[name].CopyFrom(ndarray_to_tensor_proto(arr))
        response = self._grpc(self._predict_stub.Predict, request)
        return {k: tensor_proto_to_ndarray(v) for k, v in response.outputs.items()}

    def _single_input_name(self, signature_name: str | None) -> str:
        if not hasattr(self, "_input_names"):
            self._input_names: dict[str, list[str]] = {}
        key = signature_name or "serving_default"
        if key not in self._input_names:
            try:
                self._input_names[key] = list(self.input_specs(key))
            except ValueError:  # unknown signature: let the server say so
                return "inputs"
        names = self._input_names[key]
        if len(names) != 1:
            raise ValueError(f"Signature {key!r} has inputs {names}; pass `inputs` as a dict.")
        return names[0]


def _decode_rest(payload: dict[str, Any]) -> dict[str, np.ndarray]:
    if "outputs" in payload:
        out = payload["outputs"]
        if isinstance(out, dict):
            return {k: np.asarray(v) for k, v in out.items()}
        return {"outputs": np.asarray(out)}
    preds = payload.get("predictions")
    if not isinstance(preds, list):
        raise ServingError(f"Response has neither `predictions` nor `outputs`: {payload!r:.200}",
                           "HTTP_200", 200)
    if preds and all(isinstance(p, dict) for p in preds):
        return {k: np.asarray([p[k] for p in preds]) for k in preds[0]}
    return {"predictions": np.asarray(preds)}


def load_inputs(path: str | Path, drop_columns: Sequence[int] = ()) -> np.ndarray:
    """Read examples from a `.npy` file or a `.csv` file (one example per row).

    Args:
        path: the file. A CSV header line (non-numeric first line) is skipped.
        drop_columns: CSV column indices to drop (e.g. a label column 0).

    Returns:
        float32 array (`.npy` as stored; CSV as `[rows, columns]`).

    Example:

    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "x.csv")
    >>> _ = open(f, "w").write("a,b,c\\n1,2,3\\n4,5,6\\n")
    >>> load_inputs(f, drop_columns=[0]).tolist()
    [[2.0, 3.0], [5.0, 6.0]]
    """
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32)
    if path.suffix != ".csv":
        raise ValueError(f"Argument `path` must be a .npy or .csv file; received {str(path)!r}.")
    with open(path) as f:
        first = f.readline()
    try:
        [float(v) for v in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1
    data = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float32, ndmin=2)
    if drop_columns:
        data = np.delete(data, list(drop_columns), axis=1)
    return data


def _fit_shape(data: np.ndarray, shape: list[int]) -> np.ndarray:
    """Fit `[n, ...]` data to the input shape `shape` (-1 = dynamic).

    Same rank: unchanged. One axis short and the last dimension is 1: a trailing axis is added
    (`[n, T]` -> `[n, T, 1]`). Fully known inner shape with the same element count: reshaped.
    """
    if data.ndim == len(shape):
        return data
    if data.ndim == len(shape) - 1 and shape[-1] == 1:
        return data[..., None]
    inner = shape[1:]
    if -1 not in inner and data.ndim >= 1 and int(np.prod(data.shape[1:])) == int(
            np.prod(inner)):
        return data.reshape([data.shape[0], *inner])
    raise ValueError(f"Input data of shape {list(data.shape)} does not fit the model input shape "
                     f"{shape} (-1: any size).")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m serving.client` (see the module docstring).

    Args:
        argv: arguments (default: `sys.argv[1:]`).

    Returns:
        Exit code (0 success, 1 server error).
    """
    ap = argparse.ArgumentParser(prog="python -m serving.client",
                                 description="Query a TF Serving compatible server.")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="REST base URL, e.g. http://127.0.0.1:8501")
    where.add_argument("--grpc", help="gRPC target, e.g. 127.0.0.1:8500")
    ap.add_argument("--model", required=True, help="model name")
    ap.add_argument("--version", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=30.0)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="model version status")
    sub.add_parser("metadata", help="signature metadata")
    pr = sub.add_parser("predict", help="predict on a .npy or .csv file")
    pr.add_argument("--input", required=True, type=Path, help=".npy or .csv file")
    pr.add_argument("--drop-column", type=int, action="append", default=[],
                    help="CSV column to drop (repeatable), e.g. 0 for a leading label")
    pr.add_argument("--signature", default="serving_default")
    pr.add_argument("--columnar", action="store_true", help="REST: send `inputs`, not rows")
    pr.add_argument("--batch-size", type=int, default=64, help="examples per request")
    pr.add_argument("--out", type=Path, default=None, help="write the outputs as JSON here")
    args = ap.parse_args(argv)
    with ServingClient(args.url or args.grpc, args.model, timeout=args.timeout) as client:
        try:
            if args.command == "status":
                result: Any = client.status(args.version)
            elif args.command == "metadata":
                result = client.metadata(args.version)
            else:
                if args.batch_size < 1:
                    ap.error(f"--batch-size must be >= 1; received {args.batch_size}")
                specs = client.input_specs(args.signature, args.version)
                if len(specs) != 1:
                    ap.error(f"signature {args.signature!r} has inputs {sorted(specs)}; the CLI "
                             "handles single-input signatures")
                data = _fit_shape(load_inputs(args.input, args.drop_column),
                                  next(iter(specs.values()))[1])
                chunks: dict[str, list[np.ndarray]] = {}
                for start in range(0, len(data), args.batch_size):
                    out = client.predict(data[start:start + args.batch_size], args.version,
                                         args.signature, args.columnar)
                    for k, v in out.items():
                        chunks.setdefault(k, []).append(v)
                result = {k: np.concatenate(v).tolist() for k, v in chunks.items()}
        except ServingError as err:
            print(json.dumps({"error": err.message, "code": err.code}), file=sys.stderr)
            return 1
    text = json.dumps(result, indent=1)
    if args.command == "predict" and args.out is not None:
        from atomic_io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
