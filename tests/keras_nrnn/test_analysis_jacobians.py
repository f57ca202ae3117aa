"""Jacobian products of `keras_nrnn.analysis` against finite differences and closed forms."""

from __future__ import annotations

import numpy as np
from analysis_helpers import make_model, matrices

from keras_nrnn.analysis import (
    jacobian_product,
    jacobian_product_norms,
    state_jacobians,
    trajectory,
)


def _step_np(mats, h, x, dt):
    return h + dt * (h @ mats["A"].T + np.tanh(h @ mats["W"].T + x @ mats["U"].T + mats["b"]))


def test_trajectory_matches_numpy_recursion():
    model, cell = make_model(5, features=2, timesteps=8, seed=1)
    x = np.random.default_rng(2).normal(size=(3, 8, 2))
    states = trajectory(model, x)
    mats, h = matrices(cell), np.zeros((3, 5))
    for m in range(8):
        h = _step_np(mats, h, x[:, m], 0.1)
        np.testing.assert_allclose(states[:, m + 1], h, rtol=1e-10, atol=1e-12)


def test_state_jacobians_match_central_differences():
    _, cell = make_model(4, features=2, timesteps=6, seed=3, scale=2.0)
    x = np.random.default_rng(4).normal(size=(2, 6, 2))
    jac = state_jacobians(cell, x)
    states = trajectory(cell, x)
    mats, eps = matrices(cell), 1e-6
    for m in (0, 3, 5):
        for j in range(4):
            step = np.zeros(4)
            step[j] = eps
            plus = _step_np(mats, states[:, m] + step, x[:, m], 0.1)
            minus = _step_np(mats, states[:, m] - step, x[:, m], 0.1)
            np.testing.assert_allclose(jac[:, m, :, j], (plus - minus) / (2 * eps), atol=1e-8)


def test_linear_cell_products_are_matrix_powers():
    model, cell = make_model(4, timesteps=12, activation="linear", use_bias=False, seed=5)
    mats = matrices(cell)
    step = np.eye(4) + 0.1 * (mats["A"] + mats["W"])
    x = np.random.default_rng(6).normal(size=(2, 12, 1))
    np.testing.assert_allclose(
        jacobian_product(cell, x, 9, 3)[1], np.linalg.matrix_power(step, 7), atol=1e-12
    )
    np.testing.assert_allclose(jacobian_product(cell, x, 4, 5)[0], np.eye(4), atol=0)
    norms = jacobian_product_norms(model, x)
    expected = [np.linalg.norm(np.linalg.matrix_power(step, lag), 2) for lag in range(13)]
    np.testing.assert_allclose(norms[0], expected, rtol=1e-10)
    np.testing.assert_allclose(norms[1], expected, rtol=1e-10)


def test_nonlinear_norms_equal_norms_of_explicit_products():
    _, cell = make_model(4, timesteps=7, seed=7, scale=3.0)
    x = np.random.default_rng(8).normal(size=(2, 7, 1))
    norms = jacobian_product_norms(cell, x)
    for lag in (1, 4, 7):
        product = jacobian_product(cell, x, 6, 7 - lag)
        np.testing.assert_allclose(norms[:, lag], np.linalg.norm(product, 2, axis=(1, 2)))


def test_bad_inputs_name_the_argument():
    import pytest

    _, cell = make_model(3, timesteps=4)
    with pytest.raises(ValueError, match="`inputs` must have shape"):
        trajectory(cell, np.zeros((4, 1)))
    with pytest.raises(ValueError, match="0 <= m < M=4"):
        jacobian_product(cell, np.zeros((1, 4, 1)), 4, 0)
