"""State-to-state Jacobians along a deterministic trajectory and their products.

Notation (DESIGN section 2, paper eq. 7-8): `h_{m+1} = step(x_m, h_m)`, `h_0 = 0`,
`J_m = d h_{m+1} / d h_m` (for the Lipschitz RNN `I + dt (A + D_m W)`), and
`Phi_{m,k} = J_m J_{m-1} ... J_k` (the empty product is the identity), so
`Phi_{M-1,k} = d h_M / d h_k`. The products are accumulated backwards from the last step,
one `units x units` Jacobian per step computed by autodiff of the cell's own step; only the
running product is kept, never the whole chain.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from keras import ops

from keras_nrnn.analysis import _autodiff
from keras_nrnn.analysis import _cell_access as access

__all__ = ["jacobian_product", "jacobian_product_norms", "state_jacobians", "trajectory"]


def _inputs(cell, inputs) -> np.ndarray:
    x = np.asarray(inputs, dtype=access.compute_dtype(cell))
    if x.ndim != 3:
        raise ValueError(
            f"Argument `inputs` must have shape (batch, time, features); received shape {x.shape}."
        )
    return x


def trajectory(model_or_cell: Any, inputs: np.ndarray) -> np.ndarray:
    """The deterministic (inference) states `h_0 = 0, h_1, ..., h_M` driven by `inputs`.

    Args:
        model_or_cell: a single-state `keras_nrnn` cell, or a model holding one.
        inputs: array `(batch, M, features)`.

    Returns:
        numpy array `(batch, M + 1, units)`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import LipschitzCell
    >>> cell = LipschitzCell(4); _ = keras.layers.RNN(cell)(np.zeros((1, 3, 2), "float32"))
    >>> trajectory(cell, np.ones((2, 3, 2))).shape
    (2, 4, 4)
    """
    cell = access.get_cell(model_or_cell)
    x = _inputs(cell, inputs)
    h = access.initial_state(cell, x.shape[0])
    states = [h]
    for m in range(x.shape[1]):
        h = np.asarray(ops.convert_to_numpy(access.step(cell, x[:, m], h)))
        states.append(h)
    return np.stack(states, axis=1)


_JACOBIANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _step_jacobians(cell, x_m: np.ndarray, h_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(d h_{m+1}/d h_m, d h_{m+1}/d x_m)`, shapes `(B, n, n)` and `(B, n, features)`."""
    n = h_m.shape[1]
    if cell not in _JACOBIANS:
        _JACOBIANS[cell] = _autodiff.jacobian_function(
            lambda v: access.step(cell, v[:, n:], v[:, :n])
        )
    z = np.concatenate([h_m, x_m], axis=1)
    jac = _JACOBIANS[cell](z).astype("float64")
    return jac[:, :, :n], jac[:, :, n:]


def backward_sweep(
    cell, inputs: np.ndarray, states: np.ndarray, visit: Callable[..., None]
) -> np.ndarray:
    """Accumulate `P = d h_M / d h_{m+1}` for `m = M-1, ..., 0`, calling
    `visit(m, P, J_m, B_m)` with `B_m = d h_{m+1} / d x_m`; return `d h_M / d h_0`."""
    batch, steps, _ = inputs.shape
    n = states.shape[-1]
    product = np.broadcast_to(np.eye(n), (batch, n, n)).copy()
    for m in range(steps - 1, -1, -1):
        jac_h, jac_x = _step_jacobians(cell, inputs[:, m], states[:, m])
        visit(m, product, jac_h, jac_x)
        product = product @ jac_h
    return product


