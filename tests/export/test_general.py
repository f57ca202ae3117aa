"""The general export path (`export.general`): stacked, bidirectional, sequence outputs,
several inputs/outputs and Masking, checked against numpy and Keras (no files written)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from export_helpers import ALL_CELLS, CLASSES, FEATURES, TIME, UNITS, make_cell, perturb

from export import ExportError
from export.inference_model import build_inference_model
from keras_nrnn import SDERNN, LipschitzCell

ATOL = 1e-5


def _x(batch=3, time=TIME, features=FEATURES, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, time, features)).astype("float32")


def _stream(im, feeds, steps=None):
    """Outputs of every step of the streaming function, from zero states."""
    fn = im.step_function()
    batch = next(iter(feeds.values())).shape[0]
    states = {st.name: np.zeros((batch, st.size), np.float32) for st in im.states}
    time = next(v.shape[1] for i, v in enumerate(feeds.values()) if im.is_sequence_input(i))
    outs = []
    for t in range(steps or time):
        step = {
            n: feeds[n][:, t] if im.is_sequence_input(i) else feeds[n]
            for i, n in enumerate(im.input_names)
        }
        out = {k: v.numpy() for k, v in fn(**step, **states).items()}
        states = {st.name: out[f"new_{st.name}"] for st in im.states}
        outs.append(out)
    return outs


def _numpy_lipschitz_sequence(cell, x):
    """Independent numpy pass of one Lipschitz layer: all states (batch, time, units)."""
    m = cell.drift_matrices_numpy()
    h = np.zeros((x.shape[0], cell.units))
    hs = []
    for t in range(x.shape[1]):
        h = h + m["dt"] * (h @ m["A"].T + np.tanh(h @ m["W"].T + x[:, t] @ m["U"] + m["b"]))
        hs.append(h)
    return np.stack(hs, axis=1)


def test_stacked_lipschitz_matches_numpy_in_sequence_and_streaming():
    keras.utils.set_random_seed(0)
    c1, c2 = LipschitzCell(UNITS, dt=0.2), LipschitzCell(UNITS, dt=0.3)
    model = perturb(
        keras.Sequential(
            [
                keras.Input((TIME, FEATURES)),
                keras.layers.RNN(c1, return_sequences=True),
                SDERNN(c2),
                keras.layers.Dense(CLASSES),
            ]
        )
    )
    im = build_inference_model(model)
    assert im.path == "general"
    assert [st.name for st in im.states] == ["state_0", "state_1"]
    x = _x()
    h1 = _numpy_lipschitz_sequence(model.layers[0].cell, x.astype(np.float64))
    h2 = _numpy_lipschitz_sequence(model.layers[1].cell, h1)[:, -1]
    kernel, bias = (np.asarray(w, np.float64) for w in model.layers[2].get_weights())
    want = h2 @ kernel + bias
    seq = im.sequence_function()(inputs=x)
    np.testing.assert_allclose(seq["logits"].numpy(), want, atol=ATOL)
    last = _stream(im, {"inputs": x})[-1]
    np.testing.assert_allclose(last["logits"], want, atol=ATOL)
    np.testing.assert_allclose(last["new_state_0"], h1[:, -1], atol=ATOL)
    np.testing.assert_allclose(last["new_state_1"], h2, atol=ATOL)


@pytest.mark.parametrize("kind", ALL_CELLS)
def test_every_cell_stacked_with_sequence_output(kind):
    """RNN(seq) -> RNN(seq) -> per-step Dense: sequence == Keras; step t == sequence[:, t]."""
    keras.utils.set_random_seed(0)
    model = perturb(
        keras.Sequential(
            [
                keras.Input((None, FEATURES)),
                keras.layers.RNN(make_cell(kind), return_sequences=True),
                keras.layers.RNN(make_cell(kind), return_sequences=True),
                keras.layers.Dense(CLASSES, activation="softmax"),
            ]
        )
    )
    im = build_inference_model(model)
    x = _x()
    want = np.asarray(model(x, training=False))
    seq = {k: v.numpy() for k, v in im.sequence_function()(inputs=x).items()}
    assert seq["probabilities"].shape == (3, TIME, CLASSES)
    np.testing.assert_allclose(seq["probabilities"], want, atol=ATOL)
    np.testing.assert_allclose(np.exp(seq["logits"]), want, atol=ATOL)
    np.testing.assert_array_equal(seq["classes"], np.argmax(want, -1))
    for t, out in enumerate(_stream(im, {"inputs": x})):
        np.testing.assert_allclose(out["logits"], seq["logits"][:, t], atol=ATOL)


def test_bidirectional_has_no_streaming_and_matches_keras():
    keras.utils.set_random_seed(0)
    model = perturb(
        keras.Sequential(
            [
                keras.Input((TIME, FEATURES)),
                keras.layers.Bidirectional(keras.layers.RNN(make_cell("NoisyLipschitzCell"))),
                keras.layers.Dense(CLASSES),
            ]
        )
    )
    im = build_inference_model(model)
    assert not im.streaming and "Bidirectional" in im.streaming_reason
    with pytest.raises(ExportError, match="Bidirectional"):
        im.step_function()
    x = _x()
    np.testing.assert_allclose(
        im.sequence_function()(inputs=x)["logits"].numpy(),
        np.asarray(model(x, training=False)),
        atol=ATOL,
    )


def test_masking_padded_sequence_and_streaming_of_real_steps():
    keras.utils.set_random_seed(0)
    model = perturb(
        keras.Sequential(
            [
                keras.Input((TIME, FEATURES)),
                keras.layers.Masking(0.0),
                keras.layers.RNN(LipschitzCell(UNITS), return_sequences=True),
                keras.layers.RNN(make_cell("CoRNNCell")),
                keras.layers.Dense(CLASSES),
            ]
        )
    )
    im = build_inference_model(model)
    x = _x()
    x[0, 6:] = 0.0  # sequence 0 has 6 real steps, then padding
    want = np.asarray(model(x, training=False))
    np.testing.assert_allclose(im.sequence_function()(inputs=x)["logits"].numpy(), want, atol=ATOL)
    outs = _stream(im, {"inputs": x})
    np.testing.assert_allclose(outs[5]["logits"][0], want[0], atol=ATOL)  # real steps only
    np.testing.assert_allclose(outs[-1]["logits"][1:], want[1:], atol=ATOL)


def test_several_inputs_and_outputs():
    keras.utils.set_random_seed(0)
    seq_in = keras.Input((TIME, FEATURES), name="signal")
    aux_in = keras.Input((4,), name="aux")
    h_seq = keras.layers.RNN(LipschitzCell(UNITS), return_sequences=True)(seq_in)
    h = keras.layers.RNN(make_cell("NoisyLipschitzCell"))(h_seq)
    h = keras.layers.Concatenate()([h, aux_in])
    label = keras.layers.Dense(CLASSES, activation="softmax", name="label")(h)
    beats = keras.layers.Dense(2, name="beats")(h_seq)
    model = perturb(keras.Model([seq_in, aux_in], [label, beats]))
    im = build_inference_model(model)
    assert list(im.input_names) == ["signal", "aux"]
    assert im.output_names()[:3] == ["label_logits", "label_probabilities", "label_classes"]
    assert im.per_step_outputs() == {"beats_logits", "beats_probabilities", "beats_classes"}
    feeds = {"signal": _x(), "aux": np.ones((3, 4), np.float32)}
    want_label, want_beats = (np.asarray(v) for v in model(list(feeds.values())))
    seq = im.sequence_function()(**feeds)
    np.testing.assert_allclose(seq["label_probabilities"].numpy(), want_label, atol=ATOL)
    np.testing.assert_allclose(seq["beats_logits"].numpy(), want_beats, atol=ATOL)
    last = _stream(im, feeds)[-1]
    np.testing.assert_allclose(last["label_probabilities"], want_label, atol=ATOL)
    np.testing.assert_allclose(last["beats_logits"], want_beats[:, -1], atol=ATOL)


@pytest.mark.parametrize("path", ["fast", "general"])
def test_batch_mismatch_fails_inside_the_graph(path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((TIME, FEATURES)),
            keras.layers.RNN(LipschitzCell(UNITS)),
            keras.layers.Dense(CLASSES),
        ]
    )
    im = build_inference_model(model, path=path)
    fn = im.step_function()
    name = im.states[0].name
    for batch_x, batch_s in ((7, 1), (1, 7)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="batch size"):
            fn(
                inputs=np.zeros((batch_x, FEATURES), np.float32),
                **{name: np.zeros((batch_s, UNITS), np.float32)},
            )


def test_tflite_of_a_general_model_needs_a_fixed_length():
    model = keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            keras.layers.RNN(LipschitzCell(UNITS), return_sequences=True),
            keras.layers.Dense(CLASSES),
        ]
    )
    with pytest.raises(ExportError, match="fixed input length"):
        build_inference_model(model).tflite_sequence_function()
