"""Bad arguments and bad inputs fail early with a `ValueError` that names the argument
(or the expected shape / dtype) and the value received."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from backend_helpers import tensorflow_only

from keras_nrnn import LipschitzCell, NoisyLipschitzCell


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"units": 0}, "units"),
        ({"units": -3}, "units"),
        ({"units": 4.0}, "units"),
        ({"units": 4.5}, "units"),
        ({"units": "8"}, "units"),
        ({"units": True}, "units"),
        ({"dt": 0.0}, "dt"),
        ({"dt": -0.1}, "dt"),
        ({"dt": float("nan")}, "dt"),
        ({"dt": float("inf")}, "dt"),
        ({"additive_noise": -0.01}, "additive_noise"),
        ({"multiplicative_noise": -1.0}, "multiplicative_noise"),
        ({"additive_noise": float("nan")}, "additive_noise"),
        ({"beta": -0.1}, "beta"),
        ({"beta": 1.5}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"gamma_a": -0.001}, "gamma_a"),
        ({"gamma_w": -1.0}, "gamma_w"),
        ({"init_std": -0.1}, "init_std"),
        ({"scheme": "runge_kutta"}, "scheme"),
        ({"scheme": None}, "scheme"),
        ({"activation": "not_an_activation"}, "activation"),
        ({"activation": 3}, "activation"),
        ({"learnable_dt": "per_step"}, "learnable_dt"),
        ({"learnable_dt": True}, "learnable_dt"),
        ({"seed": 1.5}, "seed"),
        ({"seed": "1"}, "seed"),
        ({"scheme": "research", "multiplicative_noise": 1.5}, "multiplicative_noise"),
    ],
)
def test_bad_argument_names_argument_and_value(kwargs, name):
    args = {"units": 4, **kwargs}
    with pytest.raises(ValueError) as info:
        NoisyLipschitzCell(**args)
    message = str(info.value)
    assert f"`{name}`" in message, message
    assert repr(kwargs[name]) in message, message


@pytest.mark.parametrize("kwargs", [{"units": 0}, {"dt": -1.0}, {"beta": 2.0},
                                    {"gamma_w": -1.0}, {"scheme": "x"},
                                    {"activation": "nope"}, {"learnable_dt": "x"}])
def test_deterministic_cell_validates_too(kwargs):
    with pytest.raises(ValueError, match=re.escape(f"`{next(iter(kwargs))}`")):
        LipschitzCell(**{"units": 4, **kwargs})


def test_boundary_values_are_accepted():
    cell = NoisyLipschitzCell(1, dt=1e-6, beta=0.0, gamma_a=0.0, gamma_w=0.0, init_std=0.0,
                              additive_noise=0.0, multiplicative_noise=0.0, seed=0)
    assert cell.noise is None and cell.seed_generator is None  # zero noise is no noise
    with pytest.warns(DeprecationWarning):
        research = NoisyLipschitzCell(2, beta=1.0, scheme="research", multiplicative_noise=1.0)
    assert research.beta == 1.0 and research.noise.multiplicative == 1.0
    assert NoisyLipschitzCell(2, multiplicative_noise=1.5).noise.multiplicative == 1.5  # EM: ok


@pytest.mark.parametrize("shape", [(2, 5), (2, 5, 3, 4)])
def test_rnn_input_of_wrong_rank_says_which_shape_was_expected(shape):
    layer = keras.layers.RNN(NoisyLipschitzCell(4, additive_noise=0.1, seed=0))
    with pytest.raises(ValueError, match=r"\(batch, time, features\)") as info:
        layer(np.zeros(shape, "float32"))
    assert str(tuple(shape[:1] + shape[2:])) in str(info.value)  # the step shape it received
    symbolic = keras.layers.RNN(LipschitzCell(4))
    with pytest.raises(ValueError, match=r"\(batch, time, features\)"):
        symbolic(keras.Input(shape[1:]))


def test_cell_called_directly_with_wrong_rank():
    cell = LipschitzCell(4)
    cell.build((None, 3))
    with pytest.raises(ValueError, match=r"\(batch, features\).*received shape \(2, 5, 3\)"):
        cell(np.zeros((2, 5, 3), "float32"), [np.zeros((2, 4), "float32")])


def test_unknown_number_of_features():
    with pytest.raises(ValueError, match="known number of features"):
        LipschitzCell(4).build((None, None))


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_inputs_give_a_clear_error(dtype):
    layer = keras.layers.RNN(LipschitzCell(4))
    # JAX without x64 holds int64 data as int32.
    shown = "int(32|64)" if dtype == "int64" and keras.backend.backend() == "jax" else dtype
    with pytest.raises(ValueError, match=r"floating-point inputs.*" + shown) as info:
        layer(np.ones((2, 5, 3), dtype))
    assert "float32" in str(info.value)  # says what to do


def test_integer_inputs_in_a_model_fail_at_predict():
    inputs = keras.Input((5, 3), dtype="int32")
    model = keras.Model(inputs, keras.layers.RNN(LipschitzCell(4))(inputs))
    with pytest.raises(ValueError, match="floating-point inputs"):
        model.predict(np.ones((2, 5, 3), "int32"), verbose=0)


def test_a_failed_call_leaves_no_stale_cache():
    """After a failed call, later calls use the current weights, not the A and W cached for
    the failed one (inside a new RNN call and when the cell is called directly)."""
    rng = np.random.default_rng(0)
    cell = LipschitzCell(4)
    layer = keras.layers.RNN(cell)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    h = rng.normal(size=(2, 4)).astype("float32")
    layer(x)
    with pytest.raises(ValueError, match="floating-point"):
        layer(x.astype("int32"))
    assert cell._sequence_cache is None
    cell.m_a.assign(rng.normal(size=(4, 4)).astype("float32"))
    fresh = keras.layers.RNN(LipschitzCell(4))
    fresh.build(x.shape)
    fresh.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)),
                               keras.ops.convert_to_numpy(fresh(x)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(cell(x[:, 0], [h])[0]),
                               keras.ops.convert_to_numpy(fresh.cell(x[:, 0], [h])[0]),
                               rtol=1e-6, atol=1e-7)


@tensorflow_only
def test_a_cache_left_by_an_interrupted_loop_is_not_reused():
    """A cache left set (as by an exception raised mid-loop) is replaced at the next call."""
    import tensorflow as tf

    cell = LipschitzCell(4)
    layer = keras.layers.RNN(cell)
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(layer(x))
    tf.function(lambda t: cell.get_dropout_mask(t[:, 0]))(tf.constant(x))  # a graph's tensors
    assert cell._sequence_cache is not None
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), want, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tf.function(layer)(x)), want,
                               rtol=1e-5, atol=1e-6)
