"""`SDERNN`: a sequence-level layer that runs an `SDECell` faster than `keras.layers.RNN`.

It holds the very same cell (same weights, same config, same inference results as
`keras.layers.RNN(cell)`), but restructures the work around the loop:

- the per-sequence tensors (A, W, ...) are formed once, before the loop;
- the input part of the drift (`U x + b`) is computed for all steps with one matmul when
  there are enough input features for that to pay (see `project_inputs_first`);
- in training mode the noise of the whole sequence, shape `(time, batch, units)`, is drawn
  with one random op before the loop, so the loop body is stateless;
- the loop is the one `keras.layers.RNN` runs, with a loop body free of random ops, so
  XLA (`jit_compile=True`) compiles it well.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_nrnn._keras_internals import backend_rnn
from keras_nrnn.cells.base import SDECell

__all__ = ["SDERNN"]


@keras.saving.register_keras_serializable(package="keras_nrnn")
class SDERNN(keras.layers.Layer):
    """Run a single-state `SDECell` over a sequence: a faster `keras.layers.RNN(cell)`.

    Inference outputs equal those of `keras.layers.RNN(cell)` with the same weights (the
    weights of the two layers are the cell's, in the same order, so `set_weights` moves
    them across). In training mode the noise has the same distribution, drawn in a
    different order. Masks, `go_backwards`, `return_sequences`, `return_state` and an
    `initial_state` are supported; for `stateful` RNNs or multi-part states (coRNN) use
    `keras.layers.RNN`.

    Args:
        cell: a `keras_nrnn` cell with a single state (e.g. `NoisyLipschitzCell`).
        return_sequences: return the whole sequence of states, `(batch, time, units)`,
            instead of the last one.
        return_state: also return the last state.
        go_backwards: process the sequence in reverse (outputs in processing order, as
            `keras.layers.RNN` does).
        unroll: whether to unroll the time loop (needs a known sequence length; slower for
            long sequences under XLA).
        project_inputs_first: compute the input part of the drift for all steps with one
            matmul before the loop (True), or per step (False). `None` (default) chooses:
            before the loop when `features >= units / 4`.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        sequences: tensor of shape `(batch, time, features)`.
        initial_state: optional tensor (or list with one tensor) of shape `(batch, units)`.
        mask: optional boolean tensor `(batch, time)`; masked steps keep the state.
        training: Python bool; noise is injected only when True.

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import NoisyLipschitzCell
    >>> x = np.random.default_rng(0).normal(size=(2, 7, 3)).astype("float32")
    >>> fast = SDERNN(NoisyLipschitzCell(8, additive_noise=0.1, seed=0))
    >>> plain = keras.layers.RNN(NoisyLipschitzCell(8, additive_noise=0.1, seed=0))
    >>> _ = fast(x); _ = plain(x); plain.set_weights(fast.get_weights())
    >>> bool(np.allclose(fast(x), plain(x), atol=1e-6))
    True
    """

    def __init__(
        self,
        cell: SDECell | dict,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        unroll: bool = False,
        project_inputs_first: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        if not isinstance(cell, SDECell):
            raise ValueError(
                "Argument `cell` must be a keras_nrnn cell (an SDECell); received "
                f"cell={cell!r}. Wrap other cells in keras.layers.RNN."
            )
        if not isinstance(cell.state_size, int):
            raise ValueError(
                f"SDERNN runs single-state cells; {type(cell).__name__} has state_size="
                f"{cell.state_size!r}. Use keras.layers.RNN(cell) for it."
            )
        if not isinstance(unroll, bool):
            raise ValueError(f"Argument `unroll` must be a bool; received unroll={unroll!r}.")
        self.cell = cell
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.unroll = unroll
        if project_inputs_first is not None and not isinstance(project_inputs_first, bool):
            raise ValueError(
                "Argument `project_inputs_first` must be None or a bool; received "
                f"project_inputs_first={project_inputs_first!r}."
            )
        self.project_inputs_first = project_inputs_first
        self.supports_masking = True

    def build(self, sequences_shape) -> None:
        shape = tuple(sequences_shape)
        if len(shape) != 3 or shape[-1] is None:
            raise ValueError(
                "SDERNN expects inputs of shape (batch, time, features) with a known number "
                f"of features; received shape {shape}."
            )
        if not self.cell.built:
            self.cell.build((shape[0], shape[-1]))
        self.built = True

    def call(self, sequences, initial_state=None, mask=None, training: bool = False):
        cell = self.cell
        if len(sequences.shape) != 3:
            raise ValueError(
                "SDERNN expects inputs of shape (batch, time, features); received shape "
                f"{tuple(sequences.shape)}."
            )
        if not keras.backend.is_float_dtype(sequences.dtype):
            raise ValueError(
                f"SDERNN expects floating-point inputs; received dtype {sequences.dtype}."
            )
        dtype = cell.compute_dtype
        sequences = ops.cast(sequences, dtype)
        cache = cell._cache()
        dt = cache["dt"]
        # Time-major from here: (time, batch, ...).
        if self._projects_first(sequences.shape[-1]):
            steps = ops.transpose(cell.project_inputs(sequences, cache), (1, 0, 2))
            step_drift = cell.drift_projected
        else:
            steps = ops.transpose(sequences, (1, 0, 2))
            step_drift = cell.drift
        if initial_state is None:
            h0 = ops.zeros((ops.shape(sequences)[0], cell.units), dtype=dtype)
        else:
            h0 = initial_state[0] if isinstance(initial_state, list | tuple) else initial_state
            h0 = ops.cast(h0, dtype)
        noisy = bool(training) and cell.noise.active
        draws = (
            cell._scheme.draw((*ops.shape(steps)[:2], cell.units), dtype, cell.seed_generator)
            if noisy
            else ()
        )
        scheme, noise = cell._scheme, cell.noise

        def step(x, states):
            h = states[0]
            f = step_drift(x[0], h, cache)
            h_new = scheme.step(h, f, dt, noise, tuple(x[1:]) if noisy else None)
            return h_new, [h_new]

        last, outputs, _ = backend_rnn(
            step,
            (steps, *draws),
            [h0],
            go_backwards=self.go_backwards,
            mask=None if mask is None else ops.transpose(mask),
            unroll=self.unroll,
            input_length=sequences.shape[1],
            time_major=True,
            return_all_outputs=self.return_sequences,
        )
        output = ops.transpose(outputs, (1, 0, 2)) if self.return_sequences else last
        if self.return_state:
            return output, last
        return output

    def _projects_first(self, features: int) -> bool:
        if self.project_inputs_first is not None:
            return self.project_inputs_first
        # Measured (ECG, 1 feature, 128 units): projecting before the loop moves a
        # (time, batch, units) tensor through memory forward and backward and was 15%
        # slower than the tiny per-step (batch, 1) x (1, units) matmul it saves.
        return features * 4 >= self.cell.units

    def compute_mask(self, inputs, mask=None):
        return mask if self.return_sequences else None

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        batch, time = sequences_shape[0], sequences_shape[1]
        units = self.cell.units
        out = (batch, time, units) if self.return_sequences else (batch, units)
        if self.return_state:
            return out, (batch, units)
        return out

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            cell=keras.saving.serialize_keras_object(self.cell),
            return_sequences=self.return_sequences,
            return_state=self.return_state,
            go_backwards=self.go_backwards,
            unroll=self.unroll,
            project_inputs_first=self.project_inputs_first,
        )
        return config
