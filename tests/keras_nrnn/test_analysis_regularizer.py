"""Eq. 18 against a numpy finite sum, and Theorem 1 by Monte Carlo, on linear cells."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_helpers import make_model, matrices, readout, softmax

from keras_nrnn.analysis import implicit_regularizer, margin_lower_bounds, noisy_loss_gap

DT = 0.1


def _linear(additive=0.0, multiplicative=0.0, timesteps=10, seed=0):
    return make_model(
        4,
        timesteps=timesteps,
        activation="linear",
        use_bias=False,
        seed=seed,
        additive=additive,
        multiplicative=multiplicative,
        dt=DT,
    )


def _numpy_terms(cell, model, x):
    mats = matrices(cell)
    k = mats["A"] + mats["W"]
    step = np.eye(4) + DT * k
    h = np.zeros((x.shape[0], 4))
    drifts = []
    for m in range(x.shape[1]):
        f = h @ k.T + x[:, m] @ mats["U"].T
        drifts.append(f)
        h = h + DT * f
    v, c = readout(model)
    return step, np.stack(drifts, axis=1), h, v, softmax(h @ v.T + c)


def test_regularizer_equals_numpy_finite_sum():
    model, cell = _linear(additive=0.2, multiplicative=0.3, seed=1)
    x = np.random.default_rng(1).normal(size=(3, 10, 1))
    step, drifts, _, v, p = _numpy_terms(cell, model, x)
    expected = np.zeros(3)
    for b in range(3):
        hess = v.T @ (np.diag(p[b]) - np.outer(p[b], p[b])) @ v
        for m in range(1, 11):  # eq. 18: sum over m = 1..M, Phi_{M-1,m} = step^(M - m)
            phi = np.linalg.matrix_power(step, 10 - m)
            sigma = np.diag(0.2 + 0.3 * drifts[b, m - 1])
            expected[b] += 0.5 * DT * np.trace(sigma.T @ phi.T @ hess @ phi @ sigma)
    np.testing.assert_allclose(implicit_regularizer(model, x), expected, rtol=1e-10)
    np.testing.assert_allclose(
        implicit_regularizer(model, x, noise_scale=2.0), 4 * expected, rtol=1e-10
    )
    # A deterministic cell with the same weights, evaluated at the noisy cell's levels.
    det_model, det_cell = _linear(seed=9)
    for name in ("m_a", "m_w", "kernel"):
        getattr(det_cell, name).assign(getattr(cell, name))
    det_model.layers[-1].set_weights(model.layers[-1].get_weights())
    assert implicit_regularizer(det_model, x).max() == 0.0
    np.testing.assert_allclose(
        implicit_regularizer(det_model, x, noise_levels=(0.2, 0.3)), expected, rtol=1e-10
    )


def test_theorem1_mean_noisy_loss_gap_matches_regularizer():
    """Linear drift + additive noise: Q = 0, the gap is R + O(eps^4) (antithetic pairs)."""
    model, _ = _linear(additive=0.05, timesteps=20, seed=2)
    x = np.random.default_rng(2).normal(size=(8, 20, 1))
    y = np.array([0, 1] * 4)
    out = noisy_loss_gap(model, x, y, samples=100, seed=3)
    assert out["predicted"] > 0
    assert abs(out["gap"] - out["predicted"]) < 4 * out["stderr"] + 0.02 * out["predicted"]
    assert out["stderr"] < 0.1 * out["predicted"]  # the check has power


def test_margin_bound_equals_numpy_closed_form():
    model, cell = _linear(seed=4)
    x = np.random.default_rng(4).normal(size=(3, 10, 1))
    y = np.array([0, 1, 1])
    step, _, _, v, p = _numpy_terms(cell, model, x)
    mats = matrices(cell)
    chain = DT * sum(np.linalg.norm(np.linalg.matrix_power(step, j), 2) for j in range(10))
    constant = np.linalg.norm(v, 2) * np.linalg.norm(mats["U"], 2)  # D_m = I: C = ||V|| ||U||
    score = np.sqrt(2) * (p[np.arange(3), y] - p[np.arange(3), 1 - y])
    out = margin_lower_bounds(model, x, y)
    np.testing.assert_allclose(out["score"], score, rtol=1e-10)
    np.testing.assert_allclose(out["constant"], constant, rtol=1e-10)
    np.testing.assert_allclose(out["gamma"], score / (constant * chain), rtol=1e-10)


def test_bad_labels_and_samples_are_refused():
    model, _ = _linear(additive=0.1)
    with pytest.raises(ValueError, match="`labels` must lie in"):
        margin_lower_bounds(model, np.zeros((2, 10, 1)), np.array([0, 2]))
    with pytest.raises(ValueError, match="`samples` must be an int > 0"):
        noisy_loss_gap(model, np.zeros((2, 10, 1)), np.array([0, 1]), samples=0)
