"""The Antisymmetric RNN (Chang et al., ICLR 2019): `AntisymmetricCell`, `NoisyAntisymmetricCell`.

Update (Chang et al., eq. 7), written as one Euler step of the drift `f`:

    h <- h + dt f(h, x),    f(h, x) = a(W h + V x + b),    W = M - M^T - gamma I,

with a trainable square matrix `M`, a small diffusion `gamma >= 0` and `a = tanh` by
default. `W + gamma I` is skew-symmetric, so the eigenvalues of the Jacobian of the
undamped ODE lie on the imaginary axis. This is the Lipschitz RNN form of the Noisy RNN paper
with `beta = 1` and no `A h` term; the paper trains it as a baseline with `dt = 0.01`,
`gamma = 0.0001` and learning rate 0.002. `W` is formed once per sequence (the pre-loop
hook of `keras.layers.RNN`, see `docs/noise-and-randomness.md`), never once per step.

`NoisyAntisymmetricCell` relates to `AntisymmetricCell` as `NoisyLipschitzCell` to
`LipschitzCell`: in training mode the scheme adds `(additive + multiplicative f) sqrt(dt) xi`
(paper eq. 5); in inference mode it is the deterministic cell.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_nrnn.cells.base import SDECell
from keras_nrnn.parametrization import lipschitz_matrix
from keras_nrnn.registry import register_cell
from keras_nrnn.validation import check_bool, check_non_negative, get_activation

__all__ = ["AntisymmetricCell", "NoisyAntisymmetricCell"]


@keras.saving.register_keras_serializable(package="keras_nrnn")
class AntisymmetricCell(SDECell):
    """Cell of the Antisymmetric RNN: `h <- h + dt a((M - M^T - gamma I) h + V x + b)`.

    `W = M - M^T - gamma I` is formed from the trainable matrix `M` once per sequence
    (with `keras_nrnn.parametrization.lipschitz_matrix(M, beta=1, gamma)`). `M` starts from
    `N(0, (init_std / units)^2)`, as the Lipschitz RNN's matrices do (the paper trains this
    baseline with its Lipschitz RNN code). Use inside `keras.layers.RNN`; all of its options
    (`return_sequences`, `return_state`, `go_backwards`, `stateful`, masking, `unroll`) work.

    Args:
        units: size of the hidden state, > 0.
        dt: the step, Chang et al.'s epsilon, > 0 (default 0.01, the paper's value; the
            initial value if `learnable_dt` is set).
        gamma: diffusion (damping) of `W`, >= 0 (default 0.0001, the paper's value).
        activation: activation `a` (default `"tanh"`).
        init_std: `M` starts from `N(0, (init_std / units)^2)`, >= 0.
        learnable_dt: `"none"` (default), `"scalar"` or `"per_unit"`.
        scheme: `"euler_maruyama"` (default), `"tamed"` or `"milstein"`.
        use_bias: whether the drift has the bias `b`.
        kernel_initializer: initializer of the input kernel `V`.
        bias_initializer: initializer of `b`.
        kernel_regularizer: regularizer of `V`.
        recurrent_regularizer: regularizer of `M`.
        bias_regularizer: regularizer of `b`.
        kernel_constraint: constraint of `V`.
        bias_constraint: constraint of `b`.
        **kwargs: the noise (`noise`, `additive_noise`, `multiplicative_noise`, `seed`, see
            `SDECell`) and base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor of shape `(batch, features)`, one time step.
        states: list with one tensor of shape `(batch, units)`.
        training: Python bool; the noise (if any) is injected only when True.

    Example:

    >>> import numpy as np, keras
    >>> cell = AntisymmetricCell(8, dt=0.01, gamma=0.0001)
    >>> layer = keras.layers.RNN(cell)
    >>> tuple(layer(np.zeros((2, 5, 3), "float32")).shape)
    (2, 8)
    >>> w = np.asarray(cell.recurrent_matrix())
    >>> bool(np.allclose(w + 0.0001 * np.eye(8), -(w + 0.0001 * np.eye(8)).T))
    True
    """

    def __init__(
        self,
        units: int,
        dt: float = 0.01,
        gamma: float = 0.0001,
        activation: Any = "tanh",
        init_std: float = 0.1,
        learnable_dt: str | None = None,
        scheme: str = "euler_maruyama",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        recurrent_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(units=units, dt=dt, learnable_dt=learnable_dt, scheme=scheme, **kwargs)
        self.gamma = check_non_negative("gamma", gamma)
        self.init_std = check_non_negative("init_std", init_std)
        self.activation = get_activation(activation)
        self.use_bias = check_bool("use_bias", use_bias)
        self._set_keras_objects(
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
        )

    def build_drift(self, input_dim: int) -> None:
        self.kernel = self._add_input_kernel(input_dim)
        self.m_w = self.add_weight(
            name="m_w",
            shape=(self.units, self.units),
            initializer=keras.initializers.RandomNormal(stddev=self.init_std / self.units),
            regularizer=self.recurrent_regularizer,
        )
        self.bias = self._add_bias()

    def recurrent_matrix(self):
        """`W = M - M^T - gamma I` as a tensor in the compute dtype."""
        return lipschitz_matrix(ops.cast(self.m_w, self.compute_dtype), 1.0, self.gamma)

    def precompute(self) -> dict:
        dtype = self.compute_dtype
        return {
            "recurrent_kernel": ops.transpose(self.recurrent_matrix()),
            "kernel": ops.cast(self.kernel, dtype),
            "bias": None if self.bias is None else ops.cast(self.bias, dtype),
            "dt": self.step_size(),
        }

    def project_inputs(self, inputs, cache: dict):
        """`V x + b` for one step `(batch, features)` or a sequence `(batch, time, features)`."""
        projected = ops.matmul(inputs, cache["kernel"])
        if cache["bias"] is not None:
            projected = projected + cache["bias"]
        return projected

    def drift_projected(self, projected, h, cache: dict):
        return self.activation(ops.matmul(h, cache["recurrent_kernel"]) + projected)

    def drift_matrices_numpy(self) -> dict[str, np.ndarray]:
        """The trained drift as numpy arrays (`W`, `V`, `b`, `dt`), for export and tests."""
        dt = self.dt if self.dt_variable is None else self.dt_variable
        return {
            "W": np.asarray(ops.convert_to_numpy(self.recurrent_matrix())),
            "V": np.asarray(ops.convert_to_numpy(self.kernel)),
            "b": np.zeros(self.units, "float32")
            if self.bias is None
            else np.asarray(ops.convert_to_numpy(self.bias)),
            "dt": np.asarray(ops.convert_to_numpy(dt)),
        }

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            gamma=self.gamma,
            activation=keras.activations.serialize(self.activation),
            init_std=self.init_std,
            use_bias=self.use_bias,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_nrnn")
class NoisyAntisymmetricCell(AntisymmetricCell):
    """The Antisymmetric RNN drift with the Noisy RNN's noise injection.

    In training mode the update is the paper's eq. 5 with the antisymmetric drift,

        h <- h + dt f(h, x) + (additive_noise + multiplicative_noise * f(h, x)) sqrt(dt) xi,

    `f(h, x) = a((M - M^T - gamma I) h + V x + b)`, `xi ~ N(0, I)` drawn fresh at every step
    from the cell's seeded `keras.random.SeedGenerator`. In inference mode (`training` False
    or absent) there is no noise and no random op: the cell is exactly `AntisymmetricCell`.

    The same class as its drift's (every argument, including `noise=`), kept under this name
    for version 0.1 code and files.

    Example:

    >>> NoisyAntisymmetricCell(8, additive_noise=0.1, seed=1).noise
    DiagonalNoise(additive=0.1, multiplicative=0.0)
    """


register_cell(
    AntisymmetricCell,
    NoisyAntisymmetricCell,
    model="antisymmetric",
    noisy_model="noisy_antisymmetric",
    label="Antisymmetric RNN",
    noisy_label="Noisy Antisymmetric RNN",
    example={"units": 8, "dt": 0.1},
)
