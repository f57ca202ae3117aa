"""`SDECell`: the base of every cell in this package, and the step contract.

A cell is four pieces side by side (`docs/adding-a-cell.md`):

- the drift `f(h, x)`, written by each subclass (`build_drift`, `precompute`,
  `project_inputs`, `drift_projected`);
- the noise model (`keras_nrnn.noise`), `noise=` on every cell, active only in training;
- the Brownian source (`keras_nrnn.brownian`): the variates of each step from its key;
- the integration scheme (`keras_nrnn.schemes`), which combines them into one step.

The step contract, used by `call`, `keras_nrnn.SDERNN` and export alike:

- `precomputed()`: the per-sequence tensors (A, W, weights cast to the compute dtype, `dt`);
- `project_inputs(inputs, cache)`: the input part of the drift, for a step or a sequence;
- `draw(key, batch_size)`: the standard variates of one step from its Brownian key
  (`draw_sequence(base, steps, batch_size)`: those of consecutive steps, stacked);
- `step(projected, states, cache, draws)`: `(output, new_states)`; `draws=None` is inference.

`precomputed()` is formed once per sequence: `keras.layers.RNN` calls the cell's
`get_dropout_mask` hook once before its time loop and this class caches it there; a cell
called directly (outside an RNN layer) computes it on the spot.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_nrnn import brownian
from keras_nrnn import noise as noise_lib
from keras_nrnn import schemes as schemes_lib
from keras_nrnn._keras_internals import PreLoopHook as _PreLoopHook
from keras_nrnn.validation import (
    check_choice,
    check_positive,
    check_positive_int,
    get_keras_object,
    serialize_keras_object,
)

__all__ = ["LEARNABLE_DT", "SDECell"]

LEARNABLE_DT = ("none", "scalar", "per_unit")


class SDECell(keras.layers.Layer, _PreLoopHook):
    """Base class: an RNN cell whose update is one step of `dh = f(h, x) dt + sigma dB`.

    Subclasses implement `build_drift(input_dim)`, `precompute()`, `project_inputs` and
    `drift_projected(projected, h, cache)`; cells with a multi-part state override `step`
    (and `get_initial_state`). See the module docstring for the step contract.

    Args:
        units: size of the state, > 0.
        dt: the step delta of eq. 5, > 0 (the initial value if learnable).
        learnable_dt: `"none"` (default), `"scalar"` or `"per_unit"`.
        scheme: `"euler_maruyama"` (default, eq. 5), `"tamed"` or `"milstein"`.
        noise: a `keras_nrnn.noise.NoiseModel` (`DiagonalNoise`, `ResearchNoise`), its
            config, `"diagonal"`/`"research"` with the levels below, or None (no noise).
        additive_noise: shorthand for eq. 4: `eps * sigma_1`, >= 0.
        multiplicative_noise: shorthand for eq. 4: `eps * sigma_2`, >= 0.
        seed: int or None; seeds the `keras.random.SeedGenerator` the Brownian keys come from.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(
        self,
        units: int,
        dt: float = 0.1,
        learnable_dt: str | None = None,
        scheme: str = "euler_maruyama",
        noise: Any = None,
        additive_noise: float | None = None,
        multiplicative_noise: float | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = check_positive_int("units", units)
        self.dt = check_positive("dt", dt)
        if scheme in schemes_lib.DEPRECATED:
            # Version 0.1's scheme="research" is the research code's noise with Euler steps
            # and, by default, a learnable per-unit dt (as that code has).
            if noise is None:
                noise = "research"
            if learnable_dt is None:
                learnable_dt = "per_unit"
        self.integrator = schemes_lib.get(scheme)
        self.scheme = self.integrator.name
        if learnable_dt is not None:
            check_choice("learnable_dt", learnable_dt, LEARNABLE_DT)
        self.learnable_dt = "none" if learnable_dt is None else learnable_dt
        self.noise = noise_lib.get(noise, additive_noise, multiplicative_noise)
        self.integrator.check_noise(self.noise)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Argument `seed` must be an int or None; received seed={seed!r}.")
        self.seed = seed
        # One generator per cell, named after the (unique) layer name: on the torch backend
        # variables are registered by name, and equal names collide.
        self.seed_generator = (
            keras.random.SeedGenerator(seed, name=f"{self.name}_brownian_seed")
            if self.noise is not None
            else None
        )
        self.state_size = self.units
        self.output_size = self.units
        # Attributes Keras's pre-loop hook expects; this class never drops anything out.
        self.dropout = 0.0
        self.recurrent_dropout = 0.0
        self._sequence_cache: dict | None = None
        self._frozen_cache: dict | None = None
        #: Set by `SDERNN` while it drives the cell with keys reserved before its loop.
        self._keys_from_loop = False

    # ----------------------------------------------------------------- pieces
    @property
    def resolved_learnable_dt(self) -> str:
        """`learnable_dt` (kept for code written against version 0.1)."""
        return self.learnable_dt

    def build_drift(self, input_dim: int) -> None:
        """Create the drift's weights for inputs with `input_dim` features."""
        raise NotImplementedError

    def precompute(self) -> dict:
        """Tensors formed once per sequence (weights cast to the compute dtype, A, W, ...).

        The step under the key `"dt"` may be left out: `_precompute` adds `step_size()`.
        """
        raise NotImplementedError

    def _precompute(self) -> dict:
        """`precompute()` with the step always present under `"dt"` (read once, not per step)."""
        cache = self.precompute()
        if "dt" not in cache:
            cache["dt"] = self.step_size()
        return cache

    def project_inputs(self, inputs, cache: dict):
        """The part of the drift that depends on the inputs only (e.g. `U x + b`).

        Works on any leading shape: `(batch, input_dim)` for one step or
        `(batch, time, input_dim)` for a whole sequence, so a sequence-level layer can
        project every step with one matmul before its loop. Default: the inputs as they are.
        """
        return inputs

    def drift_projected(self, projected, h, cache: dict):
        """`f(h, x)` given `projected = project_inputs(x)` and the state `h` (batch, units)."""
        raise NotImplementedError

    def drift(self, inputs, h, cache: dict):
        """`f(h, x)` for a batch: `inputs` (batch, input_dim), `h` (batch, units)."""
        return self.drift_projected(self.project_inputs(inputs, cache), h, cache)

    # ----------------------------------------------------------------- Keras
    def build(self, input_shape) -> None:
        shape = tuple(input_shape)
        if len(shape) != 2 or shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape (batch, features) at each step, "
                "i.e. (batch, time, features) for the keras.layers.RNN layer around it, with a "
                f"known number of features; received a step input of shape {shape}."
            )
        self.build_drift(int(shape[-1]))
        mode = self.learnable_dt
        if mode == "none":
            self.dt_variable = None
        else:
            self.dt_variable = self.add_weight(
                name="dt",
                shape=() if mode == "scalar" else (self.units,),
                initializer=keras.initializers.Constant(self.dt),
                trainable=True,
            )
        self.built = True

    def step_size(self):
        """The step as used in the update: a Python float or a tensor in the compute dtype."""
        if self.dt_variable is None:
            return self.dt
        return ops.cast(self.dt_variable, self.compute_dtype)

    def _cache(self) -> dict:
        if self._frozen_cache is not None:
            return {
                k: v if v is None or isinstance(v, float) else ops.convert_to_tensor(v)
                for k, v in self._frozen_cache.items()
            }
        if self._sequence_cache is not None:
            return self._sequence_cache
        return self._precompute()

    def freeze(self) -> None:
        """Evaluate `precompute()` now and use the values as constants from then on.

        For inference export: the parametrized matrices (A, W, exp(S), ...) become constants
        of the traced graph, so no step and no call recomputes them. Weights changed after
        `freeze()` are ignored until `unfreeze()`.

        Example:

        >>> import numpy as np, keras
        >>> from keras_nrnn import LipschitzCell
        >>> cell = LipschitzCell(4); layer = keras.layers.RNN(cell)
        >>> y = layer(np.ones((1, 3, 2), "float32")); cell.freeze()
        >>> bool(np.allclose(layer(np.ones((1, 3, 2), "float32")), y))
        True
        """
        cache = self._precompute()
        self._frozen_cache = {
            k: v if v is None or isinstance(v, float) else ops.convert_to_numpy(v)
            for k, v in cache.items()
        }

    def unfreeze(self) -> None:
        """Undo `freeze()`: recompute the per-sequence tensors from the weights again."""
        self._frozen_cache = None

    @property
    def frozen(self) -> bool:
        """Whether `freeze()` is in effect."""
        return self._frozen_cache is not None

    def _check_step_input(self, inputs) -> None:
        shape = tuple(inputs.shape)
        if len(shape) != 2:
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape (batch, features) at each step "
                f"(batch, time, features) for the RNN layer); received shape {shape}."
            )
        if not keras.backend.is_float_dtype(inputs.dtype):
            raise ValueError(
                f"{type(self).__name__} expects floating-point inputs; received dtype "
                f"{inputs.dtype}. Cast the data to float32 first."
            )

    # ----------------------------------------------------------- step contract
    def precomputed(self) -> dict:
        """The per-sequence tensors of the step (`precompute()` plus `"dt"`), cached by the
        pre-loop hook of `keras.layers.RNN` or frozen by `freeze()`."""
        return self._cache()

    def draw(self, key, batch_size) -> tuple | None:
        """The standard variates of one step from its Brownian `key`, or None without noise.

        Args:
            key: the step's key, shape `(2,)` (see `keras_nrnn.brownian`).
            batch_size: the batch size (int or scalar tensor).
        """
        if self.noise is None:
            return None
        return brownian.variates(
            self.noise.variates, (batch_size, self.units), self.compute_dtype, key
        )

    def draw_sequence(self, base, steps, batch_size) -> tuple | None:
        """The variates of `steps` consecutive steps from the key `base`, stacked on a leading
        time axis (`(steps, batch, units)` each): row `t` is `draw(base + (0, t), batch_size)`.
        None without noise. One random op for all kinds (`keras_nrnn.brownian.sequence_variates`).

        Example:

        >>> import numpy as np
        >>> from keras_nrnn import LipschitzCell
        >>> cell = LipschitzCell(3, additive_noise=0.1, seed=0)
        >>> (xi,) = cell.draw_sequence(np.array([0, 5]), 4, 2)
        >>> (row,) = cell.draw(np.array([0, 7]), 2)
        >>> tuple(xi.shape), bool(np.allclose(xi[2], row))
        ((4, 2, 3), True)
        """
        if self.noise is None:
            return None
        return brownian.sequence_variates(
            self.noise.variates, (batch_size, self.units), self.compute_dtype, base, steps
        )

    def step(self, projected, states: list, cache: dict, draws: tuple | None):
        """One step of the SDE: `(output, new_states)`.

        Args:
            projected: `project_inputs(x_t, cache)`, shape `(batch, units)`.
            states: list of state tensors in the compute dtype.
            cache: `precomputed()`.
            draws: `draw(key, batch)` in training mode, None for inference.

        Returns:
            `(output, new_states)`.

        Example:

        >>> import numpy as np, keras
        >>> from keras_nrnn import LipschitzCell
        >>> cell = LipschitzCell(3, additive_noise=0.1, seed=0); cell.build((None, 2))
        >>> cache = cell.precomputed()
        >>> p = cell.project_inputs(np.ones((4, 2), "float32"), cache)
        >>> h = [np.zeros((4, 3), "float32")]
        >>> clean, _ = cell.step(p, h, cache, None)
        >>> noisy, _ = cell.step(p, h, cache, cell.draw(np.array([0, 1]), 4))
        >>> bool(np.allclose(clean, cell(np.ones((4, 2), "float32"), h)[0]))
        True
        >>> bool(np.allclose(clean, noisy))
        False
        """
        h = states[0]

        def drift(state):
            return self.drift_projected(projected, state, cache)

        h_new = self.integrator.step(h, drift, cache["dt"], self.noise, draws)
        return h_new, [h_new]

    def call(self, inputs, states, training: bool = False):
        states = list(states) if isinstance(states, list | tuple) else [states]
        self._check_step_input(inputs)
        states = [ops.cast(s, self.compute_dtype) for s in states]
        cache = self._cache()
        draws = None
        if training and self.noise is not None:
            self._check_can_draw_per_step(inputs)
            draws = self.draw(brownian.next_key(self.seed_generator), ops.shape(inputs)[0])
        return self.step(self.project_inputs(inputs, cache), states, cache, draws)

    def _check_can_draw_per_step(self, inputs) -> None:
        """On JAX, refuse to advance the seed inside a loop body traced apart from the seed's
        own trace (the `lax.scan` of `keras.layers.RNN`): the noise would be frozen, or the
        trace would leak. Unrolled loops and direct calls advance it fine."""
        if keras.backend.backend() != "jax":
            return
        import jax

        state = self.seed_generator.state.value
        nested = isinstance(inputs, jax.core.Tracer) and (
            not isinstance(state, jax.core.Tracer)
            or getattr(inputs, "_trace", None) is not getattr(state, "_trace", None)
        )
        if nested:
            raise RuntimeError(
                f"{type(self).__name__} with noise cannot draw its training noise inside "
                "keras.layers.RNN on the JAX backend: the loop is a jax.lax.scan, which cannot "
                "advance the cell's seed generator at each step (the noise would be frozen or "
                "the trace would leak). Use keras_nrnn.SDERNN(cell) instead of "
                "keras.layers.RNN(cell): it takes the Brownian keys of the whole sequence "
                "before its loop and supports the same options (or unroll=True)."
            )

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype)]

    # ------------------------------------------- pre-loop hook of keras.layers.RNN
    def get_dropout_mask(self, step_input):
        """Called once by `keras.layers.RNN` before its loop: caches `precompute()`."""
        # Check the input before caching, so that a bad input cannot leave a cache behind.
        self._check_step_input(step_input)
        # Recompute even if a cache is set: one left over by a call that failed inside the
        # loop holds stale values (or tensors of a graph that no longer exists).
        self._sequence_cache = None
        self._sequence_cache = self._cache()
        return None

    def get_recurrent_dropout_mask(self, step_input):
        return None

    def reset_dropout_mask(self) -> None:
        """Called by `keras.layers.RNN` after its loop: drops the per-sequence cache."""
        self._sequence_cache = None

    def reset_recurrent_dropout_mask(self) -> None:
        return None

    def _add_input_kernel(self, input_dim: int):
        """The input kernel `(input_dim, units)`, named `kernel`, with the cell's
        `kernel_initializer`, `kernel_regularizer` and `kernel_constraint`."""
        return self.add_weight(
            name="kernel",
            shape=(input_dim, self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )

    def _add_bias(self):
        """The drift's bias `(units,)`, named `bias`, or None when `use_bias` is False."""
        if not self.use_bias:
            return None
        return self.add_weight(
            name="bias",
            shape=(self.units,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    # ----------------------------------------------------------------- config
    def _set_keras_objects(self, **objects: Any) -> None:
        """Resolve and store `*_initializer`, `*_regularizer`, `*_constraint` arguments.

        Each becomes an attribute of the same name and is serialized by `get_config`.
        """
        for name, value in objects.items():
            setattr(self, name, get_keras_object(name, value))
        self._keras_object_names = (*getattr(self, "_keras_object_names", ()), *objects)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            units=self.units,
            dt=self.dt,
            learnable_dt=self.learnable_dt,
            scheme=self.scheme,
        )
        for name in getattr(self, "_keras_object_names", ()):
            config[name] = serialize_keras_object(name, getattr(self, name))
        config.update(noise=noise_lib.serialize(self.noise), seed=self.seed)
        return config
