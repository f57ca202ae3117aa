"""Numerics of the baseline cells (Antisymmetric, coRNN, expRNN) against independent numpy code.

- inference over a whole sequence equals a float64 numpy implementation of each paper's update
  (Chang et al. eq. 7; coRNN eq. 3 with the implicit damping solved in closed form; the expRNN
  map with `scipy.linalg.expm`, or a high-order numpy Taylor series if scipy is missing);
- structure: `W + gamma I` skew-symmetric; `exp(S)` orthogonal and equal to scipy's expm; the
  henaff / cayley initializations have the documented block form;
- noise: one training step has the mean and the standard deviation of the documented formula,
  zero noise gives exactly the inference output, training differs from inference.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_nrnn import (
    AntisymmetricCell,
    CoRNNCell,
    ExpRNNCell,
    NoisyAntisymmetricCell,
    NoisyCoRNNCell,
    NoisyExpRNNCell,
)
from keras_nrnn.cells.exprnn import SkewBlockInitializer, expm, modrelu

try:
    import scipy.linalg as scipy_linalg
except ImportError:  # pragma: no cover - scipy is installed in CI
    scipy_linalg = None

UNITS, FEATURES, T, BATCH = 6, 3, 12, 4
N_SAMPLES = 20_000


def to_np(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x)).astype(np.float64)


def taylor_expm_np(a: np.ndarray) -> np.ndarray:
    """Scaling and squaring with a 30-term Taylor series, in float64."""
    a = np.asarray(a, np.float64)
    s = max(0, math.ceil(math.log2(max(np.abs(a).sum(0).max(), 1e-300))) + 1)
    x = a / 2**s
    term, out = np.eye(len(a)), np.eye(len(a))
    for k in range(1, 31):
        term = term @ x / k
        out = out + term
    for _ in range(s):
        out = out @ out
    return out


def expm_np(a: np.ndarray) -> np.ndarray:
    """Reference exponential: scipy's, else the numpy Taylor series."""
    if scipy_linalg is not None:
        return scipy_linalg.expm(np.asarray(a, np.float64))
    return taylor_expm_np(a)


def randomize(cell, seed: int, scale: float = 0.5) -> None:
    rng = np.random.default_rng(seed)
    cell.set_weights([rng.normal(0, scale, w.shape).astype("float32") for w in cell.get_weights()])


def weights(cell) -> dict[str, np.ndarray]:
    return {w.path.split("/")[-1]: to_np(w) for w in cell.weights}


@pytest.fixture
def x_seq():
    return np.random.default_rng(0).normal(size=(BATCH, T, FEATURES)).astype("float32")


# --------------------------------------------------------------------- numpy references


def antisymmetric_np(cell, x: np.ndarray) -> np.ndarray:
    w = weights(cell)
    W = w["m_w"] - w["m_w"].T - cell.gamma * np.eye(cell.units)
    b = w.get("bias", np.zeros(cell.units))
    h, out = np.zeros((x.shape[0], cell.units)), []
    for t in range(x.shape[1]):
        h = h + cell.dt * np.tanh(h @ W.T + x[:, t] @ w["kernel"] + b)
        out.append(h)
    return np.stack(out, 1)


def cornn_np(cell, x: np.ndarray, dt=None, implicit=True):
    """coRNN eq. 3: z_n = z + dt (tanh(W y + Wz z + V u + b) - gamma y - eps z_n); y_n = y + dt z_n.

    The implicit `eps z_n` is solved for z_n directly (not via the cell's effective acceleration).
    """
    w = weights(cell)
    dt = cell.dt if dt is None else dt
    b = w.get("bias", np.zeros(cell.units))
    y = np.zeros((x.shape[0], cell.units))
    z = np.zeros_like(y)
    ys = []
    for t in range(x.shape[1]):
        drive = np.tanh(
            y @ w["recurrent_kernel"] + z @ w["velocity_kernel"] + x[:, t] @ w["kernel"] + b
        )
        if implicit:
            z = (z + dt * (drive - cell.gamma * y)) / (1 + dt * cell.epsilon)
        else:  # the coRNN reference code: damping at the old step
            z = z + dt * (drive - cell.gamma * y - cell.epsilon * z)
        y = y + dt * z
        ys.append(y)
    return np.stack(ys, 1), y, z