def state_jacobians(model_or_cell: Any, inputs: np.ndarray) -> np.ndarray:
    """Every state-to-state Jacobian `J_m = d h_{m+1} / d h_m` along the trajectory.

    This materialises `M` matrices per sample; for norms of products use
    `jacobian_product_norms`, which keeps only the running product.

    Args:
        model_or_cell: a single-state `keras_nrnn` cell, or a model holding one.
        inputs: array `(batch, M, features)`.

    Returns:
        numpy array `(batch, M, units, units)`, `[:, m]` is `J_m`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import LipschitzCell
    >>> cell = LipschitzCell(3, dt=0.1); _ = keras.layers.RNN(cell)(np.zeros((1, 2, 1)))
    >>> state_jacobians(cell, np.zeros((1, 2, 1))).shape
    (1, 2, 3, 3)
    """
    cell = access.get_cell(model_or_cell)
    x = _inputs(cell, inputs)
    states = trajectory(cell, x)
    return np.stack(
        [_step_jacobians(cell, x[:, m], states[:, m])[0] for m in range(x.shape[1])], axis=1
    )


def jacobian_product(model_or_cell: Any, inputs: np.ndarray, m: int, k: int) -> np.ndarray:
    """`Phi_{m,k} = J_m J_{m-1} ... J_k` along the trajectory driven by `inputs`.

    Args:
        model_or_cell: a single-state `keras_nrnn` cell, or a model holding one.
        inputs: array `(batch, M, features)`.
        m: last factor, `0 <= m < M`.
        k: first factor, `0 <= k <= m + 1` (`k = m + 1` gives the identity).

    Returns:
        numpy array `(batch, units, units)`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import LipschitzCell
    >>> cell = LipschitzCell(3); _ = keras.layers.RNN(cell)(np.zeros((1, 4, 1)))
    >>> jacobian_product(cell, np.zeros((2, 4, 1)), 3, 1).shape
    (2, 3, 3)
    """
    cell = access.get_cell(model_or_cell)
    x = _inputs(cell, inputs)
    steps = x.shape[1]
    if not (0 <= m < steps and 0 <= k <= m + 1):
        raise ValueError(
            f"Arguments `m`, `k` must satisfy 0 <= m < M={steps} and 0 <= k <= m + 1; "
            f"received m={m!r}, k={k!r}."
        )
    states = trajectory(cell, x[:, : m + 1])
    n = cell.units
    product = np.broadcast_to(np.eye(n), (x.shape[0], n, n)).copy()
    for i in range(k, m + 1):
        product = _step_jacobians(cell, x[:, i], states[:, i])[0] @ product
    return product


def jacobian_product_norms(model_or_cell: Any, inputs: np.ndarray) -> np.ndarray:
    """Spectral norms `||d h_M / d h_{M - lag}||_2 = ||Phi_{M-1, M-lag}||_2` for every lag.

    How strongly the final state still depends on the state `lag` steps earlier: values that
    shrink with the lag mean vanishing gradients, values that grow mean exploding ones.

    Args:
        model_or_cell: a single-state `keras_nrnn` cell, or a model holding one.
        inputs: array `(batch, M, features)`.

    Returns:
        numpy array `(batch, M + 1)`; column `lag` (`0..M`), column 0 is 1 (the identity).

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import LipschitzCell
    >>> cell = LipschitzCell(3); _ = keras.layers.RNN(cell)(np.zeros((1, 5, 1)))
    >>> norms = jacobian_product_norms(cell, np.zeros((2, 5, 1)))
    >>> norms.shape, float(norms[0, 0])
    ((2, 6), 1.0)
    """
    cell = access.get_cell(model_or_cell)
    x = _inputs(cell, inputs)
    states = trajectory(cell, x)
    steps = x.shape[1]
    norms = np.empty((x.shape[0], steps + 1))

    def visit(m, product, jac_h, jac_x):
        norms[:, steps - 1 - m] = spectral_norms(product)

    final = backward_sweep(cell, x, states, visit)
    norms[:, steps] = spectral_norms(final)
    return norms


def spectral_norms(matrices: np.ndarray) -> np.ndarray:
    """Largest singular value of each matrix of a stack `(..., r, c)`.

    The square root of the top eigenvalue of the smaller Gram matrix (several times faster
    than an SVD, and as accurate for the largest singular value).
    """
    mt = np.swapaxes(matrices, -1, -2)
    gram = mt @ matrices if matrices.shape[-1] <= matrices.shape[-2] else matrices @ mt
    return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[..., -1], 0.0))
