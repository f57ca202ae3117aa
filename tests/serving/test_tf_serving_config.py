"""TF Serving side: the export has the layout `tensorflow_model_server` expects, is servable
by TensorFlow's own loader and `saved_model_cli`, and the generated config files parse back
into the TF Serving protos."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _serving_helpers import ROOT, ExportInfo, env
from google.protobuf import text_format

from serving._protos import batching_parameters_class, protos, tensor_proto_to_ndarray
from serving.tf_serving_config import (
    WARMUP_FILE,
    ExportLayoutError,
    batching_parameters,
    check_export_layout,
    docker_command,
    main,
    model_server_command,
    model_server_config,
    read_tfrecords,
    read_warmup_requests,
)


def test_export_layout_is_what_tf_serving_expects(export_info: ExportInfo) -> None:
    assert check_export_layout(export_info.base) == [1]
    version_dir = export_info.base / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables" / "variables.index").is_file()
    assert [p.name for p in export_info.base.iterdir() if p.is_dir()] == ["1"]


def test_warmup_file_is_tfrecord_of_prediction_logs(export_info: ExportInfo) -> None:
    import tensorflow as tf

    path = export_info.base / "1" / WARMUP_FILE
    ours = list(read_tfrecords(path))
    theirs = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert ours == theirs and ours
    logs = read_warmup_requests(export_info.base / "1")
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.signature_name in ("", "serving_default", "streaming_step")
        for tensor in request.inputs.values():
            np.testing.assert_array_equal(tensor_proto_to_ndarray(tensor),
                                          tf.make_ndarray(tensor))


def test_layout_problems_are_reported(export_info: ExportInfo, tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(export_info.base, base)
    shutil.copytree(base / "1", base / "latest")  # not an integer
    shutil.copytree(base / "1", base / "2")
    shutil.rmtree(base / "2" / "variables")
    shutil.copytree(base / "1", base / "3")
    warm = base / "3" / WARMUP_FILE
    data = bytearray(warm.read_bytes())
    data[-3] ^= 0xFF  # corrupt the last record's payload checksum
    warm.write_bytes(bytes(data))
    shutil.copytree(base / "1", base / "4")
    (base / "4" / "saved_model.pb").unlink()
    with pytest.raises(ExportLayoutError) as info:
        check_export_layout(base)
    msg = str(info.value)
    assert "version folder names must be integers" in msg
    assert f"{base / '2'}: variables/ is missing" in msg
    assert "bad data checksum" in msg
    assert f"{base / '4'}: saved_model.pb is missing" in msg
    assert f"{base / '1'}:" not in msg
    with pytest.raises(ExportLayoutError, match="no integer version folder"):
        check_export_layout(tmp_path / "base" / "1" / "assets")


def test_savedmodel_serves_with_tensorflow_loader(export_info: ExportInfo) -> None:
    import onnxruntime as ort
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_info.base / "1"))
    assert {"serving_default", "streaming_step"} <= set(loaded.signatures)
    out = loaded.signatures["serving_default"](inputs=tf.constant(export_info.x))
    assert set(out) == {"logits", "probabilities", "classes"}
    np.testing.assert_allclose(out["logits"].numpy(), export_info.logits, atol=1e-4)
    sess = ort.InferenceSession(str(export_info.base / "1" / "model.onnx"))
    onnx_logits = sess.run(["logits"], {"inputs": export_info.x})[0]
    np.testing.assert_allclose(out["logits"].numpy(), onnx_logits, atol=1e-4)
    # The warmup requests run through the signature they name.
    for log in read_warmup_requests(export_info.base / "1"):
        request = log.predict_log.request
        sig = loaded.signatures[request.model_spec.signature_name or "serving_default"]
        result = sig(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        assert all(np.isfinite(v.numpy()).all() for v in result.values()
                   if v.dtype.is_floating)


@pytest.mark.slow
def test_saved_model_cli_run(export_info: ExportInfo, tmp_path: Path) -> None:
    x = tmp_path / "x.npy"
    np.save(x, export_info.x)
    outdir = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run",
         "--dir", str(export_info.base / "1"), "--tag_set", "serve",
         "--signature_def", "serving_default", "--inputs", f"inputs={x}",
         "--outdir", str(outdir)],
        capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_allclose(np.load(outdir / "logits.npy"), export_info.logits, atol=1e-4)
    np.testing.assert_array_equal(np.load(outdir / "classes.npy"),
                                  export_info.logits.argmax(-1))


def test_model_server_config_parses_back() -> None:
    p = protos()
    cfg = model_server_config("nrnn", "/models/nrnn", latest=2)
    parsed = text_format.Parse(text_format.MessageToString(cfg),
                               p.model_server_config_pb2.ModelServerConfig())
    (model,) = parsed.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "nrnn", "/models/nrnn", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 2
    specific = model_server_config("nrnn", "/m", versions=[1, 3])
    assert list(specific.model_config_list.config[0].model_version_policy.specific.versions) \
        == [1, 3]
    every = model_server_config("nrnn", "/m", all_versions=True)
    assert every.model_config_list.config[0].model_version_policy.WhichOneof(
        "policy_choice") == "all"
    with pytest.raises(ValueError, match="`base_path` must be absolute"):
        model_server_config("nrnn", "models/nrnn")
    with pytest.raises(ValueError, match="`name`"):
        model_server_config("a/b", "/m")


def test_batching_parameters_text_format() -> None:
    msg = batching_parameters(max_batch_size=16, batch_timeout_micros=500,
                              allowed_batch_sizes=[4, 8, 16])
    text = text_format.MessageToString(msg)
    assert "max_batch_size {\n  value: 16\n}" in text
    assert "batch_timeout_micros {\n  value: 500\n}" in text
    parsed = text_format.Parse(text, batching_parameters_class()())
    assert list(parsed.allowed_batch_sizes) == [4, 8, 16]
    assert parsed.num_batch_threads.value == 2
    # Field numbers follow session_bundle_config.proto (wire compatibility).
    fields = {f.name: f.number for f in batching_parameters_class().DESCRIPTOR.fields}
    assert fields == {"max_batch_size": 1, "batch_timeout_micros": 2, "max_enqueued_batches": 3,
                      "num_batch_threads": 4, "thread_pool_name": 5, "allowed_batch_sizes": 6,
                      "pad_variable_length_inputs": 7}
    assert batching_parameters_class().DESCRIPTOR.full_name == \
        "tensorflow.serving.BatchingParameters"
    with pytest.raises(ValueError, match="ending at max_batch_size=16"):
        batching_parameters(max_batch_size=16, allowed_batch_sizes=[4, 8])
    with pytest.raises(ValueError, match="`num_batch_threads` must be >= 1"):
        batching_parameters(num_batch_threads=0)


def test_cli_writes_configs_and_commands(export_info: ExportInfo, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cfg"
    assert main([str(export_info.base), "--name", "nrnn", "--out", str(out),
                 "--max-batch-size", "8", "--allowed-batch-sizes", "1,4,8"]) == 0
    printed = capsys.readouterr().out
    assert "tensorflow_model_server --port=8500 --rest_api_port=8501" in printed
    assert f"--model_config_file={out.resolve() / 'models.config'}" in printed
    cfg = text_format.Parse((out / "models.config").read_text(),
                            protos().model_server_config_pb2.ModelServerConfig())
    assert cfg.model_config_list.config[0].base_path == str(export_info.base.resolve())
    batching = text_format.Parse((out / "batching_parameters.txt").read_text(),
                                 batching_parameters_class()())
    assert batching.max_batch_size.value == 8
    assert main([str(export_info.base), "--name", "nrnn", "--out", str(out),
                 "--base-path-in-server", "/models/nrnn"]) == 0
    assert "docker run" in capsys.readouterr().out
    assert main([str(export_info.base / "1"), "--name", "nrnn", "--check-only"]) == 1
    cmd = model_server_command("/c/models.config", "/c/b.txt")
    assert "--enable_batching" in cmd and "--batching_parameters_file=/c/b.txt" in cmd
    docker = docker_command("/srv/e", "/srv/c", "nrnn")
    assert "type=bind,source=/srv/e,target=/models/nrnn,readonly" in docker
    assert "127.0.0.1:8501:8501" in docker