def exprnn_np(cell, x: np.ndarray) -> np.ndarray:
    w = weights(cell)
    Q = expm_np(w["m"] - w["m"].T)
    h, out = np.zeros((x.shape[0], cell.units)), []
    for t in range(x.shape[1]):
        z = x[:, t] @ w["kernel"] + h @ Q.T
        h = np.sign(z) * np.maximum(np.abs(z) + w["bias"], 0.0)  # the map, for every dt
        out.append(h)
    return np.stack(out, 1)


@pytest.mark.parametrize("cls", [AntisymmetricCell, NoisyAntisymmetricCell])
@pytest.mark.parametrize(("dt", "gamma", "use_bias"), [(0.01, 0.0001, True), (0.3, 0.5, False)])
def test_antisymmetric_sequence_matches_numpy(x_seq, cls, dt, gamma, use_bias):
    kwargs = {"additive_noise": 0.3, "seed": 0} if cls is NoisyAntisymmetricCell else {}
    cell = cls(UNITS, dt=dt, gamma=gamma, use_bias=use_bias, **kwargs)
    layer = keras.layers.RNN(cell, return_sequences=True)
    layer.build(x_seq.shape)
    randomize(cell, seed=1)
    got = to_np(layer(x_seq))
    want = antisymmetric_np(cell, x_seq.astype(np.float64))
    assert np.abs(want).max() > min(3 * dt, 0.1)  # several steps of size ~dt: not trivial
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [CoRNNCell, NoisyCoRNNCell])
@pytest.mark.parametrize(
    ("dt", "gamma", "epsilon", "use_bias"),
    [(0.042, 2.7, 4.7, True), (0.2, 0.5, 0.0, False), (0.1, 0.0, 3.0, True)],
)
def test_cornn_sequence_and_both_states_match_numpy(x_seq, cls, dt, gamma, epsilon, use_bias):
    kwargs = {"multiplicative_noise": 0.3, "seed": 0} if cls is NoisyCoRNNCell else {}
    cell = cls(UNITS, dt=dt, gamma=gamma, epsilon=epsilon, use_bias=use_bias, **kwargs)
    layer = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    layer.build(x_seq.shape)
    randomize(cell, seed=2)
    seq, y_last, z_last = (to_np(v) for v in layer(x_seq))
    ys, y_want, z_want = cornn_np(cell, x_seq.astype(np.float64))
    assert np.abs(ys).max() > 0.02
    np.testing.assert_allclose(seq, ys, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_last, y_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z_last, z_want, rtol=1e-5, atol=1e-6)


def test_cornn_explicit_damping_is_the_reference_code_update(x_seq):
    cell = NoisyCoRNNCell(UNITS, dt=0.1, gamma=1.0, epsilon=3.0, implicit_damping=False,
                          additive_noise=0.2, seed=0)
    layer = keras.layers.RNN(cell, return_sequences=True)
    layer.build(x_seq.shape)
    randomize(cell, seed=2)
    got = to_np(layer(x_seq))
    want = cornn_np(cell, x_seq.astype(np.float64), implicit=False)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    implicit = cornn_np(cell, x_seq.astype(np.float64), implicit=True)[0]
    assert np.abs(implicit - want).max() > 1e-3  # the two discretizations do differ


def test_cornn_per_unit_learnable_dt_enters_every_term(x_seq):
    cell = CoRNNCell(UNITS, learnable_dt="per_unit")
    layer = keras.layers.RNN(cell, return_sequences=True)
    layer.build(x_seq.shape)
    randomize(cell, seed=3)
    dt = np.linspace(0.02, 0.3, UNITS).astype("float32")
    cell.dt_variable.assign(dt)
    np.testing.assert_allclose(
        to_np(layer(x_seq)), cornn_np(cell, x_seq.astype(np.float64), dt.astype(np.float64))[0],
        rtol=1e-5, atol=1e-6,
    )


