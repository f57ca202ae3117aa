"""One backward sweep of a classifier's trajectory giving every Jacobian-based quantity (private).

`jacobian_product_norms`, `implicit_regularizer` and `margin_lower_bounds` all need the
products `d h_M / d h_{m+1}` along the same trajectory; `sweep` computes them once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_nrnn.analysis import _cell_access as access
from keras_nrnn.analysis.jacobians import _inputs, backward_sweep, spectral_norms, trajectory


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample softmax cross-entropy `-log p_y` (stable)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]


def check_labels(labels: Any, batch: int, classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (batch,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"Argument `labels` must be integer class indices of shape ({batch},); received "
            f"shape {y.shape} and dtype {y.dtype}."
        )
    if batch and (y.min() < 0 or y.max() >= classes):
        raise ValueError(
            f"Argument `labels` must lie in [0, {classes}); received values in "
            f"[{y.min()}, {y.max()}]."
        )
    return y.astype("int64")


def sweep(
    model, inputs: np.ndarray, noise_scale: float = 1.0, noise_levels=None
) -> dict[str, np.ndarray]:
    """Logits, probabilities, norms over lag, eq. 18 terms and Theorem 2 pieces per sample."""
    cell, readout = access.split_model(model)
    x = _inputs(cell, inputs)
    states = trajectory(cell, x)
    batch, steps, _ = x.shape
    dt = np.broadcast_to(np.asarray(access.time_step(cell), "float64"), (cell.units,))
    h_final = states[:, -1].astype("float64")
    logits = h_final @ readout.kernel + readout.bias
    p = softmax(logits)
    v = readout.kernel.T  # (classes, units)
    # Hessian of the cross-entropy in the final state: V^T (diag(p) - p p^T) V.
    pv = p @ v
    hess = np.einsum("ci,bc,cj->bij", v, p, v) - np.einsum("bi,bj->bij", pv, pv)
    drifts = (states[:, 1:] - states[:, :-1]).astype("float64") / dt  # f_m, (B, M, n)
    sigma = np.asarray(access.diffusion(cell, drifts, noise_scale, noise_levels), "float64")
    sigma = np.broadcast_to(sigma, drifts.shape)
    norms = np.empty((batch, steps + 1))
    reg_terms = np.empty((batch, steps))
    input_norms = np.empty((batch, steps))

    def visit(m, product, jac_h, jac_x):
        norms[:, steps - 1 - m] = spectral_norms(product)
        # Noise of step m enters h_{m+1}; its effect on h_M goes through `product`.
        diag = np.sum(product * (hess @ product), axis=1)  # diag(P^T H P)
        reg_terms[:, m] = 0.5 * np.sum(dt * sigma[:, m] ** 2 * diag, axis=1)
        input_norms[:, m] = spectral_norms(jac_x)

    norms[:, steps] = spectral_norms(backward_sweep(cell, x, states, visit))
    return {
        "states": states,
        "logits": logits,
        "probabilities": p,
        "norms": norms,
        "regularizer_terms": reg_terms,
        "input_jacobian_norms": input_norms,
        "readout_norm": np.asarray(np.linalg.norm(v, 2)),
        "dt": np.asarray(float(np.mean(dt))),
    }


def margins_from_sweep(result: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Theorem 2 score `o`, constant `C` and lower bound `gamma` from a `sweep` result."""
    p = result["probabilities"]
    y = check_labels(labels, p.shape[0], p.shape[1])
    p_y = np.take_along_axis(p, y[:, None], axis=1)[:, 0]
    others = p.copy()
    np.put_along_axis(others, y[:, None], -np.inf, axis=1)
    score = np.sqrt(2.0) * (p_y - others.max(axis=1))
    # sum_m delta_m ||Phi_{M,m+1}|| * C with C = ||V|| max_m ||df/dx_m||, written with
    # d h_{m+1} / d x_m = delta_m df/dx_m so that a learnt per-unit step needs no special case.
    dt = float(result["dt"])
    constant = result["readout_norm"] * result["input_jacobian_norms"].max(axis=1) / dt
    # lags 0..M-1 are d h_M / d h_{m+1} for m = M-1..0.
    chain = dt * result["norms"][:, :-1].sum(axis=1)
    return {
        "score": score,
        "constant": constant,
        "chain": chain,
        "gamma": score / (constant * chain),
    }
