"""`SDERNN` is a `keras.layers.RNN`: every option, `Bidirectional`, and the same Brownian path.

Each check compares `SDERNN(cell)` with `keras.layers.RNN(cell)` holding the same weights (and,
in training mode, the same seed), on the backend the suite runs on.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_nrnn import SDERNN, registry

BATCH, TIME, FEATURES = 3, 6, 4
JAX = keras.backend.backend() == "jax"
ENTRIES = registry.cells()


def np_(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(BATCH, TIME, FEATURES)).astype("float32")


def pair(entry, noisy=False, **layer_kwargs):
    fast = SDERNN(entry.make(noisy=noisy), **layer_kwargs)
    plain = keras.layers.RNN(entry.make(noisy=noisy), **layer_kwargs)
    return fast, plain


def build_both(fast, plain, x):
    fast(x)
    plain(x)
    plain.set_weights(fast.get_weights())


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.cls.__name__)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"return_sequences": True},
        {"go_backwards": True, "return_sequences": True},
        {"return_state": True},
        {"unroll": True, "return_sequences": True},
    ],
    ids=["last", "sequences", "backwards", "state", "unroll"],
)
def test_inference_equals_keras_rnn(entry, options, x):
    fast, plain = pair(entry, **options)
    build_both(fast, plain, x)
    for a, b in zip(keras.tree.flatten(fast(x)), keras.tree.flatten(plain(x)), strict=True):
        np.testing.assert_allclose(np_(a), np_(b), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(JAX, reason="keras.layers.RNN cannot draw per-step noise under lax.scan")
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.cls.__name__)
@pytest.mark.parametrize("options", [{}, {"go_backwards": True}, {"unroll": True}],
                         ids=["forward", "backwards", "unroll"])
def test_same_seed_same_brownian_path_as_keras_rnn(entry, options, x):
    fast, plain = pair(entry, noisy=True, return_sequences=True, **options)
    build_both(fast, plain, x)
    a, b = np_(fast(x, training=True)), np_(plain(x, training=True))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, np_(fast(x)), atol=1e-4)  # and it is noisy
    # The next sequence draws new noise in both (the generators advanced alike).
    a2, b2 = np_(fast(x, training=True)), np_(plain(x, training=True))
    np.testing.assert_allclose(a2, b2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, a2, atol=1e-4)


def test_noise_differs_between_steps_and_sequences(x):
    """The Brownian source is not frozen: two steps with the same input and state differ."""
    fast = SDERNN(registry.get("nrnn").entry.make(noisy=True), return_sequences=True)
    zeros = np.zeros_like(x)
    fast(zeros)
    clean = np_(fast(zeros))
    increments = np.diff(np_(fast(zeros, training=True)) - clean, axis=1)
    # With zero input, zero weights' effect aside, distinct draws give distinct increments.
    assert np.std(increments[:, 0] - increments[:, 1]) > 1e-3


def test_masking_and_zero_output_for_mask(x):
    entry = registry.get("nrnn").entry
    mask = np.ones((BATCH, TIME), bool)
    mask[:, -2:] = False
    for zero in (False, True):
        fast, plain = pair(entry, return_sequences=True, zero_output_for_mask=zero)
        build_both(fast, plain, x)
        a, b = np_(fast(x, mask=mask)), np_(plain(x, mask=mask))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        if zero:
            assert np.all(a[:, -2:] == 0.0)
        else:
            np.testing.assert_array_equal(a[:, -1], a[:, -3])  # the state is carried


def test_stateful_carries_the_state_across_calls(x):
    entry = registry.get("lipschitz").entry
    fast = SDERNN(entry.make(), stateful=True)
    plain = keras.layers.RNN(entry.make(), stateful=True)
    for layer in (fast, plain):
        keras.Sequential([keras.Input((TIME, FEATURES), batch_size=BATCH), layer])
    plain.set_weights(fast.get_weights())
    first, second = np_(fast(x)), np_(fast(x))
    assert not np.allclose(first, second)  # the second call started from the first's state
    plain(x)
    np.testing.assert_allclose(second, np_(plain(x)), rtol=1e-5, atol=1e-6)
    fast.reset_state()
    np.testing.assert_allclose(np_(fast(x)), first, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.cls.__name__)
def test_bidirectional_trains_and_round_trips(entry, x, tmp_path):
    layer = keras.layers.Bidirectional(SDERNN(entry.make(noisy=True)))
    model = keras.Sequential([keras.Input((TIME, FEATURES)), layer, keras.layers.Dense(2)])
    model.compile("adam", "mse")
    before = [np.copy(w) for w in model.get_weights()]
    model.fit(x, np.zeros((BATCH, 2), "float32"), epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    path = tmp_path / "bi.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np_(loaded(x)), np_(model(x)), rtol=1e-5, atol=1e-6)
    # The two directions draw independent noise (their cells have their own generators).
    fw, bw = layer.forward_layer.cell, layer.backward_layer.cell
    assert fw.seed_generator is not bw.seed_generator


def test_fit_with_noise_and_jit_works_on_this_backend(x):
    """On JAX this is the case that used to crash with UnexpectedTracerError."""
    model = keras.Sequential(
        [keras.Input((TIME, FEATURES)), SDERNN(registry.get("nrnn").entry.make(noisy=True)),
         keras.layers.Dense(2)]
    )
    model.compile("adam", "mse", jit_compile=keras.backend.backend() != "torch")
    history = model.fit(x, np.zeros((BATCH, 2), "float32"), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.predict(x, verbose=0).shape == (BATCH, 2)  # still usable afterwards