@pytest.mark.parametrize("cls", [ExpRNNCell, NoisyExpRNNCell])
@pytest.mark.parametrize(("dt", "init"), [(1.0, "henaff"), (1.0, "cayley"), (0.4, "henaff")])
def test_exprnn_sequence_matches_numpy(x_seq, cls, dt, init):
    kwargs = {"additive_noise": 0.3, "seed": 0} if cls is NoisyExpRNNCell else {}
    cell = cls(UNITS, dt=dt, recurrent_initializer=init, **kwargs)
    layer = keras.layers.RNN(cell, return_sequences=True)
    layer.build(x_seq.shape)
    rng = np.random.default_rng(4)
    # Keep M from its skew-block init (angles up to pi), randomize B and the modReLU bias.
    cell.kernel.assign(rng.normal(0, 0.7, cell.kernel.shape).astype("float32"))
    cell.bias.assign(rng.normal(0, 0.2, cell.bias.shape).astype("float32"))
    cell.m.assign(cell.m + rng.normal(0, 0.3, cell.m.shape).astype("float32"))
    got = to_np(layer(x_seq))
    want = exprnn_np(cell, x_seq.astype(np.float64))
    assert np.abs(want).max() > 0.3
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_exprnn_inference_is_exactly_the_map():
    """dt = 1: the cell returns modrelu(x B + h Q^T) itself, not h + 1.0 * (map - h)."""
    cell = NoisyExpRNNCell(UNITS, additive_noise=0.5, seed=1)
    cell.build((None, FEATURES))
    rng = np.random.default_rng(5)
    x = rng.normal(size=(BATCH, FEATURES)).astype("float32")
    h = rng.normal(0, 3.0, size=(BATCH, UNITS)).astype("float32")
    out, _ = cell(x, [h])
    cache = cell.precompute()
    want = modrelu(x @ cache["kernel"] + h @ cache["recurrent_kernel"], cache["bias"])
    assert np.array_equal(keras.ops.convert_to_numpy(out), keras.ops.convert_to_numpy(want))


# ----------------------------------------------------------------------------- structure


def test_antisymmetric_recurrent_matrix_plus_gamma_is_skew():
    gamma = 0.25
    cell = AntisymmetricCell(8, gamma=gamma, init_std=3.0)
    cell.build((None, 2))
    W = to_np(cell.recurrent_matrix())
    K = W + gamma * np.eye(8)
    assert np.abs(K).max() > 0.05
    np.testing.assert_array_equal(K, -K.T)
    m = to_np(cell.m_w)
    np.testing.assert_allclose(W, m - m.T - gamma * np.eye(8), atol=1e-7)
    np.testing.assert_allclose(cell.drift_matrices_numpy()["W"], W, atol=0)
    # Its spectrum sits on the line Re = -gamma.
    np.testing.assert_allclose(np.linalg.eigvals(W).real, -gamma, atol=1e-5)


@pytest.mark.parametrize("scale", [0.0, 0.01, 0.5, 3.0, 20.0])
def test_expm_of_skew_matrix_is_orthogonal_and_matches_reference(scale):
    rng = np.random.default_rng(int(scale * 100))
    m = rng.normal(0, 1, (16, 16))
    S = scale * (m - m.T) / np.abs(m - m.T).sum(0).max() * 4  # ||S||_1 = 4 scale
    Q = to_np(expm(S.astype("float32")))
    assert np.abs(Q.T @ Q - np.eye(16)).max() < 1e-5
    assert np.abs(Q @ Q.T - np.eye(16)).max() < 1e-5
    np.testing.assert_allclose(Q, expm_np(S), atol=2e-5 * max(1.0, scale))


