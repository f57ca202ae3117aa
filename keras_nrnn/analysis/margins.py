"""The classification-margin lower bound of Theorem 2, per sample.

    gamma(s) = o(s) / (C sum_{m=0}^{M-1} delta_m ||Phi_{M-1,m+1}||_2),
    o(s) = min_{j != y} sqrt(2) (p_y - p_j),   C = ||V||_2 max_m ||d f(h_m, x_m) / d x_m||_2

(for the Lipschitz RNN `d f / d x_m = D_m U`). The paper takes the sup of `||Phi||` over the
convex hull of the inputs and the max of `||df/dx||` over the data; here both are evaluated
on the sample's own trajectory, so `gamma` is an estimate of the bound, not a certified one.
`Phi_{M-1,m+1} = d h_M / d h_{m+1}` (the paper writes the same product as `Phi_{M,m+1}`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_nrnn.analysis._sweep import margins_from_sweep, sweep

__all__ = ["margin_lower_bounds"]


def margin_lower_bounds(
    model: Any, inputs: np.ndarray, labels: np.ndarray
) -> dict[str, np.ndarray]:
    """Theorem 2's lower bound of the input-space classification margin of each sample.

    Args:
        model: `Input -> recurrent layer(cell) -> Dense` (logits) with a single-state cell.
        inputs: array `(batch, M, features)`.
        labels: integer classes `(batch,)`.

    Returns:
        dict of numpy arrays `(batch,)`: `gamma` (the bound; it applies only where
        `score > 0`, i.e. the sample is classified correctly), `score` (`o`), `constant`
        (`C`) and `chain` (`sum_m delta_m ||Phi_{M-1,m+1}||_2`).

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import LipschitzCell
    >>> model = keras.Sequential([keras.Input((5, 1)), keras.layers.RNN(LipschitzCell(4)),
    ...                           keras.layers.Dense(2)])
    >>> out = margin_lower_bounds(model, np.ones((3, 5, 1)), np.array([0, 1, 0]))
    >>> out["gamma"].shape
    (3,)
    """
    return margins_from_sweep(sweep(model, inputs), labels)
