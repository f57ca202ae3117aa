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


def warmup_requests(name: str, sample_inputs, state_size, streaming: bool = True) -> list:
    """The `PredictionLog` records for `sample_inputs` (batch, time, features).

    Args:
        name: the model name put in each request's `model_spec`.
        sample_inputs: float32 array (batch, time, features), or a dict of arrays by
            input name (a 3-d array is a sequence input, cut to its first step for
            `streaming_step`).
        state_size: length of the streaming state vector, or a dict of state sizes by
            state name (several recurrent layers).
        streaming: whether the export has a `streaming_step` signature.

    Returns:
        A list of `PredictionLog` messages.

    Example:

    >>> import numpy as np
    >>> logs = warmup_requests("m", np.zeros((2, 3, 1), "float32"), 4)
    >>> [log.predict_log.request.model_spec.signature_name for log in logs]
    ['serving_default', 'serving_default', 'streaming_step']
    """
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    if not isinstance(sample_inputs, dict):
        sample_inputs = {"inputs": sample_inputs}
    if not isinstance(state_size, dict):
        state_size = {"state": state_size}
    feeds = {k: np.asarray(v, np.float32)[:MAX_WARMUP_BATCH] for k, v in sample_inputs.items()}
    batch = next(iter(feeds.values())).shape[0]
    step = {k: v[:, 0] if v.ndim == 3 else v for k, v in feeds.items()}
    step.update({k: np.zeros((batch, n), np.float32) for k, n in state_size.items()})
    payloads = [
        ("serving_default", {k: v[:1] for k, v in feeds.items()}),
        ("serving_default", feeds),
        *([("streaming_step", step)] if streaming else []),
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
