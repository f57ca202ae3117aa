"""Small models with known closed forms for the tests of `keras_nrnn.analysis`."""

from __future__ import annotations

import keras
import numpy as np
from test_lipschitz_numerics import lipschitz_np

from keras_nrnn import LipschitzCell, NoisyLipschitzCell


def make_model(
    units: int,
    features: int = 1,
    timesteps: int = 10,
    classes: int = 2,
    *,
    seed: int = 0,
    activation: str = "tanh",
    dt: float = 0.1,
    beta: float = 0.75,
    gamma: float = 0.001,
    scale: float = 1.0,
    additive: float = 0.0,
    multiplicative: float = 0.0,
    use_bias: bool = True,
    dtype: str = "float64",
) -> tuple[keras.Model, object]:
    """`Input -> RNN(Lipschitz cell) -> Dense` with random weights of size `scale / sqrt(units)`."""
    rng = np.random.default_rng(seed)
    kwargs = {
        "dt": dt,
        "beta": beta,
        "gamma_a": gamma,
        "gamma_w": gamma,
        "activation": activation,
        "use_bias": use_bias,
        "dtype": dtype,
    }
    if additive or multiplicative:
        cell = NoisyLipschitzCell(
            units, additive_noise=additive, multiplicative_noise=multiplicative, seed=0, **kwargs
        )
    else:
        cell = LipschitzCell(units, **kwargs)
    model = keras.Sequential(
        [
            keras.Input((timesteps, features), dtype=dtype),
            keras.layers.RNN(cell, dtype=dtype),
            keras.layers.Dense(classes, dtype=dtype),
        ]
    )
    for w in model.weights:
        shape = tuple(w.shape)
        w.assign(rng.normal(0.0, scale / np.sqrt(max(units, 1)), shape))
    return model, cell


def matrices(cell) -> dict[str, np.ndarray]:
    """A, W (units x units), U (units x features), b from the cell's weights, in numpy."""
    a = lipschitz_np(keras.ops.convert_to_numpy(cell.m_a), cell.beta, cell.gamma_a)
    w = lipschitz_np(keras.ops.convert_to_numpy(cell.m_w), cell.beta, cell.gamma_w)
    u = np.asarray(keras.ops.convert_to_numpy(cell.kernel), np.float64).T
    b = np.zeros(cell.units) if cell.bias is None else keras.ops.convert_to_numpy(cell.bias)
    return {"A": a, "W": w, "U": u, "b": np.asarray(b, np.float64)}


def readout(model) -> tuple[np.ndarray, np.ndarray]:
    """`V` (classes x units) and `c` of the Dense layer."""
    dense = model.layers[-1]
    return (
        np.asarray(keras.ops.convert_to_numpy(dense.kernel), np.float64).T,
        np.asarray(keras.ops.convert_to_numpy(dense.bias), np.float64),
    )


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
