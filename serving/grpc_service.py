"""TF Serving's gRPC `PredictionService` (Predict, GetModelMetadata) and `ModelService`
(GetModelStatus) over a `ModelRepository`, with the protos of tensorflow-serving-api.

Errors map to gRPC status codes as TF Serving's: bad inputs, unknown signature, version label
(none configured), too large a batch or tensor -> INVALID_ARGUMENT; unknown model or version
-> NOT_FOUND. Input shapes and sizes are checked against the signature before a TensorProto is
decoded, so a small message cannot claim a huge tensor.
Sessions run in the repository's worker threads (batched), shared with the REST front end.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from serving._protos import ndarray_to_tensor_proto, protos, tensor_proto_to_ndarray
from serving._ratelimit import RateLimitedLogger
from serving.codec import ServingError, check_shape, resolve_signature, validate_feeds
from serving.metrics import ServerMetrics
from serving.model_repo import ModelRepository, ModelVersion, SignatureInfo

__all__ = ["signature_def_map", "start_grpc_server"]

log = logging.getLogger("serving")
_errors = RateLimitedLogger(log, interval_s=10.0)

_DT = {"float32": 1, "float64": 2, "int32": 3, "int64": 9, "float16": 19, "bool": 10}
_DT_NAMES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int32": "DT_INT32",
             "int64": "DT_INT64", "float16": "DT_HALF", "bool": "DT_BOOL"}


def signature_def_map(version: ModelVersion) -> Any:
    """The `tensorflow.serving.SignatureDefMap` proto of a loaded version.

    Args:
        version: the loaded model version.

    Returns:
        A `SignatureDefMap` with one `SignatureDef` per signature (predict method).
    """
    p = protos()
    sdm = p.get_model_metadata_pb2.SignatureDefMap()
    for name, sig in sorted(version.signatures.items()):
        sd = sdm.signature_def[name]
        sd.method_name = "tensorflow/serving/predict"
        for coll, specs in ((sd.inputs, sig.inputs), (sd.outputs, sig.outputs)):
            for spec in specs:
                info = coll[spec.name]
                info.name = spec.name
                info.dtype = _DT.get(spec.dtype.name, 0)
                for d in spec.shape:
                    info.tensor_shape.dim.add(size=-1 if d is None else d)
    return sdm


class _Servicer:
    def __init__(self, repo: ModelRepository, max_batch_size: int, max_tensor_bytes: int,
                 metrics: ServerMetrics | None) -> None:
        self.repo = repo
        self.max_batch_size = max_batch_size
        self.max_tensor_bytes = max_tensor_bytes
        self.metrics = metrics

    def _version(self, spec: Any) -> ModelVersion:
        if spec.name != self.repo.name:
            raise ServingError(
                f"Servable not found for request: model '{spec.name}' (this server serves "
                f"'{self.repo.name}').", "NOT_FOUND")
        if spec.WhichOneof("version_choice") == "version_label":
            raise ServingError(
                f"Unrecognized servable version label: {spec.version_label} (labels are not "
                "configured).")
        version = spec.version.value if spec.HasField("version") else None
        mv = self.repo.get(version)
        if mv is None:
            what = f"version {version}" if version is not None else "any version"
            raise ServingError(
                f"Servable not found for request: {what} of model '{spec.name}' is not loaded; "
                f"loaded versions: {sorted(self.repo.versions())}.", "NOT_FOUND")
        return mv

    @staticmethod
    def _abort(context: grpc.ServicerContext, err: ServingError) -> None:
        code = getattr(grpc.StatusCode, err.code, grpc.StatusCode.INTERNAL)
        context.abort(code, err.message)

    def _decode_inputs(self, sig: SignatureInfo, inputs: Any) -> dict[str, Any]:
        """Check names, dtypes, shapes and sizes of the TensorProtos, then decode them.

        Nothing is allocated for a tensor before its claimed shape has passed `check_shape`.
        """
        specs = {s.name: s for s in sig.inputs}
        unknown = sorted(set(inputs) - set(specs))
        missing = [n for n in specs if n not in inputs]
        if unknown or missing:
            raise ServingError(
                f"`inputs` must provide exactly the inputs {list(specs)} of signature "
                f"'{sig.name}'; unknown: {unknown}, missing: {missing}.")
        raw = {}
        for name, spec in specs.items():
            tensor = inputs[name]
            where = f"input '{name}'"
            if tensor.dtype != _DT[spec.dtype.name]:
                got = {v: _DT_NAMES[k] for k, v in _DT.items()}.get(tensor.dtype, "another")
                raise ServingError(f"{where}: expected dtype {_DT_NAMES[spec.dtype.name]}; "
                                   f"received {got}.")
            if tensor.tensor_shape.unknown_rank:
                raise ServingError(f"{where}: tensor shape must be known (unknown_rank is set).")
            check_shape([d.size for d in tensor.tensor_shape.dim], spec, where,
                        self.max_batch_size, self.max_tensor_bytes)
            try:
                raw[name] = tensor_proto_to_ndarray(tensor, max_bytes=self.max_tensor_bytes)
            except ValueError as err:
                raise ServingError(f"{where}: {err}") from None
        return raw

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        p = protos()
        start = time.perf_counter()
        version, sig_name, status = None, "", "OK"
        try:
            mv = self._version(request.model_spec)
            version = mv.version
            sig: SignatureInfo = resolve_signature(mv, request.model_spec.signature_name)
            sig_name = sig.name
            raw = self._decode_inputs(sig, request.inputs)
            feeds = validate_feeds(sig, raw, self.max_batch_size, "inputs",
                                   self.max_tensor_bytes)
            wanted = list(request.output_filter) or [o.name for o in sig.outputs]
            unknown = sorted(set(wanted) - {o.name for o in sig.outputs})
            if unknown:
                raise ServingError(
                    f"output_filter names unknown outputs {unknown}; signature '{sig.name}' has "
                    f"{[o.name for o in sig.outputs]}.")
            ran = sig.route(feeds)  # model_fixed.onnx for the trained length
            context.set_trailing_metadata((("x-onnx-graph", ran.graph),))
            try:
                outputs = self.repo.submit(ran, feeds).result()
                outputs = {k: outputs[k] for k in wanted}
            except Exception as err:  # onnxruntime rejects something validation missed
                if "INVALID_ARGUMENT" in str(err) or "Invalid" in type(err).__name__:
                    raise ServingError(f"Invalid input for the model: {err}") from None
                _errors.log(logging.ERROR, f"inference:{type(err).__name__}",
                            "Inference failed for version %d signature %s: %s: %s",
                            mv.version, sig.name, type(err).__name__, err)
                raise ServingError("Inference failed; the server log has the details.",
                                   "INTERNAL") from None
        except ServingError as err:
            status = err.code
            self._observe("predict", version, sig_name, status, start)
            self._abort(context, err)
        self._observe("predict", version, sig_name, status, start)
        response = p.predict_pb2.PredictResponse()
        response.model_spec.name = self.repo.name
        response.model_spec.version.value = mv.version
        response.model_spec.signature_name = sig.name
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(ndarray_to_tensor_proto(value))
        return response

    def _observe(self, api: str, version: int | None, signature: str, status: str,
                 start: float) -> None:
        if self.metrics is not None:
            self.metrics.request(api, "GRPC", version, signature, status,
                                 time.perf_counter() - start)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        p = protos()
        start = time.perf_counter()
        try:
            mv = self._version(request.model_spec)
            fields = list(request.metadata_field)
            if not fields:
                raise ServingError("GetModelMetadataRequest must specify at least one "
                                   "metadata_field (supported: 'signature_def').")
            bad = [f for f in fields if f != "signature_def"]
            if bad:
                raise ServingError(f"Metadata field(s) {bad} are not supported; supported: "
                                   "'signature_def'.")
        except ServingError as err:
            self._observe("metadata", None, "", err.code, start)
            self._abort(context, err)
        self._observe("metadata", mv.version, "", "OK", start)
        response = p.get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.repo.name
        response.model_spec.version.value = mv.version
        response.metadata["signature_def"].Pack(signature_def_map(mv))
        return response

    @staticmethod
    def _unimplemented(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "Only Predict, GetModelMetadata and GetModelStatus are implemented.")

    Classify = Regress = MultiInference = HandleReloadConfigRequest = _unimplemented

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        p = protos()
        start = time.perf_counter()
        spec = request.model_spec
        try:
            if spec.name != self.repo.name:
                raise ServingError(f"Could not find any versions of model {spec.name}",
                                   "NOT_FOUND")
            loaded = sorted(self.repo.versions(), reverse=True)
            if spec.HasField("version"):
                if spec.version.value not in loaded:
                    raise ServingError(f"Could not find version {spec.version.value} of model "
                                       f"{spec.name}", "NOT_FOUND")
                loaded = [spec.version.value]
            elif not loaded:
                raise ServingError(f"Could not find any versions of model {spec.name}",
                                   "NOT_FOUND")
        except ServingError as err:
            self._observe("status", None, "", err.code, start)
            self._abort(context, err)
        self._observe("status", spec.version.value if spec.HasField("version") else None, "",
                      "OK", start)
        response = p.get_model_status_pb2.GetModelStatusResponse()
        for v in loaded:
            status = response.model_version_status.add()
            status.version = v
            status.state = p.get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


def start_grpc_server(repo: ModelRepository, host: str = "127.0.0.1", port: int = 8500,
                      max_batch_size: int = 256, max_message_bytes: int = 8 << 20,
                      workers: int = 8, metrics: ServerMetrics | None = None,
                      max_concurrent_rpcs: int | None = None,
                      idle_timeout_s: float = 300.0) -> grpc.Server:
    """Start TF Serving's gRPC services for `repo` in a background thread pool.

    Args:
        repo: the model repository.
        host: interface to bind (loopback by default).
        port: TCP port (0 picks a free one; see `server.bound_port`).
        max_batch_size: largest accepted batch.
        max_message_bytes: largest accepted request message (gRPC's RESOURCE_EXHAUSTED above);
            also the largest decoded input tensor.
        workers: gRPC handler threads.
        metrics: where requests are counted (None: not counted).
        max_concurrent_rpcs: RPCs in progress or queued beyond this get RESOURCE_EXHAUSTED
            (default: 8 x `workers`).
        idle_timeout_s: connections without an RPC for this long are closed (clients
            reconnect transparently).

    Returns:
        The started `grpc.Server`, with an extra attribute `bound_port`.

    Example:

    >>> server = start_grpc_server(repo, port=0)  # doctest: +SKIP
    >>> server.stop(grace=1)  # doctest: +SKIP
    """
    p = protos()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes),
                 ("grpc.max_connection_idle_ms", int(idle_timeout_s * 1000))],
        maximum_concurrent_rpcs=max_concurrent_rpcs or 8 * workers,
    )
    servicer = _Servicer(repo, max_batch_size, max_message_bytes, metrics)
    p.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    p.model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"Could not bind the gRPC port {host}:{port}.")
    server.start()
    server.bound_port = bound
    return server
