"""Input perturbations for robustness evaluation (Lim et al. 2021, section 7).

Applied to test inputs at inference, the same for every model under comparison:

- additive white noise: `x~ = x + dx`, `dx ~ N(0, sigma^2)`;
- multiplicative white noise: `x~ = x * dx`, `dx ~ N(1, sigma^2)`;
- salt and pepper: each value kept with probability `1 - alpha`, set to the data minimum with
  probability `alpha / 2` and to the data maximum with probability `alpha / 2`;
- fast gradient sign method (FGSM): `x~ = x + r * sign(grad_x loss(y, model(x)))`.

The three random kinds are numpy in / numpy out and draw from `numpy.random.default_rng(seed)`,
so a given `(x, strength, seed)` gives bit-identical inputs to every model, on any backend.
FGSM needs a gradient through the model: it runs with the TensorFlow backend (TensorFlow is
imported inside `fgsm` only) and raises `NotImplementedError` on other backends.

Integer inputs are promoted to float32; floating inputs keep their dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

__all__ = [
    "ECG_ROBUSTNESS_GRID",
    "KINDS",
    "MNIST_ROBUSTNESS_GRID",
    "additive_white_noise",
    "fgsm",
    "multiplicative_white_noise",
    "perturb",
    "robustness_grid",
    "salt_and_pepper",
]

KINDS = ("white_noise", "multiplicative_noise", "salt_and_pepper", "fgsm")

# The strengths of the paper's robustness tables: ECG Table 3 (white and multiplicative noise),
# extended with the salt-and-pepper and FGSM levels used for MNIST (Tables 1-2).
ECG_ROBUSTNESS_GRID: dict[str, tuple[float, ...]] = {
    "white_noise": (0.4, 0.8, 1.2),
    "multiplicative_noise": (0.4, 0.8, 1.2),
    "salt_and_pepper": (0.03, 0.05, 0.1),
    "fgsm": (0.01, 0.05, 0.1),
}
MNIST_ROBUSTNESS_GRID: dict[str, tuple[float, ...]] = {
    "white_noise": (0.1, 0.2, 0.3),
    "salt_and_pepper": (0.03, 0.05, 0.1),
    "fgsm": (0.01, 0.05, 0.1, 0.15),
}
_GRIDS = {"ecg": ECG_ROBUSTNESS_GRID, "mnist": MNIST_ROBUSTNESS_GRID}


def robustness_grid(task: str = "ecg") -> dict[str, tuple[float, ...]]:
    """Return the perturbation kinds and strengths evaluated for `task`.

    Args:
        task: `"ecg"` (white and multiplicative noise {0.4, 0.8, 1.2}, salt and pepper
            {0.03, 0.05, 0.1}, FGSM {0.01, 0.05, 0.1}) or `"mnist"` (white noise
            {0.1, 0.2, 0.3}, salt and pepper {0.03, 0.05, 0.1}, FGSM {0.01, 0.05, 0.1, 0.15}).

    Returns:
        A new dict `kind -> tuple of strengths`; each kind is a valid `perturb` kind.

    Example:

    >>> robustness_grid("ecg")["white_noise"]
    (0.4, 0.8, 1.2)
    """
    if task not in _GRIDS:
        raise ValueError(
            f"Argument `task` must be one of {sorted(_GRIDS)}; received task={task!r}."
        )
    return dict(_GRIDS[task])


# ----------------------------------------------------------------------------- validation


def _check_strength(name: str, value: Any, upper: float | None = None) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and value >= 0 and (upper is None or value <= upper)
    if not ok:
        rule = f"a number in [0, {upper:g}]" if upper is not None else "a finite number >= 0"
        raise ValueError(f"Argument `{name}` must be {rule}; received {name}={value!r}.")
    return value


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"Argument `seed` must be an integer >= 0; received seed={seed!r}.")
    return int(seed)


def _as_float_array(x: Any) -> np.ndarray:
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"Argument `x` must be a numeric array; received {type(x)}.") from e
    if np.issubdtype(x.dtype, np.floating):
        return x
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        return x.astype(np.float32)
    raise ValueError(f"Argument `x` must be a numeric array; received dtype {x.dtype}.")


# ----------------------------------------------------------------------------- random kinds


def additive_white_noise(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Add Gaussian white noise: `x + dx` with `dx ~ N(0, sigma^2)` i.i.d. per value.

    Args:
        x: input array, e.g. `(batch, timesteps, features)`.
        sigma: noise standard deviation, >= 0 (0 returns a copy of `x`).
        seed: integer >= 0; the same seed gives the same noise.

    Returns:
        A new array with the shape and floating dtype of `x`.

    Example:

    >>> x = np.zeros((2, 5, 1), "float32")
    >>> additive_white_noise(x, sigma=0.4, seed=0).shape
    (2, 5, 1)
    """
    x = _as_float_array(x)
    sigma = _check_strength("sigma", sigma)
    rng = np.random.default_rng(_check_seed(seed))
    return (x + sigma * rng.standard_normal(x.shape)).astype(x.dtype)


