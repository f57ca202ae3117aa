"""Stability: the Theorem 3 interval for the sample-path Lyapunov exponent, and its estimate.

For the continuous-time NRNN `dh = (A h + a(W h + U x + b)) dt + sigma(h, x) dB` with a
monotone activation of Lipschitz constant `L_a` and diffusion differences bounded as
`c_lo ||e|| <= ||sigma(h + e) - sigma(h)||_F <= c_hi ||e||`, Theorem 3 states

    -c_hi^2 + c_lo^2 / 2 + lambda_min(A_sym) <= Lambda <= -c_lo^2 + c_hi^2 / 2
                                                       + L_a sigma_max(W) + lambda_max(A_sym).

For eq. 4 the additive part cancels in the difference, so `c_lo = 0` and
`c_hi = sigma_m (||A||_2 + L_a ||W||_2)`. The paper's lower bound drops the activation term
`e^T (a(W h') - a(W h))`, which monotonicity does not make non-negative (take `W = -w I`);
`lower_valid` keeps it as `-L_a sigma_max(W)` and is a bound for every such cell.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from keras_nrnn.analysis import _cell_access as access
from keras_nrnn.analysis.jacobians import _inputs

__all__ = ["lyapunov_bounds", "lyapunov_exponent"]


def lyapunov_bounds(
    model_or_cell: Any,
    noise_scale: float = 1.0,
    noise_levels: tuple[float, float] | None = None,
) -> dict[str, float]:
    """The Theorem 3 interval for the sample-path Lyapunov exponent, from the trained weights.

    Args:
        model_or_cell: a Lipschitz-family cell (`LipschitzCell`, `NoisyLipschitzCell`) or a
            model holding one, with a scalar step `dt` (not a per-unit learnt one).
        noise_scale: multiplies the cell's diffusion.
        noise_levels: `(additive, multiplicative)` used instead of the cell's own
            `additive_noise`, `multiplicative_noise` (e.g. a deterministic cell evaluated at
            the noise levels of its noisy counterpart); None: the cell's.

    Returns:
        dict: `lower` and `upper` (the paper's interval, per unit time), `lower_valid`
        (`lower - L_a sigma_max(W)`), and the pieces `c_lo`, `c_hi`, `lambda_min_a_sym`,
        `lambda_max_a_sym`, `sigma_max_w`, `lipschitz_activation`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import NoisyLipschitzCell
    >>> cell = NoisyLipschitzCell(4, multiplicative_noise=0.1)
    >>> _ = keras.layers.RNN(cell)(np.zeros((1, 2, 1)))
    >>> b = lyapunov_bounds(cell)
    >>> bool(b["lower_valid"] <= b["lower"] <= b["upper"])
    True
    """
    cell = access.get_cell(model_or_cell)
    if np.ndim(access.time_step(cell)) != 0:
        raise ValueError(
            "lyapunov_bounds needs a scalar step dt; the cell learns a per-unit step "
            f"(learnable_dt={cell.get_config().get('learnable_dt')!r})."
        )
    parts = access.lipschitz_parts(cell)
    a, w, lip = parts["A"], parts["W"], parts["L_a"]
    _, multiplicative = access.noise_levels(cell, noise_levels)
    a_sym = 0.5 * (a + a.T)
    eig = np.linalg.eigvalsh(a_sym)
    sigma_w = float(np.linalg.norm(w, 2))
    c_lo = 0.0
    c_hi = noise_scale * multiplicative * (float(np.linalg.norm(a, 2)) + lip * sigma_w)
    lower = -(c_hi**2) + c_lo**2 / 2 + float(eig[0])
    upper = -(c_lo**2) + c_hi**2 / 2 + lip * sigma_w + float(eig[-1])
    return {
        "lower": lower,
        "upper": upper,
        "lower_valid": lower - lip * sigma_w,
        "c_lo": c_lo,
        "c_hi": c_hi,
        "lambda_min_a_sym": float(eig[0]),
        "lambda_max_a_sym": float(eig[-1]),
        "sigma_max_w": sigma_w,
        "lipschitz_activation": lip,
    }


def lyapunov_exponent(
    model_or_cell: Any,
    inputs: np.ndarray,
    noise_scale: float = 1.0,
    perturbation: float = 1e-3,
    seed: int = 0,
    noise_levels: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Monte Carlo estimate of the sample-path Lyapunov exponent of the noisy cell.

    Each row of `inputs` drives one pair of states, `h` and `h + e` with
    `||e|| = perturbation`, through the cell's Euler-Maruyama scheme under one shared Brownian
    path; after every step the growth `log(||e_new|| / ||e||)` is accumulated and `e`
    renormalised to `perturbation * max(1, ||h||)`. The estimate is that sum over the time
    `M dt` (a finite-time exponent). A trajectory that overflows gives NaN.

    Args:
        model_or_cell: a single-state `keras_nrnn` cell, or a model holding one.
        inputs: array `(paths, M, features)`.
        noise_scale: multiplies the cell's diffusion (0: the deterministic cell).
        perturbation: size of the separation relative to `max(1, ||h||)`, > 0.
        seed: seed of the numpy generator of the Brownian increments and of `e_0`.
        noise_levels: `(additive, multiplicative)` used instead of the cell's own
            `additive_noise`, `multiplicative_noise` (e.g. a deterministic cell evaluated at
            the noise levels of its noisy counterpart); None: the cell's.

    Returns:
        dict: `exponent` (mean over paths), `stderr` (standard error over paths),
        `per_path` (numpy array `(paths,)`), `time` (`M dt`).

    Example:

    >>> import numpy as np, keras
    >>> from keras_nrnn import LipschitzCell
    >>> cell = LipschitzCell(4, gamma_a=1.0); _ = keras.layers.RNN(cell)(np.zeros((1, 2, 1)))
    >>> out = lyapunov_exponent(cell, np.zeros((3, 50, 1)))
    >>> bool(out["exponent"] < 0)
    True
    """
    if not perturbation > 0:
        raise ValueError(
            f"Argument `perturbation` must be > 0; received perturbation={perturbation!r}."
        )
    cell = access.get_cell(model_or_cell)
    x = _inputs(cell, inputs)
    paths, steps, _ = x.shape
    dtype = access.compute_dtype(cell)
    dt = np.broadcast_to(np.asarray(access.time_step(cell), "float64"), (cell.units,))
    dt_cast = dt.astype(dtype)
    sqrt_dt = np.sqrt(dt).astype(dtype)
    rng = np.random.default_rng(seed)
    h = access.initial_state(cell, paths).astype("float64")
    e = rng.standard_normal(h.shape)
    radius = np.full(paths, perturbation)
    e *= (radius / np.linalg.norm(e, axis=1))[:, None]
    total = np.zeros(paths)
    xx = np.concatenate([x, x], axis=0)
    for m in range(steps):
        both = np.concatenate([h, h + e], axis=0).astype(dtype)
        nxt = np.asarray(ops.convert_to_numpy(access.step(cell, xx[:, m], both)))
        f = (nxt - both) / dt_cast
        g = np.asarray(access.diffusion(cell, f, noise_scale, noise_levels), dtype) * sqrt_dt
        xi = rng.standard_normal((paths, cell.units)).astype(dtype)
        new = nxt.astype("float64") + g.astype("float64") * np.concatenate([xi, xi], axis=0)
        h, e = new[:paths], new[paths:] - new[:paths]
        size = np.linalg.norm(e, axis=1)
        total += np.log(size / radius)
        # Renormalise relative to the state's size, so that float32 still resolves `e`.
        radius = perturbation * np.maximum(1.0, np.linalg.norm(h, axis=1))
        e *= (radius / size)[:, None]
    time = steps * float(np.mean(dt))
    per_path = total / time
    stderr = float(per_path.std(ddof=1) / np.sqrt(paths)) if paths > 1 else float("nan")
    return {
        "exponent": float(per_path.mean()),
        "stderr": stderr,
        "per_path": per_path,
        "time": time,
    }
