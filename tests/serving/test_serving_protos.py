"""TF-free proto loading and TensorProto conversion (checked against TensorFlow itself), and
the import hygiene of the serving package."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _serving_helpers import ROOT, env

from serving._protos import ndarray_to_tensor_proto, protos, tensor_proto_to_ndarray


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.bool_,
                                   np.float16])
def test_tensor_proto_roundtrip_against_tensorflow(dtype: type) -> None:
    import tensorflow as tf

    a = (np.random.default_rng(0).standard_normal((3, 4, 2)) * 10).astype(dtype)
    ours = ndarray_to_tensor_proto(a)
    np.testing.assert_array_equal(tf.make_ndarray(ours), a)
    theirs = tf.make_tensor_proto(a)
    back = tensor_proto_to_ndarray(theirs)
    assert back.dtype == a.dtype
    np.testing.assert_array_equal(back, a)
    # Typed value fields (not tensor_content), as other clients send them.
    if dtype in (np.float32, np.int64):
        packed = tf.make_tensor_proto(a.ravel().tolist(), dtype=tf.as_dtype(dtype),
                                      shape=a.shape)
        np.testing.assert_array_equal(tensor_proto_to_ndarray(packed), a)


def test_tensor_proto_errors() -> None:
    p = protos()
    t = p.tensor_pb2.TensorProto(dtype=7)
    with pytest.raises(ValueError, match="Unsupported tensor dtype"):
        tensor_proto_to_ndarray(t)
    t = ndarray_to_tensor_proto(np.zeros((2, 3), np.float32))
    t.tensor_content = t.tensor_content[:-1]
    with pytest.raises(ValueError, match="bytes"):
        tensor_proto_to_ndarray(t)
    with pytest.raises(ValueError, match="Argument `array`"):
        ndarray_to_tensor_proto(np.array(["a"]))


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)


def test_serving_runs_without_tensorflow_keras_training_or_export() -> None:
    r = _run(
        "import sys\n"
        "import serving, serving.onnx_server, serving.rest_api, serving.grpc_service\n"
        "import serving.client, serving.loadtest, serving.codec, serving.model_repo\n"
        "import serving.tf_serving_config, atomic_io\n"
        "from serving._protos import protos, batching_parameters_class\n"
        "protos(); batching_parameters_class()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "             ('keras', 'training', 'export', 'keras_nrnn')\n"
        "             or m.startswith('tensorflow.python') or m == 'tensorflow')\n"
        "print(bad)\n"
        "assert not bad, bad\n")
    assert r.returncode == 0, r.stdout + r.stderr


def test_real_tensorflow_still_imports_after_protos() -> None:
    r = _run(
        "from serving._protos import protos\n"
        "p = protos()\n"
        "import tensorflow as tf\n"
        "t = tf.make_tensor_proto([1.0, 2.0])\n"
        "assert isinstance(t, p.tensor_pb2.TensorProto)\n"
        "assert float(tf.reduce_sum(tf.constant([1.0, 2.0]))) == 3.0\n")
    assert r.returncode == 0, r.stderr[-2000:]
