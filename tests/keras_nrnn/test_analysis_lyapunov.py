"""Lyapunov exponents: the scalar linear SDE's closed form, and Theorem 3 on random cells."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_helpers import make_model

from keras_nrnn.analysis import lyapunov_bounds, lyapunov_exponent


def _scalar_cell(a: float, b: float, dt: float, w: float = 0.0):
    """`dh = (a + w) h dt + b h dB`: units 1, linear activation, no input, no bias.

    With beta 0.5 and no damping the scalar parametrization gives A = M_A, W = M_W; the
    multiplicative noise `s f = s (a + w) h` gives `b = s (a + w)`.
    """
    _, cell = make_model(
        1,
        activation="linear",
        use_bias=False,
        beta=0.5,
        gamma=0.0,
        dt=dt,
        multiplicative=b / (a + w),
        dtype="float32",
    )
    cell.m_a.assign([[a]])
    cell.m_w.assign([[w]])
    cell.kernel.assign([[0.0]])
    return cell


def _discrete_exponent(a: float, b: float, dt: float) -> float:
    """E log|1 + a dt + b sqrt(dt) xi| / dt, the exact exponent of the Euler-Maruyama chain."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    values = np.log(np.abs(1 + a * dt + b * np.sqrt(dt) * nodes))
    return float(np.sum(weights * values) / np.sqrt(2 * np.pi) / dt)


def test_scalar_linear_sde_exponent_is_a_minus_half_b_squared():
    a, b, dt, steps, paths = 1.0, 1.5, 0.01, 2000, 200
    cell = _scalar_cell(a, b, dt)
    out = lyapunov_exponent(cell, np.zeros((paths, steps, 1)), seed=1)
    exact = _discrete_exponent(a, b, dt)
    # Monte Carlo error of the estimate: b / sqrt(total time) for this chain.
    assert out["stderr"] == pytest.approx(b / np.sqrt(paths * steps * dt), rel=0.2)
    assert abs(out["exponent"] - exact) < 4 * out["stderr"]
    assert abs(exact - (a - b**2 / 2)) < 0.05  # the Euler-Maruyama bias at dt = 0.01
    assert abs(out["exponent"] - (a - b**2 / 2)) < 4 * out["stderr"] + 0.05


def test_scalar_bounds_are_tight_without_activation_term():
    """Scalar, W = 0: Theorem 3 gives [a - b^2, a + b^2 / 2] around a - b^2 / 2."""
    cell = _scalar_cell(0.3, 0.6, 0.01)
    bounds = lyapunov_bounds(cell)
    assert bounds["c_hi"] == pytest.approx(0.6, rel=1e-6)
    assert bounds["lower"] == pytest.approx(0.3 - 0.36, rel=1e-5)
    assert bounds["upper"] == pytest.approx(0.3 + 0.18, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_theorem3_interval_contains_simulated_exponent(seed):
    _, cell = make_model(
        5,
        seed=seed,
        scale=1.5,
        gamma=0.5,
        dt=0.01,
        beta=0.5,
        multiplicative=0.3,
        additive=0.05,
        dtype="float32",
    )
    inputs = np.random.default_rng(seed).normal(size=(40, 800, 1))
    out = lyapunov_exponent(cell, inputs, seed=seed)
    bounds = lyapunov_bounds(cell)
    slack = 4 * out["stderr"] + 0.05  # Monte Carlo error + Euler-Maruyama bias
    assert bounds["lower_valid"] - slack <= out["exponent"] <= bounds["upper"] + slack


def test_paper_lower_bound_fails_for_negative_w_but_valid_one_holds():
    """Scalar, A = -0.1, W = -2, no noise: Lambda = A + W = -2.1 < lambda_min(A) = -0.1."""
    cell = _scalar_cell(-0.1, 0.0, 0.01, w=-2.0)
    out = lyapunov_exponent(cell, np.zeros((2, 500, 1)), noise_scale=0.0)
    bounds = lyapunov_bounds(cell, noise_scale=0.0)
    assert out["exponent"] == pytest.approx(np.log(1 - 0.01 * 2.1) / 0.01, rel=1e-4)
    assert out["exponent"] < bounds["lower"] - 1.0
    # The corrected bound is tight here: Lambda = A + W = -2.1 in continuous time (the Euler
    # chain's exponent differs by O(dt)).
    assert bounds["lower_valid"] == pytest.approx(-2.1, rel=1e-6)
    assert abs(out["exponent"] - bounds["lower_valid"]) < 0.05


def test_bounds_refuse_non_lipschitz_cells_and_bad_perturbation():
    import keras

    from keras_nrnn import CoRNNCell

    cell = CoRNNCell(3)
    keras.layers.RNN(cell)(np.zeros((1, 2, 1), "float32"))
    with pytest.raises(ValueError, match="single state"):
        lyapunov_bounds(cell)
    _, lip = make_model(3)
    with pytest.raises(ValueError, match="`perturbation` must be > 0"):
        lyapunov_exponent(lip, np.zeros((1, 2, 1)), perturbation=0.0)
