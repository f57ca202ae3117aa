"""The implicit regularizer of noise injection (Theorem 1, eq. 18) and a Monte Carlo check.

For a classifier `logits = V h_M + c` trained with softmax cross-entropy, the Hessian of the
loss in the final state is `H = V^T (diag(p) - p p^T) V`, and eq. 18 reads

    R = 1/2 sum_{m=1}^{M} delta_{m-1} tr(sigma_{m-1}^T Phi_{M-1,m}^T H Phi_{M-1,m} sigma_{m-1}),

with `sigma_m = diag(sigma_a + sigma_m f_m)` the diffusion of eq. 4 along the deterministic
trajectory (the cell's `additive_noise` and `multiplicative_noise` already contain `eps`).
Theorem 1: `E loss(noisy) = loss(deterministic) + R + eps^2 Q / 2 + O(eps^3)`, where
`Q = O(Delta^2)` vanishes for a drift linear in `h` with additive noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from keras_nrnn.analysis import _cell_access as access
from keras_nrnn.analysis._sweep import check_labels, cross_entropy, sweep
from keras_nrnn.analysis.jacobians import _inputs

__all__ = ["implicit_regularizer", "noisy_loss_gap"]


def implicit_regularizer(
    model: Any,
    inputs: np.ndarray,
    noise_scale: float = 1.0,
    noise_levels: tuple[float, float] | None = None,
) -> np.ndarray:
    """The eq. 18 regularizer `R` of every sample, for softmax cross-entropy.

    Args:
        model: `Input -> recurrent layer(cell) -> Dense` (logits) with a single-state cell.
        inputs: array `(batch, M, features)`.
        noise_scale: multiplies the cell's diffusion (so `R` scales with its square); use it
            to study the small-noise limit.
        noise_levels: `(additive, multiplicative)` used instead of the cell's own
            `additive_noise`, `multiplicative_noise` (e.g. a deterministic cell evaluated at
            the noise levels of its noisy counterpart); None: the cell's.

    Returns:
        numpy array `(batch,)`, `R >= 0`: the predicted increase of the mean loss under noise.

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import NoisyLipschitzCell
    >>> model = keras.Sequential([keras.Input((5, 1)), keras.layers.RNN(
    ...     NoisyLipschitzCell(4, additive_noise=0.1)), keras.layers.Dense(2)])
    >>> r = implicit_regularizer(model, np.ones((3, 5, 1)))
    >>> r.shape, bool((r >= 0).all())
    ((3,), True)
    """
    return sweep(model, inputs, noise_scale, noise_levels)["regularizer_terms"].sum(axis=1)


def noisy_loss_gap(
    model: Any,
    inputs: np.ndarray,
    labels: np.ndarray,
    samples: int = 32,
    noise_scale: float = 1.0,
    seed: int = 0,
    noise_levels: tuple[float, float] | None = None,
) -> dict[str, float]:
    """Monte Carlo mean of `loss(noisy trajectory) - loss(deterministic)` against eq. 18.

    The noisy trajectory is the Euler-Maruyama scheme of the cell's SDE,
    `h <- step(x, h) + noise_scale (sigma_a + sigma_m f) sqrt(dt) xi`, with antithetic pairs
    `(xi, -xi)` (which cancel the first-order, zero-mean part of the gap exactly).

    Args:
        model: as for `implicit_regularizer`.
        inputs: array `(batch, M, features)`.
        labels: integer classes `(batch,)`.
        samples: number of antithetic pairs of noise paths per sequence, > 0.
        noise_scale: multiplies the cell's diffusion.
        seed: seed of the numpy generator of `xi`.
        noise_levels: `(additive, multiplicative)` used instead of the cell's own
            `additive_noise`, `multiplicative_noise` (e.g. a deterministic cell evaluated at
            the noise levels of its noisy counterpart); None: the cell's.

    Returns:
        dict: `gap` (mean over sequences and noise), `stderr` (its Monte Carlo standard error),
        `predicted` (the mean of `R`), `loss` (mean deterministic loss).

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import NoisyLipschitzCell
    >>> model = keras.Sequential([keras.Input((5, 1)), keras.layers.RNN(
    ...     NoisyLipschitzCell(4, additive_noise=0.1)), keras.layers.Dense(2)])
    >>> out = noisy_loss_gap(model, np.ones((3, 5, 1)), np.array([0, 1, 0]), samples=4)
    >>> sorted(out)
    ['gap', 'loss', 'predicted', 'stderr']
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"Argument `samples` must be an int > 0; received samples={samples!r}.")
    cell, readout = access.split_model(model)
    x = _inputs(cell, inputs)
    y = check_labels(labels, x.shape[0], readout.kernel.shape[1])
    result = sweep(model, x, noise_scale, noise_levels)
    base = cross_entropy(result["logits"], y)
    dtype = access.compute_dtype(cell)
    dt = np.broadcast_to(np.asarray(access.time_step(cell), "float64"), (cell.units,))
    sqrt_dt = np.sqrt(dt).astype(dtype)
    rng = np.random.default_rng(seed)
    batch, steps, _ = x.shape
    xx = np.concatenate([x, x], axis=0)
    gaps = []
    for _ in range(samples):
        h = access.initial_state(cell, 2 * batch)
        for m in range(steps):
            h_next = np.asarray(ops.convert_to_numpy(access.step(cell, xx[:, m], h)))
            f = (h_next - h) / dt.astype(dtype)
            xi = rng.standard_normal((batch, cell.units)).astype(dtype)
            noise = np.asarray(access.diffusion(cell, f, noise_scale, noise_levels), dtype)
            noise = noise * sqrt_dt
            h = h_next + noise * np.concatenate([xi, -xi], axis=0)
        logits = h.astype("float64") @ readout.kernel + readout.bias
        loss = cross_entropy(logits, np.concatenate([y, y]))
        gaps.append(0.5 * (loss[:batch] + loss[batch:]) - base)
    gaps = np.stack(gaps)  # (samples, batch)
    per_sequence = gaps.mean(axis=0)
    # Sequences are independent, so is each pair: the standard error of the grand mean.
    stderr = float(gaps.std(ddof=1) / np.sqrt(gaps.size)) if gaps.size > 1 else float("nan")
    return {
        "gap": float(per_sequence.mean()),
        "stderr": stderr,
        "predicted": float(result["regularizer_terms"].sum(axis=1).mean()),
        "loss": float(base.mean()),
    }
