"""`SDERNN`: `keras.layers.RNN` for keras_nrnn cells, with a faster and stateless loop.

`SDERNN` is a `keras.layers.RNN` subclass (as Keras's GRU is for its cuDNN path): it changes
only how the time loop runs, and inherits everything else (`return_sequences`,
`return_state`, `go_backwards`, `stateful`, masking, `zero_output_for_mask`, `unroll`,
`Bidirectional`, `get_config`). Around the loop it restructures the work, using the cell's
step contract (`keras_nrnn.cells.base`):

- the per-sequence tensors (A, W, ...) are formed once, before the loop;
- the input part of the drift (`U x + b`) is computed for all steps with one matmul when
  there are enough input features for that to pay (see `project_inputs_first`);
- in training mode the Brownian variates of the whole sequence are drawn before the loop,
  in one random op (`SDECell.draw_sequence`), and fed to the steps as inputs, so the loop
  body has no random op: it runs under `jax.lax.scan` and compiles well with XLA. They
  come from the keys `keras.layers.RNN(cell)` would draw step by step, so the same seed
  gives the same noise under both layers.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_nrnn import brownian
from keras_nrnn._keras_internals import backend_rnn
from keras_nrnn.cells.base import SDECell

__all__ = ["SDERNN"]


@keras.saving.register_keras_serializable(package="keras_nrnn")
class SDERNN(keras.layers.RNN):
    """`keras.layers.RNN` for a keras_nrnn cell: the same layer, with a faster loop.

    Outputs equal those of `keras.layers.RNN(cell)` with the same weights, in inference and,
    with the same seed, in training (the same Brownian path). It runs noisy training on every
    backend, including JAX, where `keras.layers.RNN` cannot advance a seed inside its loop.

    Args:
        cell: a `keras_nrnn` cell (an `SDECell`), single- or multi-part state.
        return_sequences: return the whole sequence of outputs, `(batch, time, units)`.
        return_state: also return the last state(s).
        go_backwards: process the sequence in reverse.
        stateful: keep the last state of each batch as the initial state of the next.
        unroll: unroll the time loop (needs a known sequence length).
        zero_output_for_mask: output zeros (instead of the previous output) at masked steps.
        project_inputs_first: compute the input part of the drift for all steps with one
            matmul before the loop (True), or per step (False). `None` (default) chooses:
            before the loop when `features >= units / 4`.
        **kwargs: other `keras.layers.RNN` / `keras.layers.Layer` arguments.

    Call arguments:
        sequences: tensor of shape `(batch, time, features)`.
        initial_state: optional list of state tensors.
        mask: optional boolean tensor `(batch, time)`.
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
    >>> bool(np.allclose(fast(x, training=True), plain(x, training=True), atol=1e-5))
    True
    """

    def __init__(
        self,
        cell: SDECell | dict,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        unroll: bool = False,
        zero_output_for_mask: bool = False,
        project_inputs_first: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        if not isinstance(cell, SDECell):
            raise ValueError(
                "Argument `cell` must be a keras_nrnn cell (an SDECell); received "
                f"cell={cell!r}. Wrap other cells in keras.layers.RNN."
            )
        if not isinstance(unroll, bool):
            raise ValueError(f"Argument `unroll` must be a bool; received unroll={unroll!r}.")
        if project_inputs_first is not None and not isinstance(project_inputs_first, bool):
            raise ValueError(
                "Argument `project_inputs_first` must be None or a bool; received "
                f"project_inputs_first={project_inputs_first!r}."
            )
        super().__init__(
            cell,
            return_sequences=bool(return_sequences),
            return_state=bool(return_state),
            go_backwards=bool(go_backwards),
            stateful=bool(stateful),
            unroll=unroll,
            zero_output_for_mask=bool(zero_output_for_mask),
            **kwargs,
        )
        self.project_inputs_first = project_inputs_first

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        cell._check_step_input(sequences[:, 0])  # rank and floating dtype
        dtype = cell.compute_dtype
        sequences = ops.cast(sequences, dtype)
        cache = cell.precomputed()
        projected_first = self._projects_first(sequences.shape[-1])
        # Time-major from here: (time, batch, ...).
        steps = ops.transpose(sequences, (1, 0, 2))
        if projected_first:
            steps = cell.project_inputs(steps, cache)
        noisy = bool(training) and cell.noise is not None
        batch = ops.shape(sequences)[0]
        inputs = [steps]
        if noisy:
            # The variates of the whole sequence, in one random op before the loop: row k is
            # what the cell would draw at step k of the processing order with its key.
            length_t = ops.shape(steps)[0]
            draws = self._draw_sequence(length_t, batch)
            if self.go_backwards:
                draws = tuple(ops.flip(d, axis=0) for d in draws)  # time order of the inputs
            inputs.extend(draws)

        def step(step_inputs, states):
            x = step_inputs[0]
            projected = x if projected_first else cell.project_inputs(x, cache)
            draws = tuple(step_inputs[1:]) if noisy else None
            states = [ops.cast(s, dtype) for s in states]
            return cell.step(projected, states, cache, draws)

        length = sequences.shape[1]
        if length is None and keras.backend.backend() == "tensorflow":
            # An unknown length: Keras's TensorFlow loop would read it from `inputs.shape[1]`,
            # which nested (and time-major) inputs do not have; it runs max(input_length)
            # iterations, so a one-element list carries the dynamic length instead.
            length = [ops.shape(steps)[0]]
        last, outputs, states = backend_rnn(
            step,
            inputs,
            list(initial_state),
            go_backwards=self.go_backwards,
            mask=None if mask is None else ops.transpose(mask),
            unroll=self.unroll,
            input_length=length,
            time_major=True,
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=self.return_sequences,
        )
        if self.return_sequences:
            outputs = ops.transpose(outputs, (1, 0, 2))
        return last, outputs, states

    def _draw_sequence(self, steps, batch):
        """The Brownian variates of a sequence, `(steps, batch, units)` per kind: those
        `keras.layers.RNN(cell)` would draw step by step with the same seed.

        On TensorFlow and torch, the loop of `keras.layers.RNN` (not unrolled) calls the
        step once more before the loop, on the first input, to learn the output's shape;
        a cell that draws its key at each step then spends one key on that call. Skipping
        the same key here keeps the two layers on the same Brownian path for the same seed
        (tests/keras_nrnn/test_sdernn_is_an_rnn.py checks it on each backend). The skipped
        step is drawn and sliced off rather than added to the key: with the key computed,
        XLA compiled the draw about 3x slower (docs/performance.md).
        """
        skip = 0 if self.unroll or keras.backend.backend() == "jax" else 1
        base = brownian.reserve_base(self.cell.seed_generator, steps + skip)
        draws = self.cell.draw_sequence(base, steps + skip, batch)
        return tuple(d[skip:] for d in draws) if skip else draws

    def _projects_first(self, features: int) -> bool:
        if self.project_inputs_first is not None:
            return self.project_inputs_first
        # Measured (ECG, 1 feature, 128 units): projecting before the loop moves a
        # (time, batch, units) tensor through memory forward and backward and was 15%
        # slower than the tiny per-step (batch, 1) x (1, units) matmul it saves.
        return features * 4 >= self.cell.units

    def get_config(self) -> dict:
        config = super().get_config()
        config["project_inputs_first"] = self.project_inputs_first
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        # keras.layers.RNN.from_config pops "cell" from the caller's dict; work on a copy.
        config = dict(config)
        cell = keras.saving.deserialize_keras_object(
            config.pop("cell"), custom_objects=custom_objects
        )
        return cls(cell, **config)
