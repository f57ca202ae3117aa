"""The one place where `keras_nrnn.analysis` touches a cell (private).

Everything the diagnostics need from a cell goes through these functions, so a change of the
cells' internals (noise objects, step contract) is absorbed here:

- `step(cell, x, h)`: the deterministic step `h_next = cell(x, [h], training=False)`;
- `time_step(cell)`: the step delta (a float, or a per-unit vector when it is learnt);
- `drift(cell, x, h)`: `(h_next - h) / dt`, the drift as the scheme applies it;
- `noise_levels(cell)` and `diffusion(cell, f)`: the diagonal diffusion of eq. 4,
  `g = sigma_a + sigma_m f`, from the cell's noise model (`cell.noise`);
- `lipschitz_parts(cell)`: `A`, `W`, `U`, `b` and the Lipschitz constant of the activation,
  for the closed-form bounds of Theorems 2 and 3 (Lipschitz-family cells only);
- `split_model(model)`: the cell and the linear read-out `logits = V h + c` of a classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

# Lipschitz constants of the (monotone non-decreasing) activations a Lipschitz cell may use.
_LIPSCHITZ = {"tanh": 1.0, "linear": 1.0, "sigmoid": 0.25, "relu": 1.0, "hard_tanh": 1.0}


@dataclass(frozen=True)
class Readout:
    """A linear read-out `logits = h @ kernel + bias` (`V = kernel.T`)."""

    kernel: np.ndarray  # (units, classes)
    bias: np.ndarray  # (classes,)


def get_cell(model_or_cell: Any):
    """The single-state cell of a model (its recurrent layer's `cell`) or the cell itself."""
    cell = model_or_cell
    if isinstance(model_or_cell, keras.Model):
        cell = split_model(model_or_cell)[0]
    if not hasattr(cell, "state_size") or not hasattr(cell, "units"):
        raise ValueError(
            "Argument `model_or_cell` must be a keras_nrnn cell or a model holding one; "
            f"received {type(model_or_cell).__name__}."
        )
    if not isinstance(cell.state_size, int):
        raise ValueError(
            f"keras_nrnn.analysis supports cells with a single state; {type(cell).__name__} "
            f"has state_size={cell.state_size!r}."
        )
    if not cell.built:
        raise ValueError(
            f"The cell {cell.name!r} is not built; call the model (or the cell) on data first."
        )
    return cell


def split_model(model: keras.Model) -> tuple[Any, Readout]:
    """`(cell, readout)` of `Input -> recurrent layer(cell) -> Dense(classes)` (logits)."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    rnn_index = next((i for i, layer in enumerate(layers) if hasattr(layer, "cell")), None)
    if rnn_index is None or rnn_index != len(layers) - 2:
        raise ValueError(
            "Argument `model` must be `Input -> recurrent layer -> Dense` (logits), like the "
            f"models of training.models; received layers {[layer.name for layer in layers]}."
        )
    dense = layers[-1]
    activation = getattr(getattr(dense, "activation", None), "__name__", None)
    if not isinstance(dense, keras.layers.Dense) or activation != "linear":
        raise ValueError(
            "Argument `model` must end with a Dense layer without activation (logits); "
            f"received {type(dense).__name__} {dense.name!r} with activation {activation!r}."
        )
    rnn = layers[rnn_index]
    if getattr(rnn, "return_sequences", False) or getattr(rnn, "go_backwards", False):
        raise ValueError(
            f"The recurrent layer {rnn.name!r} must return its last state in forward order "
            "(return_sequences=False, go_backwards=False)."
        )
    kernel = np.asarray(ops.convert_to_numpy(dense.kernel), "float64")
    bias = (
        np.zeros(kernel.shape[1])
        if dense.bias is None
        else np.asarray(ops.convert_to_numpy(dense.bias), "float64")
    )
    return get_cell(rnn.cell), Readout(kernel, bias)


def compute_dtype(cell) -> str:
    return cell.compute_dtype


def step(cell, x, h):
    """The deterministic (inference) step `cell(x, [h], training=False)`."""
    out, _ = cell(x, [h], training=False)
    return out


def initial_state(cell, batch: int) -> np.ndarray:
    return np.zeros((batch, cell.units), compute_dtype(cell))


def time_step(cell) -> float | np.ndarray:
    """The step delta: the trained `dt` weight when it is learnt, else the config's `dt`."""
    for weight in cell.weights:
        if weight.name == "dt" or weight.path.endswith("/dt"):
            value = np.asarray(ops.convert_to_numpy(weight), "float64")
            return float(value) if value.ndim == 0 else np.broadcast_to(value, (cell.units,))
    return float(cell.get_config()["dt"])


def mean_time_step(cell) -> float:
    """A scalar step: `dt`, or the mean of a per-unit learnt step (the clock of the SDE)."""
    return float(np.mean(time_step(cell)))


def drift(cell, x, h):
    """`(h_next - h) / dt`: the drift as the cell's scheme applies it (tamed, ...)."""
    dt = time_step(cell)
    return (step(cell, x, h) - h) / ops.cast(dt, compute_dtype(cell))


def noise_levels(cell, override: tuple[float, float] | None = None) -> tuple[float, float]:
    """`(sigma_a, sigma_m)` such that one noisy step adds `(sigma_a + sigma_m f) sqrt(dt) xi`.

    Read from the cell's noise model (`cell.noise`: `DiagonalNoise`, `ResearchNoise` or
    None). For `ResearchNoise` (additive `sigma xi` without `sqrt(dt)`, and a uniform factor
    `U(1 - s, 1)` on `dt f`) the levels of the Gaussian diffusion with the same second moments
    are returned: `sigma_a / sqrt(dt)` and `s sqrt(dt / 12)`. `override` replaces the
    cell's own `(additive, multiplicative)` (e.g. to evaluate a deterministic cell at the
    noise levels of its noisy counterpart); it is read as `DiagonalNoise` levels.
    """
    if override is not None:
        additive, multiplicative = (float(v) for v in override)
        if not (additive >= 0 and multiplicative >= 0):
            raise ValueError(
                "Argument `noise_levels` must be two numbers >= 0 (additive, multiplicative); "
                f"received noise_levels={override!r}."
            )
        return additive, multiplicative
    noise = getattr(cell, "noise", None)
    if noise is None:
        return 0.0, 0.0
    additive = float(getattr(noise, "additive", 0.0))
    multiplicative = float(getattr(noise, "multiplicative", 0.0))
    if type(noise).__name__ == "ResearchNoise":
        dt = mean_time_step(cell)
        return additive / math.sqrt(dt), multiplicative * math.sqrt(dt / 12.0)
    if type(noise).__name__ != "DiagonalNoise":
        raise ValueError(
            f"keras_nrnn.analysis knows DiagonalNoise and ResearchNoise; the cell {cell.name!r} "
            f"has {noise!r}."
        )
    return additive, multiplicative


def diffusion(cell, f, scale: float = 1.0, levels: tuple[float, float] | None = None):
    """The diagonal of sigma(h, x) of eq. 4, `scale (sigma_a + sigma_m f)`, given the drift f."""
    additive, multiplicative = noise_levels(cell, levels)
    return scale * (additive + multiplicative * f)


def lipschitz_parts(cell) -> dict[str, Any]:
    """`A`, `W` (`units x units`), `U` (`units x features`), `b`, `L_a` of a Lipschitz cell."""
    if not hasattr(cell, "drift_matrices_numpy"):
        raise ValueError(
            "This diagnostic needs the drift f(h, x) = A h + a(W h + U x + b) of a Lipschitz "
            f"cell (LipschitzCell, NoisyLipschitzCell); received {type(cell).__name__}."
        )
    parts = cell.drift_matrices_numpy()
    name = getattr(cell.activation, "__name__", str(cell.activation))
    if name not in _LIPSCHITZ:
        raise ValueError(
            f"The Lipschitz constant of activation {name!r} is not known; supported: "
            f"{sorted(_LIPSCHITZ)}."
        )
    return {
        "A": parts["A"].astype("float64"),
        "W": parts["W"].astype("float64"),
        "U": parts["U"].astype("float64").T,
        "b": parts["b"].astype("float64"),
        "L_a": _LIPSCHITZ[name],
    }