def test_expm_of_a_general_matrix_matches_reference():
    a = np.random.default_rng(9).normal(0, 0.8, (7, 7))
    np.testing.assert_allclose(to_np(expm(a.astype("float32"))), expm_np(a), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(to_np(expm(a)), expm_np(a), rtol=1e-12, atol=1e-13)  # float64


def test_numpy_taylor_reference_agrees_with_scipy():
    if scipy_linalg is None:
        pytest.skip("scipy is not installed: the numpy reference is the only one")
    a = np.random.default_rng(10).normal(0, 2.0, (6, 6))
    np.testing.assert_allclose(taylor_expm_np(a), scipy_linalg.expm(a), rtol=1e-10)


def test_expm_gradient_is_the_rotation_derivative():
    """exp(theta J) = [[cos, sin], [-sin, cos]]; d/dtheta of entry (0, 1) is cos(theta)."""
    import tensorflow as tf

    j = tf.constant([[0.0, 1.0], [-1.0, 0.0]])
    for theta in (0.0, 0.7, 2.5):
        t = tf.Variable(theta)
        with tf.GradientTape() as tape:
            q = expm(t * j)[0, 1]
        np.testing.assert_allclose(float(tape.gradient(q, t)), math.cos(theta), atol=1e-5)
        np.testing.assert_allclose(float(q), math.sin(theta), atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "low", "high"), [("henaff", -math.pi, math.pi), ("cayley", -1.0, 0.0)]
)
def test_skew_block_initializers(kind, low, high):
    n = 9
    m = to_np(SkewBlockInitializer(kind, seed=3)((n, n)))
    S = m - m.T
    rows = np.arange(n // 2) * 2
    theta = S[rows, rows + 1]
    assert np.all((theta >= low) & (theta <= high)) and np.ptp(theta) > 0
    mask = np.zeros((n, n), bool)
    mask[rows, rows + 1] = mask[rows + 1, rows] = True
    assert np.all(S[~mask] == 0)
    # exp(S) is block-diagonal: 2x2 rotations by theta and a 1 for the odd unit.
    Q = to_np(expm(S.astype("float32")))
    np.testing.assert_allclose(Q[rows, rows], np.cos(theta), atol=1e-6)
    np.testing.assert_allclose(Q[rows, rows + 1], np.sin(theta), atol=1e-6)
    assert Q[-1, -1] == pytest.approx(1.0)


def test_exprnn_recurrent_matrix_orthogonal_at_init_and_after_training():
    cell = NoisyExpRNNCell(16, additive_noise=0.05, seed=0)
    model = keras.Sequential([keras.Input((5, 2)), keras.layers.RNN(cell), keras.layers.Dense(1)])
    Q = to_np(cell.recurrent_matrix())
    assert np.abs(Q.T @ Q - np.eye(16)).max() < 1e-5
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(16, 5, 2)), rng.normal(size=(16, 1)), epochs=3, verbose=0)
    m = to_np(cell.m)
    Q = to_np(cell.recurrent_matrix())
    assert np.abs(Q.T @ Q - np.eye(16)).max() < 1e-5
    np.testing.assert_allclose(Q, expm_np(m - m.T), atol=2e-5)


# ------------------------------------------------------------------------------- noise


def repeat(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[None], N_SAMPLES, axis=0).astype("float32")


def check_increment(inc, mean_want, std_want):
    n = N_SAMPLES
    assert np.all(std_want > 1e-3)
    np.testing.assert_array_less(np.abs(inc.mean(0) - mean_want), 5 * std_want / np.sqrt(n) + 1e-6)
    np.testing.assert_array_less(np.abs(inc.std(0) / std_want - 1), 5 / np.sqrt(2 * n))


@pytest.fixture
def point():
    rng = np.random.default_rng(7)
    return rng.normal(0, 1.0, UNITS), rng.normal(0, 1.0, UNITS), rng.normal(0, 1.0, FEATURES)


@pytest.mark.parametrize(("additive", "multiplicative"), [(0.3, 0.0), (0.1, 0.6)])
def test_antisymmetric_increment_std(point, additive, multiplicative):
    h, _, x = point
    dt = 0.1
    cell = NoisyAntisymmetricCell(UNITS, dt=dt, gamma=0.1, additive_noise=additive,
                                  multiplicative_noise=multiplicative, seed=11)
    cell.build((None, FEATURES))
    randomize(cell, seed=5, scale=0.6)
    w = weights(cell)
    f = np.tanh(h @ (w["m_w"] - w["m_w"].T - 0.1 * np.eye(UNITS)).T + x @ w["kernel"] + w["bias"])
    out, _ = cell(repeat(x), [repeat(h)], training=True)
    inc = to_np(out) - h
    check_increment(inc, dt * f, np.abs(additive + multiplicative * f) * np.sqrt(dt))


