"""End-to-end exports: layout, signatures, metadata, warm-up, ONNX, agreement, versions, errors."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from export_helpers import (
    BASELINE_CELLS,
    CLASSES,
    FEATURES,
    TIME,
    UNITS,
    LgammaLayer,
    inputs,
    listing,
    make_cell,
    make_model,
)

import export.api
from export import ExportError, export_model
from export.onnx_export import find_random_onnx_ops, onnx_op_types
from export.savedmodel import find_random_tf_ops
from export.verify import run_onnx, run_saved_model
from export.warmup import read_warmup_requests

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-5


def _run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "export", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One full export (both formats) of a NoisyLipschitzCell model with a per-step Dense."""
    base = tmp_path_factory.mktemp("exports")
    model = make_model(make_cell("NoisyLipschitzCell"), pre_dense=True)
    x = inputs(batch=4)
    path = export_model(model, base, name="ecg", sample_inputs=x, metadata={"note": "test"})
    return SimpleNamespace(base=base, path=path, model=model, x=x)


# --------------------------------------------------------------------------- layout
def test_layout(exported):
    assert exported.path == exported.base / "1"
    files = set(listing(exported.path))
    expected = {
        "saved_model.pb",
        "variables",
        "variables/variables.index",
        "variables/variables.data-00000-of-00001",
        "assets",
        "assets/metadata.json",
        "assets.extra",
        "assets.extra/tf_serving_warmup_requests",
        "model.onnx",
        "model_fixed.onnx",
        "model_streaming.onnx",
    }
    assert expected <= files
    assert files - expected <= {"fingerprint.pb"}
    # Nothing else in the base: no temporary folder left behind.
    assert [p.name for p in exported.base.iterdir()] == ["1"]
    # Readable by a server running as another user.
    assert (exported.path / "assets" / "metadata.json").stat().st_mode & 0o044 == 0o044


def test_signatures(exported):
    loaded = tf.saved_model.load(str(exported.path))
    assert set(loaded.signatures) == {"serving_default", "streaming_step"}
    seq = loaded.signatures["serving_default"]
    (spec,) = seq.structured_input_signature[1].values()
    assert spec.name == "inputs" and spec.dtype == tf.float32
    assert spec.shape.as_list() == [None, None, FEATURES]
    outs = seq.structured_outputs
    assert {k: (v.dtype, v.shape.as_list()) for k, v in outs.items()} == {
        "logits": (tf.float32, [None, CLASSES]),
        "probabilities": (tf.float32, [None, CLASSES]),
        "classes": (tf.int64, [None]),
    }
    step = loaded.signatures["streaming_step"]
    specs = step.structured_input_signature[1]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in specs.items()} == {
        "inputs": (tf.float32, [None, FEATURES]),
        "state": (tf.float32, [None, UNITS]),
    }
    outs = step.structured_outputs
    assert set(outs) == {"new_state", "logits", "probabilities", "classes"}
    assert outs["new_state"].shape.as_list() == [None, UNITS]
    assert outs["classes"].dtype == tf.int64


def test_metadata(exported):
    meta = json.loads((exported.path / "assets" / "metadata.json").read_text())
    for key in (
        "name",
        "version",
        "keras_nrnn_version",
        "features",
        "num_classes",
        "state_size",
        "cells",
        "model_config",
        "training",
        "metrics",
        "data_checksums",
        "exported_at",
        "formats",
    ):
        assert key in meta, key
    assert meta["name"] == "ecg" and meta["version"] == 1
    assert (meta["features"], meta["num_classes"], meta["state_size"]) == (FEATURES, CLASSES, UNITS)
    assert meta["formats"] == ["savedmodel", "onnx"]
    assert meta["cells"][0]["class_name"] == "NoisyLipschitzCell"
    assert meta["cells"][0]["config"]["noise"]["config"]["additive"] == 0.1
    assert meta["training"] is None and meta["metrics"] is None
    assert meta["note"] == "test"
    assert meta["export_options"] == {
        "savedmodel_time_steps": "hybrid",
        "savedmodel_jit_compile": False,
        "onnx_time_steps": "hybrid",
        "onnx_fixed_time_file": "model_fixed.onnx",
    }
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", meta["exported_at"])


