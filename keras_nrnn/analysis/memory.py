"""The memory function of a trained cell: its response to a unit step input (Li, Han, E, Li).

For a linear RNN `y = c^T h`, the output is a convolution of the input with a memory kernel
`rho`; the step response `y_k` is its running sum, so `rho_k = y_{k+1} - y_k`. For the linear
Lipschitz cell `h <- h + dt (W h + U x)` (identity activation, `W` the sum of `A` and `W`),
`rho_k = dt c^T (I + dt W)^k U`. How fast `|rho|` decays is the cell's memory: the curse of
memory says a fast (exponential) decay cannot represent long-term dependencies efficiently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_nrnn.analysis import _cell_access as access
from keras_nrnn.analysis.jacobians import trajectory

__all__ = ["memory_decay_rate", "memory_function", "step_response"]


def step_response(model_or_cell: Any, timesteps: int, amplitude: float = 1.0) -> np.ndarray:
    """States `h_0 = 0, ..., h_T` of the deterministic cell under the constant input `amplitude`.

    Args:
        model_or_cell: a single-state `keras_nrnn` cell, or a model holding one.
        timesteps: number of steps `T`, > 0.
        amplitude: value of every input feature at every step.

    Returns:
        numpy array `(T + 1, units)`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import LipschitzCell
    >>> cell = LipschitzCell(4); _ = keras.layers.RNN(cell)(np.zeros((1, 2, 1)))
    >>> step_response(cell, 10).shape
    (11, 4)
    """
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"Argument `timesteps` must be an int > 0; received {timesteps!r}.")
    cell = access.get_cell(model_or_cell)
    features = _features(cell)
    x = np.full((1, timesteps, features), amplitude)
    return trajectory(cell, x)[0].astype("float64")


def _features(cell) -> int:
    kernel = next((w for w in cell.weights if w.name == "kernel"), None)
    if kernel is None:
        raise ValueError(f"Cannot tell the number of input features of {type(cell).__name__}.")
    return int(kernel.shape[0])


def memory_function(
    model_or_cell: Any,
    timesteps: int,
    direction: Any = None,
    amplitude: float = 1.0,
) -> np.ndarray:
    """`rho_k = y_{k+1} - y_k` of the step response `y_k`, `k = 0..T-1`.

    Args:
        model_or_cell: a single-state `keras_nrnn` cell, or a model holding one.
        timesteps: number of steps `T`, > 0.
        direction: the read-out `c` (`(units,)`) with `y_k = c^T h_k`; `"logits"` (models
            only) for the difference of the last and first logits; None for the norm
            `||h_{k+1} - h_k||_2` (no read-out).
        amplitude: size of the step input.

    Returns:
        numpy array `(T,)`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import LipschitzCell
    >>> cell = LipschitzCell(4); _ = keras.layers.RNN(cell)(np.zeros((1, 2, 1)))
    >>> memory_function(cell, 10).shape
    (10,)
    """
    states = step_response(model_or_cell, timesteps, amplitude)
    diffs = np.diff(states, axis=0)
    if direction is None:
        return np.linalg.norm(diffs, axis=1)
    if isinstance(direction, str):
        if direction != "logits":
            raise ValueError(
                "Argument `direction` must be None, 'logits' or a vector; received "
                f"direction={direction!r}."
            )
        _, readout = access.split_model(model_or_cell)
        c = readout.kernel[:, -1] - readout.kernel[:, 0]
    else:
        c = np.asarray(direction, "float64")
    if c.shape != (states.shape[1],):
        raise ValueError(
            f"Argument `direction` must have shape ({states.shape[1]},); received {c.shape}."
        )
    return diffs @ c


def memory_decay_rate(rho: np.ndarray, dt: float, tail: float = 0.5) -> float:
    """Exponential decay rate `lambda` of `|rho_k| ~ exp(-lambda k dt)`, per unit time.

    A least-squares line through `log |rho_k|` over the last `tail` fraction of the steps
    (where the asymptotic rate dominates). Positive: memory fades; negative: it grows.

    Args:
        rho: a memory function `(T,)`.
        dt: the step delta, > 0.
        tail: fraction of the steps used, in (0, 1].

    Returns:
        The rate, a float (NaN when fewer than two steps are usable).

    Example:

    >>> import numpy as np
    >>> round(memory_decay_rate(np.exp(-0.5 * 0.1 * np.arange(100)), dt=0.1), 6)
    0.5
    """
    if not 0 < tail <= 1:
        raise ValueError(f"Argument `tail` must be in (0, 1]; received tail={tail!r}.")
    if not dt > 0:
        raise ValueError(f"Argument `dt` must be > 0; received dt={dt!r}.")
    rho = np.abs(np.asarray(rho, "float64"))
    k = np.arange(len(rho))
    start = int(len(rho) * (1 - tail))
    keep = (k >= start) & (rho > 0) & np.isfinite(rho)
    if keep.sum() < 2:
        return float("nan")
    slope = np.polyfit(k[keep] * dt, np.log(rho[keep]), 1)[0]
    return float(-slope)
