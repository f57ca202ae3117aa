"""The Lipschitz RNN drift and its cells: `LipschitzCell` and `NoisyLipschitzCell`.

Drift (paper eq. 3): `f(h, x) = A h + a(W h + U x + b)` with
`A = (1 - beta)(M_A + M_A^T) + beta (M_A - M_A^T) - gamma_a I` and the same for `W`
(appendix eq. 143-144). Without noise one step is `h + dt f(h, x)`; with eq. 4's noise the
training step adds `(additive + multiplicative f) sqrt(dt) xi` (eq. 5).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_nrnn.cells.base import SDECell
from keras_nrnn.parametrization import lipschitz_matrix
from keras_nrnn.registry import register_cell
from keras_nrnn.validation import check_bool, check_in_range, check_non_negative, get_activation

__all__ = ["LipschitzCell", "NoisyLipschitzCell"]


@keras.saving.register_keras_serializable(package="keras_nrnn")
class LipschitzCell(SDECell):
    """The Lipschitz RNN drift: `h <- h + dt (A h + a(W h + U x + b))`, noisy with `noise=`.

    `A` and `W` are formed from trainable square matrices `M_A`, `M_W` with the Lipschitz
    parametrization (see module docstring), once per sequence. Use inside
    `keras.layers.RNN`; all of its options (`return_sequences`, `return_state`,
    `go_backwards`, `stateful`, masking, `unroll`) work.

    Args:
        units: size of the hidden state, > 0.
        dt: Euler step delta, > 0 (initial value when `learnable_dt` is set).
        beta: skew level of the parametrization, in [0, 1].
        gamma_a: damping of `A`, >= 0.
        gamma_w: damping of `W`, >= 0.
        activation: Lipschitz activation `a` (default `"tanh"`).
        init_std: `M_A`, `M_W` start from `N(0, (init_std / units)^2)`, >= 0.
        learnable_dt: `"none"` (default), `"scalar"` or `"per_unit"`.
        scheme: `"euler_maruyama"` (default), `"tamed"` or `"milstein"`.
        use_bias: whether the drift has the bias `b`.
        kernel_initializer: initializer of the input kernel `U`.
        bias_initializer: initializer of `b`.
        kernel_regularizer: regularizer of `U`.
        recurrent_regularizer: regularizer of `M_A` and `M_W`.
        bias_regularizer: regularizer of `b`.
        kernel_constraint: constraint of `U`.
        bias_constraint: constraint of `b`.
        **kwargs: the noise (`noise`, `additive_noise`, `multiplicative_noise`, `seed`, see
            `SDECell`) and base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor of shape `(batch, features)`, one time step.
        states: list with one tensor of shape `(batch, units)`.
        training: Python bool; the noise (if any) is injected only when True.

    Example:

    >>> import numpy as np, keras
    >>> layer = keras.layers.RNN(LipschitzCell(8, dt=0.1, beta=0.75))
    >>> tuple(layer(np.zeros((2, 5, 3), "float32")).shape)
    (2, 8)
    """

    def __init__(
        self,
        units: int,
        dt: float = 0.1,
        beta: float = 0.75,
        gamma_a: float = 0.001,
        gamma_w: float = 0.001,
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
        self.beta = check_in_range("beta", beta, 0.0, 1.0)
        self.gamma_a = check_non_negative("gamma_a", gamma_a)
        self.gamma_w = check_non_negative("gamma_w", gamma_w)
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
        recurrent_init = keras.initializers.RandomNormal(stddev=self.init_std / self.units)
        self.kernel = self._add_input_kernel(input_dim)
        self.m_a = self.add_weight(
            name="m_a",
            shape=(self.units, self.units),
            initializer=recurrent_init,
            regularizer=self.recurrent_regularizer,
        )
        self.m_w = self.add_weight(
            name="m_w",
            shape=(self.units, self.units),
            initializer=recurrent_init,
            regularizer=self.recurrent_regularizer,
        )
        self.bias = self._add_bias()

    def recurrent_matrices(self):
        """`(A, W)` as tensors in the compute dtype, formed from `M_A`, `M_W`."""
        dtype = self.compute_dtype
        a = lipschitz_matrix(ops.cast(self.m_a, dtype), self.beta, self.gamma_a)
        w = lipschitz_matrix(ops.cast(self.m_w, dtype), self.beta, self.gamma_w)
        return a, w

    def precompute(self) -> dict:
        a, w = self.recurrent_matrices()
        dtype = self.compute_dtype
        return {
            # Two matmuls per step, h @ A^T and h @ W^T. One fused h @ [A^T | W^T] with two
            # slices was slower: 1.3x (noisy) to 1.8x (deterministic) for the training step
            # without XLA (the slices' gradients allocate and fill a zero (batch, 2 units)
            # each), 1.2x for noisy SDERNN with XLA (docs/performance.md).
            "recurrent_kernel_a": ops.transpose(a),
            "recurrent_kernel_w": ops.transpose(w),
            "kernel": ops.cast(self.kernel, dtype),
            "bias": None if self.bias is None else ops.cast(self.bias, dtype),
            "dt": self.step_size(),
        }

    def project_inputs(self, inputs, cache: dict):
        """`U x + b` for one step `(batch, features)` or a sequence `(batch, time, features)`."""
        projected = ops.matmul(inputs, cache["kernel"])
        if cache["bias"] is not None:
            projected = projected + cache["bias"]
        return projected

    def drift_projected(self, projected, h, cache: dict):
        recurrent = ops.matmul(h, cache["recurrent_kernel_w"]) + projected
        return ops.matmul(h, cache["recurrent_kernel_a"]) + self.activation(recurrent)

    def drift_matrices_numpy(self) -> dict[str, np.ndarray]:
        """The trained drift as numpy arrays (`A`, `W`, `U`, `b`, `dt`), for export and tests."""
        a, w = self.recurrent_matrices()
        dt = self.dt if self.dt_variable is None else self.dt_variable
        return {
            "A": np.asarray(ops.convert_to_numpy(a)),
            "W": np.asarray(ops.convert_to_numpy(w)),
            "U": np.asarray(ops.convert_to_numpy(self.kernel)),
            "b": np.zeros(self.units, "float32")
            if self.bias is None
            else np.asarray(ops.convert_to_numpy(self.bias)),
            "dt": np.asarray(ops.convert_to_numpy(dt)),
        }

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            beta=self.beta,
            gamma_a=self.gamma_a,
            gamma_w=self.gamma_w,
            activation=keras.activations.serialize(self.activation),
            init_std=self.init_std,
            use_bias=self.use_bias,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_nrnn")
class NoisyLipschitzCell(LipschitzCell):
    """The Noisy RNN cell (Lim et al. 2021): `LipschitzCell` with the noise arguments in front.

    The same class as `LipschitzCell` (every argument, including `noise=`), kept under the
    paper's name: with `additive_noise` / `multiplicative_noise` (or `noise=`) the training
    update is the paper's eq. 5,

        h <- h + dt f(h, x) + (additive_noise + multiplicative_noise * f(h, x)) sqrt(dt) xi,

    `xi ~ N(0, I)` from the cell's Brownian source, fresh at every step of every sequence; in
    inference mode (`training` False or absent) there is no noise and no random op.

    Example:

    >>> import numpy as np, keras
    >>> cell = NoisyLipschitzCell(8, dt=0.1, additive_noise=0.06, multiplicative_noise=0.03,
    ...                           seed=1)
    >>> layer = keras.layers.RNN(cell)
    >>> x = np.ones((2, 5, 3), "float32")
    >>> bool(np.allclose(layer(x), layer(x)))  # inference: deterministic
    True
    >>> bool(np.allclose(layer(x, training=True), layer(x)))  # training: noisy
    False
    """


register_cell(
    LipschitzCell,
    NoisyLipschitzCell,
    model="lipschitz",
    noisy_model="nrnn",
    label="Lipschitz RNN",
    noisy_label="NRNN",
    example={"units": 8, "dt": 0.2, "beta": 0.8},
)