def test_no_random_ops(exported):
    assert find_random_tf_ops(exported.path) == []
    for file in ("model.onnx", "model_fixed.onnx", "model_streaming.onnx"):
        assert find_random_onnx_ops(onnx.load(str(exported.path / file))) == []


def test_onnx_models(exported):
    seq = onnx.load(str(exported.path / "model.onnx"))
    onnx.checker.check_model(seq, full_check=True)
    assert [i.name for i in seq.graph.input] == ["inputs"]
    dims = seq.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][2] == FEATURES
    # Default for a model of fixed length: any length (If: unrolled for T, Loop otherwise),
    # axes named as in metadata.json; model_fixed.onnx: unrolled, time fixed to T, no loop.
    assert [d.dim_param for d in dims[:2]] == ["batch", "time"]
    assert sorted(o.name for o in seq.graph.output) == ["classes", "logits", "probabilities"]
    assert {"If", "Loop"} <= onnx_op_types(seq)
    fixed = onnx.load(str(exported.path / "model_fixed.onnx"))
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == TIME
    assert "Loop" not in onnx_op_types(fixed) and "If" not in onnx_op_types(fixed)
    step = onnx.load(str(exported.path / "model_streaming.onnx"))
    onnx.checker.check_model(step, full_check=True)
    assert sorted(i.name for i in step.graph.input) == ["inputs", "state"]
    assert sorted(o.name for o in step.graph.output) == [
        "classes",
        "logits",
        "new_state",
        "probabilities",
    ]
    sess = ort.InferenceSession(str(exported.path / "model.onnx"))
    types = {o.name: o.type for o in sess.get_outputs()}
    assert types == {
        "logits": "tensor(float)",
        "probabilities": "tensor(float)",
        "classes": "tensor(int64)",
    }


def test_keras_savedmodel_onnx_agree(exported):
    """Independently of the export's own check: all three agree, also on new inputs/lengths."""
    for x in (exported.x, inputs(batch=2, seed=7)):
        keras_logits = np.asarray(exported.model(x, training=False))
        sm = run_saved_model(exported.path, x, UNITS)
        ox = run_onnx(exported.path, x, UNITS)
        for res in (sm, ox):
            np.testing.assert_allclose(res["sequence"]["logits"], keras_logits, atol=ATOL)
            np.testing.assert_array_equal(res["sequence"]["classes"], keras_logits.argmax(-1))
            for key in ("logits", "probabilities", "classes"):
                np.testing.assert_allclose(res["streaming"][key], res["sequence"][key], atol=ATOL)
        np.testing.assert_allclose(
            sm["streaming"]["new_state"], ox["streaming"]["new_state"], atol=ATOL
        )
    # A time axis of another length than the model was built for: the SavedModel and
    # model.onnx (both "hybrid") run their loops, equal to streaming and to each other; the
    # unrolled model_fixed.onnx refuses it.
    x = inputs(batch=2, time=5, seed=3)
    sm = run_saved_model(exported.path, x, UNITS)
    ox = run_onnx(exported.path, x, UNITS)
    for key in ("logits", "probabilities", "classes"):
        np.testing.assert_allclose(sm["streaming"][key], sm["sequence"][key], atol=ATOL)
        np.testing.assert_allclose(ox["sequence"][key], sm["sequence"][key], atol=ATOL)
    sess = ort.InferenceSession(str(exported.path / "model_fixed.onnx"))
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        sess.run(None, {"inputs": x})


def test_warmup_requests(exported):
    logs = read_warmup_requests(exported.path / "assets.extra" / "tf_serving_warmup_requests")
    assert len(logs) == 3
    loaded = tf.saved_model.load(str(exported.path))
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "ecg"
        feeds = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out = loaded.signatures[request.model_spec.signature_name](**feeds)
        assert out["logits"].shape[-1] == CLASSES
    first = tf.make_ndarray(logs[1].predict_log.request.inputs["inputs"])
    np.testing.assert_array_equal(first, exported.x)


