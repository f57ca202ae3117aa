"""The Fisher-Rao norm `E[<theta, grad_theta loss>^2]` (Tu, He, Tao; Liang et al.).

A capacity measure that bounds the generalization gap of RNNs in Tu, He and Tao. Each
sample's `<theta, grad loss_i>` is one forward-mode directional derivative along `theta`
itself, so the whole batch costs one Jacobian-vector product.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_nrnn.analysis import _autodiff
from keras_nrnn.analysis.hessian import _prepare

__all__ = ["fisher_rao_norm"]


def fisher_rao_norm(
    model: keras.Model, inputs: np.ndarray, labels: np.ndarray, batch_size: int = 256
) -> float:
    """Empirical Fisher-Rao norm: the mean over samples of `<theta, grad_theta loss_i>^2`.

    `theta` is every trainable weight; `loss_i` the softmax cross-entropy of sample `i` at its
    label (the empirical, not the model, distribution).

    Args:
        model: a classifier returning logits.
        inputs: its inputs, `(batch, ...)`.
        labels: integer classes `(batch,)`.
        batch_size: samples per forward-mode pass, > 0.

    Returns:
        The norm squared, a float >= 0.

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import LipschitzCell
    >>> model = keras.Sequential([keras.Input((4, 1)), keras.layers.RNN(LipschitzCell(3)),
    ...                           keras.layers.Dense(2)])
    >>> fisher_rao_norm(model, np.ones((5, 4, 1)), np.array([0, 1, 0, 1, 1])) >= 0
    True
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"Argument `batch_size` must be an int > 0; received batch_size={batch_size!r}."
        )
    x, y = _prepare(model, inputs, labels)
    theta = [np.asarray(ops.convert_to_numpy(v)) for v in model.trainable_variables]
    squares = []
    for start in range(0, len(x), batch_size):
        yb = y[start : start + batch_size]

        def per_sample(logits, yb=yb):
            return keras.losses.sparse_categorical_crossentropy(yb, logits, from_logits=True)

        d = _autodiff.directional_derivatives(
            model, per_sample, x[start : start + batch_size], theta
        )
        squares.append(np.asarray(d, "float64") ** 2)
    return float(np.concatenate(squares).mean())
