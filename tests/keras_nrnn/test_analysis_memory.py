"""Memory function of a linear cell against `dt c^T (I + dt W)^k U`, and its decay rate."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_helpers import make_model, matrices

from keras_nrnn.analysis import memory_decay_rate, memory_function, step_response

DT = 0.1


def test_memory_function_closed_form():
    model, cell = make_model(4, features=2, activation="linear", use_bias=False, seed=3, dt=DT)
    mats = matrices(cell)
    step = np.eye(4) + DT * (mats["A"] + mats["W"])
    c = np.random.default_rng(0).normal(size=4)
    u = mats["U"] @ np.full(2, 0.7)  # the step input: 0.7 on both features
    expected = [DT * c @ np.linalg.matrix_power(step, k) @ u for k in range(30)]
    np.testing.assert_allclose(memory_function(cell, 30, c, amplitude=0.7), expected, rtol=1e-9)
    v = np.asarray(model.layers[-1].kernel)
    np.testing.assert_allclose(
        memory_function(model, 30, "logits", amplitude=0.7),
        [DT * (v[:, 1] - v[:, 0]) @ np.linalg.matrix_power(step, k) @ u for k in range(30)],
        rtol=1e-9,
    )
    states = step_response(cell, 30, amplitude=0.7)
    np.testing.assert_allclose(
        memory_function(cell, 30, amplitude=0.7), np.linalg.norm(np.diff(states, axis=0), axis=1)
    )


def test_decay_rate_is_the_spectral_radius_rate():
    _, cell = make_model(4, activation="linear", use_bias=False, seed=4, dt=DT, beta=0.0, gamma=0.5)
    mats = matrices(cell)
    radius = np.max(np.abs(np.linalg.eigvals(np.eye(4) + DT * (mats["A"] + mats["W"]))))
    rho = memory_function(cell, 400, np.ones(4))
    assert memory_decay_rate(rho, DT) == pytest.approx(-np.log(radius) / DT, rel=1e-3)


def test_bad_arguments():
    _, cell = make_model(3)
    with pytest.raises(ValueError, match="`timesteps` must be an int > 0"):
        memory_function(cell, 0)
    with pytest.raises(ValueError, match=r"`direction` must have shape \(3,\)"):
        memory_function(cell, 5, np.ones(2))
    with pytest.raises(ValueError, match="`tail` must be in"):
        memory_decay_rate(np.ones(5), 0.1, tail=0.0)