@pytest.mark.parametrize(("additive", "multiplicative"), [(0.4, 0.0), (0.2, 0.9)])
def test_cornn_velocity_noise_formula(point, additive, multiplicative):
    """z gets (additive + multiplicative acc) sqrt(dt) xi; y = y + dt z gets dt times that."""
    y, z, x = point
    dt, gamma, eps = 0.1, 1.5, 2.0
    cell = NoisyCoRNNCell(UNITS, dt=dt, gamma=gamma, epsilon=eps, additive_noise=additive,
                          multiplicative_noise=multiplicative, seed=12)
    cell.build((None, FEATURES))
    randomize(cell, seed=6, scale=0.6)
    w = weights(cell)
    pre = y @ w["recurrent_kernel"] + z @ w["velocity_kernel"] + x @ w["kernel"] + w["bias"]
    drive = np.tanh(pre)
    acc = (drive - gamma * y - eps * z) / (1 + dt * eps)
    y_new, (y_state, z_new) = cell(repeat(x), [repeat(y), repeat(z)], training=True)
    std_z = np.abs(additive + multiplicative * acc) * np.sqrt(dt)
    check_increment(to_np(z_new) - z, dt * acc, std_z)
    check_increment(to_np(y_new) - y, dt * (z + dt * acc), dt * std_z)
    # y_n - y_{n-1} = dt z_n exactly, sample by sample.
    np.testing.assert_allclose(to_np(y_new) - y, dt * to_np(z_new), atol=1e-6)
    assert np.array_equal(to_np(y_new), to_np(y_state))


@pytest.mark.parametrize(("dt", "additive", "multiplicative"), [(1.0, 0.3, 0.0), (1.0, 0.1, 0.5),
                                                               (0.25, 0.2, 0.4)])
def test_exprnn_increment_std(point, dt, additive, multiplicative):
    """h_new = h + dt f + (additive + multiplicative f) sqrt(dt) xi with f = (map - h) / dt."""
    h, _, x = point
    cell = NoisyExpRNNCell(UNITS, dt=dt, additive_noise=additive,
                           multiplicative_noise=multiplicative, seed=13)
    cell.build((None, FEATURES))
    randomize(cell, seed=7, scale=0.6)
    w = weights(cell)
    pre = x @ w["kernel"] + h @ expm_np(w["m"] - w["m"].T).T
    mapped = np.sign(pre) * np.maximum(np.abs(pre) + w["bias"], 0)
    f = (mapped - h) / dt
    out, _ = cell(repeat(x), [repeat(h)], training=True)
    check_increment(to_np(out) - h, dt * f, np.abs(additive + multiplicative * f) * np.sqrt(dt))


NOISY = [
    lambda **kw: NoisyAntisymmetricCell(UNITS, dt=0.2, **kw),
    lambda **kw: NoisyCoRNNCell(UNITS, **kw),
    lambda **kw: NoisyExpRNNCell(UNITS, **kw),
]
NOISY_IDS = ["antisymmetric", "cornn", "exprnn"]


@pytest.mark.parametrize("make", NOISY, ids=NOISY_IDS)
def test_zero_noise_training_equals_inference_and_noise_changes_training(x_seq, make):
    quiet = make(additive_noise=0.0, multiplicative_noise=0.0, seed=3)
    assert quiet.seed_generator is None
    layer = keras.layers.RNN(quiet, return_sequences=True)
    layer.build(x_seq.shape)
    randomize(quiet, seed=8)
    assert np.array_equal(to_np(layer(x_seq, training=True)), to_np(layer(x_seq, training=False)))

    noisy = make(additive_noise=0.2, multiplicative_noise=0.1, seed=3)
    noisy_layer = keras.layers.RNN(noisy, return_sequences=True)
    noisy_layer.build(x_seq.shape)
    noisy.set_weights(quiet.get_weights())
    infer = to_np(noisy_layer(x_seq))
    np.testing.assert_array_equal(infer, to_np(layer(x_seq)))
    np.testing.assert_array_equal(infer, to_np(noisy_layer(x_seq, training=False)))
    first = to_np(noisy_layer(x_seq, training=True))
    second = to_np(noisy_layer(x_seq, training=True))
    assert np.abs(first - infer).max() > 1e-3
    assert np.abs(first - second).max() > 1e-3  # fresh noise at every call
