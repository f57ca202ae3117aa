"""`SDECell`: the base of every cell in this package.

A cell is three small pieces (DESIGN section 5):

- the drift `f(h, x)`, the continuous-time vector field, written by each subclass in
  `build_drift`, `precompute` and `drift`;
- the noise model (`keras_nrnn.noise.DiagonalNoise`), active only in training mode;
- the integration scheme (`keras_nrnn.schemes`), which turns both into one step.

Work that does not depend on the state (forming A and W from their parametrization,
casting weights to the compute dtype) is done by `precompute` once per sequence: the
`keras.layers.RNN` layer calls the cell's `get_dropout_mask` hook once before its time
loop, and this class uses that hook to cache `precompute()`; a cell called directly
(outside an RNN layer) computes it on the spot. See `docs/noise-and-randomness.md`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_nrnn import schemes as schemes_lib
from keras_nrnn._keras_internals import PreLoopHook as _PreLoopHook
from keras_nrnn.noise import DiagonalNoise
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

    Subclasses implement `build_drift(input_dim)`, `precompute()` and
    `drift(inputs, h, cache)`, and may override `call` for multi-part states.

    Args:
        units: size of the state, > 0.
        dt: the step delta of eq. 5, > 0 (the initial value if learnable).
        learnable_dt: `"none"`, `"scalar"`, `"per_unit"`, or `None` for the scheme's
            default (`"per_unit"` for `scheme="research"`, `"none"` otherwise).
        scheme: `"euler_maruyama"` (default, eq. 5), `"tamed"` or `"research"`.
        additive_noise: eps * sigma_1 of eq. 4, >= 0.
        multiplicative_noise: eps * sigma_2 of eq. 4, >= 0 (<= 1 for `"research"`).
        seed: int or None; seeds the `keras.random.SeedGenerator` the noise is drawn from.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).
    """

    #: Whether the constructor takes noise arguments (False for deterministic cells).
    supports_noise: bool = True

    def __init__(
        self,
        units: int,
        dt: float = 0.1,
        learnable_dt: str | None = None,
        scheme: str = "euler_maruyama",
        additive_noise: float = 0.0,
        multiplicative_noise: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = check_positive_int("units", units)
        self.dt = check_positive("dt", dt)
        self.scheme = check_choice("scheme", scheme, schemes_lib.SCHEMES)
        if learnable_dt is not None:
            check_choice("learnable_dt", learnable_dt, LEARNABLE_DT)
        self.learnable_dt = learnable_dt
        self.noise = DiagonalNoise(additive_noise, multiplicative_noise)
        if not self.supports_noise and (self.noise.active or seed is not None):
            # get_config omits the noise of a deterministic cell: a silently noisy one would
            # not survive a save / load round trip.
            raise ValueError(
                f"{type(self).__name__} is deterministic and takes no noise arguments; received "
                f"additive_noise={additive_noise!r}, multiplicative_noise="
                f"{multiplicative_noise!r}, seed={seed!r}. Use its Noisy* counterpart."
            )
        if scheme == "research" and self.noise.multiplicative > 1.0:
            raise ValueError(
                "Argument `multiplicative_noise` must be <= 1 with scheme='research' (the "
                "factor is drawn from U(1 - multiplicative_noise, 1)); received "
                f"multiplicative_noise={multiplicative_noise!r}."
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Argument `seed` must be an int or None; received seed={seed!r}.")
        self.seed = seed
        self._scheme = schemes_lib.get(scheme)
        self.seed_generator = (
            keras.random.SeedGenerator(seed, name="noise_seed") if self.noise.active else None
        )
        self.state_size = self.units
        self.output_size = self.units
        # Attributes Keras's pre-loop hook expects; this class never drops anything out.
        self.dropout = 0.0
        self.recurrent_dropout = 0.0
        self._sequence_cache: dict | None = None
        self._frozen_cache: dict | None = None

    # ----------------------------------------------------------------- pieces
    @property
    def resolved_learnable_dt(self) -> str:
        """`learnable_dt` with the scheme default applied."""
        if self.learnable_dt is not None:
            return self.learnable_dt
        return "per_unit" if self.scheme == "research" else "none"

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
        mode = self.resolved_learnable_dt
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

    def integrate(self, h, f, training: bool, dt):
        """One scheme step from `h` with drift value `f`; noise only when `training`."""
        draws = None
        if training and self.noise.active:
            draws = self._scheme.draw(ops.shape(h), h.dtype, self.seed_generator)
        return self._scheme.step(h, f, dt, self.noise, draws)

    def call(self, inputs, states, training: bool = False):
        h = states[0] if isinstance(states, list | tuple) else states
        self._check_step_input(inputs)
        h = ops.cast(h, self.compute_dtype)
        cache = self._cache()
        f = self.drift(inputs, h, cache)
        h_new = self.integrate(h, f, training, cache["dt"])
        return h_new, [h_new]

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
        if self.supports_noise:
            config.update(
                additive_noise=self.noise.additive,
                multiplicative_noise=self.noise.multiplicative,
                seed=self.seed,
            )
        return config
