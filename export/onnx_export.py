"""ONNX conversion with tf2onnx, failing loudly on anything tf2onnx would only log.

`tf2onnx.convert.from_function` always converts with `continue_on_error=True`: an op it cannot
map is logged ("Tensorflow op [...] is not supported", "Unsupported ops: ...", "Failed to
convert node ...") and left in the graph. Here every ERROR record of the `tf2onnx` loggers
during the conversion is captured and turned into an `ExportError`; the result is then checked
with `onnx.checker.check_model(full_check=True)` and for its input/output names.

The whole-sequence model is, by default for a model of fixed length T, unrolled (T copies of
the step, input time dimension fixed to T: no loop op, which onnxruntime runs about 3x faster
at batch 1 than its `Loop`); with a dynamic time axis the `tf.while_loop` of
`InferenceModel.sequence` becomes an ONNX `Loop` (and a `tf.cond` an `If`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
import tensorflow as tf

from atomic_io import atomic_write_bytes
from export.errors import ExportError

__all__ = [
    "DEFAULT_OPSET",
    "RANDOM_ONNX_OPS",
    "check_onnx",
    "convert_function",
    "find_random_onnx_ops",
    "onnx_op_types",
    "tf_to_onnx",
]

DEFAULT_OPSET = 17

#: ONNX operators that draw random numbers (or may, like Dropout in training mode).
RANDOM_ONNX_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:
            self.messages.append(str(record.msg))


@contextlib.contextmanager
def _tf2onnx_errors() -> Iterator[_Collect]:
    logger = logging.getLogger("tf2onnx")
    handler = _Collect()
    previous_level = logger.level
    logger.addHandler(handler)
    # Keep tf2onnx's INFO chatter out of the way, but let ERROR records reach the handler.
    logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def _graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def onnx_op_types(model: onnx.ModelProto) -> set[str]:
    """All operator types of `model`, including those inside Loop/Scan/If subgraphs.

    Example:

    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    >>> sorted(onnx_op_types(helper.make_model(g)))
    ['Relu']
    """
    return {node.op_type for g in _graphs(model.graph) for node in g.node}


def find_random_onnx_ops(model: onnx.ModelProto) -> list[str]:
    """`"op_type:node_name"` of every random op of `model` (subgraphs included).

    Example:

    >>> from onnx import helper, TensorProto
    >>> n = helper.make_node("RandomNormalLike", ["x"], ["y"], name="noise")
    >>> g = helper.make_graph([n], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    >>> find_random_onnx_ops(helper.make_model(g))
    ['RandomNormalLike:noise']
    """
    return [
        f"{node.op_type}:{node.name}"
        for g in _graphs(model.graph)
        for node in g.node
        if node.op_type in RANDOM_ONNX_OPS
    ]


def convert_function(
    function: tf.types.experimental.PolymorphicFunction,
    input_signature: list[tf.TensorSpec],
    path: str | Path,
    *,
    output_names: Iterable[str],
    opset: int = DEFAULT_OPSET,
    dim_names: dict[str, list] | None = None,
) -> onnx.ModelProto:
    """Convert a `tf.function` to ONNX at `path`, or raise `ExportError`.

    Args:
        function: the `tf.function` to convert.
        input_signature: its named `tf.TensorSpec`s; they become the ONNX input names.
        path: where to write the `.onnx` file (atomically).
        output_names: the expected ONNX output names (the keys of the function's output dict).
        opset: the ONNX opset (default 17).
        dim_names: per input/output name, a name per axis (`"batch"`, `"time"`, or None
            to keep it); set as `dim_param` on every axis without a fixed size, so that
            the dimension names match `metadata.json` instead of tf2onnx's `unk__N`.

    Returns:
        The checked `onnx.ModelProto` (also written to `path`).

    Raises:
        ExportError: tf2onnx logged an error (e.g. an unsupported op), the model fails
            `onnx.checker.check_model`, or its input/output names are not the expected ones.

    Example:

    >>> import tempfile, pathlib, tensorflow as tf
    >>> spec = [tf.TensorSpec([None, 2], tf.float32, name="inputs")]
    >>> fn = tf.function(lambda inputs: {"y": inputs * 2.0}, input_signature=spec)
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.onnx"
    >>> [o.name for o in convert_function(fn, spec, p, output_names=["y"]).graph.output]
    ['y']
    """
    path = Path(path)
    model = tf_to_onnx(
        function, input_signature, path.name, output_names=output_names, opset=opset
    )
    if dim_names:
        name_dims(model, dim_names)
        check_onnx(model, path.name)
    atomic_write_bytes(path, model.SerializeToString())
    return model


def check_onnx(model: onnx.ModelProto, name: str) -> None:
    """`onnx.checker.check_model(model, full_check=True)`, or an `ExportError` naming `name`."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:
        raise ExportError(f"{name} fails onnx.checker.check_model: {err}") from err


def tf_to_onnx(
    function: tf.types.experimental.PolymorphicFunction,
    input_signature: list[tf.TensorSpec],
    name: str,
    *,
    output_names: Iterable[str],
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Convert a `tf.function` with tf2onnx and check the result (nothing is written).

    Args:
        function: the `tf.function` to convert.
        input_signature: its named `tf.TensorSpec`s; they become the ONNX input names.
        name: the file or part name used in error messages.
        output_names: the expected ONNX output names (the keys of the function's output dict).
        opset: the ONNX opset (default 17).

    Returns:
        The `onnx.ModelProto`, checked with `onnx.checker.check_model(full_check=True)`.

    Raises:
        ExportError: tf2onnx logged an error, the model fails the checker, or its
            input/output names are not the expected ones.
    """
    import tf2onnx  # local: importing tf2onnx is slow and only needed here

    output_names = list(output_names)
    with _tf2onnx_errors() as errors:
        try:
            model, _ = tf2onnx.convert.from_function(
                function, input_signature=input_signature, opset=opset
            )
        except Exception as err:
            raise ExportError(f"tf2onnx failed to convert {name}: {err}") from err
    if errors.messages:
        shown = "\n  ".join(m.splitlines()[0][:300] for m in errors.messages[:10])
        raise ExportError(
            f"tf2onnx reported {len(errors.messages)} error(s) converting {name} "
            f"(opset {opset}); refusing to write a partial ONNX model:\n  {shown}"
        )
    check_onnx(model, name)
    inputs = sorted(i.name for i in model.graph.input)
    outputs = sorted(o.name for o in model.graph.output)
    if inputs != sorted(s.name for s in input_signature) or outputs != sorted(output_names):
        raise ExportError(
            f"{name} has inputs {inputs} and outputs {outputs}; expected "
            f"{sorted(s.name for s in input_signature)} and {sorted(output_names)}."
        )
    return model


def name_dims(model: onnx.ModelProto, dim_names: dict[str, list]) -> onnx.ModelProto:
    """Set `dim_param` of the graph inputs' and outputs' free axes from `dim_names`.

    Intermediate shape annotations (tf2onnx's `unk__N` symbols) are dropped so that no
    other symbol contradicts the names.

    Example:

    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["unk__1", 3])])
    >>> m = name_dims(helper.make_model(g), {"x": ["batch", None], "y": ["batch", None]})
    >>> m.graph.output[0].type.tensor_type.shape.dim[0].dim_param
    'batch'
    """
    for value in [*model.graph.input, *model.graph.output]:
        names = dim_names.get(value.name)
        if not names:
            continue
        for dim, dim_name in zip(value.type.tensor_type.shape.dim, names, strict=False):
            if dim_name is not None and not dim.HasField("dim_value"):
                dim.dim_param = dim_name
    del model.graph.value_info[:]
    return model


def _axis_names(dims: list) -> list:
    return [d if isinstance(d, str) else None for d in dims]


def sequence_dim_names(im) -> dict[str, list]:
    """Axis names of the whole-sequence graph's inputs and outputs (from the metadata)."""
    from export.metadata import signature_metadata

    sig = signature_metadata(im)["serving_default"]
    return {k: _axis_names(v) for part in sig.values() for k, v in part.items()}


def step_dim_names(im) -> dict[str, list]:
    """Axis names of the streaming graph's inputs and outputs (from the metadata)."""
    from export.metadata import signature_metadata

    sig = signature_metadata(im)["streaming_step"]
    return {k: _axis_names(v) for part in sig.values() for k, v in part.items()}
