"""Robustness perturbations: statistics, exact FGSM steps, seeding and argument checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training import perturbations as pt

SHAPE = (100, 140, 1)  # 14,000 values
N = int(np.prod(SHAPE))


@pytest.fixture
def x():
    return np.random.default_rng(123).uniform(-2.0, 3.0, SHAPE).astype(np.float32)


# ----------------------------------------------------------------------------- noise statistics


@pytest.mark.parametrize("sigma", [0.4, 1.2])
def test_additive_noise_statistics_and_closed_form(x, sigma):
    out = pt.additive_white_noise(x, sigma, seed=5)
    assert out.shape == x.shape and out.dtype == np.float32
    dx = out.astype(np.float64) - x
    assert abs(dx.mean()) < 5 * sigma / np.sqrt(N)
    assert abs(dx.std() / sigma - 1) < 5 / np.sqrt(2 * N)
    expected = x + sigma * np.random.default_rng(5).standard_normal(SHAPE)
    np.testing.assert_allclose(out, expected.astype(np.float32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.4, 1.2])
def test_multiplicative_noise_statistics(x, sigma):
    out = pt.multiplicative_white_noise(x, sigma, seed=6)
    factor = out.astype(np.float64) / x
    assert abs(factor.mean() - 1) < 5 * sigma / np.sqrt(N)
    assert abs(factor.std() / sigma - 1) < 5 / np.sqrt(2 * N) + 1e-5


def test_zero_strength_is_identity(x):
    np.testing.assert_array_equal(pt.additive_white_noise(x, 0.0, seed=1), x)
    np.testing.assert_array_equal(pt.multiplicative_white_noise(x, 0, seed=1), x)
    np.testing.assert_array_equal(pt.salt_and_pepper(x, 0.0, seed=1), x)


@pytest.mark.parametrize("alpha", [0.03, 0.1, 0.5])
def test_salt_and_pepper_replaces_about_alpha_with_exact_extremes(x, alpha):
    out = pt.salt_and_pepper(x, alpha, seed=7)
    lo, hi = x.min(), x.max()
    changed = out != x
    # Every changed value is exactly the data min or max.
    assert set(np.unique(out[changed]).tolist()) <= {float(lo), float(hi)}
    tol = 5 * np.sqrt(alpha * (1 - alpha) / N)
    assert abs(changed.mean() - alpha) < tol
    # Values set to min / max (positions that already held min or max are 1 value each at most).
    tol_half = 5 * np.sqrt(alpha / 2 * (1 - alpha / 2) / N) + 2 / N
    assert abs((out == lo).mean() - alpha / 2) < tol_half
    assert abs((out == hi).mean() - alpha / 2) < tol_half


def test_salt_and_pepper_explicit_extremes_and_full_replacement(x):
    out = pt.salt_and_pepper(x, 1.0, seed=0, x_min=-10.0, x_max=10.0)
    assert set(np.unique(out).tolist()) == {-10.0, 10.0}


def test_dtypes(x):
    assert pt.additive_white_noise(x.astype(np.float64), 0.4, seed=0).dtype == np.float64
    ints = np.arange(12).reshape(3, 4, 1)
    assert pt.salt_and_pepper(ints, 0.5, seed=0).dtype == np.float32


# ----------------------------------------------------------------------------- seeding


@pytest.mark.parametrize(
    ("kind", "strength"),
    [("white_noise", 0.8), ("multiplicative_noise", 0.8), ("salt_and_pepper", 0.1)],
)
def test_same_seed_same_perturbation(x, kind, strength):
    a = pt.perturb(x, kind, strength, seed=11)
    b = pt.perturb(x.copy(), kind, strength, seed=11)
    c = pt.perturb(x, kind, strength, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.shares_memory(a, x)


def test_perturb_dispatches_to_the_kind_functions(x):
    np.testing.assert_array_equal(
        pt.perturb(x, "white_noise", 0.4, seed=3), pt.additive_white_noise(x, 0.4, seed=3)
    )
    np.testing.assert_array_equal(
        pt.perturb(x, "multiplicative_noise", 0.4, seed=3),
        pt.multiplicative_white_noise(x, 0.4, seed=3),
    )
    np.testing.assert_array_equal(
        pt.perturb(x, "salt_and_pepper", 0.05, seed=3, x_min=0.0, x_max=1.0),
        pt.salt_and_pepper(x, 0.05, seed=3, x_min=0.0, x_max=1.0),
    )


# ----------------------------------------------------------------------------- FGSM


def _linear_model(w: np.ndarray, b: float) -> keras.Model:
    T = w.shape[0]
    model = keras.Sequential([keras.Input((T, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.layers[-1].set_weights([w.reshape(T, 1).astype(np.float32), np.array([b], "float32")])
    return model


def test_fgsm_moves_each_value_by_r_in_the_closed_form_direction():
    rng = np.random.default_rng(0)
    T = 12
    w = rng.standard_normal(T)
    w[[2, 7]] = 0.0  # no gradient through these inputs
    x = rng.standard_normal((9, T, 1)).astype(np.float32)
    y = rng.standard_normal((9, 1)).astype(np.float32)
    model = _linear_model(w, 0.1)
    r = 0.05
    out = pt.fgsm(x, y, model, keras.losses.MeanSquaredError(), r, batch_size=4)

    # loss = (x.w + b - y)^2  ->  grad_x = 2 (x.w + b - y) w
    residual = x[:, :, 0].astype(np.float64) @ w + 0.1 - y[:, 0]
    sign = np.sign(residual[:, None] * w[None, :])[:, :, None]
    np.testing.assert_array_equal(out, x + (np.float32(r) * sign).astype(np.float32))
    moved = sign != 0
    np.testing.assert_allclose(np.abs(out - x)[moved], r, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out[~moved], x[~moved])
    assert (~moved).sum() == 2 * 9


def test_fgsm_increases_the_loss_of_a_small_classifier():
    rng = np.random.default_rng(1)
    init = keras.initializers.GlorotUniform
    model = keras.Sequential(
        [
            keras.Input((20, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="tanh", kernel_initializer=init(seed=0)),
            keras.layers.Dense(2, kernel_initializer=init(seed=1)),
        ]
    )
    x = rng.standard_normal((64, 20, 1)).astype(np.float32)
    y = rng.integers(0, 2, 64)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    before = float(loss(y, model(x)))
    out = pt.perturb(x, "fgsm", 0.1, seed=0, y=y, model=model, loss=loss)
    after = float(loss(y, model(out)))
    assert after > before
    # A string loss on softmax outputs works too.
    probs = keras.Sequential([model, keras.layers.Softmax()])
    out2 = pt.fgsm(x, y, probs, "sparse_categorical_crossentropy", 0.1)
    np.testing.assert_array_equal(out2, out)


def test_fgsm_zero_step_and_non_tensorflow_backend(monkeypatch):
    model = _linear_model(np.ones(4), 0.0)
    x = np.ones((2, 4, 1), "float32")
    y = np.zeros((2, 1), "float32")
    np.testing.assert_array_equal(pt.fgsm(x, y, model, "mse", 0.0), x)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(NotImplementedError, match="TensorFlow backend"):
        pt.fgsm(x, y, model, "mse", 0.1)


# ----------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda x: pt.additive_white_noise(x, -0.1, seed=0), "Argument `sigma`"),
        (lambda x: pt.additive_white_noise(x, float("nan"), seed=0), "Argument `sigma`"),
        (lambda x: pt.multiplicative_white_noise(x, -1, seed=0), "Argument `sigma`"),
        (lambda x: pt.salt_and_pepper(x, 1.5, seed=0), "Argument `alpha`"),
        (lambda x: pt.salt_and_pepper(x, -0.01, seed=0), "Argument `alpha`"),
        (lambda x: pt.salt_and_pepper(x, 0.1, seed=0, x_min=2.0, x_max=1.0), "x_min=2.0"),
        (lambda x: pt.additive_white_noise(x, 0.1, seed=-1), "Argument `seed`"),
        (lambda x: pt.additive_white_noise(x, 0.1, seed=1.5), "Argument `seed`"),
        (lambda x: pt.additive_white_noise(x, True, seed=0), "Argument `sigma`"),
        (lambda x: pt.perturb(x, "gaussian", 0.1, seed=0), "Argument `kind`.*'gaussian'"),
        (lambda x: pt.perturb(x, "white_noise", 0.1, seed=0, x_min=0.0), "Argument `x_min`"),
        (lambda x: pt.perturb(x, "fgsm", 0.1, seed=0, y=np.zeros(3)), "Argument `model`"),
        (lambda x: pt.fgsm(x, np.zeros(3), None, "mse", -0.1), "Argument `r`"),
        (lambda x: pt.fgsm(x, np.zeros(2), None, "mse", 0.1), "len\\(y\\)=2"),
        (lambda x: pt.robustness_grid("cifar"), "Argument `task`"),
    ],
)
def test_bad_arguments_name_the_argument(call, argument):
    x = np.zeros((3, 5, 1), "float32")
    with pytest.raises(ValueError, match=argument):
        call(x)


def test_sigma_error_message_shows_the_value():
    with pytest.raises(ValueError, match=r"received sigma=-0\.1"):
        pt.additive_white_noise(np.zeros(3), -0.1, seed=0)


# ----------------------------------------------------------------------------- grid


def test_robustness_grid_matches_the_paper():
    grid = pt.robustness_grid()
    assert grid == {
        "white_noise": (0.4, 0.8, 1.2),
        "multiplicative_noise": (0.4, 0.8, 1.2),
        "salt_and_pepper": (0.03, 0.05, 0.1),
        "fgsm": (0.01, 0.05, 0.1),
    }
    assert set(grid) <= set(pt.KINDS) and set(pt.robustness_grid("mnist")) <= set(pt.KINDS)
    grid["white_noise"] = ()
    assert pt.robustness_grid()["white_noise"] == (0.4, 0.8, 1.2)  # a copy each call
