"""The noise-free, float32, constant-folded inference model that every export format serves.

Supported model shape (checked, with a clear `ExportError` otherwise):

    inputs (batch, time, features)
      -> zero or more *per-step* layers (Dense, TimeDistributed, LayerNormalization, ...),
      -> exactly one recurrent layer, `keras.layers.RNN` or `keras_nrnn.SDERNN`, around a
         `keras_nrnn` cell (`SDECell`), with `return_sequences=False`, `return_state=False`,
         `go_backwards=False`,
      -> zero or more *per-sample* head layers producing the logits.

"Per-step" means the layer maps each time step independently (a Conv1D over time is not
per-step): the streaming signature applies those layers to one step at a time. The
verification of every export (`export.verify`) checks that streaming T steps gives the
whole-sequence outputs, so a layer that is not per-step is caught there.

Outputs. If the last layer ends in a softmax (a layer whose `activation` is softmax, a
`keras.layers.Softmax`, or `keras.layers.Activation("softmax")`), its output is taken as the
probabilities and the logits are the log-probabilities `log_softmax(z)` of its pre-softmax
input `z` (equal to `log(probabilities)`, but computed stably). Otherwise the last layer's
output is the logits and `probabilities = softmax(logits)`. `classes = argmax(logits)`
(int64). Sigmoid (binary, one-unit) heads are not special-cased: their output is treated as
logits of a one-class softmax.

The rebuild. The model is rebuilt from its config with every dtype policy replaced by
`"float32"` (so a model trained under `mixed_bfloat16`/`mixed_float16` is exported in float32:
bfloat16 graphs do not convert to valid ONNX) and `stateful=False`; the weights are copied
(they are float32 variables under mixed precision too). The cell is then frozen
(`SDECell.freeze()`): A, W and every other per-sequence tensor become constants of the traced
graphs. Cells are called with `training=False`, which draws no noise and builds no random op.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import keras_nrnn
from export.errors import ExportError
from keras_nrnn.cells.base import SDECell

__all__ = ["InferenceModel", "LoadedSource", "build_inference_model", "load_source"]

RUN_MODEL_FILE = "model.keras"
RUN_CONFIG_FILE = "config.json"
RUN_RESULTS_FILE = "results.json"

_POLICY_CLASSES = {"DTypePolicy", "FloatDTypePolicy", "DTypePolicyMap"}
_POLICY_NAMES = {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"}


def import_cell_modules() -> list[str]:
    """Import every module of `keras_nrnn.cells` and `keras_nrnn.layers` (registers classes).

    Cells being written by others may fail to import; they are skipped (a model that uses
    them then fails to load with Keras's own message naming the class).

    Returns:
        The names of the modules that imported.

    Example:

    >>> "keras_nrnn.cells.lipschitz" in import_cell_modules()
    True
    """
    imported = []
    for pkg_name in ("keras_nrnn.cells", "keras_nrnn.layers"):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            name = f"{pkg_name}.{info.name}"
            try:
                importlib.import_module(name)
            except Exception:
                continue
            imported.append(name)
    return imported


# --------------------------------------------------------------------------- loading
@dataclass
class LoadedSource:
    """A model plus what its run folder said about it.

    Attributes:
        model: the Keras model as loaded (or as given).
        source: the path it came from, or None for an in-memory model.
        training_config: contents of the run's `config.json`, or None.
        results: contents of the run's `results.json`, or None.
    """

    model: keras.Model
    source: str | None = None
    training_config: dict | None = None
    results: dict | None = None


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportError(f"Cannot read {str(path)!r} as JSON: {err}") from err


def load_source(model_or_path: keras.Model | str | Path) -> LoadedSource:
    """Load `model_or_path`: a `keras.Model`, a `.keras` file, or a run folder.

    A run folder holds `model.keras` and optionally `config.json` (the training configuration)
    and `results.json` (the metrics); both JSON files are returned for the metadata. For a
    model folder of a multi-model run (`<run>/<model>/model.keras`) without its own JSON
    files, those of the parent run folder are used.

    Args:
        model_or_path: a `keras.Model`, a path to a `.keras` file, or a path to a folder
            containing `model.keras`.

    Returns:
        A `LoadedSource`.

    Raises:
        ExportError: the path is missing, not a `.keras` file or run folder, or unreadable.

    Example:

    >>> import keras
    >>> m = keras.Sequential([keras.Input((3, 2)), keras.layers.Dense(2)])
    >>> load_source(m).model is m
    True
    """
    if isinstance(model_or_path, keras.Model):
        return LoadedSource(model=model_or_path)
    if not isinstance(model_or_path, str | Path):
        raise ExportError(
            "Argument `model_or_path` must be a keras.Model, a .keras file or a run folder "
            f"containing {RUN_MODEL_FILE}; received {model_or_path!r}."
        )
    path = Path(model_or_path)
    config = results = None
    if path.is_dir():
        run_dir = path
        path = run_dir / RUN_MODEL_FILE
        if not path.is_file():
            raise ExportError(
                f"Run folder {str(run_dir)!r} has no {RUN_MODEL_FILE} (expected a .keras file "
                "or a run folder containing model.keras)."
            )
        # A multi-model run keeps config.json / results.json one level up
        # (`<run>/<model>/model.keras`): use those when the model folder has none.
        config = _read_json(run_dir / RUN_CONFIG_FILE)
        if config is None:
            config = _read_json(run_dir.parent / RUN_CONFIG_FILE)
        results = _read_json(run_dir / RUN_RESULTS_FILE)
        if results is None:
            results = _read_json(run_dir.parent / RUN_RESULTS_FILE)
    elif not path.exists():
        raise ExportError(f"Model path {str(path)!r} does not exist.")
    elif path.suffix != ".keras":
        raise ExportError(
            f"Model path {str(path)!r} is not a .keras file or a run folder containing "
            f"{RUN_MODEL_FILE}."
        )
    import_cell_modules()
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:
        raise ExportError(f"Cannot load the Keras model {str(path)!r}: {err}") from err
    if not isinstance(model, keras.Model):
        raise ExportError(f"{str(path)!r} does not hold a keras.Model (got {type(model)}).")
    return LoadedSource(
        model=model, source=str(path), training_config=config, results=results
    )


# --------------------------------------------------------------------------- rebuild
def _is_policy(value: Any) -> bool:
    if isinstance(value, str):
        return value in _POLICY_NAMES
    return isinstance(value, dict) and value.get("class_name") in _POLICY_CLASSES


def _float32_config(obj: Any) -> Any:
    """A copy of a serialized Keras config with dtype policies -> float32, stateful -> False."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key == "dtype" and _is_policy(value):
                out[key] = "float32"
            elif key == "stateful" and value is True:
                out[key] = False
            elif key == "compile_config":
                continue
            else:
                out[key] = _float32_config(value)
        return out
    if isinstance(obj, list):
        return [_float32_config(v) for v in obj]
    return obj


@contextlib.contextmanager
def _global_policy(name: str) -> Iterator[None]:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def rebuild_float32(model: keras.Model) -> keras.Model:
    """Rebuild `model` from its config under a float32 policy and copy its weights.

    Args:
        model: a built Keras model (any dtype policy, including mixed precision).

    Returns:
        A new model with the same architecture and weights, computing in float32.

    Raises:
        ExportError: the model cannot be rebuilt from its config.

    Example:

    >>> import keras
    >>> m = keras.Sequential([keras.Input((3, 2)), keras.layers.Dense(2, dtype="bfloat16")])
    >>> rebuild_float32(m).layers[-1].compute_dtype
    'float32'
    """
    import_cell_modules()
    serialized = _float32_config(keras.saving.serialize_keras_object(model))
    try:
        with _global_policy("float32"):
            rebuilt = keras.saving.deserialize_keras_object(serialized)
    except Exception as err:
        raise ExportError(
            f"Cannot rebuild model {model.name!r} from its config in float32 (subclassed "
            f"models without get_config are not supported): {err}"
        ) from err
    if not rebuilt.built:
        with _global_policy("float32"):
            rebuilt.build(model.inputs[0].shape if model.inputs else None)
    old, new = model.get_weights(), rebuilt.get_weights()
    if [w.shape for w in old] != [w.shape for w in new]:
        raise ExportError(
            f"Rebuilding model {model.name!r} from its config gave different weights "
            f"({[w.shape for w in new]} instead of {[w.shape for w in old]})."
        )
    rebuilt.set_weights([np.asarray(w, dtype=n.dtype) for w, n in zip(old, new, strict=True)])
    return rebuilt


# --------------------------------------------------------------------------- structure
def _is_softmax_fn(fn: Any) -> bool:
    return getattr(fn, "__name__", None) == "softmax"


def _softmax_mode(layer: keras.layers.Layer) -> str | None:
    """How `layer` applies a final softmax: "activation", "layer" or None."""
    if isinstance(layer, keras.layers.Softmax):
        return "layer"
    if isinstance(layer, keras.layers.Activation) and _is_softmax_fn(layer.activation):
        return "layer"
    if _is_softmax_fn(getattr(layer, "activation", None)):
        return "activation"
    return None


def _rnn_cell(layer: keras.layers.Layer) -> SDECell | None:
    cell = getattr(layer, "cell", None)
    if isinstance(layer, keras.layers.RNN | keras_nrnn.SDERNN) and isinstance(cell, SDECell):
        return cell
    return None


def _contains_sde_cell(layer: keras.layers.Layer) -> bool:
    for sub in getattr(layer, "_flatten_layers", lambda **_: [])(include_self=True):
        if isinstance(sub, SDECell):
            return True
    return False


@dataclass
class InferenceModel:
    """The pieces of a supported model, rebuilt in float32 with its cell frozen.

    Build it with `build_inference_model`. `sequence(inputs)` and `step(inputs, state)` are
    plain TensorFlow functions (trace them with `tf.function`); `keras_reference(x)` runs the
    rebuilt Keras model in inference mode for verification.

    Attributes:
        model: the rebuilt float32 Keras model.
        original: the model as given.
        pre_layers: per-step layers before the recurrent layer.
        rnn_layer: the recurrent layer.
        cell: its `keras_nrnn` cell (frozen).
        head_layers: per-sample layers after the recurrent layer.
        softmax_mode: "activation", "layer" or None (see module docstring).
        features: input features per step.
        time_steps: the model's fixed input length, or None.
        state_sizes: size of each recurrent state, in the cell's order.
        num_classes: size of the logits.
    """

    model: keras.Model
    original: keras.Model
    pre_layers: list
    rnn_layer: keras.layers.Layer
    cell: SDECell
    head_layers: list
    softmax_mode: str | None
    features: int
    time_steps: int | None
    state_sizes: list[int]
    num_classes: int = 0
    _linear_last: keras.layers.Layer | None = field(default=None, repr=False)

    @property
    def state_size(self) -> int:
        """Length of the flattened streaming state vector."""
        return int(sum(self.state_sizes))

    # ---------------------------------------------------------------- pieces
    def _pre(self, x):
        for layer in self.pre_layers:
            x = layer(x, training=False)
        return tf.cast(x, tf.float32)

    def _head(self, h) -> dict:
        x = h
        layers = list(self.head_layers)
        if self.softmax_mode is None:
            for layer in layers:
                x = layer(x, training=False)
            logits = tf.cast(x, tf.float32)
            probabilities = tf.nn.softmax(logits, axis=-1)
        else:
            for layer in layers[:-1]:
                x = layer(x, training=False)
            if self.softmax_mode == "activation":
                x = self._linear_last(x, training=False)
            z = tf.cast(x, tf.float32)
            logits = tf.nn.log_softmax(z, axis=-1)
            probabilities = tf.nn.softmax(z, axis=-1)
        classes = tf.argmax(logits, axis=-1, output_type=tf.int64)
        return {
            "logits": tf.identity(logits, name="logits"),
            "probabilities": tf.identity(probabilities, name="probabilities"),
            "classes": tf.identity(classes, name="classes"),
        }

    def _cell_step(self, x, states: list):
        output, new_states = self.cell.call(x, list(states), training=False)
        new_states = tf.nest.flatten(new_states)
        return tf.cast(output, tf.float32), [tf.cast(s, tf.float32) for s in new_states]

    # ---------------------------------------------------------------- graphs
    def sequence(self, inputs) -> dict:
        """Whole-sequence outputs for `inputs` (batch, time, features), float32.

        The loop is a `tf.while_loop` over the dynamic time axis calling the cell's one-step
        `call`, the same code as `step`, from zero states.
        """
        x = self._pre(tf.convert_to_tensor(inputs, tf.float32))
        batch = tf.shape(x)[0]
        time = tf.shape(x)[1]
        states = [tf.zeros(tf.stack([batch, size]), tf.float32) for size in self.state_sizes]
        output0 = tf.zeros(tf.stack([batch, self._output_size]), tf.float32)

        def cond(t, *_):
            return t < time

        def body(t, output, *states):
            del output
            out, new_states = self._cell_step(x[:, t, :], list(states))
            return (t + 1, out, *new_states)

        loop = tf.while_loop(cond, body, (tf.constant(0), output0, *states))
        return self._head(loop[1])

    def step(self, inputs, state) -> dict:
        """One streaming step: `inputs` (batch, features), `state` (batch, state_size)."""
        x = tf.convert_to_tensor(inputs, tf.float32)
        x = self._pre(x[:, None, :])[:, 0, :]
        state = tf.convert_to_tensor(state, tf.float32)
        if len(self.state_sizes) == 1:
            states = [state]
        else:
            states = tf.split(state, self.state_sizes, axis=-1)
        output, new_states = self._cell_step(x, states)
        new_state = new_states[0] if len(new_states) == 1 else tf.concat(new_states, axis=-1)
        return {"new_state": tf.identity(new_state, name="new_state"), **self._head(output)}

    @property
    def _output_size(self) -> int:
        size = self.cell.output_size
        return int(size if isinstance(size, int) else tf.nest.flatten(size)[0])

    # ---------------------------------------------------------------- signatures
    def sequence_signature(self) -> list[tf.TensorSpec]:
        """`[TensorSpec([None, None, features], float32, name="inputs")]`."""
        return [tf.TensorSpec([None, None, self.features], tf.float32, name="inputs")]

    def step_signature(self) -> list[tf.TensorSpec]:
        """`[inputs (None, features), state (None, state_size)]`, float32."""
        return [
            tf.TensorSpec([None, self.features], tf.float32, name="inputs"),
            tf.TensorSpec([None, self.state_size], tf.float32, name="state"),
        ]

    def sequence_function(self) -> tf.types.experimental.PolymorphicFunction:
        """`tf.function` of `sequence` with its named input signature."""

        def serving_default(inputs):
            return self.sequence(inputs)

        return tf.function(serving_default, input_signature=self.sequence_signature())

    def step_function(self) -> tf.types.experimental.PolymorphicFunction:
        """`tf.function` of `step` with its named input signature."""

        def streaming_step(inputs, state):
            return self.step(inputs, state)

        return tf.function(streaming_step, input_signature=self.step_signature())

    # ---------------------------------------------------------------- reference
    def keras_reference(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs of the rebuilt Keras model in inference mode, in the export's terms.

        Returns `{"logits" or "probabilities": array, "classes": argmax}`: the model's own
        output is the probabilities when it ends in a softmax, the logits otherwise.
        """
        out = np.asarray(keras.ops.convert_to_numpy(self.model(x, training=False)))
        key = "logits" if self.softmax_mode is None else "probabilities"
        return {key: out.astype(np.float32), "classes": np.argmax(out, axis=-1).astype(np.int64)}

    def original_reference(self, x: np.ndarray) -> np.ndarray:
        """Output of the model as given (its own dtype policy), inference mode, as float32."""
        out = keras.ops.convert_to_numpy(self.original(x, training=False))
        return np.asarray(out).astype(np.float32)

    def cell_configs(self) -> list[dict]:
        """Serialized configs of the model's keras_nrnn cells (one)."""
        return [keras.saving.serialize_keras_object(self.cell)]


def _model_layers(model: keras.Model) -> list:
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def build_inference_model(model: keras.Model) -> InferenceModel:
    """Rebuild `model` in float32, split it into pre / RNN / head, and freeze its cell.

    Args:
        model: a built Keras model of the supported shape (module docstring).

    Returns:
        An `InferenceModel`.

    Raises:
        ExportError: no keras_nrnn cell, more than one recurrent layer, an unsupported
            recurrent-layer option, or inputs that are not (batch, time, features).

    Example:

    >>> import keras
    >>> from keras_nrnn import LipschitzCell
    >>> m = keras.Sequential([keras.Input((5, 2)), keras.layers.RNN(LipschitzCell(4)),
    ...                       keras.layers.Dense(3)])
    >>> im = build_inference_model(m)
    >>> (im.features, im.state_size, im.num_classes, im.cell.frozen)
    (2, 4, 3, True)
    """
    if not isinstance(model, keras.Model):
        raise ExportError(f"Expected a keras.Model; received {type(model).__name__}.")
    if not model.built or not getattr(model, "inputs", None):
        raise ExportError(
            f"Model {model.name!r} is not built with a known input (build it on "
            "(batch, time, features) inputs, e.g. with keras.Input, before exporting)."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(
            f"Model {model.name!r} must have one input and one output; it has "
            f"{len(model.inputs)} and {len(model.outputs)}."
        )
    in_shape = tuple(model.inputs[0].shape)
    if len(in_shape) != 3 or in_shape[-1] is None:
        raise ExportError(
            f"Model {model.name!r} must take inputs of shape (batch, time, features) with a "
            f"known number of features; its input shape is {in_shape}."
        )
    rnn_positions = [i for i, layer in enumerate(_model_layers(model)) if _rnn_cell(layer)]
    if not rnn_positions:
        nested = [layer.name for layer in _model_layers(model) if _contains_sde_cell(layer)]
        hint = (
            f" (layers {nested} wrap keras_nrnn cells in an unsupported way: use "
            "keras.layers.RNN(cell) or keras_nrnn.SDERNN(cell))"
            if nested
            else ""
        )
        raise ExportError(
            f"Model {model.name!r} has no keras_nrnn cell: expected one keras.layers.RNN or "
            f"keras_nrnn.SDERNN layer around a keras_nrnn cell (SDECell){hint}."
        )
    if len(rnn_positions) > 1:
        raise ExportError(
            f"Model {model.name!r} has {len(rnn_positions)} recurrent layers with keras_nrnn "
            "cells; export supports exactly one."
        )

    rebuilt = rebuild_float32(model)
    layers = _model_layers(rebuilt)
    pos = rnn_positions[0]
    rnn_layer = layers[pos]
    cell = _rnn_cell(rnn_layer)
    for option in ("return_sequences", "return_state", "go_backwards"):
        if getattr(rnn_layer, option, False):
            raise ExportError(
                f"Recurrent layer {rnn_layer.name!r} has {option}=True; export supports "
                f"{option}=False only (the classifier reads the final state)."
            )
    pre, head = layers[:pos], layers[pos + 1 :]
    for layer in pre:
        if isinstance(layer, keras.layers.Masking):
            raise ExportError(
                f"Layer {layer.name!r} is a Masking layer; export does not support masks (the "
                "streaming signature has no notion of a masked step). Remove it or pad "
                "differently."
            )
    for layer in [*pre, *head]:
        if _rnn_cell(layer) is None and isinstance(layer, keras.layers.RNN):
            raise ExportError(
                f"Layer {layer.name!r} is a second recurrent layer; export supports exactly one."
            )
    cell.freeze()

    softmax = _softmax_mode(head[-1]) if head else None
    linear_last = None
    if softmax == "activation":
        # The same layer without its softmax gives the pre-softmax input z of the logits.
        last = head[-1]
        try:
            with _global_policy("float32"):
                linear_last = type(last).from_config(dict(last.get_config(), activation="linear"))
                linear_last.build_from_config(last.get_build_config())
            linear_last.set_weights(last.get_weights())
        except Exception as err:
            raise ExportError(
                f"Cannot take the softmax off the last layer {last.name!r} to compute logits: "
                f"{err}. End the model with a separate keras.layers.Softmax() instead."
            ) from err

    state_sizes = [int(s) for s in tf.nest.flatten(cell.state_size)]
    im = InferenceModel(
        model=rebuilt,
        original=model,
        pre_layers=pre,
        rnn_layer=rnn_layer,
        cell=cell,
        head_layers=head,
        softmax_mode=softmax,
        features=int(in_shape[-1]),
        time_steps=None if in_shape[1] is None else int(in_shape[1]),
        state_sizes=state_sizes,
        _linear_last=linear_last,
    )
    out_shape = tuple(rebuilt.outputs[0].shape)
    if len(out_shape) != 2 or out_shape[-1] is None:
        raise ExportError(
            f"Model {model.name!r} must output (batch, classes); its output shape is {out_shape}."
        )
    im.num_classes = int(out_shape[-1])
    return im
