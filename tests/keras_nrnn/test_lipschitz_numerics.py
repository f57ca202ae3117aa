"""Numerics of the Lipschitz cells against an independent numpy implementation of the paper.

- inference over a whole sequence equals the deterministic update
  `h <- h + dt (A h + tanh(W h + U x + b))` with A, W formed in numpy (appendix eq. 143-144);
- one Euler-Maruyama step in training mode has mean `dt f` and standard deviation
  `|additive + multiplicative f| sqrt(dt)` (eq. 5), checked on 20,000 samples;
- seeding: same seed, same noise; consecutive steps and calls, independent noise.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from backend_helpers import recurrent_layer

from keras_nrnn import LipschitzCell, NoisyLipschitzCell

UNITS, FEATURES, T, BATCH = 6, 3, 12, 5
N_SAMPLES = 20_000


def lipschitz_np(m: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    """Appendix eq. 143-144, written out in float64."""
    m = m.astype(np.float64)
    return (1 - beta) * (m + m.T) + beta * (m - m.T) - gamma * np.eye(m.shape[0])


def drift_np(cell, h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """f(h, x) = A h + tanh(W h + U x + b) for row vectors, from the cell's own weights."""
    a = lipschitz_np(keras.ops.convert_to_numpy(cell.m_a), cell.beta, cell.gamma_a)
    w = lipschitz_np(keras.ops.convert_to_numpy(cell.m_w), cell.beta, cell.gamma_w)
    u = keras.ops.convert_to_numpy(cell.kernel).astype(np.float64)
    b = np.zeros(cell.units) if cell.bias is None else keras.ops.convert_to_numpy(cell.bias)
    return h @ a.T + np.tanh(h @ w.T + x @ u + b)


def run_np(cell, x: np.ndarray, dt) -> np.ndarray:
    """All states of the deterministic Euler recursion, shape (batch, time, units)."""
    h = np.zeros((x.shape[0], cell.units))
    out = []
    for t in range(x.shape[1]):
        h = h + dt * drift_np(cell, h, x[:, t].astype(np.float64))
        out.append(h)
    return np.stack(out, axis=1)


def randomize(cell, seed: int, scale: float = 0.4) -> None:
    """Give every weight a random O(1) value so that the drift is far from trivial."""
    rng = np.random.default_rng(seed)
    cell.set_weights([rng.normal(0, scale, w.shape).astype("float32") for w in cell.get_weights()])


@pytest.fixture
def x_seq():
    return np.random.default_rng(0).normal(size=(BATCH, T, FEATURES)).astype("float32")


@pytest.mark.parametrize(
    ("beta", "gamma_a", "gamma_w", "dt", "use_bias"),
    [(0.75, 0.001, 0.001, 0.1, True), (0.0, 0.5, 0.0, 0.05, True), (1.0, 0.0, 0.3, 0.2, False)],
)
def test_inference_sequence_matches_numpy(x_seq, beta, gamma_a, gamma_w, dt, use_bias):
    cell = LipschitzCell(UNITS, dt=dt, beta=beta, gamma_a=gamma_a, gamma_w=gamma_w,
                         use_bias=use_bias)
    layer = recurrent_layer(cell, return_sequences=True)
    layer.build(x_seq.shape)
    randomize(cell, seed=1)
    got = keras.ops.convert_to_numpy(layer(x_seq))
    want = run_np(cell, x_seq, dt)
    assert np.abs(want).max() > 0.1  # the comparison is not between two near-zero arrays
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_noisy_cell_inference_is_the_deterministic_cell(x_seq):
    noisy = NoisyLipschitzCell(UNITS, dt=0.1, additive_noise=0.3, multiplicative_noise=0.2, seed=0)
    layer = recurrent_layer(noisy, return_sequences=True)
    layer.build(x_seq.shape)
    randomize(noisy, seed=2)
    want = run_np(noisy, x_seq, 0.1)
    for training in (False, None):
        got = keras.ops.convert_to_numpy(layer(x_seq, training=training))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    noisy_out = keras.ops.convert_to_numpy(layer(x_seq, training=True))
    assert np.abs(noisy_out - want).max() > 1e-2


