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

__all__ = [
    "InferenceModel",
    "LoadedSource",
    "build_inference_model",
    "fast_path_reason",
    "load_source",
]

#: How the whole-sequence graph loops over time (see `InferenceModel.sequence`).
TIME_MODES = ("dynamic", "fixed", "hybrid")

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
    from export.options import check_keras_archive

    problem = check_keras_archive(str(path))
    if problem:
        raise ExportError(problem)
    import_cell_modules()
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:
        raise ExportError(f"Cannot load the Keras model {str(path)!r}: {err}") from err
    if not isinstance(model, keras.Model):
        raise ExportError(f"{str(path)!r} does not hold a keras.Model (got {type(model)}).")
    return LoadedSource(model=model, source=str(path), training_config=config, results=results)


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


def _sdernn_as_rnn(obj: Any) -> Any:
    """A copy of a serialized config with every `SDERNN` layer as `keras.layers.RNN`.

    The two layers hold the same cell with the same weights in the same order and give the
    same inference outputs (SDERNN's contract); `keras.layers.RNN` also traces with a dynamic
    time axis inside a `tf.function` (SDERNN does not, in keras_nrnn today).
    """
    if isinstance(obj, dict):
        if obj.get("class_name") == "SDERNN" and isinstance(obj.get("config"), dict):
            cfg = obj["config"]
            keep = (
                "name",
                "trainable",
                "dtype",
                "cell",
                "return_sequences",
                "return_state",
                "go_backwards",
                "unroll",
            )
            return {
                "module": "keras.layers",
                "class_name": "RNN",
                "config": {k: _sdernn_as_rnn(cfg[k]) for k in keep if k in cfg},
                "registered_name": None,
                **({"build_config": obj["build_config"]} if "build_config" in obj else {}),
            }
        return {k: _sdernn_as_rnn(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_sdernn_as_rnn(v) for v in obj]
    return obj


def _unrolled_rnns(obj: Any) -> Any:
    """A copy of a serialized config with `unroll=True` on every `keras.layers.RNN`."""
    if isinstance(obj, dict):
        out = {k: _unrolled_rnns(v) for k, v in obj.items()}
        if obj.get("class_name") == "RNN" and isinstance(out.get("config"), dict):
            out["config"]["unroll"] = True
        return out
    if isinstance(obj, list):
        return [_unrolled_rnns(v) for v in obj]
    return obj


def rebuild_float32(
    model: keras.Model, sdernn_as_rnn: bool = False, unroll: bool = False
) -> keras.Model:
    """Rebuild `model` from its config under a float32 policy and copy its weights.

    Args:
        model: a built Keras model (any dtype policy, including mixed precision).
        sdernn_as_rnn: rebuild `keras_nrnn.SDERNN` layers as `keras.layers.RNN` around the
            same cell (same weights, same inference outputs).
        unroll: rebuild every `keras.layers.RNN` with `unroll=True` (Keras's own Python loop
            over a fixed time length: no loop op, no TensorList; for TFLite).

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
    if sdernn_as_rnn:
        serialized = _sdernn_as_rnn(serialized)
    if unroll:
        serialized = _unrolled_rnns(serialized)
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
        hoist: whole-sequence graphs project the inputs of all steps before the loop
            (default True; False: the cell's `call` per step, as before).
        lipschitz_fold: use the folded step for foldable Lipschitz cells (default True).
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
    hoist: bool = True
    lipschitz_fold: bool = True
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

    # ---------------------------------------------------------------- fast sequence pieces
    def _sequence_cache(self) -> dict:
        """The frozen cell's per-sequence tensors, converted to graph constants once."""
        return self.cell._cache()

    def _hoisted_step_fn(self, cache: dict):
        """`(step, calls, output_scale)`: `step(p_t, states) -> (output, states)` on
        pre-projected inputs `p_t`.

        Generic over cells: the cell's own `call` runs with `project_inputs` replaced by the
        identity (the projection of every step was done before the loop with one matmul) and
        `_cache` returning `cache` (constants created once, not once per step); `calls`
        records the identity's calls, so that `_projection_hoistable` can check (by tracing
        one step) that the cell projects exactly once through `project_inputs`; otherwise the
        caller falls back to the per-step `call`. For a foldable Lipschitz cell: the folded
        step, `calls` None and `output_scale` mapping its final state to the output.
        """
        cell = self.cell
        if self.folded_matrices() is not None:
            return self._folded_lipschitz_step(cache)
        calls = []

        def step(p_t, states):
            with _patched(cell, project_inputs=_identity_projection(calls), _cache=lambda: cache):
                return self._cell_step(p_t, states)

        return step, calls, None

    def folded_matrices(self) -> dict[str, np.ndarray] | None:
        """The constants of the folded Lipschitz step, or None if the cell is not folded.

        `h' = h + dt (A h + a(W h + p))` (row vectors: `h' = h (I + dt A)^T + dt a(h W^T + p)`)
        with the state scaled per unit, `h = dt * g`, becomes `g' = g M + a(g V + p)` with
        `M = diag(dt) (I + dt A)^T diag(1 / dt)` and `V = diag(dt) W^T`, formed in float64.

        Returns:
            `{"M": (units, units), "V": (units, units), "dt": (units,)}` float64 arrays when
            the whole-sequence graphs use the folded step (`hoist`, `lipschitz_fold` and a
            foldable cell, see `_foldable_lipschitz`), else None.
        """
        cell = self.cell
        if not (self.hoist and self.lipschitz_fold and _foldable_lipschitz(cell)):
            return None
        units = cell.units
        a_t = np.asarray(cell._frozen_cache["recurrent_kernel_a"], np.float64)
        w_t = np.asarray(cell._frozen_cache["recurrent_kernel_w"], np.float64)
        dt = np.broadcast_to(np.asarray(cell._frozen_cache["dt"], np.float64), (units,))
        m = dt[:, None] * (np.eye(units) + a_t * dt[None, :]) / dt[None, :]
        return {"M": m, "V": dt[:, None] * w_t, "dt": np.array(dt)}

    def _folded_lipschitz_step(self, cache: dict):
        """Lipschitz cells, Euler step, folded into `g <- g M + a(g V + p)` on `g = h / dt`
        (`folded_matrices`): two matmuls, one add, one activation and one add per step, no
        multiply by dt. The loop starts from zero states (`g = h = 0`; the unrolled graph
        takes its first step as `a(p)`); the returned `output_scale` turns the final `g`
        back into `h = dt * g`.
        """
        del cache
        folded = self.folded_matrices()
        m_c = tf.constant(folded["M"].astype(np.float32))
        v_c = tf.constant(folded["V"].astype(np.float32))
        activation = self.cell.activation

        def step(p_t, states):
            g = states[0]
            g = tf.matmul(g, m_c) + activation(tf.matmul(g, v_c) + p_t)
            return g, [g]

        scale = tf.constant(folded["dt"].astype(np.float32))
        return step, None, lambda g: g * scale

    def _loop_parts(self, inputs):
        """Time-major per-step inputs, zero states and the per-step function of a sequence.

        The pre-layers run on (batch, time, features); the result is transposed to time-major
        (time, batch, features) before the projection, so that the projected sequence is
        time-major without a transpose of the (larger) projected tensor.
        """
        x = self._pre(tf.convert_to_tensor(inputs, tf.float32))
        batch = tf.shape(x)[0]
        states = [tf.zeros(tf.stack([batch, size]), tf.float32) for size in self.state_sizes]
        x_tm = tf.transpose(x, [1, 0, 2])
        if not self.hoist:
            return x_tm, states, self._cell_step, None
        cache = self._sequence_cache()
        step, calls, scaling = self._hoisted_step_fn(cache)
        if calls is not None and not self._projection_hoistable(int(x.shape[-1])):
            return x_tm, states, self._cell_step, None
        with _patched(self.cell, _cache=lambda: cache):
            projected = tf.cast(self.cell.project_inputs(x_tm, cache), tf.float32)
        return projected, states, step, scaling

    def _projection_hoistable(self, features: int) -> bool:
        """Trace one hoisted step in a throwaway graph: the cell must project exactly once."""
        with tf.Graph().as_default():
            probe_states = [tf.zeros([1, s], tf.float32) for s in self.state_sizes]
            probe_cache = {
                k: v if v is None or isinstance(v, float) else tf.constant(v)
                for k, v in self.cell._frozen_cache.items()
            }
            probe_step, probe_calls, _ = self._hoisted_step_fn(probe_cache)
            try:
                projected = self.cell.project_inputs(
                    tf.zeros([1, features], tf.float32), probe_cache
                )
                probe_step(tf.cast(projected, tf.float32), probe_states)
            except Exception:
                return False
            return probe_calls is None or len(probe_calls) == 1  # None: the folded step

    def sequence(self, inputs, time_mode: str = "dynamic") -> dict:
        """Whole-sequence outputs for `inputs` (batch, time, features), float32.

        With `hoist` (default) the cell's input projection (`U x + b`) of every step is one
        matmul before the loop and each step runs the rest of the cell on it; without, each
        step calls the cell's one-step `call` (the same code as `step`).

        Args:
            inputs: (batch, time, features).
            time_mode: one of `TIME_MODES`:
                `"dynamic"`: a `tf.while_loop` over the dynamic time axis;
                `"fixed"`: the steps unrolled (a Python loop over the static time length of
                `inputs`; no loop op in the graph);
                `"hybrid"`: `tf.cond(time == time_steps, unrolled, while_loop)`: the unrolled
                graph for the model's own length, the loop for any other.
        """
        check_time_mode(time_mode)
        if time_mode == "hybrid":
            x = tf.convert_to_tensor(inputs, tf.float32)
            steps = self._fixed_time()
            return tf.cond(
                tf.equal(tf.shape(x)[1], steps),
                # A reshape, not tf.ensure_shape: EnsureShape is no TFLite builtin.
                lambda: self._unrolled(tf.reshape(x, [-1, steps, x.shape[-1]])),
                lambda: self._while(x),
            )
        if time_mode == "fixed":
            return self._unrolled(inputs)
        return self._while(inputs)

    def _unrolled(self, inputs) -> dict:
        seq_tm, states, step, scaling = self._loop_parts(inputs)
        if seq_tm.shape[0] is None:
            raise ExportError(
                "An unrolled sequence graph needs a static time length; the input has shape "
                f"{tf.convert_to_tensor(inputs).shape}."
            )
        steps = tf.unstack(seq_tm, axis=0)
        output = None
        if scaling is not None:
            # The folded step from g = 0 is g M + a(g V + p) = a(p): no matmul of zeros.
            output = self.cell.activation(steps[0])
            states, steps = [output], steps[1:]
        for x_t in steps:
            output, states = step(x_t, states)
        if scaling is not None:
            output = scaling(output)
        return self._head(output)

    def _while(self, inputs) -> dict:
        seq_tm, states, step, scaling = self._loop_parts(inputs)
        time = tf.shape(seq_tm)[0]
        output0 = tf.zeros(tf.stack([tf.shape(seq_tm)[1], self._output_size]), tf.float32)

        def cond(t, *_):
            return t < time

        def body(t, output, *states):
            del output
            out, new_states = step(seq_tm[t], list(states))
            return (t + 1, out, *new_states)

        loop = tf.while_loop(cond, body, (tf.constant(0), output0, *states))
        output = loop[1] if scaling is None else scaling(loop[1])
        return self._head(output)

    def step(self, inputs, state) -> dict:
        """One streaming step: `inputs` (batch, features), `state` (batch, state_size).

        A `state` whose batch differs from that of `inputs` fails inside the graph
        (`export.general._same_batch`), in every runtime.
        """
        from export.general import _same_batch

        x = tf.convert_to_tensor(inputs, tf.float32)
        state = tf.convert_to_tensor(state, tf.float32)
        state = _same_batch(state, tf.shape(x)[0], "state", "inputs", size=self.state_size)
        x = self._pre(x[:, None, :])[:, 0, :]
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
    def sequence_signature(self, fixed_time: bool = False) -> list[tf.TensorSpec]:
        """`[TensorSpec([None, T, features], float32, name="inputs")]`.

        T is None (dynamic) unless `fixed_time`, which uses the model's `time_steps`.
        """
        time = self._fixed_time() if fixed_time else None
        return [tf.TensorSpec([None, time, self.features], tf.float32, name="inputs")]

    def _fixed_time(self) -> int:
        if self.time_steps is None:
            raise ExportError(
                "A fixed-time (unrolled) sequence graph needs a model with a fixed input length "
                "(keras.Input((T, features))); this model's time axis is dynamic."
            )
        return self.time_steps

    def step_signature(self) -> list[tf.TensorSpec]:
        """`[inputs (None, features), state (None, state_size)]`, float32."""
        return [
            tf.TensorSpec([None, self.features], tf.float32, name="inputs"),
            tf.TensorSpec([None, self.state_size], tf.float32, name="state"),
        ]

    def sequence_function(
        self, time_mode: str = "dynamic", jit_compile: bool = False
    ) -> tf.types.experimental.PolymorphicFunction:
        """`tf.function` of `sequence` with its named input signature.

        Args:
            time_mode: `"dynamic"`, `"fixed"` or `"hybrid"` (see `sequence`); `"fixed"`
                gives the input signature `[None, time_steps, features]`, the others
                `[None, None, features]`.
            jit_compile: compile the function with XLA (kept by a saved SavedModel).
        """
        check_time_mode(time_mode)

        def serving_default(inputs):
            return self.sequence(inputs, time_mode=time_mode)

        return tf.function(
            serving_default,
            input_signature=self.sequence_signature(fixed_time=time_mode == "fixed"),
            jit_compile=jit_compile or None,
        )

    def projection_function(self) -> tf.types.experimental.PolymorphicFunction:
        """`tf.function`: `inputs` (batch, T, features) -> `projected` (batch, T * units).

        The per-step layers and the cell's input projection `U x + b` of all T steps, batch
        major, with the time axis merged into the feature axis (so that one ONNX `Split`
        gives each step's (batch, units) input). For the hand-built ONNX graph
        (`export.onnx_folded`).
        """
        steps = self._fixed_time()
        units = self._output_size

        def projection(inputs):
            x = self._pre(tf.convert_to_tensor(inputs, tf.float32))
            # (batch * T, features): one plain matmul (a 3-D one converts to a Tensordot
            # of shape ops around it).
            x = tf.reshape(x, [-1, x.shape[-1]])
            cache = self._sequence_cache()
            with _patched(self.cell, _cache=lambda: cache):
                projected = tf.cast(self.cell.project_inputs(x, cache), tf.float32)
            return {"projected": tf.reshape(projected, [-1, steps * units])}

        return tf.function(projection, input_signature=self.sequence_signature(fixed_time=True))

    def head_function(self) -> tf.types.experimental.PolymorphicFunction:
        """`tf.function`: `rnn_output` (batch, units), the final state -> the outputs.

        The head layers and the output tensors of `serving_default` (logits, probabilities,
        classes). For the hand-built ONNX graph (`export.onnx_folded`).
        """

        def head(rnn_output):
            return self._head(tf.convert_to_tensor(rnn_output, tf.float32))

        spec = [tf.TensorSpec([None, self._output_size], tf.float32, name="rnn_output")]
        return tf.function(head, input_signature=spec)

    def tflite_sequence_function(self) -> tf.types.experimental.PolymorphicFunction:
        """The whole sequence for TFLite: the `dynamic` graph (a builtin `WHILE`; any length).

        Not `hybrid`: TFLite prepares both branches of an `IF`, and the unrolled one cannot
        be prepared for another length.
        """
        return self.sequence_function(time_mode="dynamic")

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

    # ---------------------------------------------------------------- common interface
    # (shared with export.general.GraphInferenceModel; used by api, verify, metadata)
    path = "fast"
    streaming_reason = None
    streaming = True
    input_names = ("inputs",)

    @property
    def input_shapes(self) -> list[tuple]:
        """Shape of the one input without its batch axis."""
        return [(self.time_steps, self.features)]

    @property
    def states(self) -> list:
        """The one streaming state tensor, `state` (all of the cell's states concatenated)."""
        from export.general import StateSpec

        return [StateSpec(name="state", layer=self.rnn_layer.name, parts=list(self.state_sizes))]

    @property
    def recurrent_layers(self) -> list[str]:
        """The name of the recurrent layer."""
        return [self.rnn_layer.name]

    def output_names(self, streaming: bool = False) -> list[str]:
        """The signature output names."""
        names = ["logits", "probabilities", "classes"]
        return ["new_state", *names] if streaming else names

    def output_shapes(self) -> dict[str, list]:
        """Whole-sequence output shapes by name."""
        c = self.num_classes
        return {"logits": ["batch", c], "probabilities": ["batch", c], "classes": ["batch"]}

    def per_step_outputs(self) -> set[str]:
        """No output has a time axis."""
        return set()

    def is_sequence_input(self, index: int) -> bool:
        """The one input has a time axis."""
        return index == 0

    def sequence_inputs(self, fixed_time: bool = False) -> list[tf.TensorSpec]:
        """Alias of `sequence_signature`."""
        return self.sequence_signature(fixed_time=fixed_time)

    def step_inputs(self) -> list[tf.TensorSpec]:
        """Alias of `step_signature`."""
        return self.step_signature()

    def reference(self, feeds: dict) -> dict:
        """`keras_reference` of `feeds["inputs"]`."""
        return self.keras_reference(feeds["inputs"])

    def original_outputs(self, feeds: dict) -> list[np.ndarray]:
        """`[original_reference(feeds["inputs"])]`."""
        return [self.original_reference(feeds["inputs"])]


def check_time_mode(time_mode: str) -> str:
    """`time_mode` if it is one of `TIME_MODES`, else a `ValueError` naming it.

    Example:

    >>> check_time_mode("fixed")
    'fixed'
    """
    if time_mode not in TIME_MODES:
        raise ValueError(
            f"Argument `time_mode` must be one of {list(TIME_MODES)}; received "
            f"time_mode={time_mode!r}."
        )
    return time_mode


def _identity_projection(calls: list):
    def project_inputs(inputs, cache):
        del cache
        calls.append(1)
        return inputs

    return project_inputs


@contextlib.contextmanager
def _patched(obj: Any, **attrs: Any) -> Iterator[None]:
    """Set instance attributes (shadowing methods) for the duration, bypassing Keras tracking."""
    for key, value in attrs.items():
        object.__setattr__(obj, key, value)
    try:
        yield
    finally:
        for key in attrs:
            object.__delattr__(obj, key)


def _foldable_lipschitz(cell: SDECell) -> bool:
    """Whether `cell` is a Lipschitz cell whose inference step is `h + dt (A h + a(W h + p))`.

    True only for `LipschitzCell` and subclasses that override none of the step's pieces,
    with a scheme whose noise-free step is plain Euler (`euler_maruyama`, `research`), and
    steps `dt` > 0 within a factor 100 of each other (the fold scales the state by `1 / dt`).
    """
    from keras_nrnn.cells.lipschitz import LipschitzCell

    cls = type(cell)
    frozen = cell._frozen_cache or {}
    dt = np.asarray(frozen.get("dt", 0.0), np.float64)
    if not (np.all(np.isfinite(dt)) and np.all(dt > 0) and dt.max() <= 100.0 * dt.min()):
        return False
    return (
        isinstance(cell, LipschitzCell)
        and cls.call is SDECell.call
        and cls.drift is SDECell.drift
        and cls.step is SDECell.step
        and cls.drift_projected is LipschitzCell.drift_projected
        and cls.project_inputs is LipschitzCell.project_inputs
        and cell.scheme == "euler_maruyama"
        and cell._frozen_cache is not None
        and "recurrent_kernel_a" in cell._frozen_cache
        and "dt" in cell._frozen_cache
    )


def _model_layers(model: keras.Model) -> list:
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _is_chain(model: keras.Model) -> bool:
    """Whether the layers of `model` form one chain (each consumes the previous one's output)."""
    if isinstance(model, keras.Sequential):
        return True
    layers = _model_layers(model)
    if len(model.inputs) != 1 or not layers:
        return False
    previous = model.inputs[0]
    for layer in layers:
        if len(layer._inbound_nodes) != 1:
            return False
        node = layer._inbound_nodes[0]
        if len(node.input_tensors) != 1 or node.input_tensors[0] is not previous:
            return False
        if len(node.outputs) != 1:
            return False
        previous = node.outputs[0]
    return previous is model.outputs[0]


def fast_path_reason(model: keras.Model) -> str | None:
    """Why `model` does not fit the fast (folded, hoisted) path, or None if it does.

    The fast path takes one chain: (batch, time, features) -> per-step layers -> one
    `keras.layers.RNN`/`SDERNN` around a keras_nrnn cell with `return_sequences`,
    `return_state` and `go_backwards` False -> per-sample head -> (batch, classes), no
    `Masking`. Every other model takes the general path (`export.general`).

    Example:

    >>> import keras
    >>> from keras_nrnn import LipschitzCell
    >>> m = keras.Sequential([keras.Input((5, 2)), keras.layers.RNN(LipschitzCell(4)),
    ...                       keras.layers.Dense(3)])
    >>> fast_path_reason(m) is None
    True
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return "several inputs or outputs"
    if len(model.inputs[0].shape) != 3 or len(model.outputs[0].shape) != 2:
        return "not a (batch, time, features) -> (batch, classes) model"
    if not _is_chain(model):
        return "the layers are not one chain"
    layers = _model_layers(model)
    rnn = [layer for layer in layers if _rnn_cell(layer)]
    cells = [layer for layer in layers if _contains_sde_cell(layer)]
    if len(rnn) != 1 or len(cells) != 1:
        return "not exactly one top-level recurrent layer with a keras_nrnn cell"
    for option in ("return_sequences", "return_state", "go_backwards"):
        if getattr(rnn[0], option, False):
            return f"the recurrent layer has {option}=True"
    if any(
        isinstance(layer, keras.layers.Masking | keras.layers.RNN) and layer is not rnn[0]
        for layer in layers
    ):
        return "a Masking layer or another recurrent layer"
    return None


def build_inference_model(model: keras.Model, path: str = "auto"):
    """The inference model of `model`: the fast path if it fits, else the general path.

    Args:
        model: a built Keras model with keras_nrnn cells.
        path: `"auto"` (fast when `fast_path_reason(model)` is None), `"fast"` (an
            `ExportError` if it does not fit) or `"general"` (`export.general`).

    Returns:
        An `InferenceModel` (fast) or an `export.general.GraphInferenceModel`.

    Raises:
        ExportError: not a built model, no keras_nrnn cell, or `path="fast"` on a model that
            does not fit.

    Example:

    >>> import keras
    >>> from keras_nrnn import LipschitzCell
    >>> m = keras.Sequential([keras.Input((5, 2)),
    ...     keras.layers.RNN(LipschitzCell(4), return_sequences=True), keras.layers.Dense(3)])
    >>> build_inference_model(m).path
    'general'
    """
    if path not in ("auto", "fast", "general"):
        raise ValueError(
            f"Argument `path` must be 'auto', 'fast' or 'general'; received path={path!r}."
        )
    if not isinstance(model, keras.Model):
        raise ExportError(f"Expected a keras.Model; received {type(model).__name__}.")
    if not model.built or not getattr(model, "inputs", None):
        raise ExportError(
            f"Model {model.name!r} is not built with a known input (build it on "
            "(batch, time, features) inputs, e.g. with keras.Input, before exporting)."
        )
    if not _contains_sde_cell(model):
        raise ExportError(
            f"Model {model.name!r} has no keras_nrnn cell: expected keras.layers.RNN, "
            "keras_nrnn.SDERNN or Bidirectional layers around keras_nrnn cells (SDECell)."
        )
    reason = fast_path_reason(model)
    if path == "fast" and reason is not None:
        raise ExportError(f"Model {model.name!r} does not fit the fast export path: {reason}.")
    if path == "general" or reason is not None:
        from export.general import build_graph_inference_model

        return build_graph_inference_model(model, rebuild_float32(model))
    return _build_fast(model)


def _build_fast(model: keras.Model) -> InferenceModel:
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
