"""SDERNN: same weights, config and inference results as keras.layers.RNN(cell)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from backend_helpers import tensorflow_only

from keras_nrnn import (
    SDERNN,
    AntisymmetricCell,
    LipschitzCell,
    NoisyLipschitzCell,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 9, 3)).astype("float32")


def assert_close(actual, desired, **kwargs):
    """`np.testing.assert_allclose` on backend tensors (torch tensors need converting)."""
    to_np = keras.ops.convert_to_numpy
    np.testing.assert_allclose(to_np(actual), to_np(desired), **kwargs)


def assert_same(actual, desired):
    to_np = keras.ops.convert_to_numpy
    np.testing.assert_array_equal(to_np(actual), to_np(desired))


def _pair(cell_factory, **layer_kwargs):
    fast = SDERNN(cell_factory(), **layer_kwargs)
    plain = keras.layers.RNN(cell_factory(), **layer_kwargs)
    fast(X)
    plain(X)
    plain.set_weights(fast.get_weights())
    return fast, plain


def _noisy():
    return NoisyLipschitzCell(
        6, dt=0.2, beta=0.8, additive_noise=0.1, multiplicative_noise=0.05, seed=3
    )


@pytest.mark.parametrize("project_first", [None, True, False])
@pytest.mark.parametrize(
    "layer_kwargs",
    [
        {},
        {"return_sequences": True},
        {"go_backwards": True},
        {"return_sequences": True, "go_backwards": True},
    ],
)
def test_inference_equals_keras_rnn(layer_kwargs, project_first):
    fast = SDERNN(_noisy(), project_inputs_first=project_first, **layer_kwargs)
    plain = keras.layers.RNN(_noisy(), **layer_kwargs)
    fast(X)
    plain(X)
    plain.set_weights(fast.get_weights())
    assert_close(fast(X), plain(X), rtol=1e-5, atol=1e-6)


def test_weights_are_the_cells_in_the_same_order():
    fast, plain = _pair(_noisy)
    assert [w.shape for w in fast.weights] == [w.shape for w in plain.weights]
    assert [w.name for w in fast.trainable_weights] == [w.name for w in plain.trainable_weights]


@pytest.mark.parametrize("cell_factory", [lambda: LipschitzCell(5), lambda: AntisymmetricCell(5)])
def test_other_single_state_cells(cell_factory):
    fast, plain = _pair(cell_factory)
    assert_close(fast(X), plain(X), rtol=1e-5, atol=1e-6)


def test_return_state_and_initial_state():
    fast, plain = _pair(_noisy, return_state=True)
    h0 = RNG.normal(size=(4, 6)).astype("float32")
    out_f, state_f = fast(X, initial_state=h0)
    out_p, state_p = plain(X, initial_state=[h0])
    assert_close(out_f, out_p, rtol=1e-5, atol=1e-6)
    assert_close(state_f, state_p, rtol=1e-5, atol=1e-6)


def test_mask_keeps_the_state_like_keras_rnn():
    fast, plain = _pair(_noisy, return_sequences=True)
    mask = np.ones((4, 9), bool)
    mask[0, 5:] = False
    mask[2, 2:4] = False
    assert_close(fast(X, mask=mask), plain(X, mask=mask), rtol=1e-5, atol=1e-6)
    last = keras.ops.convert_to_numpy(fast(X, mask=mask))[0]
    # Carried exactly on TF and JAX; the torch loop blends old and new state arithmetically.
    assert_close(last[5:], np.repeat(last[4:5], 4, axis=0), rtol=0, atol=1e-7)


def test_masking_layer_in_a_model():
    x = X.copy()
    x[1, 6:] = 0.0
    inputs = keras.Input((None, 3))
    masked = keras.layers.Masking(0.0)(inputs)
    model = keras.Model(inputs, SDERNN(LipschitzCell(5))(masked))
    full = model(x[1:2, :6])
    assert_close(model(x[1:2]), full, rtol=1e-5, atol=1e-6)


def test_training_mode_is_noisy_and_has_the_eq5_statistics():
    cell = NoisyLipschitzCell(4, dt=0.25, additive_noise=0.2, multiplicative_noise=0.1, seed=1)
    layer = SDERNN(cell, return_sequences=True)
    x = np.ones((20000, 1, 2), "float32")
    det = keras.ops.convert_to_numpy(layer(x))[:, 0]
    noisy = keras.ops.convert_to_numpy(layer(x, training=True))[:, 0]
    # One step from h = 0: increment = dt f + (a + m f) sqrt(dt) xi, f = tanh(U x + b).
    f = det / 0.25
    expected_std = np.abs(0.2 + 0.1 * f[0]) * np.sqrt(0.25)
    inc = noisy - det
    se = expected_std / np.sqrt(len(x))
    assert np.all(np.abs(inc.mean(axis=0)) < 5 * se)
    assert_close(inc.std(axis=0), expected_std, rtol=0.03)
    # Fresh noise at every call.
    a, b = layer(x[:8], training=True), layer(x[:8], training=True)
    assert not np.allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_zero_noise_training_equals_inference():
    layer = SDERNN(NoisyLipschitzCell(5, seed=0))
    assert_same(layer(X, training=True), layer(X))


def test_fit_with_jit_and_gradients_reach_every_weight():
    model = keras.Sequential([keras.Input((9, 3)), SDERNN(_noisy()), keras.layers.Dense(2)])
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True
    )
    before = [w.copy() for w in model.get_weights()]
    model.fit(X, np.array([0, 1, 0, 1]), epochs=2, verbose=0)
    after = model.get_weights()
    changed = [not np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
    # Every trainable weight moved; the seed state (non-trainable) moved too.
    assert all(changed)


def test_config_round_trip_and_keras_file_in_a_fresh_process(tmp_path):
    layer = SDERNN(_noisy(), return_sequences=True, go_backwards=True, project_inputs_first=True)
    config = layer.get_config()
    clone = SDERNN.from_config(config)
    assert clone.get_config() == config
    model = keras.Sequential([keras.Input((9, 3)), layer, keras.layers.Dense(2)])
    path = tmp_path / "m.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", keras.ops.convert_to_numpy(model(X)))
    code = textwrap.dedent(f"""
        import numpy as np, keras, keras_nrnn
        m = keras.models.load_model({str(path)!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        y = np.load({str(tmp_path / "y.npy")!r})
        assert np.array_equal(keras.ops.convert_to_numpy(m(x)), y)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok" in out.stdout


@tensorflow_only
def test_inference_graph_has_no_random_op_and_forms_matrices_outside_the_loop():
    layer = SDERNN(_noisy())
    layer(X)
    fn = tf.function(lambda x: layer(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((None, 9, 3))).graph.as_graph_def()
    ops = [n.op for n in graph.node] + [n.op for f in graph.library.function for n in f.node_def]
    assert not [op for op in ops if "Random" in op]
    body = [f for f in graph.library.function if "while_body" in f.signature.name]
    assert body and all(
        n.op != "Transpose" for f in body for n in f.node_def if "MatMul" not in n.op
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="cell"):
        SDERNN(keras.layers.SimpleRNNCell(3))
    with pytest.raises(ValueError, match="unroll"):
        SDERNN(LipschitzCell(3), unroll=2)
    with pytest.raises(ValueError, match="project_inputs_first"):
        SDERNN(LipschitzCell(3), project_inputs_first="yes")
    with pytest.raises(ValueError, match=r"\(batch, time, features\)"):
        SDERNN(LipschitzCell(3))(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="floating"):
        SDERNN(LipschitzCell(3))(np.zeros((2, 4, 3), "int32"))