@pytest.mark.parametrize("mode", ["scalar", "per_unit"])
def test_learnable_dt_enters_the_update(x_seq, mode):
    cell = LipschitzCell(UNITS, dt=0.1, learnable_dt=mode)
    layer = recurrent_layer(cell, return_sequences=True)
    layer.build(x_seq.shape)
    randomize(cell, seed=3)
    dt = np.linspace(0.05, 0.2, UNITS) if mode == "per_unit" else np.float64(0.17)
    cell.dt_variable.assign(np.asarray(dt, "float32"))
    assert tuple(cell.dt_variable.shape) == (() if mode == "scalar" else (UNITS,))
    got = keras.ops.convert_to_numpy(layer(x_seq))
    np.testing.assert_allclose(got, run_np(cell, x_seq, dt.astype("float32")), rtol=1e-5,
                               atol=1e-6)


def test_drift_matrices_numpy_is_the_parametrization():
    cell = LipschitzCell(UNITS, beta=0.3, gamma_a=0.2, gamma_w=0.05)
    cell.build((None, FEATURES))
    randomize(cell, seed=4)
    mats = cell.drift_matrices_numpy()
    m_a = keras.ops.convert_to_numpy(cell.m_a)
    np.testing.assert_allclose(mats["A"], lipschitz_np(m_a, 0.3, 0.2), rtol=1e-6, atol=1e-6)
    # beta = 0.3: symmetric part weighted 0.7, skew part 0.3.
    np.testing.assert_allclose((mats["A"] + mats["A"].T) / 2 + 0.2 * np.eye(UNITS),
                               0.7 * (m_a + m_a.T), rtol=1e-5, atol=1e-6)


def test_initial_recurrent_weights_have_the_paper_scale():
    units = 16
    cell = LipschitzCell(units, init_std=0.1)
    cell.build((None, 2))
    m = np.concatenate([keras.ops.convert_to_numpy(cell.m_a).ravel(),
                        keras.ops.convert_to_numpy(cell.m_w).ravel()])
    expected = 0.1 / units
    # 512 samples: the sample std is within ~4 standard errors (1/sqrt(2 n)) of the target.
    assert abs(m.std() / expected - 1) < 4 / np.sqrt(2 * m.size)
    assert abs(m.mean()) < 4 * expected / np.sqrt(m.size)


# ------------------------------------------------------------------ one-step noise statistics


def one_step(cell, h: np.ndarray, x: np.ndarray, training: bool) -> np.ndarray:
    hb = np.repeat(h[None], N_SAMPLES, axis=0).astype("float32")
    xb = np.repeat(x[None], N_SAMPLES, axis=0).astype("float32")
    out, _ = cell(xb, [hb], training=training)
    return keras.ops.convert_to_numpy(out).astype(np.float64) - hb


@pytest.fixture
def point():
    rng = np.random.default_rng(7)
    return rng.normal(0, 1.0, UNITS), rng.normal(0, 1.0, FEATURES)


@pytest.mark.parametrize(("additive", "multiplicative"), [(0.3, 0.0), (0.0, 0.8), (0.1, 0.6)])
def test_euler_maruyama_increment_mean_and_std(point, additive, multiplicative):
    h, x = point
    dt = 0.1
    cell = NoisyLipschitzCell(UNITS, dt=dt, additive_noise=additive,
                              multiplicative_noise=multiplicative, seed=11)
    cell.build((None, FEATURES))
    randomize(cell, seed=5, scale=0.6)
    f = drift_np(cell, h[None], x[None])[0]
    assert np.abs(f).min() > 0.05  # every unit has a multiplicative part worth measuring
    inc = one_step(cell, h, x, training=True)
    mean_want = dt * f
    std_want = np.abs(additive + multiplicative * f) * np.sqrt(dt)
    n = N_SAMPLES
    np.testing.assert_array_less(np.abs(inc.mean(0) - mean_want), 5 * std_want / np.sqrt(n) + 1e-6)
    np.testing.assert_array_less(np.abs(inc.std(0) / std_want - 1), 5 / np.sqrt(2 * n))
    # Gaussian increments: kurtosis 3 (within a few standard errors, sqrt(24 / n)).
    z = (inc - inc.mean(0)) / inc.std(0)
    np.testing.assert_array_less(np.abs((z**4).mean(0) - 3), 6 * np.sqrt(24 / n))
    # Inference: the deterministic increment, no spread across the identical rows beyond the
    # matmul kernel's row-dependent rounding (1 ulp of h on torch, 6e-8), four orders of
    # magnitude below the smallest training spread here (std_want >= 0.012).
    det = one_step(cell, h, x, training=False)
    assert np.ptp(det, axis=0).max() <= 1e-6 < std_want.min() / 1e3
    np.testing.assert_allclose(det[0], mean_want, rtol=1e-4, atol=1e-6)


