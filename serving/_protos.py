"""TF Serving protos without importing TensorFlow, and numpy <-> `TensorProto` conversion.

The generated `tensorflow_serving.apis.*_pb2` modules import `tensorflow.core.framework.*_pb2`,
and importing any `tensorflow.*` module normally runs `tensorflow/__init__.py`, which loads
the whole TensorFlow runtime (seconds and hundreds of MB). The `*_pb2` files themselves are
plain protobuf code, so when TensorFlow is not imported yet we register a bare, empty package
object for `tensorflow` while the protos are imported, then remove it again. A later real
`import tensorflow` in the same process still works (it reuses the already imported `*_pb2`
modules). If TensorFlow is already imported, the ordinary import is used.

`BatchingParameters` (`tensorflow_serving/servables/tensorflow/session_bundle_config.proto`)
is not shipped by `tensorflow-serving-api`; `batching_parameters_class()` builds the same
message (same package, names and field numbers) from a descriptor so that its text format is
what `tensorflow_model_server --batching_parameters_file` parses.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

import numpy as np

__all__ = ["batching_parameters_class", "ndarray_to_tensor_proto", "protos",
           "tensor_proto_to_ndarray"]

_LOCK = threading.Lock()
_CACHE: types.SimpleNamespace | None = None

_MODULES = {
    "predict_pb2": "tensorflow_serving.apis.predict_pb2",
    "get_model_metadata_pb2": "tensorflow_serving.apis.get_model_metadata_pb2",
    "get_model_status_pb2": "tensorflow_serving.apis.get_model_status_pb2",
    "model_pb2": "tensorflow_serving.apis.model_pb2",
    "prediction_log_pb2": "tensorflow_serving.apis.prediction_log_pb2",
    "prediction_service_pb2_grpc": "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "model_service_pb2_grpc": "tensorflow_serving.apis.model_service_pb2_grpc",
    "model_server_config_pb2": "tensorflow_serving.config.model_server_config_pb2",
    "tensor_pb2": "tensorflow.core.framework.tensor_pb2",
    "tensor_shape_pb2": "tensorflow.core.framework.tensor_shape_pb2",
    "types_pb2": "tensorflow.core.framework.types_pb2",
    "meta_graph_pb2": "tensorflow.core.protobuf.meta_graph_pb2",
}


def protos() -> types.SimpleNamespace:
    """Import the TF Serving / TensorFlow protos (once) without starting TensorFlow.

    Returns:
        A namespace whose attributes are the `*_pb2` modules listed in `_MODULES`
        (`predict_pb2`, `get_model_metadata_pb2`, `prediction_service_pb2_grpc`, ...).

    Example:

    >>> p = protos()
    >>> p.predict_pb2.PredictRequest().model_spec.name
    ''
    """
    global _CACHE
    with _LOCK:
        if _CACHE is not None:
            return _CACHE
        stub = None
        if "tensorflow" not in sys.modules:
            spec = importlib.util.find_spec("tensorflow")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError(
                    "The TF Serving protos need the `tensorflow` package files (installed with "
                    "tensorflow-serving-api); `tensorflow` was not found."
                )
            stub = types.ModuleType("tensorflow")
            stub.__path__ = list(spec.submodule_search_locations)
            stub.__spec__ = spec
            sys.modules["tensorflow"] = stub
        try:
            mods = {key: importlib.import_module(mod) for key, mod in _MODULES.items()}
        finally:
            if stub is not None and sys.modules.get("tensorflow") is stub:
                del sys.modules["tensorflow"]
        _CACHE = types.SimpleNamespace(**mods)
        return _CACHE


_BATCHING_CLASS: Any = None


def batching_parameters_class() -> type:
    """The `tensorflow.serving.BatchingParameters` message class.

    Returns:
        A protobuf message class with the fields of TF Serving's `BatchingParameters`
        (`max_batch_size`, `batch_timeout_micros`, `max_enqueued_batches`,
        `num_batch_threads` and `thread_pool_name` as wrapper messages,
        `allowed_batch_sizes`, `pad_variable_length_inputs`).

    Example:

    >>> from google.protobuf import text_format
    >>> msg = batching_parameters_class()()
    >>> msg.max_batch_size.value = 32
    >>> text_format.MessageToString(msg).strip()
    'max_batch_size {\\n  value: 32\\n}'
    """
    global _BATCHING_CLASS
    with _LOCK:
        if _BATCHING_CLASS is not None:
            return _BATCHING_CLASS
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

        pool = descriptor_pool.DescriptorPool()
        wrappers = descriptor_pb2.FileDescriptorProto()
        wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
        pool.Add(wrappers)
        fdp = descriptor_pb2.FileDescriptorProto(
            name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
            package="tensorflow.serving",
            syntax="proto3",
            dependency=["google/protobuf/wrappers.proto"],
        )
        msg = fdp.message_type.add(name="BatchingParameters")
        f = descriptor_pb2.FieldDescriptorProto
        for number, name, type_name in [
            (1, "max_batch_size", ".google.protobuf.Int64Value"),
            (2, "batch_timeout_micros", ".google.protobuf.Int64Value"),
            (3, "max_enqueued_batches", ".google.protobuf.Int64Value"),
            (4, "num_batch_threads", ".google.protobuf.Int64Value"),
            (5, "thread_pool_name", ".google.protobuf.StringValue"),
        ]:
            msg.field.add(name=name, number=number, label=f.LABEL_OPTIONAL,
                          type=f.TYPE_MESSAGE, type_name=type_name)
        msg.field.add(name="allowed_batch_sizes", number=6, label=f.LABEL_REPEATED,
                      type=f.TYPE_INT64)
        msg.field.add(name="pad_variable_length_inputs", number=7, label=f.LABEL_OPTIONAL,
                      type=f.TYPE_BOOL)
        pool.Add(fdp)
        desc = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
        _BATCHING_CLASS = message_factory.GetMessageClass(desc)
        return _BATCHING_CLASS


# DataType enum values from tensorflow/core/framework/types.proto.
_DT_TO_NP = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 19: np.float16,
             10: np.bool_}
_NP_TO_DT = {np.dtype(v): k for k, v in _DT_TO_NP.items()}
_VAL_FIELD = {1: "float_val", 2: "double_val", 3: "int_val", 9: "int64_val", 10: "bool_val"}


def ndarray_to_tensor_proto(array: Any) -> Any:
    """Convert a numpy array to a `tensorflow.TensorProto` (packed `tensor_content`).

    Args:
        array: array-like of dtype float32, float64, float16, int32, int64 or bool.

    Returns:
        A `TensorProto` equal to what `tf.make_tensor_proto(array)` produces.

    Example:

    >>> t = ndarray_to_tensor_proto(np.zeros((2, 3), np.float32))
    >>> [d.size for d in t.tensor_shape.dim], t.dtype
    ([2, 3], 1)
    """
    arr = np.asarray(array)
    if arr.dtype not in _NP_TO_DT:
        raise ValueError(
            f"Argument `array` must have dtype float32, float64, float16, int32, int64 or bool; "
            f"received dtype={arr.dtype}."
        )
    p = protos()
    proto = p.tensor_pb2.TensorProto(dtype=_NP_TO_DT[arr.dtype])
    for size in arr.shape:
        proto.tensor_shape.dim.add(size=int(size))
    proto.tensor_content = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    return proto


def tensor_proto_to_ndarray(proto: Any, max_bytes: int | None = None) -> np.ndarray:
    """Convert a `TensorProto` to a numpy array (like `tf.make_ndarray`).

    Args:
        proto: a `tensorflow.TensorProto` of dtype DT_FLOAT, DT_DOUBLE, DT_HALF, DT_INT32,
            DT_INT64 or DT_BOOL, with `tensor_content` or the typed `*_val` field (a single
            value is broadcast to the shape, as TensorFlow does).
        max_bytes: refuse (before allocating) a tensor whose shape needs more bytes than
            this (None: no limit).

    Returns:
        The array.

    Raises:
        ValueError: unsupported dtype, the number of values does not match the shape, or the
            shape needs more than `max_bytes`.

    Example:

    >>> tensor_proto_to_ndarray(ndarray_to_tensor_proto(np.arange(3))).tolist()
    [0, 1, 2]
    """
    if proto.dtype not in _DT_TO_NP:
        raise ValueError(
            f"Unsupported tensor dtype enum {proto.dtype}; expected one of DT_FLOAT, DT_DOUBLE, "
            "DT_HALF, DT_INT32, DT_INT64, DT_BOOL."
        )
    dtype = np.dtype(_DT_TO_NP[proto.dtype])
    if proto.tensor_shape.unknown_rank:
        raise ValueError("Tensor shape must be known (unknown_rank is set).")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(s < 0 for s in shape):
        raise ValueError(f"Tensor shape must be fully defined; received {list(shape)}.")
    n = 1
    for s in shape:  # Python ints: no overflow
        n *= s
    if max_bytes is not None and n * dtype.itemsize > max_bytes:
        raise ValueError(f"Tensor shape {list(shape)} of {dtype} needs {n * dtype.itemsize} "
                         f"bytes, more than the limit of {max_bytes} bytes.")
    if proto.tensor_content:
        if len(proto.tensor_content) != n * dtype.itemsize:
            raise ValueError(
                f"Tensor content has {len(proto.tensor_content)} bytes; shape {list(shape)} of "
                f"{dtype} needs {n * dtype.itemsize}."
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(
            dtype).reshape(shape)
    if proto.dtype == 19:
        vals = np.asarray(proto.half_val, dtype=np.uint16).view(np.float16)
    else:
        vals = np.asarray(getattr(proto, _VAL_FIELD[proto.dtype]), dtype=dtype)
    if vals.size == n:
        return vals.reshape(shape)
    if vals.size == 1 or (vals.size == 0 and n == 0):
        return np.full(shape, vals[0] if vals.size else 0, dtype=dtype)
    if vals.size == 0:
        return np.zeros(shape, dtype=dtype)
    raise ValueError(f"Tensor has {vals.size} values; shape {list(shape)} needs {n}.")
