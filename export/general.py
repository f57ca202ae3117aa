"""The general export path: any Keras model whose recurrent layers hold keras_nrnn cells.

Stacked `keras.layers.RNN` / `keras_nrnn.SDERNN` layers, `Bidirectional` wrappers,
`return_sequences=True` with per-step heads, several inputs and outputs, `Masking`, in
Sequential or functional graphs. Nothing of a cell's mathematics is written here:

- the whole-sequence signature calls the rebuilt float32 Keras model itself,
  `model(inputs, training=False)`, inside a `tf.function` with a fixed input signature
  (every `SDECell` frozen, so its per-sequence tensors are constants and no noise is drawn);
- the streaming signature runs the same layer graph on one time step (kept as a time axis
  of length 1), with every recurrent layer replaced by one call of its own cell,
  `cell(x_t, states, training=False)` (the public Keras cell API), carrying one state tensor
  per recurrent layer (the cell's states flattened and concatenated in the cell's order).

Outputs: each model output `z` of a layer ending in a softmax gives `probabilities = z` and
`logits = log_softmax` of the pre-softmax value; any other output is `logits` with
`probabilities = softmax(logits)`; `classes = argmax(logits, -1)`. With one model output
the keys are `logits`, `probabilities`, `classes`; with several, `<output layer>_logits` etc.
A sequence output (batch, time, classes) keeps its time axis; in the streaming signature it
is the output of the current step (batch, classes).

Streaming is not offered (only the whole-sequence signature is written, and
`InferenceModel.streaming_reason` says why) for `Bidirectional` layers (the backward
direction needs the whole sequence), `go_backwards` layers, and recurrent layers nested in
sub-models. A `Masking` layer is kept in the streaming graph, but the recurrent layers do
not skip masked steps there: a streaming client sends only the real (unpadded) steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

import keras_nrnn
from export.errors import ExportError
from keras_nrnn.cells.base import SDECell

__all__ = ["GraphInferenceModel", "build_graph_inference_model"]


def _sde_cells(layer: keras.layers.Layer) -> list[SDECell]:
    return [
        sub
        for sub in layer._flatten_layers(include_self=True, recursive=True)
        if isinstance(sub, SDECell)
    ]


def _recurrent(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.RNN | keras_nrnn.SDERNN) and isinstance(
        getattr(layer, "cell", None), SDECell
    )


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _is_softmax_fn(fn) -> bool:
    return getattr(fn, "__name__", None) == "softmax"


def _functional(model: keras.Model) -> keras.Model:
    """A functional view of `model` (same layers): Sequential models become functional."""
    if isinstance(model, keras.Sequential) or not hasattr(model, "_run_through_graph"):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


@dataclass
class StateSpec:
    """One streaming state tensor: the flattened states of one recurrent layer.

    Attributes:
        name: the signature input / output name (`state` or `state_<i>`; outputs `new_<name>`).
        layer: the recurrent layer's name.
        parts: the sizes of the cell's states, in the cell's order.
    """

    name: str
    layer: str
    parts: list[int]

    @property
    def size(self) -> int:
        """Length of the state vector."""
        return int(sum(self.parts))


@dataclass
class GraphInferenceModel:
    """A rebuilt float32 model with frozen cells, exported through its own Keras graph.

    Build it with `build_graph_inference_model`. Same interface as the fast
    `export.inference_model.InferenceModel` (`sequence_function`, `step_function`,
    `sequence_inputs`, `step_inputs`, `output_names`, `reference`, ...).

    Attributes:
        model: the rebuilt float32 Keras model (reference of the verification).
        original: the model as given.
        serving: the functional model computing pre-softmax values (softmax removed).
        input_names: signature names of the model inputs.
        input_shapes: their shapes without the batch axis (time None when dynamic).
        outputs: per model output, `(prefix, softmax, per_step)`.
        states: the streaming states (empty without streaming).
        streaming_reason: why there is no streaming signature, or None.
        recurrent_layers: names of the recurrent layers (in graph order).
    """

    model: keras.Model
    original: keras.Model
    serving: keras.Model
    input_names: list[str]
    input_shapes: list[tuple]
    outputs: list[tuple]
    states: list[StateSpec] = field(default_factory=list)
    streaming_reason: str | None = None
    recurrent_layers: list[str] = field(default_factory=list)
    path: str = "general"
    _unrolled: GraphInferenceModel | None = field(default=None, repr=False)

    # ------------------------------------------------------------ shape information
    @property
    def streaming(self) -> bool:
        """Whether a streaming signature is written."""
        return self.streaming_reason is None

    @property
    def features(self) -> int:
        """Features per step of the first input."""
        return int(self.input_shapes[0][-1])

    @property
    def time_steps(self) -> int | None:
        """The fixed time length of the first sequence input, or None."""
        for shape in self.input_shapes:
            if len(shape) == 2:
                return None if shape[0] is None else int(shape[0])
        return None

    @property
    def num_classes(self) -> int:
        """Size of the last axis of the first output."""
        return int(self.serving.outputs[0].shape[-1])

    @property
    def state_size(self) -> int:
        """Total length of the streaming state tensors."""
        return int(sum(s.size for s in self.states))

    @property
    def state_sizes(self) -> list[int]:
        """Lengths of the streaming state tensors, one per recurrent layer."""
        return [s.size for s in self.states]

    @property
    def softmax_mode(self) -> str | None:
        """ "activation" when the first output ends in a softmax, else None."""
        return "activation" if self.outputs[0][1] else None

    def output_names(self, streaming: bool = False) -> list[str]:
        """The signature output names (streaming: the `new_<state>` names first)."""
        names = [
            f"{p}{k}" for p, _, _ in self.outputs for k in ("logits", "probabilities", "classes")
        ]
        return ([f"new_{s.name}" for s in self.states] + names) if streaming else names

    def output_shapes(self) -> dict[str, list]:
        """Whole-sequence output shapes by name (`"batch"`, `"time"` or a size)."""
        shapes = {}
        for tensor, (prefix, _, per_step) in zip(self.serving.outputs, self.outputs, strict=True):
            dims = ["batch", *(["time"] if per_step else []), *list(tensor.shape)[1 + per_step :]]
            dims = [d if d is not None else "dynamic" for d in dims]
            shapes[f"{prefix}logits"] = dims
            shapes[f"{prefix}probabilities"] = dims
            shapes[f"{prefix}classes"] = dims[:-1]
        return shapes

    def per_step_outputs(self) -> set[str]:
        """Output names that carry a time axis in the whole-sequence signature."""
        return {
            f"{p}{k}"
            for p, _, per_step in self.outputs
            if per_step
            for k in ("logits", "probabilities", "classes")
        }

    def sequence_inputs(self, fixed_time: bool = False) -> list[tf.TensorSpec]:
        """The whole-sequence input signature: time dynamic, or the model's T (`fixed_time`)."""
        time = None
        if fixed_time:
            time = self.time_steps
            if time is None:
                raise ExportError(
                    "A fixed-time sequence graph needs a model with a fixed input length "
                    "(keras.Input((T, features))); this model's time axis is dynamic."
                )
        return [
            tf.TensorSpec([None, time, *s[1:]] if len(s) == 2 else [None, *s], tf.float32, name=n)
            for n, s in zip(self.input_names, self.input_shapes, strict=True)
        ]

    def step_inputs(self) -> list[tf.TensorSpec]:
        """The streaming input signature: each input without its time axis, then the states."""
        specs = [
            tf.TensorSpec([None, *s[1:]] if len(s) == 2 else [None, *s], tf.float32, name=n)
            for n, s in zip(self.input_names, self.input_shapes, strict=True)
        ]
        return specs + [tf.TensorSpec([None, s.size], tf.float32, name=s.name) for s in self.states]

    def is_sequence_input(self, index: int) -> bool:
        """Whether model input `index` has a time axis."""
        return len(self.input_shapes[index]) == 2

    # ------------------------------------------------------------ graphs
    def _heads(self, values: list, per_step_time_axis: bool) -> dict:
        out = {}
        for value, (prefix, softmax, _) in zip(values, self.outputs, strict=True):
            z = tf.cast(value, tf.float32)
            logits = tf.nn.log_softmax(z, axis=-1) if softmax else z
            out[f"{prefix}logits"] = tf.identity(logits, name=f"{prefix}logits")
            out[f"{prefix}probabilities"] = tf.identity(
                tf.nn.softmax(z, axis=-1), name=f"{prefix}probabilities"
            )
            out[f"{prefix}classes"] = tf.identity(
                tf.argmax(logits, axis=-1, output_type=tf.int64), name=f"{prefix}classes"
            )
        del per_step_time_axis
        return out

    def sequence(self, *inputs) -> dict:
        """Whole-sequence outputs: the serving model called with `training=False`."""
        values = self.serving(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        values = values if isinstance(values, list | tuple) else [values]
        return self._heads(list(values), True)

    def step(self, *args) -> dict:
        """One streaming step: model inputs without time axis, then one tensor per state."""
        n = len(self.input_names)
        inputs, states = list(args[:n]), list(args[n:])
        batch = tf.shape(inputs[0])[0]
        checked = []
        for i, x in enumerate(inputs):
            checked.append(_same_batch(x, batch, self.input_names[i], self.input_names[0]))
        inputs = [x[:, None] if self.is_sequence_input(i) else x for i, x in enumerate(checked)]
        state_of = {}
        for spec, value in zip(self.states, states, strict=True):
            value = _same_batch(value, batch, spec.name, self.input_names[0], size=spec.size)
            parts = tf.split(value, spec.parts, axis=-1) if len(spec.parts) > 1 else [value]
            state_of[spec.layer] = parts
        new_states: dict = {}

        def operation_fn(op):
            if _recurrent(op):
                return _StepRNN(op, state_of[op.name], new_states)

            def call(*a, **kw):
                if getattr(op, "_call_has_training_arg", False):
                    kw["training"] = False
                return op(*a, **kw)

            return call

        values = self.serving._run_through_graph(inputs, operation_fn=operation_fn)
        values = values if isinstance(values, list | tuple) else [values]
        values = [
            v[:, 0] if per_step else v
            for v, (_, _, per_step) in zip(values, self.outputs, strict=True)
        ]
        out = {}
        for spec in self.states:
            parts = new_states[spec.layer]
            value = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
            out[f"new_{spec.name}"] = tf.identity(value, name=f"new_{spec.name}")
        out.update(self._heads(values, False))
        return out

    def sequence_function(self, time_mode: str = "dynamic", jit_compile: bool = False):
        """`tf.function` of `sequence` with the named input signature."""
        if time_mode not in ("dynamic", "fixed"):
            raise ExportError(
                f"Time mode {time_mode!r} is for single-layer models (the fast path); the "
                "general path loops with the model's own RNN layers: 'dynamic' or 'fixed'."
            )
        specs = self.sequence_inputs(fixed_time=time_mode == "fixed")
        return _named_function("serving_default", self.sequence, specs, jit_compile)

    def tflite_sequence_function(self):
        """`tf.function` of the whole sequence for TFLite: every RNN unrolled (Keras's own
        `unroll=True` loop), the model's fixed T; no loop op, no TensorList."""
        if self.time_steps is None:
            raise ExportError(
                "TFLite export of this model needs a fixed input length (keras.Input((T, "
                "features))): its recurrent layers are unrolled for TFLite (the Keras RNN loop "
                "holds TensorList ops that TFLite's builtin ops cannot run with a dynamic batch)."
            )
        if self._unrolled is None:
            serving, _ = _serving_model(self.model, self.input_shapes, unroll=True)
            self._unrolled = GraphInferenceModel(
                model=self.model,
                original=self.original,
                serving=serving,
                input_names=self.input_names,
                input_shapes=self.input_shapes,
                outputs=self.outputs,
            )
        specs = self.sequence_inputs(fixed_time=True)
        return _named_function("serving_default", self._unrolled.sequence, specs, False)

    def step_function(self):
        """`tf.function` of `step` with the named input signature."""
        if not self.streaming:
            raise ExportError(f"No streaming signature: {self.streaming_reason}")
        return _named_function("streaming_step", self.step, self.step_inputs(), False)

    # ------------------------------------------------------------ reference
    def reference(self, feeds: dict) -> dict:
        """The rebuilt Keras model's outputs, in inference mode, keyed by export name.

        An output ending in a softmax is compared as `probabilities`, any other as `logits`;
        `classes` are its argmax.
        """
        xs = [feeds[n] for n in self.input_names]
        out = self.model(xs if len(xs) > 1 else xs[0], training=False)
        out = out if isinstance(out, list | tuple) else [out]
        ref = {}
        for value, (prefix, softmax, _) in zip(out, self.outputs, strict=True):
            value = np.asarray(keras.ops.convert_to_numpy(value)).astype(np.float32)
            ref[f"{prefix}{'probabilities' if softmax else 'logits'}"] = value
            ref[f"{prefix}classes"] = np.argmax(value, axis=-1).astype(np.int64)
        return ref

    def original_outputs(self, feeds: dict) -> list[np.ndarray]:
        """Outputs of the model as given (its own dtype policy), inference mode, float32."""
        xs = [feeds[n] for n in self.input_names]
        out = self.original(xs if len(xs) > 1 else xs[0], training=False)
        out = out if isinstance(out, list | tuple) else [out]
        return [np.asarray(keras.ops.convert_to_numpy(o)).astype(np.float32) for o in out]

    def cell_configs(self) -> list[dict]:
        """Serialized configs of every keras_nrnn cell of the model."""
        return [keras.saving.serialize_keras_object(c) for c in _sde_cells(self.model)]


class _StepRNN:
    """Stands in for a recurrent layer in the streaming graph: one call of its cell."""

    def __init__(self, layer, states: list, sink: dict) -> None:
        self.layer, self.states, self.sink = layer, states, sink

    def __call__(self, x, *args, **kwargs):
        del args, kwargs  # mask / initial_state: streaming carries its own state
        cell = self.layer.cell
        states = self.states if len(self.states) > 1 else self.states[0]
        if isinstance(cell.state_size, list | tuple):
            states = list(self.states)
        output, new = cell(x[:, 0], states, training=False)
        new = [tf.cast(s, tf.float32) for s in tf.nest.flatten(new)]
        self.sink[self.layer.name] = new
        output = tf.cast(output, tf.float32)
        if getattr(self.layer, "return_sequences", False):
            output = output[:, None]
        if getattr(self.layer, "return_state", False):
            return [output, *new]
        return output


def _same_batch(value, batch, name: str, first: str, size: int | None = None):
    """`value` with its batch checked against `batch` inside the graph.

    `tf.debugging.assert_equal` gives TensorFlow users a clear message; the `tf.reshape` to
    `[batch, ...]` also fails in runtimes that drop asserts (onnxruntime: the element
    counts differ), so a mismatched batch can never broadcast into a plausible answer.

    The value and the batch pass through identities that depend on the check, so every op
    that uses them runs after it and the check's message is the one a caller sees. (A
    control dependency on the reshape's constant dims alone did not hold at run time, where
    TensorFlow's graph optimizations fold and merge constants: the model's own ops raced
    the check, e.g. a `ConcatV2` failing first with "dimension 0 in both shapes must be
    equal".)
    """
    check = tf.debugging.assert_equal(
        tf.shape(value)[0],
        batch,
        message=f"input {name!r} must have the batch size of input {first!r}",
    )
    with tf.control_dependencies([check]):
        value = tf.identity(value)
        batch = tf.identity(batch)
    shape = [batch, *(value.shape[1:] if size is None else [size])]
    shape = [d if d is not None else -1 for d in shape]
    return tf.reshape(value, tf.stack(shape))


def _named_function(name: str, fn, specs: list[tf.TensorSpec], jit_compile: bool):
    """A `tf.function` whose positional parameters are named like `specs` (signature keys)."""
    params = ", ".join(s.name for s in specs)
    namespace: dict = {"_fn": fn}
    exec(f"def {name}({params}):\n    return _fn({params})\n", namespace)
    return tf.function(namespace[name], input_signature=specs, jit_compile=jit_compile or None)


def _serving_model(rebuilt: keras.Model, input_shapes: list, unroll: bool = False):
    """The serving copy of `rebuilt`: rebuilt again with each output's softmax taken off
    (SDERNN layers as keras.layers.RNN: see rebuild_float32; `unroll`: every RNN unrolled),
    cells frozen. Returns `(functional model of the pre-softmax outputs, outputs)`."""
    from export.inference_model import rebuild_float32

    lin = rebuild_float32(rebuilt, sdernn_as_rnn=True, unroll=unroll)
    for cell in _sde_cells(lin):
        cell.freeze()
    lin_fm = _functional(lin)
    outputs, serving_outputs = [], []
    for tensor in lin_fm.outputs:
        layer = tensor._keras_history.operation
        prefix = "" if len(lin_fm.outputs) == 1 else f"{_safe_name(layer.name)}_"
        softmax = False
        value = tensor
        if isinstance(layer, keras.layers.Softmax) or (
            isinstance(layer, keras.layers.Activation) and _is_softmax_fn(layer.activation)
        ):
            if len(layer._inbound_nodes) == 1:
                value, softmax = layer.input, True
        elif _is_softmax_fn(getattr(layer, "activation", None)) and len(layer._inbound_nodes) == 1:
            layer.activation = keras.activations.linear
            softmax = True
        per_step = len(tensor.shape) == 3 and any(len(s) == 2 for s in input_shapes)
        outputs.append((prefix, softmax, per_step))
        serving_outputs.append(value)
    return keras.Model(lin_fm.inputs, serving_outputs, name=f"{rebuilt.name}_serving"), outputs


def build_graph_inference_model(model: keras.Model, rebuilt: keras.Model) -> GraphInferenceModel:
    """The general inference model of `model` (`rebuilt`: its float32 copy).

    Args:
        model: the model as given.
        rebuilt: `export.inference_model.rebuild_float32(model)`.

    Returns:
        A `GraphInferenceModel`; every keras_nrnn cell of `rebuilt` is frozen.

    Raises:
        ExportError: no keras_nrnn cell, or an input that is not float (batch, [time,] ...).

    Example:

    >>> import keras
    >>> from keras_nrnn import LipschitzCell
    >>> from export.inference_model import rebuild_float32
    >>> m = keras.Sequential([keras.Input((5, 2)),
    ...     keras.layers.RNN(LipschitzCell(4), return_sequences=True),
    ...     keras.layers.RNN(LipschitzCell(4)), keras.layers.Dense(3)])
    >>> im = build_graph_inference_model(m, rebuild_float32(m))
    >>> [s.name for s in im.states], im.num_classes
    (['state_0', 'state_1'], 3)
    """
    cells = _sde_cells(rebuilt)
    if not cells:
        raise ExportError(f"Model {model.name!r} has no keras_nrnn cell (SDECell).")
    for cell in cells:
        cell.freeze()
    fm = _functional(rebuilt)
    input_names, input_shapes = [], []
    for i, tensor in enumerate(fm.inputs):
        shape = tuple(tensor.shape)[1:]
        if len(shape) < 1 or shape[-1] is None:
            raise ExportError(
                f"Model {model.name!r} input {i} must have a known last dimension; its shape "
                f"is {tuple(tensor.shape)}."
            )
        input_names.append("inputs" if len(fm.inputs) == 1 else _safe_name(tensor.name))
        input_shapes.append(shape)
    if len(set(input_names)) != len(input_names):
        input_names = [f"inputs_{i}" for i in range(len(input_names))]

    serving, outputs = _serving_model(rebuilt, input_shapes)

    im = GraphInferenceModel(
        model=rebuilt,
        original=model,
        serving=serving,
        input_names=input_names,
        input_shapes=input_shapes,
        outputs=outputs,
    )
    top = [layer for layer in serving.layers if _recurrent(layer)]
    im.recurrent_layers = [layer.name for layer in top]
    reason = None
    if any(
        isinstance(layer, keras.layers.Bidirectional)
        for layer in serving._flatten_layers(include_self=False, recursive=True)
    ):
        reason = (
            "the model has a Bidirectional layer (its backward direction needs the whole sequence)"
        )
    elif any(getattr(layer, "go_backwards", False) for layer in top):
        reason = "a recurrent layer has go_backwards=True (it needs the whole sequence)"
    elif sum(len(_sde_cells(layer)) for layer in serving.layers) != len(top):
        reason = "a keras_nrnn cell is nested in a sub-model or a wrapper other than RNN/SDERNN"
    elif not top:
        reason = "no top-level recurrent layer"
    im.streaming_reason = reason
    if reason is None:
        single = len(top) == 1
        im.states = [
            StateSpec(
                name="state" if single else f"state_{i}",
                layer=layer.name,
                parts=[int(s) for s in tf.nest.flatten(layer.cell.state_size)],
            )
            for i, layer in enumerate(top)
        ]
    return im
