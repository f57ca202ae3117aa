"""The unrolled ONNX graph of a folded Lipschitz recurrence, written node by node.

tf2onnx turns the unrolled TensorFlow graph into six nodes per step (two `MatMul`, two
`Add`, `Tanh` and a `Squeeze` of the split input); with a dynamic batch it cannot emit
`Gemm`. At batch 1 onnxruntime's cost is per node, so here the folded step
`g' = g M + a(g V + p_t)` (`InferenceModel.folded_matrices`) is three standard nodes:

    s_t = Gemm(g, V, C=p_t);   a_t = Tanh(s_t);   g' = Gemm(g, M, C=a_t)

(onnxruntime fuses the first two into one `FusedGemm`); the first step from `g = 0` is
`a(p_0)`, the step inputs come from one `Split` of the batch-major projection
(batch, T * units), and the final state is scaled back by `dt` with one `Mul`. The parts
before and after the recurrence (the per-step layers and the projection `U x + b`; the head
and the output tensors) are the model's own layers converted with tf2onnx, so none of their
mathematics is copied here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from atomic_io import atomic_write_bytes
from export.onnx_export import (
    DEFAULT_OPSET,
    check_onnx,
    convert_function,
    name_dims,
    sequence_dim_names,
    tf_to_onnx,
)

__all__ = ["FOLDED_ACTIVATIONS", "convert_fixed_sequence", "folded_sequence_onnx"]

#: Keras activation name -> ONNX operator, for the activations the hand-built graph writes.
FOLDED_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu", "sigmoid": "Sigmoid"}

_PROJECTED = "projected"
_RNN_OUTPUT = "rnn_output"


def _activation_op(im) -> str | None:
    return FOLDED_ACTIVATIONS.get(getattr(im.cell.activation, "__name__", None))


def _recurrence(
    folded: dict[str, np.ndarray], steps: int, activation: str, opset: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes `projected` (batch, T * units) -> `rnn_output` (batch, units), and constants."""
    inits = [
        numpy_helper.from_array(folded["M"].astype(np.float32), "rnn/M"),
        numpy_helper.from_array(folded["V"].astype(np.float32), "rnn/V"),
        numpy_helper.from_array(folded["dt"].astype(np.float32), "rnn/dt"),
    ]
    p = [f"rnn/p_{t}" for t in range(steps)]
    split_attrs = {"num_outputs": steps} if opset >= 18 else {}
    nodes = [helper.make_node("Split", [_PROJECTED], p, name="rnn/split", axis=1, **split_attrs)]
    g = "rnn/g_1"
    nodes.append(helper.make_node(activation, [p[0]], [g], name="rnn/step_0/act"))
    for t in range(1, steps):
        s, a, new_g = f"rnn/s_{t}", f"rnn/a_{t}", f"rnn/g_{t + 1}"
        nodes += [
            helper.make_node("Gemm", [g, "rnn/V", p[t]], [s], name=f"rnn/step_{t}/gemm_v"),
            helper.make_node(activation, [s], [a], name=f"rnn/step_{t}/act"),
            helper.make_node("Gemm", [g, "rnn/M", a], [new_g], name=f"rnn/step_{t}/gemm_m"),
        ]
        g = new_g
    nodes.append(helper.make_node("Mul", [g, "rnn/dt"], [_RNN_OUTPUT], name="rnn/scale"))
    return nodes, inits


def _internal_names_prefixed(graph: onnx.GraphProto, prefix: str) -> onnx.GraphProto:
    """A copy of `graph` with every name but its inputs and outputs prefixed."""
    return compose.add_prefix_graph(graph, prefix, rename_inputs=False, rename_outputs=False)


