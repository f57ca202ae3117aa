"""Small models and helpers shared by the export tests (units 8, T 10)."""

from __future__ import annotations

import importlib
import pkgutil

import keras
import numpy as np
import pytest
from keras import ops

import keras_nrnn
from keras_nrnn import LipschitzCell, NoisyLipschitzCell, registry
from keras_nrnn.cells.base import SDECell

UNITS = 8
TIME = 10
FEATURES = 2
CLASSES = 3

#: Every cell class of the keras_nrnn registry (each drift and its Noisy* class), then a
#: two-state test cell; the Lipschitz ones first (tests pick their own parameters for them).
_REGISTRY = {
    cls.__name__: (entry, cls is entry.noisy_cls)
    for entry in registry.cells()
    for cls in (entry.cls, entry.noisy_cls)
}
BASELINE_CELLS = tuple(n for n in _REGISTRY if "Lipschitz" not in n)
ALL_CELLS = ("LipschitzCell", "NoisyLipschitzCell", "TwoStateCell", *BASELINE_CELLS)


@keras.saving.register_keras_serializable(package="tests_export")
class TwoStateCell(SDECell):
    """A coRNN-like test cell with a two-part state (y, z), to test the state vector layout.

    z <- z + dt (tanh(W y + V x) - y - z),  y <- y + dt z.
    """

    supports_noise = False

    def __init__(self, units: int, **kwargs) -> None:
        super().__init__(units, **kwargs)
        self.state_size = [units, units]
        self.output_size = units

    def build_drift(self, input_dim: int) -> None:
        self.kernel = self.add_weight(name="kernel", shape=(input_dim, self.units))
        self.recurrent = self.add_weight(name="recurrent", shape=(self.units, self.units))

    def precompute(self) -> dict:
        dtype = self.compute_dtype
        return {
            "kernel": ops.cast(self.kernel, dtype),
            "recurrent": ops.cast(self.recurrent, dtype),
            "dt": self.step_size(),
        }

    def call(self, inputs, states, training: bool = False):
        y, z = (ops.cast(s, self.compute_dtype) for s in states)
        cache = self._cache()
        dt = cache["dt"]
        pre = ops.matmul(y, cache["recurrent"]) + ops.matmul(inputs, cache["kernel"])
        z_new = z + dt * (ops.tanh(pre) - y - z)
        y_new = y + dt * z_new
        return y_new, [y_new, z_new]

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype)] * 2


def find_cell_class(name: str):
    """The keras_nrnn cell class called `name`, or None if it is not importable (yet)."""
    if hasattr(keras_nrnn, name):
        return getattr(keras_nrnn, name)
    import keras_nrnn.cells as cells_pkg

    for info in pkgutil.iter_modules(cells_pkg.__path__):
        try:
            module = importlib.import_module(f"keras_nrnn.cells.{info.name}")
        except Exception:
            continue
        if isinstance(getattr(module, name, None), type):
            return getattr(module, name)
    return None


def make_cell(kind: str):
    if kind == "LipschitzCell":
        return LipschitzCell(UNITS, dt=0.2, beta=0.8)
    if kind == "NoisyLipschitzCell":
        return NoisyLipschitzCell(
            UNITS, dt=0.2, additive_noise=0.1, multiplicative_noise=0.05, seed=3
        )
    if kind == "TwoStateCell":
        return TwoStateCell(UNITS, dt=0.2)
    if kind in _REGISTRY:
        entry, noisy = _REGISTRY[kind]
        return entry.make(noisy=noisy, units=UNITS)
    cls = find_cell_class(kind)
    if cls is None:
        pytest.skip(f"{kind} is not importable from keras_nrnn")
    return cls(UNITS)


def make_model(cell, *, time=TIME, pre_dense=False, softmax=False, seed=0) -> keras.Model:
    """Input (None|time, FEATURES) -> [Dense] -> RNN(cell) -> Dense(CLASSES[, softmax])."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((time, FEATURES))]
    if pre_dense:
        layers.append(keras.layers.Dense(4, activation="tanh"))
    layers += [
        keras.layers.RNN(cell),
        keras.layers.Dense(CLASSES, activation="softmax" if softmax else None),
    ]
    model = keras.Sequential(layers)
    # Non-trivial weights, so that the checks compare more than near-zero numbers.
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            w + 0.3 * rng.standard_normal(w.shape).astype(w.dtype)
            if np.issubdtype(w.dtype, np.floating)
            else w
            for w in model.get_weights()
        ]
    )
    return model


def inputs(batch=3, time=TIME, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, time, FEATURES)).astype("float32")


@keras.saving.register_keras_serializable(package="tests_export")
class LgammaLayer(keras.layers.Layer):
    """A head layer whose op (Lgamma) tf2onnx cannot convert."""

    def call(self, x):
        import tensorflow as tf

        return x + tf.math.lgamma(tf.abs(x) + 1.0)


def listing(base) -> list[str]:
    """Every path under `base`, relative, sorted (hidden temporary folders included)."""
    from pathlib import Path

    base = Path(base)
    if not base.exists():
        return []
    return sorted(str(p.relative_to(base)) for p in base.rglob("*"))


def perturb(model: keras.Model, seed: int = 0) -> keras.Model:
    """Add seeded N(0, 0.3^2) noise to every weight (non-trivial numbers to compare)."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [w + 0.3 * rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()]
    )
    return model
