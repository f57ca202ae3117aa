"""The expRNN (Lezcano-Casado & Martinez-Rubio, ICML 2019): `ExpRNNCell`, `NoisyExpRNNCell`.

The expRNN is a discrete map with an orthogonal recurrent matrix,

    h_t = modrelu(B x_t + exp(S) h_{t-1}),    S = M - M^T,    modrelu(z) = sign(z) relu(|z| + b),

where `M` is trainable, `S` is skew-symmetric so `exp(S)` is orthogonal, and `b` is a
trainable per-unit bias. `exp(S)` is computed once per sequence (the pre-loop hook of
`keras.layers.RNN`, see `docs/noise-and-randomness.md`) by `expm`, a scaling-and-squaring
Taylor approximant written with `keras.ops` (Keras has no matrix exponential), in float32
even under a mixed precision policy so that the matrix stays orthogonal to float32 accuracy.

It is not an Euler step of an ODE. To give it the Noisy RNN's noise through `SDECell`, the
map is read as one step of size `dt` of the drift

    f(h, x) = (map(h, x) - h) / dt,    map(h, x) = modrelu(B x + exp(S) h),

so that `h + dt f = map(h, x)` for every `dt`: the deterministic update is the expRNN map
whatever `dt` is, and `dt` only sets the time scale of the noise. The noisy cell in training
mode (`scheme="euler_maruyama"`, paper eq. 5 with this drift) is

    h_t = map(h_{t-1}, x_t) + (additive + multiplicative * f) sqrt(dt) xi,    xi ~ N(0, I),

which for the default `dt = 1` is `map + (additive + multiplicative * (map - h_{t-1})) xi`.
In inference mode (schemes `"euler_maruyama"` and `"milstein"`) the cell returns `map(h, x)`
itself, not `h + dt * ((map - h) / dt)`, so it is exactly the expRNN map, with no rounding
difference. `scheme="tamed"` damps the increment `map - h` by `1 / (1 + ||map - h||)` and so
is a different (contracted) model, also at inference. Leave `learnable_dt` at `"none"`: a
learnable `dt` would only change the noise level.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_nrnn.cells.base import SDECell
from keras_nrnn.parametrization import skew_symmetric
from keras_nrnn.registry import register_cell
from keras_nrnn.validation import get_keras_object

__all__ = [
    "SKEW_INITIALIZERS",
    "ExpRNNCell",
    "NoisyExpRNNCell",
    "SkewBlockInitializer",
    "expm",
    "modrelu",
]

#: Initializations of `M` from the expRNN code, by name (see `ExpRNNCell`).
SKEW_INITIALIZERS = ("henaff", "cayley")

# Scaling and squaring: the matrix is scaled by 2^-s until its 1-norm is <= _THETA, where
# the Taylor polynomial of degree _ORDER has a remainder below 1 / (_ORDER + 1)! = 1.6e-10,
# far below float32 resolution; at most _MAX_SQUARINGS squarings (1-norms up to 65536).
_ORDER = 12
_THETA = 1.0
_MAX_SQUARINGS = 16


def expm(a):
    """Matrix exponential of a square matrix, with `keras.ops` (differentiable, XLA-friendly).

    Scaling and squaring: `exp(A) = exp(A / 2^s)^(2^s)` with `s` the smallest integer such
    that `||A / 2^s||_1 <= 1`, and `exp(A / 2^s)` by its Taylor polynomial of degree 12
    (remainder < 2e-10). The number of squarings depends on the value of `A`; it is applied
    with a fixed loop of 16 guarded squarings, so the graph has no data-dependent loop (XLA
    and the gradient of `tf.while_loop` need none). Norms above 2^16 are not scaled enough
    and lose accuracy. Compute it in float32 or float64.

    Args:
        a: tensor of shape `(n, n)`.

    Returns:
        `exp(a)`, a tensor of shape `(n, n)` and the dtype of `a`.

    Example:

    >>> import numpy as np
    >>> s = np.array([[0.0, np.pi / 2], [-np.pi / 2, 0.0]], "float32")  # rotation by 90 degrees
    >>> bool(np.allclose(np.asarray(expm(s)), [[0.0, 1.0], [-1.0, 0.0]], atol=1e-6))
    True
    """
    a = ops.convert_to_tensor(a)
    if len(a.shape) != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"`expm` expects a square matrix; received shape {tuple(a.shape)}.")
    eye = ops.eye(a.shape[0], dtype=a.dtype)
    norm = ops.stop_gradient(ops.max(ops.sum(ops.abs(a), axis=0)))
    squarings = ops.ceil(ops.log2(ops.maximum(norm / _THETA, 1.0)))
    squarings = ops.minimum(squarings, float(_MAX_SQUARINGS))
    x = a * ops.cast(ops.power(2.0, -squarings), a.dtype)
    # Horner: I + x (I + x/2 (I + x/3 (... (I + x/12)))).
    result = eye
    for k in range(_ORDER, 0, -1):
        result = eye + ops.matmul(x, result) / float(k)
    for i in range(_MAX_SQUARINGS):
        result = ops.where(float(i) < squarings, ops.matmul(result, result), result)
    return result


def modrelu(z, bias):
    """`sign(z) relu(|z| + bias)`: the modReLU nonlinearity of the expRNN (real case).

    Args:
        z: tensor of pre-activations.
        bias: per-unit bias, broadcast against `z`.

    Returns:
        Tensor of the shape of `z`.

    Example:

    >>> import numpy as np
    >>> np.asarray(modrelu(np.array([-2.0, 0.5, 3.0], "float32"), -1.0)).tolist()
    [-1.0, 0.0, 2.0]
    """
    return ops.sign(z) * ops.relu(ops.abs(z) + bias)


@keras.saving.register_keras_serializable(package="keras_nrnn")
class SkewBlockInitializer(keras.initializers.Initializer):
    """Initializer of the expRNN's `M` with 2x2 rotation blocks, so `exp(M - M^T)` is a
    block-diagonal rotation (the "henaff" and "cayley" initializations of the expRNN code).

    `M[2i, 2i+1] = theta_i`, every other entry zero, so `S = M - M^T` has the blocks
    `[[0, theta_i], [-theta_i, 0]]` (the last unit of an odd `units` gets none):

    - `"henaff"`: `theta_i ~ U(-pi, pi)`, rotation angles uniform on the circle;
    - `"cayley"`: `theta_i = -tan(u_i / 2)`, `u_i ~ U(0, pi / 2)`, i.e. theta in [-1, 0].

    Args:
        kind: `"henaff"` or `"cayley"`.
        seed: int or None.

    Example:

    >>> import numpy as np
    >>> m = np.asarray(SkewBlockInitializer("henaff", seed=0)((4, 4)))
    >>> int(np.count_nonzero(m)), bool(np.abs(m).max() <= np.pi)
    (2, True)
    """

    def __init__(self, kind: str = "henaff", seed: int | None = None) -> None:
        if kind not in SKEW_INITIALIZERS:
            raise ValueError(
                f"Argument `kind` must be one of {SKEW_INITIALIZERS}; received kind={kind!r}."
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Argument `seed` must be an int or None; received seed={seed!r}.")
        self.kind = kind
        self.seed = seed

    def __call__(self, shape, dtype=None):
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"SkewBlockInitializer needs a square shape; received {shape}.")
        n = int(shape[0])
        dtype = dtype or "float32"
        blocks = n // 2
        if blocks == 0:
            return ops.zeros((n, n), dtype=dtype)
        if self.kind == "henaff":
            theta = keras.random.uniform(
                (blocks,), minval=-math.pi, maxval=math.pi, dtype=dtype, seed=self.seed
            )
        else:
            u = keras.random.uniform(
                (blocks,), minval=0.0, maxval=math.pi / 2, dtype=dtype, seed=self.seed
            )
            theta = -ops.tan(u / 2.0)
        rows = np.arange(blocks) * 2
        indices = np.stack([rows, rows + 1], axis=1).astype("int32")
        return ops.scatter(indices, theta, (n, n))

    def get_config(self) -> dict:
        return {"kind": self.kind, "seed": self.seed}


def _get_recurrent_initializer(value: Any):
    if isinstance(value, str) and value in SKEW_INITIALIZERS:
        return SkewBlockInitializer(value)
    try:
        init = keras.initializers.get(value)
    except (ValueError, TypeError):
        init = None
    if init is None:
        raise ValueError(
            f"Argument `recurrent_initializer` must be one of {SKEW_INITIALIZERS} or a Keras "
            f"initializer; received recurrent_initializer={value!r}."
        )
    return init


@keras.saving.register_keras_serializable(package="keras_nrnn")
class ExpRNNCell(SDECell):
    """Cell of the exponential RNN: `h <- modrelu(x B + h exp(S)^T)`, `S = M - M^T`.

    `exp(S)` is orthogonal; it is formed from the trainable `M` once per sequence with
    `expm` (in float32) and frozen into a constant by `freeze()` for export. The input
    kernel `B` has no bias: the modReLU bias `b` plays that role, as in the expRNN code. See
    the module docstring for how the map is read as a step of size `dt` of a drift so
    that the noise of the Noisy RNN applies to it. Use inside `keras.layers.RNN`; all of its
    options work.

    Args:
        units: size of the hidden state, > 0.
        dt: time scale of the noise, > 0 (default 1). The deterministic update is the map
            for every `dt`; the noise of one step is `(additive sqrt(dt) + multiplicative
            (map - h) / sqrt(dt)) xi`.
        recurrent_initializer: initializer of `M`: `"henaff"` (default; block rotations with
            angles uniform in [-pi, pi], the default of most expRNN scripts), `"cayley"`
            (the other option of the expRNN code), or any Keras initializer.
        kernel_initializer: initializer of the input kernel `B` (default `"he_normal"`, the
            Kaiming normal initialization of the expRNN code).
        bias_initializer: initializer of the modReLU bias `b`; `None` (default) gives
            `RandomUniform(-0.01, 0.01)`, as in the expRNN code.
        learnable_dt: `None` or `"none"` (default: fixed `dt`), `"scalar"` or `"per_unit"`.
        scheme: `"euler_maruyama"` (default), `"tamed"` or `"milstein"`.
        kernel_regularizer: regularizer of `B`.
        recurrent_regularizer: regularizer of `M`.
        bias_regularizer: regularizer of `b`.
        kernel_constraint: constraint of `B`.
        bias_constraint: constraint of `b`.
        **kwargs: the noise (`noise`, `additive_noise`, `multiplicative_noise`, `seed`, see
            `SDECell`) and base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor of shape `(batch, features)`, one time step.
        states: list with one tensor of shape `(batch, units)`.
        training: Python bool; the noise (if any) is injected only when True.

    Example:

    >>> import numpy as np, keras
    >>> cell = ExpRNNCell(8)
    >>> layer = keras.layers.RNN(cell)
    >>> tuple(layer(np.ones((2, 5, 3), "float32")).shape)
    (2, 8)
    >>> q = np.asarray(cell.recurrent_matrix())
    >>> bool(np.abs(q.T @ q - np.eye(8)).max() < 1e-5)  # orthogonal
    True
    """

    def __init__(
        self,
        units: int,
        dt: float = 1.0,
        recurrent_initializer: Any = "henaff",
        kernel_initializer: Any = "he_normal",
        bias_initializer: Any = None,
        learnable_dt: str | None = None,
        scheme: str = "euler_maruyama",
        kernel_regularizer: Any = None,
        recurrent_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(units=units, dt=dt, learnable_dt=learnable_dt, scheme=scheme, **kwargs)
        self.recurrent_initializer = _get_recurrent_initializer(recurrent_initializer)
        self._set_keras_objects(
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
        )
        self.bias_initializer = (
            keras.initializers.RandomUniform(-0.01, 0.01)
            if bias_initializer is None
            else get_keras_object("bias_initializer", bias_initializer)
        )

    def build_drift(self, input_dim: int) -> None:
        self.kernel = self._add_input_kernel(input_dim)
        self.m = self.add_weight(
            name="m",
            shape=(self.units, self.units),
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
        )
        self.bias = self.add_weight(
            name="bias",
            shape=(self.units,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    def skew_matrix(self):
        """`S = M - M^T` in the variable dtype (float32 under mixed precision)."""
        return skew_symmetric(ops.convert_to_tensor(self.m))

    def recurrent_matrix(self):
        """The orthogonal `exp(M - M^T)`, computed in the variable dtype."""
        return expm(self.skew_matrix())

    def precompute(self) -> dict:
        dtype = self.compute_dtype
        return {
            "recurrent_kernel": ops.cast(ops.transpose(self.recurrent_matrix()), dtype),
            "kernel": ops.cast(self.kernel, dtype),
            "bias": ops.cast(self.bias, dtype),
            "dt": self.step_size(),
        }

    def project_inputs(self, inputs, cache: dict):
        """`x B` for one step `(batch, features)` or a sequence `(batch, time, features)`."""
        return ops.matmul(inputs, cache["kernel"])

    def map_projected(self, projected, h, cache: dict):
        """The expRNN map `modrelu(x B + h exp(S)^T)` given `projected = x B`."""
        return modrelu(projected + ops.matmul(h, cache["recurrent_kernel"]), cache["bias"])

    def drift_projected(self, projected, h, cache: dict):
        """`f = (map(h, x) - h) / dt`, so that `h + dt f` is the map."""
        return (self.map_projected(projected, h, cache) - h) / cache["dt"]

    def step(self, projected, states: list, cache: dict, draws: tuple | None):
        """Without noise and with a scheme whose noise-free update is `h + dt f`, the map
        itself (no rounding difference); otherwise the scheme's step of `f`."""
        if draws is None and self.integrator.noise_free_is_euler:
            mapped = self.map_projected(projected, states[0], cache)
            return mapped, [mapped]
        return super().step(projected, states, cache, draws)

    def get_config(self) -> dict:
        config = super().get_config()
        init = self.recurrent_initializer
        config.update(
            recurrent_initializer=init.kind
            if isinstance(init, SkewBlockInitializer) and init.seed is None
            else keras.initializers.serialize(init),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="keras_nrnn")
class NoisyExpRNNCell(ExpRNNCell):
    """The expRNN map with the Noisy RNN's noise injection.

    With `map(h, x) = modrelu(x B + h exp(S)^T)` and the drift `f = (map(h, x) - h) / dt`
    (module docstring), training mode with `scheme="euler_maruyama"` gives

        h <- map(h, x) + (additive_noise + multiplicative_noise * f) sqrt(dt) xi,

    i.e. `map(h, x) + (additive_noise + multiplicative_noise * (map(h, x) - h)) xi` for the
    default `dt = 1`, with `xi ~ N(0, I)` drawn fresh at every step from the cell's seeded
    `keras.random.SeedGenerator`. In inference mode (`training` False or absent) there is no
    noise and no random op: the cell is exactly `ExpRNNCell`.

    The same class as its drift's (every argument, including `noise=`), kept under this name
    for version 0.1 code and files.

    Example:

    >>> NoisyExpRNNCell(8, multiplicative_noise=0.1).dt  # dt only scales the noise
    1.0
    """


register_cell(
    ExpRNNCell,
    NoisyExpRNNCell,
    model="exprnn",
    noisy_model="noisy_exprnn",
    label="expRNN",
    noisy_label="Noisy expRNN",
    example={"units": 8},
)