def test_zero_noise_training_equals_inference(x_seq):
    cell = NoisyLipschitzCell(UNITS, additive_noise=0.0, multiplicative_noise=0.0, seed=3)
    layer = recurrent_layer(cell, return_sequences=True)
    layer.build(x_seq.shape)
    randomize(cell, seed=6)
    assert cell.seed_generator is None
    train = keras.ops.convert_to_numpy(layer(x_seq, training=True))
    infer = keras.ops.convert_to_numpy(layer(x_seq, training=False))
    assert np.array_equal(train, infer)


# ------------------------------------------------------------------------------ seeding


def noisy_layer(seed, additive=0.2, units=UNITS, return_sequences=True):
    cell = NoisyLipschitzCell(units, additive_noise=additive, multiplicative_noise=0.1, seed=seed)
    layer = recurrent_layer(cell, return_sequences=return_sequences)
    layer.build((None, T, FEATURES))
    randomize(cell, seed=8)
    return layer


def test_same_seed_same_noise_different_seed_different_noise(x_seq):
    a = keras.ops.convert_to_numpy(noisy_layer(1)(x_seq, training=True))
    b = keras.ops.convert_to_numpy(noisy_layer(1)(x_seq, training=True))
    c = keras.ops.convert_to_numpy(noisy_layer(2)(x_seq, training=True))
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_consecutive_calls_draw_fresh_noise(x_seq):
    layer = noisy_layer(4)
    first = keras.ops.convert_to_numpy(layer(x_seq, training=True))
    second = keras.ops.convert_to_numpy(layer(x_seq, training=True))
    assert np.abs(first - second).max() > 1e-3


def test_steps_of_a_sequence_get_independent_increments():
    """With a zero drift, h_t is the sum of the noise increments: they must be i.i.d."""
    units, steps, dt, additive = 4, 3, 0.25, 0.5
    cell = NoisyLipschitzCell(units, dt=dt, gamma_a=0.0, gamma_w=0.0, additive_noise=additive,
                              seed=21, kernel_initializer="zeros")
    layer = recurrent_layer(cell, return_sequences=True)
    layer.build((None, steps, 1))
    cell.set_weights([np.zeros(w.shape, "float32") for w in cell.get_weights()])
    hs = keras.ops.convert_to_numpy(
        layer(np.ones((N_SAMPLES, steps, 1), "float32"), training=True)).astype(np.float64)
    incs = np.diff(np.concatenate([np.zeros((N_SAMPLES, 1, units)), hs], axis=1), axis=1)
    xi = incs / (additive * np.sqrt(dt))  # should be i.i.d. N(0, 1) over (step, unit)
    flat = xi.reshape(N_SAMPLES, steps * units)
    bound = 5 / np.sqrt(N_SAMPLES)
    np.testing.assert_array_less(np.abs(flat.mean(0)), bound)
    np.testing.assert_array_less(np.abs(flat.std(0) - 1), bound)
    corr = np.corrcoef(flat, rowvar=False)
    off_diag = corr[~np.eye(steps * units, dtype=bool)]
    assert np.abs(off_diag).max() < bound  # across steps AND across units