def _opset_imports(*models: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    versions: dict[str, int] = {}
    for model in models:
        for entry in model.opset_import:
            versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    return [helper.make_opsetid(domain, version) for domain, version in sorted(versions.items())]


def folded_sequence_onnx(
    im,
    name: str = "model_fixed.onnx",
    *,
    opset: int = DEFAULT_OPSET,
    dim_names: dict[str, list] | None = None,
) -> onnx.ModelProto | None:
    """The unrolled whole-sequence graph for the model's length T, hand-built, or None.

    Args:
        im: an `export.inference_model.InferenceModel` (fast path) of fixed length T.
        name: the file name, for error messages.
        opset: the ONNX opset (default 17; `Split` takes `num_outputs` from 18 on).
        dim_names: as for `export.onnx_export.convert_function`.

    Returns:
        The checked `onnx.ModelProto` (inputs and outputs as `serving_default`, time fixed
        to T), or None when the model does not use the folded step (not a foldable
        Lipschitz cell, an activation outside `FOLDED_ACTIVATIONS`, no fixed T, or the
        general path): the caller then converts the TensorFlow graph.

    Raises:
        ExportError: a tf2onnx conversion failed or the graph fails the ONNX checker.

    Example:

    >>> import keras
    >>> from keras_nrnn import LipschitzCell
    >>> from export.inference_model import build_inference_model
    >>> m = keras.Sequential([keras.Input((5, 1)), keras.layers.RNN(LipschitzCell(4)),
    ...                       keras.layers.Dense(2)])
    >>> model = folded_sequence_onnx(build_inference_model(m))
    >>> sum(n.op_type == "Gemm" for n in model.graph.node)  # two per step after the first
    8
    """
    if getattr(im, "path", None) != "fast" or im.time_steps is None:
        return None
    folded = im.folded_matrices()
    activation = None if folded is None else _activation_op(im)
    if activation is None:
        return None
    pre = tf_to_onnx(
        im.projection_function(),
        im.sequence_signature(fixed_time=True),
        f"{name} (input projection)",
        output_names=[_PROJECTED],
        opset=opset,
    )
    head_fn = im.head_function()
    head = tf_to_onnx(
        head_fn,
        list(head_fn.input_signature),
        f"{name} (head)",
        output_names=im.output_names(),
        opset=opset,
    )
    pre_graph = _internal_names_prefixed(pre.graph, "projection/")
    head_graph = _internal_names_prefixed(head.graph, "head/")
    nodes, inits = _recurrence(folded, im.time_steps, activation, opset)
    graph = helper.make_graph(
        [*pre_graph.node, *nodes, *head_graph.node],
        "serving_default",
        list(pre_graph.input),
        list(head_graph.output),
        [*pre_graph.initializer, *inits, *head_graph.initializer],
    )
    model = helper.make_model(
        graph,
        opset_imports=_opset_imports(pre, head),
        producer_name="keras_nrnn.export",
        ir_version=min(pre.ir_version, head.ir_version),
    )
    model.functions.extend([*pre.functions, *head.functions])
    if dim_names:
        name_dims(model, dim_names)
    check_onnx(model, name)
    return model


def convert_fixed_sequence(
    im,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dim_names: dict[str, list] | None = None,
) -> onnx.ModelProto:
    """Write the unrolled whole-sequence graph for T: hand-built when folded, else tf2onnx.

    Args:
        im: an inference model of fixed length T (fast or general path).
        path: where to write the `.onnx` file (atomically).
        opset: the ONNX opset.
        dim_names: as for `export.onnx_export.convert_function`; default: the axis names
            of `serving_default` in `metadata.json` (`batch`).

    Returns:
        The checked `onnx.ModelProto` (also written to `path`).

    Raises:
        ExportError: a conversion failed or the graph fails the ONNX checker.
    """
    path = Path(path)
    if dim_names is None:
        dim_names = sequence_dim_names(im)
    model = folded_sequence_onnx(im, path.name, opset=opset, dim_names=dim_names)
    if model is None:
        return convert_function(
            im.sequence_function(time_mode="fixed"),
            im.sequence_inputs(fixed_time=True),
            path,
            output_names=im.output_names(),
            opset=opset,
            dim_names=dim_names,
        )
    atomic_write_bytes(path, model.SerializeToString())
    return model
