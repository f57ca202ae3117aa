"""TF Serving warm-up requests: `assets.extra/tf_serving_warmup_requests`.

A TFRecord file of `tensorflow_serving.apis.prediction_log_pb2.PredictionLog` records, each a
`PredictLog` holding a `PredictRequest`. TF Serving replays them when it loads the version, so
the first real request does not pay for graph initialisation. Requests are built from the
export's sample inputs: one `serving_default` request with one sequence, one with the sample
batch (at most `MAX_WARMUP_BATCH` sequences), and one `streaming_step` request (first step,
zero state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

__all__ = ["WARMUP_FILE", "read_warmup_requests", "warmup_requests", "write_warmup_file"]

WARMUP_FILE = "tf_serving_warmup_requests"
#: At most this many sample sequences go into a warm-up request (keeps the file small).
MAX_WARMUP_BATCH = 8


def warmup_requests(name: str, sample_inputs: np.ndarray, state_size: int) -> list:
    """The `PredictionLog` records for `sample_inputs` (batch, time, features).

    Args:
        name: the model name put in each request's `model_spec`.
        sample_inputs: float32 array (batch, time, features).
        state_size: length of the streaming state vector.

    Returns:
        A list of `PredictionLog` messages.

    Example:

    >>> import numpy as np
    >>> logs = warmup_requests("m", np.zeros((2, 3, 1), "float32"), 4)
    >>> [log.predict_log.request.model_spec.signature_name for log in logs]
    ['serving_default', 'serving_default', 'streaming_step']
    """
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    x = np.asarray(sample_inputs, dtype=np.float32)[:MAX_WARMUP_BATCH]
    payloads = [
        ("serving_default", {"inputs": x[:1]}),
        ("serving_default", {"inputs": x}),
        (
            "streaming_step",
            {"inputs": x[:, 0, :], "state": np.zeros((x.shape[0], state_size), np.float32)},
        ),
    ]
    logs = []
    for signature, inputs in payloads:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype=tf.float32))
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def write_warmup_file(path: str | Path, logs: list) -> Path:
    """Write `logs` as a TFRecord file at `path` (inside the export's temporary folder).

    Example:

    >>> import numpy as np, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / WARMUP_FILE
    >>> _ = write_warmup_file(p, warmup_requests("m", np.zeros((1, 2, 1), "float32"), 3))
    >>> len(read_warmup_requests(p))
    3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path: str | Path) -> list:
    """Parse a warm-up file back into `PredictionLog` messages (for checks and tests)."""
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
