"""TFLite export (`formats=("tflite",)`): builtin ops only, verified in `tf.lite.Interpreter`.

    VERSION_DIR/model.tflite            whole sequence (signature `serving_default`)
    VERSION_DIR/model_streaming.tflite  one step (signature `streaming_step`), if streaming

Both are converted from a staging SavedModel (in a hidden folder of the temporary version
folder, deleted afterwards) with `target_spec.supported_ops = [TFLITE_BUILTINS]`: an op
without a builtin kernel (it would need the Flex delegate) fails the export.

What TFLite gets:

- fast path (one recurrent layer): the `dynamic` whole-sequence graph (a builtin `WHILE`),
  so any length runs (verified at T and T // 2). Not `hybrid`: TFLite prepares both
  branches of an `IF`, and the unrolled branch cannot be prepared for another length.
- general path: every `keras.layers.RNN` rebuilt with `unroll=True` and the model's T
  fixed: the Keras RNN loop holds `TensorListReserve` with a dynamic batch, which the
  converter cannot lower to builtins. Only T is accepted; a model with a dynamic time axis
  is refused.
- streaming: as in the other formats; a batch mismatch between `inputs` and a state fails
  in the interpreter (its `RESHAPE` kernel), the `tf.debugging` assert is dropped.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from atomic_io import atomic_write_bytes
from export.errors import ExportError

__all__ = ["TFLITE_SEQUENCE_FILE", "TFLITE_STREAMING_FILE", "run_tflite", "write_tflite"]

logger = logging.getLogger(__name__)

TFLITE_SEQUENCE_FILE = "model.tflite"
TFLITE_STREAMING_FILE = "model_streaming.tflite"


def _convert(saved_model_dir: str, signature: str, path: Path) -> None:
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[signature]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        flatbuffer = converter.convert()
    except Exception as err:
        lines = [ln for ln in str(err).splitlines() if "error:" in ln] or str(err).splitlines()
        raise ExportError(
            f"TFLite cannot convert {path.name} with builtin ops only: {lines[0][-300:]}"
        ) from err
    atomic_write_bytes(path, flatbuffer)


def write_tflite(directory: str | Path, im) -> dict:
    """Write `model.tflite` (and `model_streaming.tflite`) of `im` into `directory`.

    Args:
        directory: the (temporary) version folder.
        im: the inference model (fast or general path).

    Returns:
        `{"tflite_time_steps": "dynamic" | "fixed"}` for the metadata.

    Raises:
        ExportError: an op without a TFLite builtin, or a general-path model without a
            fixed input length.
    """
    directory = Path(directory)
    sequence = im.tflite_sequence_function()
    module = tf.Module()
    module.serving_default = sequence
    signatures = {"serving_default": sequence.get_concrete_function()}
    if im.streaming:
        streaming = im.step_function()
        module.streaming_step = streaming
        signatures["streaming_step"] = streaming.get_concrete_function()
    module.model_variables = list(
        {id(v): v for cf in signatures.values() for v in cf.variables}.values()
    )
    with tempfile.TemporaryDirectory(prefix=".tflite.", dir=directory) as staging:
        tf.saved_model.save(module, staging, signatures=signatures)
        _convert(staging, "serving_default", directory / TFLITE_SEQUENCE_FILE)
        if im.streaming:
            _convert(staging, "streaming_step", directory / TFLITE_STREAMING_FILE)
    mode = "dynamic" if im.path == "fast" else "fixed"
    if mode == "fixed":
        logger.info(
            "TFLite: %s takes sequences of exactly %s steps (unrolled Keras RNN loops)",
            TFLITE_SEQUENCE_FILE,
            im.time_steps,
        )
    return {"tflite_time_steps": mode}


def _runner(path: Path, signature: str):
    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner(signature)

    def run(feeds: dict) -> dict:
        return {k: np.asarray(v) for k, v in runner(**feeds).items()}

    return run


def run_tflite(version_dir: str | Path, feeds: dict, im) -> dict:
    """Whole-sequence (and streamed) outputs of the TFLite files on `feeds`, like
    `export.verify.run_saved_model`."""
    from export.verify import _Plan, _short_length, _stream

    version_dir = Path(version_dir)
    plan = _Plan(im)
    seq = _runner(version_dir / TFLITE_SEQUENCE_FILE, "serving_default")
    res = {"sequence": seq(feeds)}
    short = _short_length(plan.time(feeds))
    if im.path == "fast" and short:
        res["sequence_short"] = seq(plan.head(feeds, short))
    if im.streaming:
        step = _runner(version_dir / TFLITE_STREAMING_FILE, "streaming_step")
        res.update(_stream(step, plan, feeds, short))
    return res
