"""The inference model: structure checks, float32 rebuild, frozen cell, numerics vs numpy."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from export_helpers import (
    ALL_CELLS,
    CLASSES,
    FEATURES,
    TIME,
    UNITS,
    inputs,
    make_cell,
    make_model,
)

from export import ExportError
from export.inference_model import (
    TIME_MODES,
    _foldable_lipschitz,
    build_inference_model,
    check_time_mode,
    rebuild_float32,
)
from export.savedmodel import find_random_tf_ops
from keras_nrnn import LipschitzCell, NoisyLipschitzCell


def _numpy_lipschitz(cell, dense, x):
    """Independent numpy forward pass: h <- h + dt (A h + tanh(W h + U x + b)); V h + c."""
    m = cell.drift_matrices_numpy()
    h = np.zeros((x.shape[0], cell.units))
    for t in range(x.shape[1]):
        h = h + m["dt"] * (h @ m["A"].T + np.tanh(h @ m["W"].T + x[:, t] @ m["U"] + m["b"]))
    kernel, bias = (np.asarray(w, np.float64) for w in dense.get_weights())
    return h @ kernel + bias, h


def _stream(im, x):
    state = np.zeros((x.shape[0], im.state_size), np.float32)
    out = None
    for t in range(x.shape[1]):
        out = {k: v.numpy() for k, v in im.step(x[:, t], state).items()}
        state = out["new_state"]
    return out


@pytest.mark.parametrize("kind", ["LipschitzCell", "NoisyLipschitzCell"])
def test_sequence_and_streaming_match_numpy(kind):
    model = make_model(make_cell(kind))
    im = build_inference_model(model)
    x = inputs()
    logits_np, h_np = _numpy_lipschitz(im.cell, im.head_layers[-1], x.astype(np.float64))
    seq = {k: v.numpy() for k, v in im.sequence_function()(tf.constant(x)).items()}
    np.testing.assert_allclose(seq["logits"], logits_np, atol=1e-5)
    e = np.exp(logits_np - logits_np.max(-1, keepdims=True))
    np.testing.assert_allclose(seq["probabilities"], e / e.sum(-1, keepdims=True), atol=1e-6)
    np.testing.assert_array_equal(seq["classes"], logits_np.argmax(-1))
    assert seq["classes"].dtype == np.int64
    streamed = _stream(im, x)
    np.testing.assert_allclose(streamed["new_state"], h_np, atol=1e-5)
    for key in ("logits", "probabilities"):
        np.testing.assert_allclose(streamed[key], seq[key], atol=1e-6)
    # Inference mode of the noisy cell: the same numbers twice, no noise.
    again = im.sequence_function()(tf.constant(x))["logits"].numpy()
    np.testing.assert_array_equal(again, seq["logits"])


@pytest.mark.parametrize("kind", ALL_CELLS)
def test_every_cell_type_sequence_streaming_keras_agree(kind):
    """Whole sequence == Keras inference; T streaming steps == whole sequence; no random op."""
    model = make_model(make_cell(kind), pre_dense=True)
    im = build_inference_model(model)
    assert im.state_size == sum(tf.nest.flatten(model.layers[1].cell.state_size))
    x = inputs()
    fn = im.sequence_function()
    seq = {k: v.numpy() for k, v in fn(tf.constant(x)).items()}
    np.testing.assert_allclose(seq["logits"], np.asarray(model(x, training=False)), atol=1e-5)
    streamed = _stream(im, x)
    for key in ("logits", "probabilities"):
        np.testing.assert_allclose(streamed[key], seq[key], atol=1e-5)
    np.testing.assert_array_equal(streamed["classes"], seq["classes"])
    for cf in (fn.get_concrete_function(), im.step_function().get_concrete_function()):
        graph = cf.graph.as_graph_def()
        ops = {n.op for n in graph.node} | {
            n.op for f in graph.library.function for n in f.node_def
        }
        assert not [op for op in ops if "Random" in op or "Rng" in op], kind
        assert len(cf.variables) == 4  # pre and head Dense only: the cell is constants


def _graph_ops(fn) -> list[str]:
    graph = fn.get_concrete_function().graph.as_graph_def()
    return [n.op for n in graph.node] + [n.op for f in graph.library.function for n in f.node_def]


@pytest.mark.parametrize("learnable_dt", ["none", "per_unit"])
def test_folded_lipschitz_step_matches_numpy_in_every_time_mode(learnable_dt):
    """The folded step g <- g M + tanh(g V + p) on g = h / dt (scalar and per-unit dt) gives
    the independent numpy forward pass; so do the generic (unfolded) and per-step paths."""
    cell = LipschitzCell(UNITS, dt=0.2, beta=0.8, learnable_dt=learnable_dt)
    model = make_model(cell)
    if learnable_dt == "per_unit":  # distinct steps per unit
        cell.dt_variable.assign(np.linspace(0.05, 0.4, UNITS).astype("float32"))
    im = build_inference_model(model)
    assert _foldable_lipschitz(im.cell)
    x = inputs()
    logits_np, _ = _numpy_lipschitz(im.cell, im.head_layers[-1], x.astype(np.float64))
    for hoist, fold in ((True, True), (True, False), (False, False)):
        im.hoist, im.lipschitz_fold = hoist, fold
        for mode in TIME_MODES:
            fn = im.sequence_function(time_mode=mode)
            got = fn(tf.constant(x))["logits"].numpy()
            np.testing.assert_allclose(got, logits_np, atol=1e-5, err_msg=f"{hoist} {fold} {mode}")
            ops = _graph_ops(fn)
            assert ("While" in ops or "StatelessWhile" in ops) == (mode != "fixed"), mode
            if hoist and fold:  # one Tanh per step, no per-step multiply by dt
                tanh = ops.count("Tanh")
                assert tanh == (TIME if mode == "fixed" else TIME + 1 if mode == "hybrid" else 1)
                if mode == "fixed":  # the first step from g = 0 is a(p): no matmul of zeros
                    # + the input projection and the head Dense
                    assert ops.count("MatMul") == 2 * (TIME - 1) + 2
    # A hybrid graph takes other lengths too (its while branch).
    im.hoist, im.lipschitz_fold = True, True
    short = inputs(time=4)
    got = im.sequence_function(time_mode="hybrid")(tf.constant(short))["logits"].numpy()
    want, _ = _numpy_lipschitz(im.cell, im.head_layers[-1], short.astype(np.float64))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("kind", ALL_CELLS)
def test_every_cell_type_unrolled_and_hybrid_agree(kind):
    """The generic hoisted projection (or the per-step fallback, e.g. the test TwoStateCell
    whose `call` does not use `project_inputs`) in the unrolled and hybrid graphs."""
    model = make_model(make_cell(kind), pre_dense=True)
    im = build_inference_model(model)
    # TwoStateCell.call never calls project_inputs: detected, per-step `call` fallback.
    assert im._projection_hoistable(4) == (kind != "TwoStateCell")
    x = inputs()
    want = np.asarray(model(x, training=False))
    for mode in ("fixed", "hybrid"):
        got = im.sequence_function(time_mode=mode)(tf.constant(x))["logits"].numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=mode)


def test_lipschitz_fold_needs_comparable_positive_steps():
    """Per-unit steps spanning more than 100x (or <= 0) are not folded (the fold scales the
    state by 1 / dt); the generic hoisted step then gives the same numbers."""
    cell = LipschitzCell(UNITS, dt=0.2, learnable_dt="per_unit")
    model = make_model(cell)
    cell.dt_variable.assign(np.geomspace(1e-3, 0.5, UNITS).astype("float32"))
    im = build_inference_model(model)
    assert not _foldable_lipschitz(im.cell)
    x = inputs()
    want, _ = _numpy_lipschitz(im.cell, im.head_layers[-1], x.astype(np.float64))
    got = im.sequence_function(time_mode="fixed")(tf.constant(x))["logits"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_time_mode_errors():
    assert check_time_mode("hybrid") == "hybrid"
    with pytest.raises(ValueError, match="time_mode"):
        check_time_mode("unrolled")
    im = build_inference_model(make_model(make_cell("LipschitzCell"), time=None))
    with pytest.raises(ExportError, match="fixed input length"):
        im.sequence_function(time_mode="fixed")


def test_cell_is_frozen_and_graphs_read_no_cell_variable():
    model = make_model(make_cell("NoisyLipschitzCell"), pre_dense=True)
    im = build_inference_model(model)
    assert im.cell.frozen
    cell_vars = {id(v.value) for v in im.cell.weights}
    for fn in (im.sequence_function(), im.step_function()):
        cf = fn.get_concrete_function()
        assert not cell_vars & {id(v) for v in cf.variables}
        # Captured: the pre Dense and head Dense weights only.
        assert len(cf.variables) == 4
        ops = {n.op for f in cf.graph.as_graph_def().library.function for n in f.node_def}
        ops |= {n.op for n in cf.graph.as_graph_def().node}
        assert not [op for op in ops if "Random" in op or "Rng" in op]


def test_random_op_detector_sees_training_noise(tmp_path):
    """The detector flags exactly what the noisy cell traces in training mode."""
    cell = NoisyLipschitzCell(UNITS, additive_noise=0.1, seed=0)
    layer = keras.layers.RNN(cell)
    layer.build((None, TIME, FEATURES))
    module = tf.Module()
    module.f = tf.function(
        lambda x: layer(x, training=True),
        input_signature=[tf.TensorSpec([None, TIME, FEATURES], tf.float32)],
    )
    module.v = [w.value for w in [*layer.weights, cell.seed_generator.state]]
    tf.saved_model.save(module, str(tmp_path))
    assert find_random_tf_ops(tmp_path)


def test_rebuild_from_mixed_bfloat16_is_float32():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = make_model(make_cell("LipschitzCell"))
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.layers[0].cell.compute_dtype == "bfloat16"
    rebuilt = rebuild_float32(model)
    assert all(layer.compute_dtype == "float32" for layer in rebuilt.layers)
    assert rebuilt.layers[0].cell.compute_dtype == "float32"
    for a, b in zip(model.get_weights(), rebuilt.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = inputs()
    # bfloat16 vs float32: close, not equal.
    np.testing.assert_allclose(model(x), rebuilt(x), atol=0.1)


def test_softmax_head_gives_log_probabilities_as_logits():
    model = make_model(make_cell("LipschitzCell"), softmax=True)
    im = build_inference_model(model)
    assert im.softmax_mode == "activation"
    x = inputs()
    out = {k: v.numpy() for k, v in im.sequence_function()(tf.constant(x)).items()}
    probs = np.asarray(model(x))
    np.testing.assert_allclose(out["probabilities"], probs, atol=1e-6)
    np.testing.assert_allclose(out["logits"], np.log(probs), atol=1e-5)
    np.testing.assert_array_equal(out["classes"], probs.argmax(-1))


def test_two_part_state_is_concatenated():
    model = make_model(make_cell("TwoStateCell"))
    im = build_inference_model(model)
    assert im.state_sizes == [UNITS, UNITS] and im.state_size == 2 * UNITS
    x = inputs()
    seq = {k: v.numpy() for k, v in im.sequence_function()(tf.constant(x)).items()}
    np.testing.assert_allclose(seq["logits"], np.asarray(model(x)), atol=1e-5)
    streamed = _stream(im, x)
    np.testing.assert_allclose(streamed["logits"], seq["logits"], atol=1e-6)
    # Independent numpy coRNN-like recursion: state vector is [y | z].
    kernel, recurrent = (np.asarray(w, np.float64) for w in im.cell.get_weights())
    y = z = np.zeros((x.shape[0], UNITS))
    for t in range(x.shape[1]):
        z = z + 0.2 * (np.tanh(y @ recurrent + x[:, t] @ kernel) - y - z)
        y = y + 0.2 * z
    np.testing.assert_allclose(streamed["new_state"], np.concatenate([y, z], -1), atol=1e-5)


def test_model_without_keras_nrnn_cell_is_refused():
    model = keras.Sequential(
        [keras.Input((TIME, FEATURES)), keras.layers.GRU(4), keras.layers.Dense(CLASSES)]
    )
    with pytest.raises(ExportError, match="no keras_nrnn cell"):
        build_inference_model(model)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"return_sequences": True}, "does not fit the fast export path"),
        ({"go_backwards": True}, "go_backwards=True"),
    ],
)
def test_other_shapes_take_the_general_path_and_fast_refuses(extra, reason):
    model = keras.Sequential(
        [
            keras.Input((TIME, FEATURES)),
            keras.layers.RNN(LipschitzCell(UNITS), **extra),
            keras.layers.Dense(CLASSES),
        ]
    )
    assert build_inference_model(model).path == "general"
    with pytest.raises(ExportError, match=reason):
        build_inference_model(model, path="fast")


def test_functional_model_and_sdernn_layer():
    from keras_nrnn import SDERNN

    inp = keras.Input((None, FEATURES))
    h = SDERNN(LipschitzCell(UNITS))(inp)
    out = keras.layers.Dense(CLASSES)(keras.layers.LayerNormalization()(h))
    model = keras.Model(inp, out)
    im = build_inference_model(model)
    assert im.time_steps is None and len(im.head_layers) == 2
    x = inputs()
    seq = im.sequence_function()(tf.constant(x))
    np.testing.assert_allclose(seq["logits"].numpy(), np.asarray(model(x)), atol=1e-5)
    assert im.features == FEATURES


def test_dropout_and_normalization_layers_are_inference_only():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((TIME, FEATURES)),
            keras.layers.Dense(4),
            keras.layers.Dropout(0.5),
            keras.layers.RNN(make_cell("NoisyLipschitzCell")),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(CLASSES),
        ]
    )
    im = build_inference_model(model)
    x = inputs()
    for fn in (im.sequence_function(), im.step_function()):
        graph = fn.get_concrete_function().graph.as_graph_def()
        ops = {n.op for n in graph.node} | {
            n.op for f in graph.library.function for n in f.node_def
        }
        assert not [op for op in ops if "Random" in op or "Rng" in op]
    seq = im.sequence_function()(tf.constant(x))["logits"].numpy()
    np.testing.assert_allclose(seq, np.asarray(model(x, training=False)), atol=1e-5)
    np.testing.assert_allclose(_stream(im, x)["logits"], seq, atol=1e-5)


@pytest.mark.parametrize("functional", [False, True])
def test_separate_softmax_layer(functional):
    cell = make_cell("LipschitzCell")
    if functional:
        inp = keras.Input((TIME, FEATURES))
        out = keras.layers.Softmax()(keras.layers.Dense(CLASSES)(keras.layers.RNN(cell)(inp)))
        model = keras.Model(inp, out)
    else:
        model = keras.Sequential(
            [
                keras.Input((TIME, FEATURES)),
                keras.layers.RNN(cell),
                keras.layers.Dense(CLASSES),
                keras.layers.Activation("softmax"),
            ]
        )
    im = build_inference_model(model)
    assert im.softmax_mode == "layer"
    x = inputs()
    out = {k: v.numpy() for k, v in im.sequence_function()(tf.constant(x)).items()}
    probs = np.asarray(model(x))
    np.testing.assert_allclose(out["probabilities"], probs, atol=1e-6)
    np.testing.assert_allclose(out["logits"], np.log(probs), atol=1e-5)


def test_load_source_run_folders(tmp_path):
    import json

    from export.inference_model import load_source
    from export.metadata import find_data_checksums

    model = make_model(make_cell("LipschitzCell"))
    run = tmp_path / "run"
    (run / "nrnn").mkdir(parents=True)
    model.save(run / "nrnn" / "model.keras")
    config = {"data": {"files": ["ECG5000_TRAIN.txt"], "sha256": {"ECG5000_TRAIN.txt": "ab"}}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "results.json").write_text(json.dumps({"models": {"nrnn": {"mean": 0.9}}}))
    # Model folder of a multi-model run: the parent's JSON files are used.
    loaded = load_source(run / "nrnn")
    assert loaded.training_config == config
    assert loaded.results == {"models": {"nrnn": {"mean": 0.9}}}
    assert find_data_checksums(loaded.training_config) == {"ECG5000_TRAIN.txt": "ab"}
    np.testing.assert_allclose(loaded.model(inputs()), model(inputs()), atol=1e-6)
    # Its own JSON files win.
    (run / "nrnn" / "results.json").write_text(json.dumps({"accuracy": 0.5}))
    assert load_source(run / "nrnn").results == {"accuracy": 0.5}
    # A .keras file directly: no JSON.
    direct = load_source(run / "nrnn" / "model.keras")
    assert direct.training_config is None and direct.results is None
    # Bad JSON is an error naming the file.
    (run / "nrnn" / "config.json").write_text("{not json")
    with pytest.raises(ExportError, match=r"config\.json"):
        load_source(run / "nrnn")
