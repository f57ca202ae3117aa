"""The coupled oscillatory RNN (Rusch & Mishra, ICLR 2021): `CoRNNCell`, `NoisyCoRNNCell`.

The coRNN is a network of damped, driven, coupled oscillators,

    y'' = a(W y + W_z y' + V u + b) - gamma y - epsilon y',

written as a first-order system in the position `y` and the velocity `z = y'` and discretized
implicit-explicit (coRNN paper, eq. 3): the damping `epsilon z` is taken at the new step,
everything else at the old one,

    z_n = z_{n-1} + dt (a(W y_{n-1} + W_z z_{n-1} + V u_n + b) - gamma y_{n-1} - epsilon z_n),
    y_n = y_{n-1} + dt z_n.

The implicit term is solved in closed form, `z_n = (z_{n-1} + dt (a(...) - gamma y_{n-1}))
/ (1 + dt epsilon)`, which is one explicit step `z_n = z_{n-1} + dt acc` with the effective
acceleration

    acc = (a(W y_{n-1} + W_z z_{n-1} + V u_n + b) - gamma y_{n-1} - epsilon z_{n-1})
          / (1 + dt epsilon).

That is how the cell reuses the scheme and noise pieces of `SDECell`: the velocity is
advanced by the cell's scheme with the drift `z -> acc` (the `step` contract), then
`y_n = y_{n-1} + dt z_n`. So the
noisy cell (training mode, `scheme="euler_maruyama"`) is

    z_n = z_{n-1} + dt acc + (additive + multiplicative * acc) sqrt(dt) xi,    xi ~ N(0, I),
    y_n = y_{n-1} + dt z_n,

noise on the velocity only (the position integrates it), and in inference mode it is exactly
the deterministic coRNN. The reference code of the coRNN paper takes the damping explicitly
(`acc = a(...) - gamma y_{n-1} - epsilon z_{n-1}`, no division); this cell follows the
paper's eq. 3 by default, and the reference code with `implicit_damping=False`.

`W`, `W_z`, `V`, `b` are cast to the compute dtype and `[W; W_z]` stacked once per sequence
(the pre-loop hook of `keras.layers.RNN`), so a step is one matmul `[y | z] @ [W; W_z]` plus
the input matmul.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_nrnn.cells.base import SDECell
from keras_nrnn.registry import register_cell
from keras_nrnn.validation import check_bool, check_non_negative, get_activation

__all__ = ["CoRNNCell", "NoisyCoRNNCell"]


@keras.saving.register_keras_serializable(package="keras_nrnn")
class CoRNNCell(SDECell):
    """Cell of the coupled oscillatory RNN (coRNN), state `[y, z]` (position, velocity).

    One step (see the module docstring for the derivation):

        acc = (a(y W + z W_z + u V + b) - gamma y - epsilon z) / (1 + dt epsilon)
        z <- z + dt acc
        y <- y + dt z

    (no division by `1 + dt epsilon` with `implicit_damping=False`). The output is the position
    `y`; the state is the list `[y, z]`, so `state_size` is `[units, units]` and
    `keras.layers.RNN(..., return_state=True)` returns both parts. Use inside `keras.layers.RNN`
    (the sequence layer `SDERNN` runs single-state cells only). Defaults are those of the coRNN
    authors' sequential-MNIST run (`dt=0.042, gamma=2.7, epsilon=4.7`).

    Args:
        units: number of oscillators (size of `y` and of `z`), > 0.
        dt: time step, > 0 (the initial value if `learnable_dt` is set).
        gamma: stiffness (restoring force `- gamma y`), >= 0.
        epsilon: damping (`- epsilon y'`), >= 0.
        implicit_damping: True (default) takes the damping at the new step (the paper's
            eq. 3, division by `1 + dt epsilon`); False takes it at the old step, as the
            coRNN reference code does.
        activation: activation `a` (default `"tanh"`).
        learnable_dt: `"none"` (default), `"scalar"` or `"per_unit"`.
        scheme: `"euler_maruyama"` (default), `"tamed"` or `"milstein"`; it advances the
            velocity `z` with the acceleration `acc`.
        use_bias: whether the drive has the bias `b`.
        kernel_initializer: initializer of the input kernel `V`, shape `(features, units)`.
        recurrent_initializer: initializer of `W` and `W_z`, each `(units, units)`.
        bias_initializer: initializer of `b`.
        kernel_regularizer: regularizer of `V`.
        recurrent_regularizer: regularizer of `W` and `W_z`.
        bias_regularizer: regularizer of `b`.
        kernel_constraint: constraint of `V`.
        recurrent_constraint: constraint of `W` and `W_z`.
        bias_constraint: constraint of `b`.
        **kwargs: the noise (`noise`, `additive_noise`, `multiplicative_noise`, `seed`, see
            `SDECell`) and base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor of shape `(batch, features)`, one time step.
        states: list `[y, z]` of two tensors of shape `(batch, units)`.
        training: Python bool; the noise (if any) is injected only when True.

    Example:

    >>> import numpy as np, keras
    >>> layer = keras.layers.RNN(CoRNNCell(8), return_state=True)
    >>> y, y_last, z_last = layer(np.ones((2, 5, 3), "float32"))
    >>> tuple(y.shape), tuple(z_last.shape)
    ((2, 8), (2, 8))
    >>> bool(np.array_equal(y, y_last))
    True
    """

    def __init__(
        self,
        units: int,
        dt: float = 0.042,
        gamma: float = 2.7,
        epsilon: float = 4.7,
        implicit_damping: bool = True,
        activation: Any = "tanh",
        learnable_dt: str | None = None,
        scheme: str = "euler_maruyama",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        recurrent_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        recurrent_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(units=units, dt=dt, learnable_dt=learnable_dt, scheme=scheme, **kwargs)
        self.gamma = check_non_negative("gamma", gamma)
        self.epsilon = check_non_negative("epsilon", epsilon)
        self.implicit_damping = check_bool("implicit_damping", implicit_damping)
        self.activation = get_activation(activation)
        self.use_bias = check_bool("use_bias", use_bias)
        self._set_keras_objects(
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint,
            bias_constraint=bias_constraint,
        )
        self.state_size = [self.units, self.units]
        self.output_size = self.units

    def build_drift(self, input_dim: int) -> None:
        self.kernel = self._add_input_kernel(input_dim)
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel",
            shape=(self.units, self.units),
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        self.velocity_kernel = self.add_weight(
            name="velocity_kernel",
            shape=(self.units, self.units),
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        self.bias = self._add_bias()

    def precompute(self) -> dict:
        dtype = self.compute_dtype
        return {
            # Two matmuls per step, y W + z W_z: a fused [y | z] @ [W; W_z] needs a
            # concatenation per step and slices in its gradient, which cost more than they
            # save (as measured for the Lipschitz cell, docs/performance.md).
            "recurrent_kernel": ops.cast(self.recurrent_kernel, dtype),
            "velocity_kernel": ops.cast(self.velocity_kernel, dtype),
            "kernel": ops.cast(self.kernel, dtype),
            "bias": None if self.bias is None else ops.cast(self.bias, dtype),
            "dt": self.step_size(),
        }

    def project_inputs(self, inputs, cache: dict):
        """`u V + b` for one step `(batch, features)` or a sequence `(batch, time, features)`."""
        projected = ops.matmul(inputs, cache["kernel"])
        if cache["bias"] is not None:
            projected = projected + cache["bias"]
        return projected

    def acceleration_projected(self, projected, y, z, cache: dict):
        """The effective acceleration `acc` of the implicit-explicit step (module docstring).

        Args:
            projected: `project_inputs(u)`, shape `(batch, units)`.
            y: positions, shape `(batch, units)`.
            z: velocities, shape `(batch, units)`.
            cache: the per-sequence tensors of `precompute()`.

        Returns:
            `(a(y W + z W_z + u V + b) - gamma y - epsilon z) / (1 + dt epsilon)`, without
            the division if `implicit_damping` is False.
        """
        dt = cache["dt"]
        drive = self.activation(
            ops.matmul(y, cache["recurrent_kernel"])
            + ops.matmul(z, cache["velocity_kernel"])
            + projected
        )
        acc = drive - self.gamma * y - self.epsilon * z
        if self.epsilon == 0.0 or not self.implicit_damping:
            return acc
        return acc / (1.0 + dt * self.epsilon)

    def drift_projected(self, projected, h, cache: dict):
        raise NotImplementedError(
            f"{type(self).__name__} has a two-part state [y, z]; its update is not "
            "h + dt f(h, x). Use `call` (or `acceleration_projected` for the velocity's drift)."
        )

    def step(self, projected, states: list, cache: dict, draws: tuple | None):
        """The velocity advanced by the scheme with drift `acc`, then `y <- y + dt z`."""
        y, z = states
        dt = cache["dt"]

        def acceleration(velocity):
            return self.acceleration_projected(projected, y, velocity, cache)

        z_new = self.integrator.step(z, acceleration, dt, self.noise, draws)
        y_new = y + dt * z_new
        return y_new, [y_new, z_new]

    def get_initial_state(self, batch_size=None):
        return [
            ops.zeros((batch_size, self.units), dtype=self.compute_dtype),
            ops.zeros((batch_size, self.units), dtype=self.compute_dtype),
        ]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            gamma=self.gamma,
            epsilon=self.epsilon,
            implicit_damping=self.implicit_damping,
            activation=keras.activations.serialize(self.activation),
            use_bias=self.use_bias,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_nrnn")
class NoisyCoRNNCell(CoRNNCell):
    """The coRNN with the Noisy RNN's noise injected into the velocity update.

    In training mode (`scheme="euler_maruyama"`), with the effective acceleration
    `acc = (a(y W + z W_z + u V + b) - gamma y - epsilon z) / (1 + dt epsilon)` (no division
    with `implicit_damping=False`),

        z <- z + dt acc + (additive_noise + multiplicative_noise * acc) sqrt(dt) xi,
        y <- y + dt z,

    `xi ~ N(0, I)` drawn fresh at every step from the cell's seeded
    `keras.random.SeedGenerator`: the noise model and scheme of the Noisy RNN applied to the
    velocity, so the robustness given by noise can be compared across drifts. In inference
    mode (`training` False or absent) there is no noise and no random op: the cell is
    exactly `CoRNNCell`.

    The same class as its drift's (every argument, including `noise=`), kept under this name
    for version 0.1 code and files.

    Example:

    >>> NoisyCoRNNCell(8, additive_noise=0.1, seed=1).state_size  # noise on the velocity
    [8, 8]
    """


register_cell(
    CoRNNCell,
    NoisyCoRNNCell,
    model="cornn",
    noisy_model="noisy_cornn",
    label="coRNN",
    noisy_label="Noisy coRNN",
    example={"units": 8, "dt": 0.1},
)
