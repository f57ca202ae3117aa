"""The cells inside `keras.layers.RNN` and friends: every option, checked on values.

Each option is compared with an equivalent computation that does not use it (reversed
inputs for `go_backwards`, the unmasked prefix for masking, one call for `stateful`, the
loop for `unroll`, separate layers for `Bidirectional` / `StackedRNNCells`), then the cells
are trained with `fit`, a `tf.GradientTape` loop and `jit_compile=True`.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from backend_helpers import recurrent_layer, tensorflow_only

from keras_nrnn import LipschitzCell, NoisyLipschitzCell

UNITS, FEATURES, T, BATCH = 8, 3, 10, 4
RTOL, ATOL = 1e-5, 1e-6


def make_cell(noisy: bool = True, **kwargs):
    if noisy:
        kwargs.setdefault("additive_noise", 0.1)
        kwargs.setdefault("multiplicative_noise", 0.05)
        kwargs.setdefault("seed", 0)
        return NoisyLipschitzCell(UNITS, **kwargs)
    return LipschitzCell(UNITS, **kwargs)


def randomize(layer, seed: int, scale: float = 0.4) -> None:
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(0, scale, w.shape).astype("float32")
                       for w in layer.get_weights()])


def built_rnn(input_shape=(BATCH, T, FEATURES), seed=1, cell=None, **rnn_kwargs):
    layer = recurrent_layer(cell if cell is not None else make_cell(), **rnn_kwargs)
    layer.build(input_shape)
    randomize(layer, seed)
    return layer


def np_(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(BATCH, T, FEATURES)).astype("float32")


# ------------------------------------------------------------------------------ options


def test_return_sequences_and_state_agree(x):
    layer = built_rnn(return_sequences=True, return_state=True)
    seq, state = layer(x)
    assert seq.shape == (BATCH, T, UNITS) and state.shape == (BATCH, UNITS)
    np.testing.assert_array_equal(np_(seq)[:, -1], np_(state))
    plain = recurrent_layer(layer.cell)  # same cell, default options
    np.testing.assert_allclose(np_(plain(x)), np_(state), rtol=RTOL, atol=ATOL)
    # The last output is the result of the whole recursion, not of one step.
    np.testing.assert_allclose(np_(plain(x[:, :-1])), np_(seq)[:, -2], rtol=RTOL, atol=ATOL)


def test_initial_state_is_used(x):
    layer = built_rnn(return_sequences=True)
    h0 = np.random.default_rng(1).normal(size=(BATCH, UNITS)).astype("float32")
    with_h0 = np_(layer(x, initial_state=[h0]))
    # Running step 0 alone from h0, then the rest from its result, gives the same sequence.
    first = np_(layer(x[:, :1], initial_state=[h0]))
    rest = np_(layer(x[:, 1:], initial_state=[first[:, 0]]))
    np.testing.assert_allclose(with_h0, np.concatenate([first, rest], 1), rtol=RTOL, atol=ATOL)
    assert np.abs(with_h0 - np_(layer(x))).max() > 1e-3


def test_go_backwards_equals_reversed_input(x):
    back = built_rnn(return_sequences=True, go_backwards=True)
    fwd = recurrent_layer(back.cell, return_sequences=True)
    got, want = np_(back(x)), np_(fwd(x[:, ::-1]))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert np.abs(got[:, -1] - np_(fwd(x))[:, -1]).max() > 1e-3  # direction matters


def test_stateful_two_halves_equal_one_call(x):
    whole = built_rnn(return_sequences=True)
    stateful = recurrent_layer(make_cell(), return_sequences=True, stateful=True)
    stateful.build((BATCH, T // 2, FEATURES))
    stateful.cell.set_weights(whole.cell.get_weights())
    first, second = np_(stateful(x[:, : T // 2])), np_(stateful(x[:, T // 2 :]))
    want = np_(whole(x))
    np.testing.assert_allclose(np.concatenate([first, second], 1), want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np_(stateful.states[0]), want[:, -1], rtol=RTOL, atol=ATOL)
    stateful.reset_state()
    np.testing.assert_allclose(np_(stateful(x[:, T // 2 :])), np_(whole(x[:, T // 2 :])),
                               rtol=RTOL, atol=ATOL)


def test_unroll_equals_loop(x):
    loop = built_rnn(return_sequences=True)
    unrolled = recurrent_layer(loop.cell, return_sequences=True, unroll=True)
    np.testing.assert_allclose(np_(unrolled(x)), np_(loop(x)), rtol=RTOL, atol=ATOL)


def test_mask_zero_embedding_skips_padded_steps():
    lengths = [10, 7, 3, 1]
    rng = np.random.default_rng(2)
    tokens = np.zeros((BATCH, T), "int32")
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(1, 20, n)
    embed = keras.layers.Embedding(20, FEATURES, mask_zero=True)
    rnn = recurrent_layer(make_cell(), return_sequences=True)
    inputs = keras.Input((T,), dtype="int32")
    model = keras.Model(inputs, rnn(embed(inputs)))
    randomize(rnn, seed=3)
    seq = np_(model(tokens))
    emb = np_(embed(tokens))
    for i, n in enumerate(lengths):
        prefix = np_(recurrent_layer(rnn.cell, return_sequences=True)(emb[i : i + 1, :n]))[0]
        np.testing.assert_allclose(seq[i, :n], prefix, rtol=RTOL, atol=ATOL)
        # Masked steps leave the state (and the output) where it was (to rounding: the torch
        # backend blends old and new state arithmetically).
        np.testing.assert_allclose(seq[i, n:], np.repeat(prefix[-1:], T - n, 0), atol=1e-7)


def test_masking_layer_with_left_padding(x):
    """Leading masked steps keep the zero initial state: same as running on the suffix."""
    starts = [0, 2, 5, 9]
    xp = x.copy()
    for i, s in enumerate(starts):
        xp[i, :s] = 0.0
    inputs = keras.Input((T, FEATURES))
    rnn = recurrent_layer(make_cell(), return_state=True)
    model = keras.Model(inputs, rnn(keras.layers.Masking(0.0)(inputs)))
    randomize(rnn, seed=4)
    last, state = (np_(t) for t in model(xp))
    np.testing.assert_array_equal(last, state)
    for i, s in enumerate(starts):
        want = np_(recurrent_layer(rnn.cell)(x[i : i + 1, s:]))[0]
        np.testing.assert_allclose(state[i], want, rtol=RTOL, atol=ATOL)


def test_bidirectional_halves(x):
    bi = keras.layers.Bidirectional(recurrent_layer(make_cell(), return_sequences=True))
    bi.build(x.shape)
    randomize(bi, seed=5)
    out = np_(bi(x))
    assert out.shape == (BATCH, T, 2 * UNITS)
    fwd = np_(recurrent_layer(bi.forward_layer.cell, return_sequences=True)(x))
    bwd = np_(recurrent_layer(bi.backward_layer.cell, return_sequences=True)(x[:, ::-1]))
    np.testing.assert_allclose(out[..., :UNITS], fwd, rtol=RTOL, atol=ATOL)
    # Keras re-reverses the backward outputs so that they are aligned with the inputs.
    np.testing.assert_allclose(out[..., UNITS:], bwd[:, ::-1], rtol=RTOL, atol=ATOL)
    assert np.abs(np_(bi(x, training=True)) - out).max() > 1e-3  # noise in both directions


def test_bidirectional_with_own_backward_seed_gets_independent_noise():
    """`Bidirectional` copies the layer's config, seed included, so both directions would
    draw the same noise path; passing a backward layer with its own seed separates them."""
    steps, n = 4, 2000
    zeros = np.zeros((n, steps, 1), "float32")

    def rnn(seed, go_backwards=False):
        cell = NoisyLipschitzCell(UNITS, additive_noise=1.0, gamma_a=0.0, gamma_w=0.0, seed=seed)
        return recurrent_layer(cell, return_sequences=True, go_backwards=go_backwards)

    bi = keras.layers.Bidirectional(rnn(1), backward_layer=rnn(2, go_backwards=True))
    bi.build(zeros.shape)
    bi.set_weights([np.zeros(w.shape, "float32") for w in bi.get_weights()])  # zero drift
    out = np_(bi(zeros, training=True)).astype(np.float64)
    fwd, bwd = out[:, 0, :UNITS], out[:, -1, UNITS:]  # the first step of each direction
    corr = np.corrcoef(fwd.ravel(), bwd.ravel())[0, 1]
    assert abs(corr) < 5 / np.sqrt(fwd.size), corr
    assert abs(fwd.std() / np.sqrt(0.1) - 1) < 0.05  # additive * sqrt(dt) * xi


def test_stacked_cells_equal_two_layers(x):
    cells = [make_cell(seed=1), make_cell(seed=2, dt=0.2)]
    stacked = recurrent_layer(keras.layers.StackedRNNCells(cells), return_sequences=True)
    stacked.build(x.shape)
    randomize(stacked, seed=6)
    first = np_(recurrent_layer(cells[0], return_sequences=True)(x))
    second = np_(recurrent_layer(cells[1], return_sequences=True)(first))
    np.testing.assert_allclose(np_(stacked(x)), second, rtol=RTOL, atol=ATOL)
    # Each cell's per-sequence cache is dropped after the loop.
    assert all(c._sequence_cache is None for c in cells)
    if keras.backend.backend() == "jax":  # StackedRNNCells run in lax.scan: refused, named
        with pytest.raises(RuntimeError, match="SDERNN"):
            stacked(x, training=True)
        return
    assert np.abs(np_(stacked(x, training=True)) - second).max() > 1e-3


# ------------------------------------------------------------------------- models, training


def classifier_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n, T, FEATURES)).astype("float32")
    ys = (xs[:, :, 0].mean(1) > 0).astype("int32")
    return xs, ys


def sequential_model(**cell_kwargs):
    return keras.Sequential([
        keras.Input((T, FEATURES)),
        recurrent_layer(make_cell(**cell_kwargs)),
        keras.layers.Dense(2),
    ])


def functional_model(**cell_kwargs):
    inputs = keras.Input((T, FEATURES))
    seq = recurrent_layer(make_cell(**cell_kwargs), return_sequences=True)(inputs)
    h = recurrent_layer(make_cell(noisy=False))(seq)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


@pytest.mark.parametrize("build", [sequential_model, functional_model])
def test_fit_evaluate_predict(build):
    keras.utils.set_random_seed(0)
    xs, ys = classifier_data()
    model = build(learnable_dt="scalar")
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [np_(w).copy() for w in model.trainable_weights]
    hist = model.fit(xs, ys, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    for w0, w in zip(before, model.trainable_weights, strict=True):
        assert not np.array_equal(w0, np_(w)), w.path  # every weight, dt included, was trained
    loss = model.evaluate(xs, ys, batch_size=16, verbose=0)
    pred = model.predict(xs, batch_size=16, verbose=0)
    # evaluate / predict run in inference mode: deterministic and equal to a direct call.
    np.testing.assert_allclose(pred, np_(model(xs)), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(pred, model.predict(xs, batch_size=16, verbose=0))
    ref = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(ys, pred)
    np.testing.assert_allclose(loss, np_(ref), rtol=1e-5)


@tensorflow_only
@pytest.mark.parametrize("scheme", ["euler_maruyama", "tamed", "research"])
def test_gradient_tape_every_weight_finite_and_nonzero(scheme):
    xs, ys = classifier_data(16)
    model = sequential_model(scheme=scheme, learnable_dt="per_unit")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(0.05)
    losses = []
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = loss_fn(ys, model(xs, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        names = [w.path for w in model.trainable_weights]
        assert {"m_a", "m_w", "kernel", "bias", "dt"} <= {n.split("/")[-1] for n in names}
        for name, g in zip(names, grads, strict=True):
            assert g is not None, name
            g = np_(g)
            assert np.all(np.isfinite(g)), name
            assert np.abs(g).max() > 0, name
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))


@tensorflow_only
def test_gradients_match_finite_differences_in_inference_mode():
    """The cache formed before the loop is differentiated through, not treated as constant."""
    xs = classifier_data(4)[0]
    layer = built_rnn(input_shape=xs.shape, cell=make_cell(noisy=False), seed=7)
    cell = layer.cell
    direction = np.random.default_rng(8).normal(size=(UNITS, UNITS)).astype("float32")
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(layer(xs) ** 2)
    grad = np_(tape.gradient(out, cell.m_a.value))
    m0 = np_(cell.m_a).astype(np.float64)
    eps = 1e-2
    vals = []
    for sign in (1, -1):
        cell.m_a.assign((m0 + sign * eps * direction).astype("float32"))
        vals.append(float(np.sum(np_(layer(xs)).astype(np.float64) ** 2)))
    cell.m_a.assign(m0.astype("float32"))
    fd = (vals[0] - vals[1]) / (2 * eps)
    np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=2e-2)


def test_jit_compile_training_and_inference():
    keras.utils.set_random_seed(1)
    xs, ys = classifier_data()
    model = sequential_model(learnable_dt="per_unit")
    reference = sequential_model(learnable_dt="per_unit")
    model.compile(optimizer=keras.optimizers.SGD(0.0),  # lr 0: only the noise changes the loss
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    reference.set_weights(model.get_weights())
    reference.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=False)
    state0 = np_(model.layers[0].cell.seed_generator.state).copy()
    l1 = model.train_on_batch(xs, ys)
    l2 = model.train_on_batch(xs, ys)
    assert np.isfinite(l1) and np.isfinite(l2)
    assert l1 != l2  # fresh noise at every compiled call
    assert not np.array_equal(state0, np_(model.layers[0].cell.seed_generator.state))
    np.testing.assert_allclose(model.predict(xs, verbose=0), reference.predict(xs, verbose=0),
                               rtol=1e-5, atol=1e-6)
    # Real training steps in the same compiled function (the learning rate is a variable).
    model.optimizer.learning_rate.assign(0.05)
    before = [np_(w).copy() for w in model.trainable_weights]
    losses = [model.train_on_batch(xs, ys) for _ in range(3)]
    assert np.all(np.isfinite(losses))
    for w0, w in zip(before, model.trainable_weights, strict=True):
        assert not np.array_equal(w0, np_(w)), w.path
        assert np.all(np.isfinite(np_(w))), w.path


def test_noise_active_in_fit_not_in_predict():
    """`fit` calls the cell with training=True: with lr 0 the training loss is noisy."""
    xs, ys = classifier_data()
    model = sequential_model(additive_noise=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clean = model.evaluate(xs, ys, verbose=0)
    train_losses = [model.train_on_batch(xs, ys) for _ in range(2)]
    assert abs(train_losses[0] - clean) > 1e-4 and train_losses[0] != train_losses[1]
    assert model.evaluate(xs, ys, verbose=0) == clean
