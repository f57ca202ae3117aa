"""`assets/metadata.json`: what the export is, where it came from, how to feed it.

Keys (the contract with `serving/`): `name`, `version`, `keras_nrnn_version`, `features`,
`num_classes`, `state_size`, `cells` (serialized cell configs), `model_config` (the serialized
model as given), `training` (the run's `config.json` or null), `metrics` (the run's
`results.json` or null), `data_checksums` (from the training config, or null), `exported_at`
(UTC, ISO 8601), `formats`. Extra keys for clients: `state_sizes` (the parts of the streaming
state vector, in order), `time_steps` (the model's fixed input length or null),
`outputs_from` (`"softmax"` if the model ends in a softmax, else `"logits"`), `onnx_opset`,
`signatures`.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import keras

import keras_nrnn
from export.inference_model import InferenceModel

__all__ = ["METADATA_FILE", "build_metadata", "find_data_checksums", "to_json"]

METADATA_FILE = "metadata.json"


def find_data_checksums(config: Any) -> Any:
    """The data checksums recorded in a training config, or None.

    Looks for a `data_checksums` key anywhere in the config, then a `checksums` key, then
    the `sha256` of its `data` section (what `training.ecg` writes:
    `{"data": {"files": [...], "sha256": ...}}`).

    Example:

    >>> find_data_checksums({"data": {"checksums": {"train.csv": "ab12"}}})
    {'train.csv': 'ab12'}
    >>> find_data_checksums({"data": {"files": ["a.txt"], "sha256": {"a.txt": "cd34"}}})
    {'a.txt': 'cd34'}
    >>> find_data_checksums({"lr": 0.1}) is None
    True
    """
    for key in ("data_checksums", "checksums"):
        stack = [config]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if key in item:
                    return item[key]
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    data = config.get("data") if isinstance(config, dict) else None
    if isinstance(data, dict) and "sha256" in data:
        return data["sha256"]
    return None


def to_json(obj: Any) -> str:
    """JSON text of `obj`; numpy scalars/arrays and other objects become plain values/strings."""

    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.dumps(obj, indent=2, sort_keys=True, default=default) + "\n"


def signature_metadata(im) -> dict:
    """Input and output shapes of each signature (`"batch"`, `"time"` or a size).

    Example:

    >>> import keras
    >>> from keras_nrnn import LipschitzCell
    >>> from export.inference_model import build_inference_model
    >>> m = keras.Sequential([keras.Input((5, 2)), keras.layers.RNN(LipschitzCell(4)),
    ...                       keras.layers.Dense(3)])
    >>> signature_metadata(build_inference_model(m))["streaming_step"]["inputs"]
    {'inputs': ['batch', 2], 'state': ['batch', 4]}
    """
    seq_inputs, step_inputs = {}, {}
    for i, (name, shape) in enumerate(zip(im.input_names, im.input_shapes, strict=True)):
        rest = list(shape[1:]) if im.is_sequence_input(i) else list(shape)
        seq_inputs[name] = ["batch", *(["time"] if im.is_sequence_input(i) else []), *rest]
        step_inputs[name] = ["batch", *rest]
    outputs = im.output_shapes()
    signatures = {"serving_default": {"inputs": seq_inputs, "outputs": outputs}}
    if im.streaming:
        per_step = im.per_step_outputs()
        step_outputs = {f"new_{st.name}": ["batch", st.size] for st in im.states}
        for key, dims in outputs.items():
            step_outputs[key] = [d for j, d in enumerate(dims) if not (j == 1 and key in per_step)]
        for st in im.states:
            step_inputs[st.name] = ["batch", st.size]
        signatures["streaming_step"] = {"inputs": step_inputs, "outputs": step_outputs}
    return signatures


def build_metadata(
    im: InferenceModel,
    *,
    name: str,
    version: int,
    formats: list[str],
    training_config: dict | None = None,
    results: dict | None = None,
    extra: dict | None = None,
    onnx_opset: int | None = None,
) -> dict:
    """The metadata dictionary of one export.

    Args:
        im: the inference model.
        name: the model name.
        version: the version number.
        formats: the formats written.
        training_config: the run's `config.json` contents, if any.
        results: the run's `results.json` contents, if any.
        extra: user metadata (`export_model(metadata=...)`), merged on top.
        onnx_opset: the ONNX opset, when ONNX is written.

    Returns:
        A JSON-serializable dict.
    """
    meta: dict[str, Any] = {
        "name": name,
        "version": int(version),
        "keras_nrnn_version": keras_nrnn.__version__,
        "features": im.features,
        "num_classes": im.num_classes,
        "state_size": im.state_size,
        "state_sizes": list(im.state_sizes),
        "time_steps": im.time_steps,
        "cells": im.cell_configs(),
        "model_config": keras.saving.serialize_keras_object(im.original),
        "training": training_config,
        "metrics": results,
        "data_checksums": find_data_checksums(training_config) if training_config else None,
        "exported_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "formats": list(formats),
        "outputs_from": "logits" if im.softmax_mode is None else "softmax",
        "onnx_opset": onnx_opset,
        "signatures": signature_metadata(im),
        "export_path": im.path,
        "recurrent_layers": list(im.recurrent_layers),
        "streaming_states": [
            {"name": st.name, "layer": st.layer, "size": st.size, "parts": list(st.parts)}
            for st in im.states
        ],
        "streaming_unavailable": im.streaming_reason,
    }
    if extra:
        meta.update(extra)
    # Round-trip so that the dict holds exactly what the file will hold.
    return json.loads(to_json(meta))