def multiplicative_white_noise(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Multiply by Gaussian white noise: `x * dx` with `dx ~ N(1, sigma^2)` i.i.d. per value.

    Args:
        x: input array.
        sigma: standard deviation of the factor around 1, >= 0 (0 returns a copy of `x`).
        seed: integer >= 0; the same seed gives the same noise.

    Returns:
        A new array with the shape and floating dtype of `x`.

    Example:

    >>> x = np.ones((2, 5, 1), "float32")
    >>> multiplicative_white_noise(x, sigma=0.0, seed=0).tolist() == x.tolist()
    True
    """
    x = _as_float_array(x)
    sigma = _check_strength("sigma", sigma)
    rng = np.random.default_rng(_check_seed(seed))
    return (x * (1.0 + sigma * rng.standard_normal(x.shape))).astype(x.dtype)


def salt_and_pepper(
    x: np.ndarray,
    alpha: float,
    seed: int,
    *,
    x_min: float | None = None,
    x_max: float | None = None,
) -> np.ndarray:
    """Salt-and-pepper noise: replace values by the data minimum or maximum.

    Each value independently is kept with probability `1 - alpha`, set to `x_min` with
    probability `alpha / 2` and to `x_max` with probability `alpha / 2`.

    Args:
        x: input array.
        alpha: fraction of values replaced, in [0, 1].
        seed: integer >= 0; the same seed replaces the same positions.
        x_min: "pepper" value; defaults to `x.min()` over the whole array passed in. Pass the
            dataset minimum explicitly when perturbing one batch at a time.
        x_max: "salt" value; defaults to `x.max()` over the whole array.

    Returns:
        A new array with the shape and floating dtype of `x`.

    Example:

    >>> x = np.linspace(-1.0, 1.0, 1000).reshape(10, 100, 1)
    >>> y = salt_and_pepper(x, alpha=0.1, seed=0)
    >>> set(np.unique(y[y != x]).tolist()) <= {-1.0, 1.0}
    True
    """
    x = _as_float_array(x)
    alpha = _check_strength("alpha", alpha, upper=1.0)
    rng = np.random.default_rng(_check_seed(seed))
    if (x_min is None or x_max is None) and x.size == 0:
        raise ValueError("Argument `x` is empty; pass `x_min` and `x_max` explicitly.")
    lo = float(np.min(x)) if x_min is None else float(x_min)
    hi = float(np.max(x)) if x_max is None else float(x_max)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(
            "Arguments `x_min` and `x_max` must be finite with x_min <= x_max; "
            f"received x_min={lo!r}, x_max={hi!r}."
        )
    u = rng.random(x.shape)
    out = x.copy()
    out[u < alpha / 2] = lo
    out[(u >= alpha / 2) & (u < alpha)] = hi
    return out


# ----------------------------------------------------------------------------- adversarial


def fgsm(
    x: np.ndarray,
    y: np.ndarray,
    model: keras.Model,
    loss: str | Callable[..., Any],
    r: float,
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """Fast gradient sign method: `x + r * sign(grad_x loss(y, model(x)))`.

    The model runs with `training=False` (a noisy cell is then deterministic). The gradient is
    taken of the summed loss of each batch, so each example's sign only depends on its own
    loss. Values whose gradient is exactly 0 are left unchanged.

    Args:
        x: input array.
        y: targets accepted by `loss`, with the same first axis as `x`.
        model: a built or buildable Keras model (any callable Keras layer).
        loss: a Keras loss name or callable `loss(y_true, y_pred)`; it must match the model's
            output, e.g. `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` for
            logits.
        r: step size, >= 0.
        batch_size: examples per gradient computation (> 0).

    Returns:
        A new array with the shape and floating dtype of `x`.

    Raises:
        NotImplementedError: when the Keras backend is not TensorFlow.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> x = np.ones((3, 4), "float32"); y = np.array([0, 1, 0])
    >>> loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> fgsm(x, y, model, loss, r=0.1).shape
    (3, 4)
    """
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            "fgsm needs input gradients and is implemented for the TensorFlow backend only; "
            f"the Keras backend is {keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow)."
        )
    import tensorflow as tf  # Lazy: the library itself never imports TensorFlow.

    x = _as_float_array(x)
    r = _check_strength("r", r)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"Argument `batch_size` must be an integer > 0; received batch_size={batch_size!r}."
        )
    y = np.asarray(y)
    if len(y) != len(x):
        raise ValueError(
            f"Arguments `x` and `y` must have the same length; received len(x)={len(x)}, "
            f"len(y)={len(y)}."
        )
    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    if not callable(loss_fn):
        raise ValueError(f"Argument `loss` must be a Keras loss or callable; received {loss!r}.")

    out = np.empty_like(x)
    for start in range(0, len(x), batch_size):
        xb = tf.convert_to_tensor(x[start : start + batch_size])
        yb = tf.convert_to_tensor(y[start : start + batch_size])
        with tf.GradientTape() as tape:
            tape.watch(xb)
            value = tf.reduce_sum(loss_fn(yb, model(xb, training=False)))
        grad = tape.gradient(value, xb)
        if grad is None:
            raise ValueError("Argument `loss` does not depend on the model input; no gradient.")
        step = (r * np.sign(grad.numpy())).astype(x.dtype)
        out[start : start + batch_size] = x[start : start + batch_size] + step
    return out


# ----------------------------------------------------------------------------- uniform API


def perturb(x: np.ndarray, kind: str, strength: float, seed: int = 0, **kwargs: Any) -> np.ndarray:
    """Apply one perturbation kind at one strength (the uniform entry point).

    Args:
        x: input array.
        kind: one of `KINDS`: `"white_noise"` (strength = sigma), `"multiplicative_noise"`
            (strength = sigma), `"salt_and_pepper"` (strength = alpha) or `"fgsm"`
            (strength = r).
        strength: the kind's strength parameter.
        seed: integer >= 0 for the random kinds (ignored by `"fgsm"`).
        **kwargs: `x_min`, `x_max` for `"salt_and_pepper"`; `y`, `model`, `loss` (required)
            and `batch_size` for `"fgsm"`.

    Returns:
        The perturbed array, same shape and floating dtype as `x`.

    Example:

    >>> x = np.zeros((4, 10, 1), "float32")
    >>> grid = robustness_grid("ecg")
    >>> outs = [perturb(x, "white_noise", s, seed=0) for s in grid["white_noise"]]
    >>> len(outs)
    3
    """
    allowed = {
        "white_noise": (),
        "multiplicative_noise": (),
        "salt_and_pepper": ("x_min", "x_max"),
        "fgsm": ("y", "model", "loss", "batch_size"),
    }
    if kind not in allowed:
        raise ValueError(f"Argument `kind` must be one of {list(KINDS)}; received kind={kind!r}.")
    unexpected = sorted(set(kwargs) - set(allowed[kind]))
    if unexpected:
        raise ValueError(
            f"Argument `{unexpected[0]}` is not used by kind={kind!r}; it accepts "
            f"{list(allowed[kind]) or 'no extra arguments'}."
        )
    if kind == "white_noise":
        return additive_white_noise(x, strength, seed)
    if kind == "multiplicative_noise":
        return multiplicative_white_noise(x, strength, seed)
    if kind == "salt_and_pepper":
        return salt_and_pepper(x, strength, seed, **kwargs)
    _check_seed(seed)
    for required in ("y", "model", "loss"):
        if required not in kwargs:
            raise ValueError(f"Argument `{required}` is required for kind='fgsm'.")
    return fgsm(
        x,
        kwargs["y"],
        kwargs["model"],
        kwargs["loss"],
        strength,
        batch_size=kwargs.get("batch_size", 256),
    )