def test_saved_model_cli_run(exported):
    x = np.round(inputs(batch=2, time=4, seed=5).astype(np.float64), 3)
    expr = "inputs=" + repr(x.tolist())
    proc = subprocess.run(
        [
            "saved_model_cli",
            "run",
            "--dir",
            str(exported.path),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            expr,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    block = proc.stdout.split("Result for output key logits:")[1].split("Result for")[0]
    printed = np.array([float(v) for v in re.findall(r"-?\d+\.\d*(?:e[-+]\d+)?", block)])
    want = np.asarray(exported.model(x.astype(np.float32), training=False)).ravel()
    np.testing.assert_allclose(printed, want, atol=1e-5)


# --------------------------------------------------------------------------- versions
def test_next_version_and_refusal_to_overwrite(exported, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "1").mkdir()
    (base / "7").mkdir()
    (base / "notes").mkdir()
    path = export_model(exported.model, base, formats=("onnx",), sample_inputs=exported.x)
    assert path.name == "8"
    assert (path / "model.onnx").is_file() and (path / "assets" / "metadata.json").is_file()
    assert not (path / "saved_model.pb").exists()
    before = listing(base)
    with pytest.raises(FileExistsError, match="8"):
        export_model(exported.model, base, version=8, formats=("onnx",))
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(exported.model, exported.base, version=1)
    assert listing(base) == before
    assert listing(exported.base) and (exported.base / "1" / "saved_model.pb").is_file()


# --------------------------------------------------------------------------- options
def _xla_functions(version_dir: Path) -> list[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    return [
        fn.signature.name
        for fn in proto.meta_graphs[0].graph_def.library.function
        if "_XlaMustCompile" in fn.attr and fn.attr["_XlaMustCompile"].b
    ]


@pytest.mark.slow
def test_alternative_time_steps_and_jit(tmp_path, exported):
    """The non-default options: a dynamic ONNX Loop (any length), a fixed-length unrolled
    SavedModel signature, XLA kept in the saved function; all verified and equal."""
    path = export_model(
        exported.model,
        tmp_path,
        sample_inputs=exported.x,
        onnx_time_steps="dynamic",
        savedmodel_time_steps="fixed",
        savedmodel_jit_compile=True,
    )
    meta = json.loads((path / "assets" / "metadata.json").read_text())
    assert meta["export_options"] == {
        "savedmodel_time_steps": "fixed",
        "savedmodel_jit_compile": True,
        "onnx_time_steps": "dynamic",
        "onnx_fixed_time_file": None,
    }
    assert _xla_functions(path) and not _xla_functions(exported.path)
    seq = onnx.load(str(path / "model.onnx"))
    assert "Loop" in onnx_op_types(seq)
    assert seq.graph.input[0].type.tensor_type.shape.dim[1].dim_param  # dynamic time
    loaded = tf.saved_model.load(str(path))
    (spec,) = loaded.signatures["serving_default"].structured_input_signature[1].values()
    assert spec.shape.as_list() == [None, TIME, FEATURES]
    want = np.asarray(exported.model(exported.x, training=False))
    sm = run_saved_model(path, exported.x, UNITS)["sequence"]["logits"]
    np.testing.assert_allclose(sm, want, atol=ATOL)
    x = inputs(batch=2, time=5, seed=3)
    ox = run_onnx(path, x, UNITS)
    np.testing.assert_allclose(ox["sequence"]["logits"], ox["streaming"]["logits"], atol=ATOL)


# --------------------------------------------------------------------------- cells
@pytest.mark.slow
@pytest.mark.parametrize(
    "kind", ["LipschitzCell", *(c for c in BASELINE_CELLS if c.startswith("Noisy"))]
)
def test_each_cell_type_exports_and_verifies(kind, tmp_path):
    """Full export per cell family (the noisy variants: their inference graph is the
    deterministic cell's; every variant is checked without files in test_inference_model)."""
    cell = make_cell(kind)  # skips with a reason if the cell does not exist yet
    model = make_model(cell, softmax=kind == "LipschitzCell")
    x = inputs(batch=2)
    path = export_model(model, tmp_path, sample_inputs=x)
    meta = json.loads((path / "assets" / "metadata.json").read_text())
    state_size = meta["state_size"]
    assert state_size == sum(tf.nest.flatten(model.layers[0].cell.state_size))
    out = np.asarray(model(x, training=False))
    for res in (run_saved_model(path, x, state_size), run_onnx(path, x, state_size)):
        key = "probabilities" if kind == "LipschitzCell" else "logits"
        np.testing.assert_allclose(res["sequence"][key], out, atol=ATOL)
        np.testing.assert_allclose(res["streaming"]["logits"], res["sequence"]["logits"], atol=ATOL)
    assert find_random_tf_ops(path) == []


# --------------------------------------------------------------------------- mixed bf16 + CLI
@pytest.mark.slow
def test_cli_on_run_folder_trained_in_mixed_bfloat16(tmp_path):
    """A couple of training steps under mixed_bfloat16, saved as a run folder, exported by the
    CLI: the ONNX (rebuilt in float32) is valid and matches the float32 rebuild."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = make_model(make_cell("NoisyLipschitzCell"))
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = inputs(batch=8)
        model.fit(x, np.arange(8) % CLASSES, epochs=1, batch_size=4, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.layers[0].cell.compute_dtype == "bfloat16"
    run = tmp_path / "run-ecg"
    run.mkdir()
    model.save(run / "model.keras")
    config = {"lr": 0.01, "data": {"data_checksums": {"ECG5000_TRAIN.txt": "sha256:ab"}}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "results.json").write_text(json.dumps({"test_accuracy": 0.5}))

    proc = _run_cli(run, "--out", tmp_path / "exports")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == f"{tmp_path / 'exports' / '1'}\n"  # the version folder, only
    for banner in ("cuInit", "oneDNN", "absl::InitializeLog", "cuda drivers"):
        assert banner not in proc.stderr, proc.stderr  # a quiet start-up
    path = tmp_path / "exports" / "1"
    meta = json.loads((path / "assets" / "metadata.json").read_text())
    assert meta["name"] == "run-ecg"
    assert meta["training"] == config and meta["metrics"] == {"test_accuracy": 0.5}
    assert meta["data_checksums"] == {"ECG5000_TRAIN.txt": "sha256:ab"}
    assert "bfloat16" not in json.dumps(meta["cells"])  # the exported (float32) cell
    assert "mixed_bfloat16" in json.dumps(meta["model_config"])  # the model as trained

    onnx_model = onnx.load(str(path / "model.onnx"))
    onnx.checker.check_model(onnx_model, full_check=True)
    elem = {t.type.tensor_type.elem_type for t in onnx_model.graph.input}
    assert elem == {onnx.TensorProto.FLOAT}
    assert not any(
        init.data_type == onnx.TensorProto.BFLOAT16 for init in onnx_model.graph.initializer
    )
    # Reference: a float32 twin of the trained model, built here (not by the export code).
    twin = make_model(make_cell("NoisyLipschitzCell"))
    twin.set_weights(model.get_weights())
    assert twin.layers[0].cell.compute_dtype == "float32"
    want = np.asarray(twin(x, training=False))
    got = run_onnx(path, x, UNITS)["sequence"]["logits"]
    np.testing.assert_allclose(got, want, atol=ATOL)
    # And close to the bfloat16 model itself (bfloat16 precision).
    np.testing.assert_allclose(got, np.asarray(model(x, training=False), np.float32), atol=0.1)


# --------------------------------------------------------------------------- errors
def test_cli_errors(tmp_path):
    """Bad arguments are reported before TensorFlow is even imported (fast)."""
    proc = _run_cli(tmp_path / "missing.keras", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "missing.keras" in proc.stderr and "does not exist" in proc.stderr
    proc = _run_cli(tmp_path, "--out", tmp_path / "out", "--formats", "savedmodel,tfjs")
    assert proc.returncode == 2 and "tfjs" in proc.stderr
    proc = _run_cli(tmp_path, "--out", tmp_path / "out", "--version", "0")
    assert proc.returncode == 2 and "version" in proc.stderr
    proc = _run_cli(tmp_path, "--out", tmp_path / "out", "--onnx-time-steps", "unrolled")
    assert proc.returncode == 2 and "--onnx-time-steps" in proc.stderr
    # An --out that is a file (or below one): refused at once, one line, the file untouched.
    (tmp_path / "m.keras").write_bytes(b"not read")
    (tmp_path / "taken").write_text("mine")
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        proc = _run_cli(tmp_path / "m.keras", "--out", out, timeout=60)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.count("\n") == 1 and "--out" in proc.stderr and "file" in proc.stderr
    assert (tmp_path / "taken").read_text() == "mine"
    proc = _run_cli(tmp_path, "--out", tmp_path / "out")  # a folder without model.keras
    assert proc.returncode == 1 and "model.keras" in proc.stderr
    assert proc.stderr.count("error: ") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_inputs_leave_nothing(tmp_path, exported):
    base = tmp_path / "base"
    with pytest.raises(ExportError, match="does not exist"):
        export_model(tmp_path / "nope.keras", base)
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    with pytest.raises(ExportError, match=r"has no model\.keras"):
        export_model(empty_run, base)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ExportError, match=r"broken\.keras"):
        export_model(broken, base)
    gru = keras.Sequential(
        [keras.Input((TIME, FEATURES)), keras.layers.GRU(4), keras.layers.Dense(CLASSES)]
    )
    with pytest.raises(ExportError, match="no keras_nrnn cell"):
        export_model(gru, base)
    with pytest.raises(ValueError, match="tfjs"):
        export_model(exported.model, base, formats=("savedmodel", "tfjs"))
    with pytest.raises(ValueError, match="version"):
        export_model(exported.model, base, version=0)
    with pytest.raises(ValueError, match="onnx_time_steps"):
        export_model(exported.model, base, onnx_time_steps="unrolled")
    with pytest.raises(ValueError, match="savedmodel_jit_compile"):
        export_model(exported.model, base, savedmodel_jit_compile="yes")
    dynamic_model = make_model(make_cell("LipschitzCell"), time=None)
    with pytest.raises(ExportError, match="fixed input length"):
        export_model(dynamic_model, base, onnx_time_steps="fixed")
    with pytest.raises(ValueError, match="sample_inputs"):
        export_model(exported.model, base, sample_inputs=np.zeros((2, TIME, FEATURES + 1)))
    with pytest.raises(ValueError, match="standard keys"):
        export_model(exported.model, base, metadata={"version": 3})
    assert not base.exists()


def test_crash_while_writing_leaves_nothing(tmp_path, exported, monkeypatch):
    base = tmp_path / "base"
    base.mkdir()

    def crash(tmp, *args, **kwargs):
        (tmp / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(export.api, "_write_export", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_model(exported.model, base)
    assert listing(base) == []


def test_failed_verification_raises_and_leaves_nothing(tmp_path, exported, monkeypatch):
    # Any difference at all (atol < 0) must fail the export, loudly, and leave nothing.
    monkeypatch.setattr(
        export.api, "verify_export", functools.partial(export.api.verify_export, atol=-1.0)
    )
    with pytest.raises(ExportError, match="Verification of the export failed"):
        export_model(exported.model, tmp_path / "base", formats=("onnx",))
    assert listing(tmp_path) == []


def test_unconvertible_op_is_an_error(tmp_path, monkeypatch):
    """tf2onnx only logs an unsupported op; the export fails, after the SavedModel was written
    and saved_model_cli started: nothing is left behind, the tool is not left running."""
    started = []

    class Recording(export.api.SavedModelCliCheck):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(export.api, "SavedModelCliCheck", Recording)
    model = keras.Sequential(
        [
            keras.Input((TIME, FEATURES)),
            keras.layers.RNN(make_cell("LipschitzCell")),
            keras.layers.Dense(CLASSES),
            LgammaLayer(),
        ]
    )
    with pytest.raises(ExportError, match="Lgamma"):
        export_model(model, tmp_path / "base")
    assert listing(tmp_path) == []
    assert len(started) == 1 and started[0]._proc.poll() is not None
