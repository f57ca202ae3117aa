"""The analysis adapter's view of a cell: step, dt and the diffusion of each noise model."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_nrnn import LipschitzCell
from keras_nrnn.analysis import _cell_access as access
from keras_nrnn.noise import DiagonalNoise, ResearchNoise


def _built(**kwargs):
    cell = LipschitzCell(3, dt=0.1, **kwargs)
    keras.layers.RNN(cell)(np.zeros((1, 2, 1), "float32"))
    return cell


def test_noise_levels_of_each_noise_model():
    assert access.noise_levels(_built()) == (0.0, 0.0)
    assert access.noise_levels(_built(noise=DiagonalNoise(0.06, 0.03))) == (0.06, 0.03)
    additive, multiplicative = access.noise_levels(_built(noise=ResearchNoise(0.02, 0.3)))
    # Same second moments: additive xi = (a / sqrt(dt)) sqrt(dt) xi; dt f U(1 - s, 1) has
    # standard deviation dt |f| s / sqrt(12) = (s sqrt(dt / 12)) |f| sqrt(dt).
    assert additive == pytest.approx(0.02 / math.sqrt(0.1))
    assert multiplicative == pytest.approx(0.3 * math.sqrt(0.1 / 12))
    assert access.noise_levels(_built(), (0.1, 0.2)) == (0.1, 0.2)
    with pytest.raises(ValueError, match="`noise_levels` must be two numbers >= 0"):
        access.noise_levels(_built(), (-0.1, 0.0))


def test_drift_is_step_difference_over_learnt_per_unit_dt():
    cell = _built(learnable_dt="per_unit")
    dt_weight = next(w for w in cell.weights if w.name == "dt")
    dt_weight.assign(np.array([0.1, 0.2, 0.05], "float32"))
    np.testing.assert_allclose(access.time_step(cell), [0.1, 0.2, 0.05], rtol=1e-6)
    x, h = np.ones((2, 1), "float32"), np.full((2, 3), 0.5, "float32")
    step = np.asarray(access.step(cell, x, h))
    f = np.asarray(access.drift(cell, x, h))
    np.testing.assert_allclose(h + f * np.array([0.1, 0.2, 0.05]), step, rtol=1e-5)
