"""`export_model`: one call from a trained model to a verified, versioned export folder."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from atomic_io import atomic_directory, atomic_write_text
from export.errors import ExportError
from export.inference_model import InferenceModel, build_inference_model, load_source
from export.metadata import METADATA_FILE, build_metadata, to_json
from export.onnx_export import (
    DEFAULT_OPSET,
    convert_function,
    sequence_dim_names,
    step_dim_names,
)
from export.onnx_folded import convert_fixed_sequence
from export.options import DEFAULT_FORMATS, FORMATS, check_time_steps, check_version, parse_formats
from export.savedmodel import save_inference_model
from export.verify import SavedModelCliCheck, default_sample_feeds, verify_export
from export.warmup import WARMUP_FILE, warmup_requests, write_warmup_file

__all__ = ["FORMATS", "export_model", "next_version", "parse_formats"]

logger = logging.getLogger(__name__)

ONNX_SEQUENCE_FILE = "model.onnx"
ONNX_STREAMING_FILE = "model_streaming.onnx"
#: With the default `onnx_time_steps="auto"` on a fast-path model of fixed length T:
#: `model.onnx` answers any length (`hybrid`, like `serving_default`), and this file holds
#: the plain unrolled graph for T only (no `If`: the fastest at batch 1).
ONNX_FIXED_FILE = "model_fixed.onnx"
_RESERVED_METADATA = {
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
    "export_options",
}


def next_version(base_dir: str | Path) -> int:
    """One more than the largest integer-named folder in `base_dir` (1 if none).

    Example:

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "3").mkdir(); (d / "x").mkdir()
    >>> next_version(d)
    4
    """
    base = Path(base_dir)
    if not base.is_dir():
        return 1
    versions = [int(p.name) for p in base.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)]
    return max(versions, default=0) + 1


def _check_sample_inputs(sample_inputs: Any, im) -> dict:
    """The verification inputs as a dict by input name (an array is the one input)."""
    if sample_inputs is None:
        return default_sample_feeds(im)
    if not isinstance(sample_inputs, dict):
        if len(im.input_names) != 1:
            raise ValueError(
                f"Argument `sample_inputs` must be a dict keyed by the model's inputs "
                f"{list(im.input_names)}; received a {type(sample_inputs).__name__}."
            )
        sample_inputs = {im.input_names[0]: sample_inputs}
    if sorted(sample_inputs) != sorted(im.input_names):
        raise ValueError(
            f"Argument `sample_inputs` must have the keys {sorted(im.input_names)}; received "
            f"{sorted(sample_inputs)}."
        )
    feeds, batch = {}, None
    for i, (name, shape) in enumerate(zip(im.input_names, im.input_shapes, strict=True)):
        x = np.asarray(sample_inputs[name])
        want = (
            (im.time_steps if im.time_steps is not None else "time >= 1", *shape[1:])
            if im.is_sequence_input(i)
            else tuple(shape)
        )
        ok = (
            np.issubdtype(x.dtype, np.number)
            and x.ndim == len(want) + 1
            and x.shape[0] >= 1
            and all(
                (x.shape[j + 1] >= 1) if isinstance(w, str) or w is None else x.shape[j + 1] == w
                for j, w in enumerate(want)
            )
        )
        if not ok:
            raise ValueError(
                f"Argument `sample_inputs` ({name!r}) must be a numeric array of shape "
                f"(batch >= 1, {', '.join(map(str, want))}); received shape {x.shape} and "
                f"dtype {x.dtype}."
            )
        if batch is not None and x.shape[0] != batch:
            raise ValueError(
                f"Argument `sample_inputs` ({name!r}) must have batch {batch} like the other "
                f"inputs; received shape {x.shape}."
            )
        batch = x.shape[0]
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("Argument `sample_inputs` must be finite (it holds NaN or inf).")
        feeds[name] = x
    return feeds


def export_model(
    model_or_path: keras.Model | str | os.PathLike,
    base_dir: str | os.PathLike,
    *,
    name: str | None = None,
    version: int | None = None,
    formats: Iterable[str] | str = DEFAULT_FORMATS,
    metadata: dict | None = None,
    sample_inputs: np.ndarray | None = None,
    onnx_time_steps: str = "auto",
    savedmodel_time_steps: str = "auto",
    savedmodel_jit_compile: bool = False,
) -> Path:
    """Export a keras_nrnn classifier: SavedModel (TF Serving layout) and ONNX, verified.

    Builds the noise-free float32 inference model (`export.inference_model`), writes

        base_dir/<version>/saved_model.pb, variables/, assets/metadata.json,
                           assets.extra/tf_serving_warmup_requests,
                           model.onnx (whole sequence), model_streaming.onnx (one step)

    into a temporary folder, verifies it (`export.verify`: no random op, Keras vs SavedModel
    vs onnxruntime within 1e-5, streaming == whole sequence, `saved_model_cli`), and only then
    renames it to `base_dir/<version>`. On any error nothing is left behind.

    Args:
        model_or_path: a `keras.Model`, a `.keras` file, or a run folder with `model.keras`
            (and optional `config.json`, `results.json`, recorded in the metadata).
        base_dir: the TF Serving model base folder (created if missing).
        name: the model name for the metadata and warm-up requests (default: the run
            folder's name, else the `.keras` file's stem, else the model's name).
        version: the version folder (integer >= 1); default: one more than the largest
            existing. An existing version is never overwritten.
        formats: subset of `("savedmodel", "onnx", "tflite")` (or a comma-separated
            string); default `("savedmodel", "onnx")`.
        metadata: extra JSON-serializable keys for `metadata.json` (must not redefine the
            standard keys).
        sample_inputs: float32 (batch, time, features) inputs for verification and warm-up;
            default: a deterministic standard normal batch (`verify.default_sample_inputs`).
        onnx_time_steps: how `model.onnx` loops over time: `"auto"` (default: `"fixed"`
            when the model has a fixed input length, else `"dynamic"`), `"dynamic"` (an ONNX
            `Loop`, any length), `"fixed"` (the steps unrolled; the input's time dimension is
            the model's length and other lengths are rejected) or `"hybrid"` (an `If`:
            unrolled for the model's length, `Loop` otherwise; slow to convert).
        savedmodel_time_steps: the same for `serving_default`; `"auto"` (default) is
            `"hybrid"` when the model has a fixed input length (any length accepted, the
            model's own length runs unrolled), else `"dynamic"`.
        savedmodel_jit_compile: XLA-compile `serving_default` (about 2x faster again at
            batch 1; TF Serving only runs it with `--xla_cpu_compilation_enabled=true`).

    Returns:
        The version folder (`pathlib.Path`).

    Raises:
        ExportError: unsupported model, unreadable file, conversion error or failed check.
        ValueError: a bad argument (unknown format, bad version or sample inputs).
        FileExistsError: the version folder exists.

    Example:

    >>> import tempfile, keras
    >>> from keras_nrnn import LipschitzCell
    >>> m = keras.Sequential([keras.Input((None, 1)), keras.layers.RNN(LipschitzCell(4)),
    ...                       keras.layers.Dense(2)])
    >>> out = export_model(m, tempfile.mkdtemp(), formats=["savedmodel"])  # doctest: +SKIP
    >>> out.name  # doctest: +SKIP
    '1'
    """
    fmt = parse_formats(formats)
    check_time_steps("onnx_time_steps", onnx_time_steps)
    check_time_steps("savedmodel_time_steps", savedmodel_time_steps)
    if not isinstance(savedmodel_jit_compile, bool):
        raise ValueError(
            "Argument `savedmodel_jit_compile` must be a bool; received "
            f"savedmodel_jit_compile={savedmodel_jit_compile!r}."
        )
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ValueError(
                f"Argument `metadata` must be a dict or None; received {type(metadata).__name__}."
            )
        clash = sorted(_RESERVED_METADATA & set(metadata))
        if clash:
            raise ValueError(f"Argument `metadata` must not redefine the standard keys {clash}.")
    if version is not None:
        version = check_version(version)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"Argument `name` must be a non-empty string; received name={name!r}.")

    base = Path(base_dir)
    if base.exists() and not base.is_dir():
        raise ExportError(f"Export base {str(base)!r} exists and is not a folder.")
    if version is not None and (base / str(version)).exists():
        raise FileExistsError(
            f"Version folder {str(base / str(version))!r} already exists; refusing to "
            "overwrite it (choose another --version or omit it for the next one)."
        )

    source = load_source(model_or_path)
    im = build_inference_model(source.model)
    if not im.streaming:
        logger.warning(
            "export of %r: no streaming_step signature (and no %s): %s; only the "
            "whole-sequence signature is written.",
            im.original.name,
            ONNX_STREAMING_FILE,
            im.streaming_reason,
        )
    options = {
        "onnx_time_steps": _resolve_time_steps(onnx_time_steps, im, auto="hybrid"),
        "savedmodel_time_steps": _resolve_time_steps(savedmodel_time_steps, im, auto="hybrid"),
        "savedmodel_jit_compile": savedmodel_jit_compile,
        "tflite_time_steps": "dynamic" if im.path == "fast" else "fixed",
    }
    options["onnx_fixed_time_file"] = (
        ONNX_FIXED_FILE
        if "onnx" in fmt and onnx_time_steps == "auto" and options["onnx_time_steps"] == "hybrid"
        else None
    )
    x = _check_sample_inputs(sample_inputs, im)
    if name is None:
        name = _default_name(source.source, im.original.name)
    if version is None:
        version = next_version(base)

    meta = build_metadata(
        im,
        name=name,
        version=version,
        formats=fmt,
        training_config=source.training_config,
        results=source.results,
        extra=metadata,
        onnx_opset=DEFAULT_OPSET if "onnx" in fmt else None,
    )
    meta["export_options"] = {k: v for k, v in options.items() if k.split("_")[0] in fmt}
    # The folders this export creates (base and missing parents), removed again on failure.
    created = missing_folders(base)
    final = base / str(version)
    try:
        with atomic_directory(final) as tmp:
            started: list[SavedModelCliCheck] = []
            try:
                _write_export(tmp, im, meta, fmt, x, name, started, options)
                cli_check = started[0] if started else None
                report = verify_export(tmp, im, x, fmt, cli_check=cli_check)
            finally:
                for check in started:  # a failed export must not leave the tool running
                    check.cancel()
            _make_readable(tmp)
            logger.info("export %s verified: %s", final, report)
    except BaseException:  # also KeyboardInterrupt and the CLI's SIGTERM (export.cli)
        remove_empty_folders(created)
        raise
    return final


def missing_folders(path: str | Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first (what creating
    `path` would create)."""
    path = Path(path).absolute()
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove `folders` (deepest first, as `missing_folders` lists them) that are empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _resolve_time_steps(value: str, im: InferenceModel, auto: str) -> str:
    """The time mode for `value`: `auto` -> `auto` if the model's length is fixed, else
    `"dynamic"`; `"fixed"`/`"hybrid"` need a fixed length (`ExportError` otherwise)."""
    if value == "auto":
        if im.path == "general":
            return "dynamic"
        return auto if im.time_steps is not None else "dynamic"
    if value == "hybrid" and im.path == "general":
        raise ExportError(
            f"Time steps 'hybrid' are for single-layer models (the fast path); model "
            f"{im.original.name!r} takes the general path: use 'dynamic', 'fixed' or 'auto'."
        )
    if value != "dynamic" and im.time_steps is None:
        raise ExportError(
            f"Time steps {value!r} need a model with a fixed input length "
            f"(keras.Input((T, {im.features}))); model {im.original.name!r} has a dynamic time "
            "axis. Use 'dynamic' or 'auto'."
        )
    return value


def _default_name(source: str | None, model_name: str) -> str:
    """Run folder name for `<run>/model.keras`, the file stem for another `.keras` file, else
    the model's name."""
    if source is None:
        return model_name
    path = Path(source)
    return path.parent.name if path.name == "model.keras" else path.stem


def _make_readable(root: Path) -> None:
    """Folders 0755, files 0644: the temporary folder and files are private (0700/0600), but
    a model server often runs as another user."""
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for filename in filenames:
            os.chmod(os.path.join(dirpath, filename), 0o644)


def _write_export(
    tmp: Path,
    im: InferenceModel,
    meta: dict,
    fmt: list[str],
    x: np.ndarray,
    name: str,
    started: list,
    options: dict,
) -> None:
    """Write every file; appends the `saved_model_cli` check it starts to `started`."""
    meta_text = to_json(meta)
    if "savedmodel" in fmt:
        with tempfile.TemporaryDirectory(prefix=".metadata.", dir=tmp) as staging:
            staged = atomic_write_text(Path(staging) / METADATA_FILE, meta_text)
            save_inference_model(
                im,
                tmp,
                staged,
                time_mode=options["savedmodel_time_steps"],
                jit_compile=options["savedmodel_jit_compile"],
            )
        write_warmup_file(
            tmp / "assets.extra" / WARMUP_FILE,
            warmup_requests(
                name, x, {st.name: st.size for st in im.states}, streaming=im.streaming
            ),
        )
        # Runs while the ONNX models are converted.
        started.append(SavedModelCliCheck(tmp, streaming=im.streaming))
    else:
        atomic_write_text(tmp / "assets" / METADATA_FILE, meta_text)
    if "onnx" in fmt:
        onnx_mode = options["onnx_time_steps"]
        if onnx_mode == "fixed":  # hand-built for a folded Lipschitz cell, else tf2onnx
            convert_fixed_sequence(
                im, tmp / ONNX_SEQUENCE_FILE, opset=DEFAULT_OPSET, dim_names=sequence_dim_names(im)
            )
        else:
            convert_function(
                im.sequence_function(time_mode=onnx_mode),
                im.sequence_inputs(),
                tmp / ONNX_SEQUENCE_FILE,
                output_names=im.output_names(),
                opset=DEFAULT_OPSET,
                dim_names=sequence_dim_names(im),
            )
        if options["onnx_fixed_time_file"]:
            convert_fixed_sequence(
                im, tmp / ONNX_FIXED_FILE, opset=DEFAULT_OPSET, dim_names=sequence_dim_names(im)
            )
        if im.streaming:
            convert_function(
                im.step_function(),
                im.step_inputs(),
                tmp / ONNX_STREAMING_FILE,
                output_names=im.output_names(streaming=True),
                opset=DEFAULT_OPSET,
                dim_names=step_dim_names(im),
            )
    if "tflite" in fmt:
        from export.tflite_export import write_tflite

        meta_tflite = write_tflite(tmp, im)
        if meta_tflite["tflite_time_steps"] != options["tflite_time_steps"]:
            raise ExportError("internal: TFLite time mode differs from the metadata")
