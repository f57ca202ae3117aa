"""The integration schemes, alone and inside the cell, against numpy and closed-form moments.

- `Scheme.step` with given draws equals the formula of `keras_nrnn.schemes` written in numpy;
- the cell's inference update over a whole sequence, per scheme ("tamed":
  `h + dt f / (1 + ||dt f||)`, research noise: `h + d f` with a learnable per-unit `d`);
- one training step's empirical mean and std per scheme on 20,000 samples.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_nrnn import LipschitzCell, NoisyLipschitzCell, brownian, schemes
from keras_nrnn.noise import DiagonalNoise, ResearchNoise

UNITS, FEATURES, T, BATCH = 5, 2, 10, 4
N_SAMPLES = 20_000


def lipschitz_np(m, beta, gamma):
    m = m.astype(np.float64)
    return (1 - beta) * (m + m.T) + beta * (m - m.T) - gamma * np.eye(m.shape[0])


def drift_np(cell, h, x):
    a = lipschitz_np(keras.ops.convert_to_numpy(cell.m_a), cell.beta, cell.gamma_a)
    w = lipschitz_np(keras.ops.convert_to_numpy(cell.m_w), cell.beta, cell.gamma_w)
    u = keras.ops.convert_to_numpy(cell.kernel).astype(np.float64)
    b = keras.ops.convert_to_numpy(cell.bias).astype(np.float64)
    return h @ a.T + np.tanh(h @ w.T + x @ u + b)


def tamed_np(h, f, dt):
    inc = dt * f
    return h + inc / (1 + np.linalg.norm(inc, axis=-1, keepdims=True))


def randomize(cell, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    cell.set_weights([rng.normal(0, scale, w.shape).astype("float32") for w in cell.get_weights()])


# ------------------------------------------------------------------ Scheme.step with draws


@pytest.fixture
def hfd():
    rng = np.random.default_rng(0)
    h, f = rng.normal(size=(2, 3, 4)).astype("float32")
    xi = rng.normal(size=(3, 4)).astype("float32")
    u = rng.uniform(size=(3, 4)).astype("float32")
    return h, f, xi, u


def test_euler_maruyama_step_formula(hfd):
    h, f, xi, _ = hfd
    noise = DiagonalNoise(0.2, 0.3)
    got = keras.ops.convert_to_numpy(
        schemes.get("euler_maruyama").step(h, lambda _: f, 0.04, noise, (xi,))
    )
    want = h + 0.04 * f + (0.2 + 0.3 * f) * 0.2 * xi
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    det = keras.ops.convert_to_numpy(
        schemes.get("euler_maruyama").step(h, lambda _: f, 0.04, noise, None)
    )
    np.testing.assert_allclose(det, h + 0.04 * f, rtol=1e-6, atol=1e-7)


def test_tamed_step_formula_and_bound(hfd):
    h, f, xi, _ = hfd
    noise = DiagonalNoise(0.2, 0.0)
    scheme = schemes.get("tamed")
    got = keras.ops.convert_to_numpy(scheme.step(h, lambda _: f, 0.5, noise, (xi,)))
    want = tamed_np(h.astype(np.float64), f, 0.5) + 0.2 * np.sqrt(0.5) * xi
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    huge = keras.ops.convert_to_numpy(scheme.step(h, lambda _: 1e6 * f, 10.0, None, None))
    assert np.linalg.norm(huge - h, axis=-1).max() <= 1.0 + 1e-5  # the drift step never > 1


def test_research_step_formula(hfd):
    h, f, xi, u = hfd
    d = np.linspace(0.05, 0.3, 4).astype("float32")  # per-unit step
    noise = ResearchNoise(0.1, 0.4)
    scheme = schemes.get("euler_maruyama")
    got = keras.ops.convert_to_numpy(scheme.step(h, lambda _: f, d, noise, (xi, u)))
    want = h + d * f * (1 - 0.4 * u) + 0.1 * xi  # no sqrt(dt) on the additive part
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(scheme.step(h, lambda _: f, d, noise, None)),
        h + d * f,
        rtol=1e-6,
        atol=1e-7,
    )


def test_research_draw_gives_normal_and_uniform():
    key = brownian.next_key(keras.random.SeedGenerator(3))
    xi, u = (
        keras.ops.convert_to_numpy(t)
        for t in brownian.variates(ResearchNoise.variates, (N_SAMPLES,), "float32", key)
    )
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / N_SAMPLES)
    assert abs(xi.mean()) < 5 / np.sqrt(N_SAMPLES)
    assert abs(xi.std() - 1) < 5 / np.sqrt(2 * N_SAMPLES)
    assert abs(np.corrcoef(xi, u)[0, 1]) < 5 / np.sqrt(N_SAMPLES)  # two independent streams


def test_unknown_scheme_name():
    with pytest.raises(ValueError, match=r"`scheme`.*'rk4'"):
        schemes.get("rk4")


def test_milstein_refuses_research_noise_by_name():
    with pytest.raises(ValueError, match=r"milstein.*DiagonalNoise.*ResearchNoise"):
        LipschitzCell(UNITS, scheme="milstein", noise=ResearchNoise(0.1, 0.1))


def test_milstein_step_formula(hfd):
    h, f, xi, _ = hfd
    noise, dt = DiagonalNoise(0.2, 0.3), 0.04

    def drift(state):  # a drift that depends on the state, so the correction is not zero
        return keras.ops.convert_to_tensor(f) + 0.5 * state

    got = keras.ops.convert_to_numpy(schemes.get("milstein").step(h, drift, dt, noise, (xi,)))
    f0 = f + 0.5 * h
    s0 = 0.2 + 0.3 * f0
    support = h + dt * f0 + s0 * np.sqrt(dt)
    s1 = 0.2 + 0.3 * (f + 0.5 * support)
    d_b = np.sqrt(dt) * xi
    want = h + dt * f0 + s0 * d_b + (s1 - s0) * (d_b**2 - dt) / (2 * np.sqrt(dt))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- inference over a sequence


@pytest.fixture
def x_seq():
    return np.random.default_rng(1).normal(size=(BATCH, T, FEATURES)).astype("float32")


def run_layer(cell, x):
    layer = keras.layers.RNN(cell, return_sequences=True)
    layer.build(x.shape)
    return layer


def test_tamed_inference_sequence(x_seq):
    dt = 0.5  # large enough that the taming factor is far from 1
    cell = NoisyLipschitzCell(UNITS, dt=dt, scheme="tamed", additive_noise=0.1, seed=0)
    layer = run_layer(cell, x_seq)
    randomize(cell, seed=2, scale=1.0)
    h, want = np.zeros((BATCH, UNITS)), []
    factors = []
    for t in range(T):
        f = drift_np(cell, h, x_seq[:, t].astype(np.float64))
        factors.append(1 / (1 + np.linalg.norm(dt * f, axis=-1)))
        h = tamed_np(h, f, dt)
        want.append(h)
    assert min(np.min(fa) for fa in factors) < 0.8  # taming really acts
    got = keras.ops.convert_to_numpy(layer(x_seq))
    np.testing.assert_allclose(got, np.stack(want, 1), rtol=1e-5, atol=1e-6)


def test_research_inference_sequence_uses_per_unit_step(x_seq):
    cell = NoisyLipschitzCell(
        UNITS, dt=0.1, noise=ResearchNoise(0.1, 0.5), learnable_dt="per_unit", seed=0
    )
    layer = run_layer(cell, x_seq)
    randomize(cell, seed=3)
    d = np.linspace(0.02, 0.3, UNITS).astype("float32")
    cell.dt_variable.assign(d)
    h, want = np.zeros((BATCH, UNITS)), []
    for t in range(T):
        h = h + d * drift_np(cell, h, x_seq[:, t].astype(np.float64))
        want.append(h)
    got = keras.ops.convert_to_numpy(layer(x_seq))
    np.testing.assert_allclose(got, np.stack(want, 1), rtol=1e-5, atol=1e-6)


def test_research_per_unit_step_starts_at_dt():
    with pytest.warns(DeprecationWarning):  # version 0.1's spelling
        cell = LipschitzCell(UNITS, dt=0.07, scheme="research")
    cell.build((None, FEATURES))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(cell.dt_variable), np.full(UNITS, 0.07), rtol=1e-6
    )
    assert cell.dt_variable.trainable
    with pytest.warns(DeprecationWarning):
        fixed = LipschitzCell(UNITS, scheme="research", learnable_dt="none")
    assert fixed.learnable_dt == "none"


# ------------------------------------------------------------- one training step: moments


def one_step_increments(cell, h, x):
    hb = np.repeat(h[None], N_SAMPLES, 0).astype("float32")
    xb = np.repeat(x[None], N_SAMPLES, 0).astype("float32")
    out, _ = cell(xb, [hb], training=True)
    return keras.ops.convert_to_numpy(out).astype(np.float64) - hb


@pytest.fixture
def point():
    rng = np.random.default_rng(9)
    return rng.normal(size=UNITS), rng.normal(size=FEATURES)


def test_tamed_training_step_moments(point):
    h, x = point
    dt, add, mult = 0.5, 0.1, 0.4
    cell = NoisyLipschitzCell(
        UNITS, dt=dt, scheme="tamed", additive_noise=add, multiplicative_noise=mult, seed=5
    )
    cell.build((None, FEATURES))
    randomize(cell, seed=4, scale=1.0)
    f = drift_np(cell, h[None], x[None])[0]
    mean_want = tamed_np(h, f, dt) - h
    assert np.abs(mean_want - dt * f).max() > 0.05  # distinguishable from the untamed mean
    std_want = np.abs(add + mult * f) * np.sqrt(dt)
    inc = one_step_increments(cell, h, x)
    np.testing.assert_array_less(
        np.abs(inc.mean(0) - mean_want), 5 * std_want / np.sqrt(N_SAMPLES) + 1e-6
    )
    np.testing.assert_array_less(np.abs(inc.std(0) / std_want - 1), 5 / np.sqrt(2 * N_SAMPLES))


@pytest.mark.parametrize(("add", "mult"), [(0.0, 0.6), (0.05, 0.3)])
def test_research_training_step_moments(point, add, mult):
    h, x = point
    cell = NoisyLipschitzCell(
        UNITS, dt=0.1, noise=ResearchNoise(add, mult), learnable_dt="per_unit", seed=6
    )
    cell.build((None, FEATURES))
    randomize(cell, seed=5, scale=0.8)
    d = np.linspace(0.1, 0.5, UNITS)
    cell.dt_variable.assign(d.astype("float32"))
    d = d.astype("float32").astype(np.float64)
    f = drift_np(cell, h[None], x[None])[0]
    inc = one_step_increments(cell, h, x)
    # m ~ U(1 - mult, 1): E[m] = 1 - mult / 2, Var[m] = mult^2 / 12; xi has no sqrt(dt).
    mean_want = d * f * (1 - mult / 2)
    std_want = np.sqrt((d * f * mult) ** 2 / 12 + add**2)
    np.testing.assert_array_less(
        np.abs(inc.mean(0) - mean_want), 5 * std_want / np.sqrt(N_SAMPLES) + 1e-6
    )
    # The uniform factor has kurtosis 1.8, so the std's standard error is smaller than for
    # a Gaussian; 5 Gaussian standard errors is a conservative bound.
    np.testing.assert_array_less(np.abs(inc.std(0) / std_want - 1), 5 / np.sqrt(2 * N_SAMPLES))
    if add == 0.0:
        ratio = inc / (d * f)  # = m exactly, within float32 rounding
        assert ratio.min() >= 1 - mult - 1e-4 and ratio.max() <= 1 + 1e-4
        assert ratio.min() < 1 - mult + 0.01 and ratio.max() > 1 - 0.01  # fills the interval
