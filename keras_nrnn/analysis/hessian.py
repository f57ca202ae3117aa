"""The largest Hessian eigenvalue of the loss in the weights (sharpness of the minimum).

Power iteration on Hessian-vector products (double backward, or forward-over-reverse on
JAX), never forming the Hessian: the paper's "flatter minima" claim says the NRNN's value is
smaller than the deterministic Lipschitz RNN's. Backends: TensorFlow, JAX, PyTorch.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_nrnn.analysis import _autodiff
from keras_nrnn.analysis._sweep import check_labels

__all__ = ["top_hessian_eigenvalue"]


def _mean_cross_entropy(labels):
    def loss(logits):
        return ops.mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )

    return loss


def _prepare(model: keras.Model, inputs, labels):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Argument `model` must be a keras.Model; received {type(model).__name__}."
        )
    x = np.asarray(inputs, dtype=model.inputs[0].dtype if model.inputs else "float32")
    classes = int(model.outputs[0].shape[-1]) if model.outputs else None
    y = check_labels(labels, x.shape[0], classes or int(np.max(labels)) + 1)
    return x, y


def top_hessian_eigenvalue(
    model: keras.Model,
    inputs: np.ndarray,
    labels: np.ndarray,
    iterations: int = 30,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Dominant eigenvalue of the Hessian of the mean cross-entropy in the trainable weights.

    Args:
        model: a classifier returning logits (any Keras model).
        inputs: its inputs, `(batch, ...)`.
        labels: integer classes `(batch,)`.
        iterations: maximum power iterations, > 0.
        tolerance: stop when the eigenvalue estimate changes by less than this (relative).
        seed: seed of the random start vector.

    Returns:
        dict: `eigenvalue` (the Rayleigh quotient of the last iterate: the eigenvalue of
        largest magnitude), `iterations` (done), `converged` (bool).

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import LipschitzCell
    >>> model = keras.Sequential([keras.Input((4, 1)), keras.layers.RNN(LipschitzCell(3)),
    ...                           keras.layers.Dense(2)])
    >>> out = top_hessian_eigenvalue(model, np.ones((5, 4, 1)), np.array([0, 1, 0, 1, 1]))
    >>> sorted(out)
    ['converged', 'eigenvalue', 'iterations']
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(
            f"Argument `iterations` must be an int > 0; received iterations={iterations!r}."
        )
    x, y = _prepare(model, inputs, labels)
    loss = _mean_cross_entropy(y)
    rng = np.random.default_rng(seed)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    vec = [rng.standard_normal(s) for s in shapes]
    norm = np.sqrt(sum(np.sum(v**2) for v in vec))
    vec = [v / norm for v in vec]
    value, done, converged = 0.0, 0, False
    for done in range(1, iterations + 1):
        hv = [np.asarray(h, "float64") for h in _autodiff.hvp(model, loss, x, vec)]
        new = float(sum(np.sum(a * b) for a, b in zip(vec, hv, strict=True)))
        norm = np.sqrt(sum(np.sum(h**2) for h in hv))
        if norm == 0:
            value, converged = 0.0, True
            break
        vec = [h / norm for h in hv]
        if done > 1 and abs(new - value) <= tolerance * max(abs(new), 1e-12):
            value, converged = new, True
            break
        value = new
    return {"eigenvalue": value, "iterations": done, "converged": converged}
