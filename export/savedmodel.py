"""The SavedModel in TF Serving layout, with the `serving_default` and `streaming_step` signatures.

    VERSION_DIR/saved_model.pb
    VERSION_DIR/variables/            (the head/pre layers' weights; the cell's are constants)
    VERSION_DIR/assets/metadata.json  (a tf.saved_model.Asset, so it travels with the model)

Signatures:

- `serving_default`: `inputs` float32 (batch, time, features) -> `logits` float32
  (batch, classes), `probabilities` float32 (batch, classes), `classes` int64 (batch,).
- `streaming_step`: `inputs` float32 (batch, features), `state` float32 (batch, state_size)
  -> `new_state` float32 (batch, state_size), `logits`, `probabilities`, `classes`.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from export.inference_model import InferenceModel

__all__ = [
    "RANDOM_TF_OP_MARKERS",
    "SEQUENCE_SIGNATURE",
    "STREAMING_SIGNATURE",
    "find_random_tf_ops",
    "save_inference_model",
]

SEQUENCE_SIGNATURE = "serving_default"
STREAMING_SIGNATURE = "streaming_step"

#: Substrings of TensorFlow op types that draw random numbers (RandomStandardNormal,
#: StatelessRandomNormalV2, TruncatedNormal, Multinomial, RngReadAndSkip, StatefulUniform, ...).
RANDOM_TF_OP_MARKERS = (
    "Random",
    "Multinomial",
    "TruncatedNormal",
    "RngSkip",
    "RngReadAndSkip",
    "StatefulStandardNormal",
    "StatefulUniform",
    "NonDeterministicInts",
)


def _is_random_op(op: str) -> bool:
    return any(marker in op for marker in RANDOM_TF_OP_MARKERS)


def find_random_tf_ops(saved_model_dir: str | Path) -> list[str]:
    """`"function/node (op)"` of every random op in a SavedModel, parsed from `saved_model.pb`.

    Walks every meta graph's graph def and its whole function library (the signatures'
    functions, the `while` loop bodies, everything serialized), so nothing traced is missed.

    Args:
        saved_model_dir: a SavedModel folder.

    Returns:
        The random ops found (empty for a clean export).

    Example:

    >>> import tempfile, tensorflow as tf
    >>> m = tf.Module()
    >>> m.f = tf.function(lambda x: x + tf.random.normal(tf.shape(x)),
    ...                   input_signature=[tf.TensorSpec([None], tf.float32)])
    >>> d = tempfile.mkdtemp(); tf.saved_model.save(m, d)
    >>> any("RandomStandardNormal" in op for op in find_random_tf_ops(d))
    True
    """
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    found = []
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        found += [f"<graph>/{n.name} ({n.op})" for n in graph.node if _is_random_op(n.op)]
        for fn in graph.library.function:
            found += [
                f"{fn.signature.name}/{n.name} ({n.op})" for n in fn.node_def if _is_random_op(n.op)
            ]
    return found


def save_inference_model(
    im: InferenceModel,
    directory: str | Path,
    metadata_file: Path,
    *,
    time_mode: str = "dynamic",
    jit_compile: bool = False,
) -> None:
    """Write the SavedModel of `im` into `directory` with both signatures and the metadata asset.

    Args:
        im: the inference model.
        directory: the (temporary) version folder; `saved_model.pb`, `variables/` and
            `assets/` are written into it.
        metadata_file: a file named `metadata.json` outside `directory`; it is copied to
            `assets/metadata.json` as a `tf.saved_model.Asset`.
        time_mode: how `serving_default` loops over time: `"dynamic"`, `"fixed"` or
            `"hybrid"` (`InferenceModel.sequence`).
        jit_compile: XLA-compile `serving_default` (the flag is saved with the function;
            TF Serving then needs `--xla_cpu_compilation_enabled=true`).
    """
    sequence = im.sequence_function(time_mode=time_mode, jit_compile=jit_compile)
    sequence_cf = sequence.get_concrete_function()
    module = tf.Module()
    module.serving_default = sequence
    signatures = {SEQUENCE_SIGNATURE: sequence_cf}
    if im.streaming:  # not for Bidirectional models (im.streaming_reason)
        streaming = im.step_function()
        module.streaming_step = streaming
        signatures[STREAMING_SIGNATURE] = streaming.get_concrete_function()
    captured = {}
    for cf in signatures.values():
        for var in cf.variables:
            captured[id(var)] = var
    # Track the variables the functions read (head and pre layers), so that they are saved.
    module.model_variables = list(captured.values())
    module.metadata = tf.saved_model.Asset(str(metadata_file))
    tf.saved_model.save(
        module,
        str(directory),
        signatures=signatures,
    )
