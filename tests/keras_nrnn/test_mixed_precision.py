"""Dtype policies `mixed_float16` and `mixed_bfloat16`: float32 variables, low-precision
compute, finite training, and noise that survives the low-precision state."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_nrnn import NoisyLipschitzCell

UNITS, FEATURES, T, BATCH = 8, 3, 20, 32
POLICIES = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


@pytest.fixture(params=sorted(POLICIES))
def policy(request):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    try:
        yield request.param
    finally:
        keras.config.set_dtype_policy(previous)


def data(seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(BATCH, T, FEATURES)).astype("float32")
    return xs, (xs[:, :, 0].mean(1) > 0).astype("int32")


def test_variables_float32_compute_low_precision_and_training_finite(policy):
    compute = POLICIES[policy]
    cell = NoisyLipschitzCell(UNITS, additive_noise=0.06, multiplicative_noise=0.03, seed=0,
                              learnable_dt="per_unit")
    model = keras.Sequential([
        keras.Input((T, FEATURES)),
        keras.layers.RNN(cell),
        keras.layers.Dense(2, dtype="float32"),
    ])
    assert cell.compute_dtype == compute and cell.variable_dtype == "float32"
    names = {w.path.split("/")[-1] for w in cell.weights}
    assert names == {"kernel", "m_a", "m_w", "bias", "dt"}
    assert all(w.dtype == "float32" for w in model.weights)
    xs, ys = data()
    out = model.layers[0](xs, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == compute
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    hist = model.fit(xs, ys, batch_size=8, epochs=1, verbose=0)  # 4 steps
    assert np.all(np.isfinite(hist.history["loss"]))
    for w0, w in zip(before, model.trainable_weights, strict=True):
        w = keras.ops.convert_to_numpy(w)
        assert w.dtype == np.float32 and np.all(np.isfinite(w))
        assert not np.array_equal(w0, w)
    assert all(w.dtype == "float32" for w in model.weights)
    pred = model.predict(xs, verbose=0)
    assert np.all(np.isfinite(pred))


def test_inference_close_to_float32(policy):
    """Low-precision inference stays within the policy's rounding of the float32 result."""
    xs, _ = data(1)
    cell = NoisyLipschitzCell(UNITS, additive_noise=0.1, seed=0)
    layer = keras.layers.RNN(cell, return_sequences=True)
    layer.build(xs.shape)
    keras.config.set_dtype_policy("float32")
    ref_layer = keras.layers.RNN(NoisyLipschitzCell(UNITS, additive_noise=0.1, seed=0),
                                 return_sequences=True)
    ref_layer.build(xs.shape)
    ref_layer.set_weights(layer.get_weights())
    ref = keras.ops.convert_to_numpy(ref_layer(xs))
    got = keras.ops.convert_to_numpy(keras.ops.cast(layer(xs), "float32"))
    tol = 2e-2 if policy == "mixed_bfloat16" else 3e-3
    np.testing.assert_allclose(got, ref, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("additive", [0.1, 1e-3])
def test_noise_reaches_the_low_precision_state(policy, additive):
    dt = 0.1
    xs, _ = data(2)
    layer = keras.layers.RNN(NoisyLipschitzCell(UNITS, dt=dt, additive_noise=additive, seed=3),
                             return_sequences=True)
    layer.build(xs.shape)
    train = keras.ops.convert_to_numpy(keras.ops.cast(layer(xs, training=True), "float32"))
    infer = keras.ops.convert_to_numpy(keras.ops.cast(layer(xs, training=False), "float32"))
    diff = train.astype(np.float64) - infer
    assert np.count_nonzero(diff[:, -1]) > 0.5 * BATCH * UNITS  # survives all T steps
    # Step 1 starts from h = 0 in both modes: the difference is additive * sqrt(dt) * xi.
    first = diff[:, 0].ravel()
    expected = additive * np.sqrt(dt)
    assert abs(first.std() / expected - 1) < 0.2, (first.std(), expected)
    assert abs(first.mean()) < 5 * expected / np.sqrt(first.size)
    # At the last step the accumulated noise has the order of additive * sqrt(dt * T).
    ratio = diff[:, -1].std() / (additive * np.sqrt(dt * T))
    assert 0.3 < ratio < 3, ratio


def test_one_step_moments_in_low_precision(policy):
    n, dt, add, mult = 20_000, 0.1, 0.1, 0.3
    cell = NoisyLipschitzCell(4, dt=dt, additive_noise=add, multiplicative_noise=mult, seed=4)
    cell.build((None, 2))
    rng = np.random.default_rng(5)
    cell.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in cell.get_weights()])
    h = np.tile(rng.normal(0, 0.1, 4), (n, 1)).astype("float32")
    x = np.tile(rng.normal(0, 1.0, 2), (n, 1)).astype("float32")
    det, _ = cell(x, [h], training=False)
    out, _ = cell(x, [h], training=True)
    assert keras.backend.standardize_dtype(out.dtype) == POLICIES[policy]
    det = keras.ops.convert_to_numpy(keras.ops.cast(det, "float32")).astype(np.float64)
    out = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")).astype(np.float64)
    f = (det[0] - h[0]) / dt  # the low-precision drift, as the cell computed it
    std_want = np.abs(add + mult * f) * np.sqrt(dt)
    inc = out - h
    spacing = 2.0**-7 * 0.25 if policy == "mixed_bfloat16" else 2.0**-10 * 0.25
    np.testing.assert_array_less(np.abs(inc.mean(0) - dt * f), 5 * std_want / np.sqrt(n) + spacing)
    np.testing.assert_array_less(np.abs(inc.std(0) / std_want - 1), 0.05)


def test_policy_is_reset_after_the_tests():
    """Runs last in this file: the fixture restored the global policy."""
    assert keras.config.dtype_policy().name == "float32"
