"""Parametrizations of recurrent matrices used by the drifts (Lipschitz RNN, Antisymmetric RNN).

All functions work on backend tensors through `keras.ops` and are formed once per
sequence by the cells, never once per step.
"""

from __future__ import annotations

from keras import ops

__all__ = ["lipschitz_matrix", "skew_symmetric"]


def lipschitz_matrix(m, beta: float, gamma: float):
    """The Lipschitz RNN parametrization of a square matrix (paper, appendix eq. 143-144).

        (1 - beta) (M + M^T) + beta (M - M^T) - gamma I

    `beta` in [0, 1] blends the symmetric and the skew-symmetric part of `M`; `gamma >= 0`
    shifts the spectrum left (damping). `beta = 1, gamma = 0` gives a skew-symmetric matrix.

    Args:
        m: square matrix tensor of shape `(n, n)`.
        beta: skew level in [0, 1].
        gamma: damping, >= 0.

    Returns:
        Tensor of shape `(n, n)` and the dtype of `m`.

    Example:

    >>> import numpy as np
    >>> a = lipschitz_matrix(np.eye(2, dtype="float32"), beta=0.5, gamma=0.1)
    >>> np.allclose(np.asarray(a), 0.9 * np.eye(2))
    True
    """
    mt = ops.transpose(m)
    n = ops.shape(m)[0]
    eye = ops.eye(n, dtype=m.dtype)
    return (1.0 - beta) * (m + mt) + beta * (m - mt) - gamma * eye


def skew_symmetric(m):
    """`M - M^T`, a skew-symmetric matrix (its exponential is orthogonal).

    Args:
        m: square matrix tensor of shape `(n, n)`.

    Returns:
        Tensor of shape `(n, n)`.

    Example:

    >>> import numpy as np
    >>> s = np.asarray(skew_symmetric(np.arange(4.0, dtype="float32").reshape(2, 2)))
    >>> bool(np.allclose(s, -s.T))
    True
    """
    return m - ops.transpose(m)
