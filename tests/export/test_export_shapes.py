"""Model shape x format: full exports (verified by `export_model` itself), then each format
re-run here: SavedModel, onnxruntime, the ONNX reference evaluator, streaming, batch checks,
ONNX dimension names; bad .keras files; SIGTERM during an export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf
from export_helpers import CLASSES, FEATURES, TIME, listing, make_cell, perturb

from export import export_model
from export.verify import run_onnx, run_saved_model

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-5


def _single():
    return keras.Sequential(
        [
            keras.Input((TIME, FEATURES)),
            keras.layers.RNN(make_cell("NoisyLipschitzCell")),
            keras.layers.Dense(CLASSES),
        ]
    )


def _stacked():
    return keras.Sequential(
        [
            keras.Input((TIME, FEATURES)),
            keras.layers.RNN(make_cell("NoisyLipschitzCell"), return_sequences=True),
            keras.layers.RNN(make_cell("CoRNNCell")),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )


def _bidirectional():
    return keras.Sequential(
        [
            keras.Input((TIME, FEATURES)),
            keras.layers.Bidirectional(keras.layers.RNN(make_cell("LipschitzCell"))),
            keras.layers.Dense(CLASSES),
        ]
    )


def _sequences():
    return keras.Sequential(
        [
            keras.Input((TIME, FEATURES)),
            keras.layers.RNN(make_cell("AntisymmetricCell"), return_sequences=True),
            keras.layers.Dense(CLASSES),
        ]
    )


def _multi_input():
    sig = keras.Input((TIME, FEATURES), name="signal")
    aux = keras.Input((4,), name="aux")
    h = keras.layers.RNN(make_cell("LipschitzCell"))(sig)
    h = keras.layers.Concatenate()([h, aux])
    return keras.Model(
        [sig, aux],
        [keras.layers.Dense(CLASSES, name="label")(h), keras.layers.Dense(1, name="score")(h)],
    )


def _masking():
    return keras.Sequential(
        [
            keras.Input((TIME, FEATURES)),
            keras.layers.Masking(0.0),
            keras.layers.RNN(make_cell("LipschitzCell")),
            keras.layers.Dense(CLASSES),
        ]
    )


SHAPES = {
    "single": _single,
    "stacked": _stacked,
    "bidirectional": _bidirectional,
    "sequences": _sequences,
    "multi_input": _multi_input,
    "masking": _masking,
}


def _feeds(im_inputs: dict, batch=3):
    rng = np.random.default_rng(5)
    return {
        name: rng.standard_normal((batch, *shape)).astype(np.float32)
        for name, shape in im_inputs.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_shape_exports_to_savedmodel_onnx_and_reference_runtime(shape, tmp_path):
    keras.utils.set_random_seed(0)
    model = perturb(SHAPES[shape]())
    # Verified at export: Keras vs SavedModel vs onnxruntime vs tf.lite.Interpreter.
    path = export_model(model, tmp_path, formats="savedmodel,onnx,tflite")
    meta = json.loads((path / "assets" / "metadata.json").read_text())
    streaming = shape != "bidirectional"
    assert ("streaming_step" in meta["signatures"]) == streaming
    assert (path / "model_streaming.onnx").exists() == streaming
    assert meta["export_path"] == ("fast" if shape == "single" else "general")
    seq_inputs = meta["signatures"]["serving_default"]["inputs"]
    shapes = {n: [TIME if d == "time" else d for d in dims[1:]] for n, dims in seq_inputs.items()}
    feeds = _feeds(shapes)
    if shape == "masking":
        feeds["inputs"][0, 7:] = 0.0  # padded tail
    keras_in = [feeds[t.name] for t in model.inputs] if len(feeds) > 1 else feeds["inputs"]
    keras_out = model(keras_in)
    keras_out = [np.asarray(o) for o in (keras_out if isinstance(keras_out, list) else [keras_out])]

    class _Im:  # what the runners need, read back from metadata.json (not the export's own)
        input_names = tuple(seq_inputs)
        states = ()
        streaming = False

        @staticmethod
        def is_sequence_input(i):
            return "time" in seq_inputs[_Im.input_names[i]]

        @staticmethod
        def per_step_outputs():
            return set()

    sm = run_saved_model(path, feeds, _Im)
    ort = run_onnx(path, feeds, _Im)
    ref = run_onnx(path, feeds, _Im, runtime="reference")
    out_names = list(meta["signatures"]["serving_default"]["outputs"])
    first = "logits" if "logits" in out_names else "label_logits"
    if shape == "stacked":  # ends in a softmax: compared as probabilities
        first = "probabilities"
    np.testing.assert_allclose(sm["sequence"][first], keras_out[0], atol=ATOL)
    lite = tf.lite.Interpreter(model_path=str(path / "model.tflite"))
    lite_out = lite.get_signature_runner("serving_default")(**feeds)
    lite_ops = {op["op_name"] for op in lite._get_ops_details()}
    assert not [op for op in lite_ops if "FLEX" in op.upper() or "CUSTOM" in op.upper()]
    for key in out_names:
        np.testing.assert_allclose(lite_out[key], sm["sequence"][key], atol=ATOL)
    if shape == "single":  # the default SavedModel converts to builtins (no EnsureShape)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(path), ["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        runner = tf.lite.Interpreter(model_content=converter.convert()).get_signature_runner()
        np.testing.assert_allclose(runner(**feeds)["logits"], keras_out[0], atol=ATOL)
    for key in out_names:
        np.testing.assert_allclose(ort["sequence"][key], sm["sequence"][key], atol=ATOL)
        np.testing.assert_allclose(ref["sequence"][key], sm["sequence"][key], atol=ATOL)

    # Every free ONNX axis is named like metadata.json says ("batch", "time").
    model_onnx = onnx.load(str(path / "model.onnx"))
    for value in [*model_onnx.graph.input, *model_onnx.graph.output]:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        want = meta["signatures"]["serving_default"][
            "inputs" if value.name in seq_inputs else "outputs"
        ][value.name]
        assert dims == want, value.name

    if not streaming:
        return
    assert _consumers_before_their_batch_check(path, reference=next(iter(seq_inputs))) == []
    states = meta["streaming_states"]
    step_in = {
        n: f[:, 0] if _Im.is_sequence_input(i) else f for i, (n, f) in enumerate(feeds.items())
    }
    for runtime in ("savedmodel", "onnxruntime", "tflite"):
        for batch_x, batch_s in ((7, 1), (1, 7)):
            bad = {n: np.repeat(v[:1], batch_x, axis=0) for n, v in step_in.items()}
            bad.update({s["name"]: np.zeros((batch_s, s["size"]), np.float32) for s in states})
            with pytest.raises(Exception) as info:
                if runtime == "savedmodel":
                    fn = tf.saved_model.load(str(path)).signatures["streaming_step"]
                    fn(**{k: tf.constant(v) for k, v in bad.items()})
                elif runtime == "tflite":
                    lite = tf.lite.Interpreter(model_path=str(path / "model_streaming.tflite"))
                    lite.get_signature_runner("streaming_step")(**bad)
                else:
                    import onnxruntime as ort_module

                    sess = ort_module.InferenceSession(str(path / "model_streaming.onnx"))
                    sess.run(None, bad)
            message = str(info.value).lower()
            if runtime == "savedmodel":  # TensorFlow runs the check before anything reads
                assert "must have the batch size of input" in message, message
            else:  # runtimes without asserts fail on the reshape to the checked batch
                assert "batch" in message or "reshape" in message, message


def _consumers_before_their_batch_check(path: Path, reference: str) -> list[str]:
    """Ops of the streaming signature that read an input (other than its shape) without
    waiting for that input's batch check against `reference` (the input whose batch the
    others must have; its own readers need not wait): each could fail first on a mismatched
    batch, with the model's own message instead of the check's (seen once in CI: a
    `ConcatV2` of the multi-input model). Checked in the traced function and in the graph as
    Grappler optimizes it. "Waiting" must not go through a constant: a control dependency on
    the reshape's constant dims alone did not hold at run time."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.framework.function_def_to_graph import function_def_to_graph_def
    from tensorflow.python.grappler import tf_optimizer

    fn = tf.saved_model.load(str(path)).signatures["streaming_step"]
    inputs = set(fn.structured_input_signature[1])
    assert reference in inputs, (reference, sorted(inputs))
    library = fn.graph.as_graph_def().library.function
    (body,) = [f for f in library if "streaming_step" in f.signature.name]
    traced, _ = function_def_to_graph_def(body)
    meta_graph = tf.compat.v1.train.export_meta_graph(
        graph_def=fn.graph.as_graph_def(), graph=fn.graph
    )
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend(t.name for t in fn.outputs)
    meta_graph.collection_def["train_op"].CopyFrom(fetch)
    optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta_graph)
    assert not [n for n in optimized.node if n.op.endswith("PartitionedCall")], "not inlined"
    early = []
    for label, graph in (("traced", traced), ("optimized", optimized)):
        nodes = {n.name: n for n in graph.node}
        assert inputs <= set(nodes), (label, sorted(inputs))
        parents = {
            name: [] if n.op == "Const" else [i.lstrip("^").split(":")[0] for i in n.input]
            for name, n in nodes.items()
        }
        ancestors: dict[str, set] = {}

        def ancestors_of(name: str, parents=parents, ancestors=ancestors) -> set:
            if name not in ancestors:
                ancestors[name] = set()
                for parent in parents[name]:
                    ancestors[name] |= {parent} | ancestors_of(parent)
            return ancestors[name]

        for name, node in nodes.items():
            if node.op in ("Shape", "Assert"):
                continue
            for x in set(parents[name]) & (inputs - {reference}):
                checks = [a for a in ancestors_of(name) if nodes[a].op == "Assert"]
                if not [a for a in checks if x in ancestors_of(a)]:
                    early.append(f"{label}: {node.op} {name} reads {x}")
    return early


def test_corrupt_keras_file_is_a_clear_usage_error(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"PK\x03\x04 truncated download")
    proc = subprocess.run(
        [sys.executable, "-m", "export", str(bad), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]
    assert "not a valid .keras archive" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_export_leaves_nothing(signum, tmp_path):
    keras.utils.set_random_seed(0)
    model_file = tmp_path / "m.keras"
    _stacked().save(model_file)
    out = tmp_path / "a" / "b" / "exports"
    proc = subprocess.Popen(
        [sys.executable, "-m", "export", str(model_file), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    # Wait until the export has started writing (the hidden temporary version folder).
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and any(p.name.startswith(".") for p in out.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)  # mid-export: SavedModel being written or ONNX being converted
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
    ).stdout.split()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "nothing was written" in stderr
    assert not (tmp_path / "a").exists(), listing(tmp_path)
    for pid in children:  # the saved_model_cli child (if it had started) is gone too
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )
