"""Checks run on every export before it is renamed into place; any failure raises `ExportError`.

1. No random op: none in the SavedModel (every function of its library, parsed from
   `saved_model.pb`), none in either ONNX graph (Loop/Scan/If subgraphs included).
2. Agreement within `atol` (1e-5) on a fixed batch of real inputs: the rebuilt float32 Keras
   model in inference mode vs the SavedModel (`tf.saved_model.load`, `serving_default`) vs
   onnxruntime (`model.onnx`), for logits/probabilities, plus equal classes.
3. Streaming: T calls of `streaming_step` (SavedModel and `model_streaming.onnx`), from the
   zero state, give the whole-sequence outputs (logits, probabilities, classes) within `atol`;
   when the whole-sequence input has a dynamic time axis, also at a second length T // 2
   (the sequence on the first T // 2 steps vs the streamed state after T // 2 steps), which
   runs the `while` branch of a `"hybrid"` graph.
4. `saved_model_cli show --all --dir VERSION_DIR` (a subprocess) lists both signatures.

The inputs are `sample_inputs` when the caller gives them, else `default_sample_inputs`:
a standard normal batch (seeded, so every export of a model checks the same numbers) of
shape (4, T, features), with T the model's fixed input length or 16 if it has none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from export.errors import ExportError
from export.inference_model import InferenceModel
from export.onnx_export import find_random_onnx_ops
from export.savedmodel import SEQUENCE_SIGNATURE, STREAMING_SIGNATURE, find_random_tf_ops

__all__ = [
    "ATOL",
    "SavedModelCliCheck",
    "check_saved_model_cli",
    "default_sample_inputs",
    "run_onnx",
    "run_saved_model",
    "verify_export",
]

ATOL = 1e-5
DEFAULT_BATCH = 4
DEFAULT_TIME = 16
OUTPUT_KEYS = ("logits", "probabilities", "classes")


def default_sample_inputs(features: int, time_steps: int | None, batch: int = DEFAULT_BATCH):
    """Deterministic standard normal inputs (batch, T, features), float32, seed 0.

    Example:

    >>> default_sample_inputs(2, None).shape
    (4, 16, 2)
    """
    rng = np.random.default_rng(0)
    shape = (batch, time_steps or DEFAULT_TIME, features)
    return rng.standard_normal(shape).astype(np.float32)


def _model_output(ref: dict) -> np.ndarray:
    return ref["logits"] if "logits" in ref else ref["probabilities"]


def _computes_in_float32(model) -> bool:
    layers = model._flatten_layers(include_self=True)
    return all(getattr(layer, "compute_dtype", "float32") == "float32" for layer in layers)


def _max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)))


# --------------------------------------------------------------------------- runners
def run_saved_model(version_dir: str | Path, x: np.ndarray, state_size: int) -> dict:
    """Whole-sequence and streamed outputs of the SavedModel on `x` (batch, T, features).

    Returns:
        `{"sequence": {...}, "streaming": {...}}`, numpy arrays keyed by output name; the
        streaming outputs are those of the last of T `streaming_step` calls.
    """
    loaded = tf.saved_model.load(str(version_dir))
    seq_fn = loaded.signatures[SEQUENCE_SIGNATURE]
    step_fn = loaded.signatures[STREAMING_SIGNATURE]
    seq = {k: v.numpy() for k, v in seq_fn(inputs=tf.constant(x)).items()}
    state = np.zeros((x.shape[0], state_size), np.float32)
    out, res = {}, {}
    short = _short_length(x)
    for t in range(x.shape[1]):
        out = {k: v.numpy() for k, v in step_fn(inputs=tf.constant(x[:, t]), state=state).items()}
        state = out["new_state"]
        if t + 1 == short:
            res["streaming_short"] = out
    _, specs = seq_fn.structured_input_signature
    if short and specs["inputs"].shape[1] is None:
        res["sequence_short"] = {
            k: v.numpy() for k, v in seq_fn(inputs=tf.constant(x[:, :short])).items()
        }
    return {"sequence": seq, "streaming": out, **res}


def _short_length(x: np.ndarray) -> int:
    """A second sequence length, T // 2 (0 if T < 2), for the dynamic-time check."""
    return x.shape[1] // 2 if x.shape[1] >= 2 else 0


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(version_dir: str | Path, x: np.ndarray, state_size: int) -> dict:
    """Like `run_saved_model`, with onnxruntime on `model.onnx` / `model_streaming.onnx`."""
    version_dir = Path(version_dir)
    seq_sess = _session(version_dir / "model.onnx")
    names = [o.name for o in seq_sess.get_outputs()]
    seq = dict(zip(names, seq_sess.run(None, {"inputs": x}), strict=True))
    res = {}
    short = _short_length(x)
    if short and not isinstance(seq_sess.get_inputs()[0].shape[1], int):
        values = seq_sess.run(None, {"inputs": np.ascontiguousarray(x[:, :short])})
        res["sequence_short"] = dict(zip(names, values, strict=True))
    step_sess = _session(version_dir / "model_streaming.onnx")
    names = [o.name for o in step_sess.get_outputs()]
    state = np.zeros((x.shape[0], state_size), np.float32)
    out = {}
    for t in range(x.shape[1]):
        values = step_sess.run(None, {"inputs": np.ascontiguousarray(x[:, t]), "state": state})
        out = dict(zip(names, values, strict=True))
        state = out["new_state"]
        if t + 1 == short:
            res["streaming_short"] = out
    return {"sequence": seq, "streaming": out, **res}


# --------------------------------------------------------------------------- checks
class SavedModelCliCheck:
    """`saved_model_cli show --all --dir version_dir`, started in the background.

    The tool imports all of TensorFlow (seconds), so the export starts it as soon as the
    SavedModel is written and collects it with `result()` after the other work.

    Args:
        version_dir: the SavedModel folder.
        timeout: seconds to wait in `result()`.
    """

    def __init__(self, version_dir: str | Path, timeout: float = 300.0) -> None:
        exe = shutil.which("saved_model_cli")
        cmd = [exe] if exe else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
        self.cmd = [*cmd, "show", "--all", "--dir", str(version_dir)]
        self.version_dir = version_dir
        self.timeout = timeout
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        try:
            self._proc = subprocess.Popen(
                self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        except OSError as err:
            raise ExportError(f"Could not run {' '.join(self.cmd)}: {err}") from err

    def result(self) -> str:
        """Wait for the tool; returns its output, or raises `ExportError`."""
        try:
            stdout, stderr = self._proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired as err:
            self.cancel()
            raise ExportError(f"{' '.join(self.cmd)} timed out after {self.timeout} s") from err
        if self._proc.returncode != 0:
            raise ExportError(
                f"saved_model_cli show failed (exit {self._proc.returncode}) on "
                f"{self.version_dir}: {stderr.strip()[-2000:]}"
            )
        for signature in (SEQUENCE_SIGNATURE, STREAMING_SIGNATURE):
            if f"signature_def['{signature}']" not in stdout:
                raise ExportError(
                    f"saved_model_cli show --all does not list signature {signature!r} in "
                    f"{self.version_dir}."
                )
        return stdout

    def cancel(self) -> None:
        """Stop the tool if it is still running (the export failed elsewhere)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()


def check_saved_model_cli(version_dir: str | Path, timeout: float = 300.0) -> str:
    """Run `saved_model_cli show --all --dir version_dir`; both signatures must be listed.

    Returns:
        The tool's output.

    Raises:
        ExportError: the tool fails or does not list both signatures.
    """
    return SavedModelCliCheck(version_dir, timeout).result()


def _compare(report: dict, label: str, got: dict, want: dict, atol: float, errors: list) -> None:
    for key, value in want.items():
        if key not in got:
            errors.append(f"{label}: output {key!r} is missing")
            continue
        if key == "classes":
            same = np.array_equal(np.asarray(got[key]), np.asarray(value))
            report[f"{label}/classes_equal"] = bool(same)
            if not same:
                errors.append(f"{label}: classes differ ({got[key]} vs {value})")
            continue
        diff = _max_diff(got[key], value)
        report[f"{label}/{key}"] = diff
        if not diff <= atol:
            errors.append(f"{label}: max |diff| of {key!r} is {diff:.3g} > {atol:g}")


def verify_export(
    version_dir: str | Path,
    im: InferenceModel,
    sample_inputs: np.ndarray,
    formats: list[str],
    atol: float = ATOL,
    cli_check: SavedModelCliCheck | None = None,
) -> dict:
    """Run every check on a (temporary) version folder; raise `ExportError` on any failure.

    Args:
        version_dir: the folder holding the export.
        im: the inference model it was made from.
        sample_inputs: float32 (batch, T, features) inputs.
        formats: the formats written (`"savedmodel"`, `"onnx"`).
        atol: the agreement tolerance (max absolute difference).
        cli_check: a `SavedModelCliCheck` already started on `version_dir`, or None to run
            `saved_model_cli` here.

    Returns:
        A report: max absolute differences keyed `"<what>/<output>"` (e.g.
        `"keras_vs_savedmodel/logits"`), random ops found (empty), ONNX op types.
    """
    version_dir = Path(version_dir)
    x = np.asarray(sample_inputs, np.float32)
    errors: list[str] = []
    report: dict = {}

    keras_ref = im.keras_reference(x)
    if _computes_in_float32(im.original):
        diff = _max_diff(im.original_reference(x), _model_output(keras_ref))
        report["original_vs_rebuilt"] = diff
        if not diff <= atol:
            errors.append(f"the float32 rebuild differs from the model by {diff:.3g} > {atol:g}")
    else:
        report["original_vs_rebuilt_mixed_precision"] = _max_diff(
            im.original_reference(x), _model_output(keras_ref)
        )

    results = {}
    if "savedmodel" in formats:
        random_ops = find_random_tf_ops(version_dir)
        report["savedmodel_random_ops"] = random_ops
        if random_ops:
            errors.append(f"random ops in the SavedModel: {random_ops[:10]}")
        results["savedmodel"] = run_saved_model(version_dir, x, im.state_size)
        (cli_check or SavedModelCliCheck(version_dir)).result()
        report["saved_model_cli"] = "both signatures listed"
    if "onnx" in formats:
        import onnx

        from export.onnx_export import onnx_op_types

        for file in ("model.onnx", "model_streaming.onnx"):
            model = onnx.load(str(version_dir / file))
            random_ops = find_random_onnx_ops(model)
            report[f"{file}_random_ops"] = random_ops
            report[f"{file}_op_types"] = sorted(onnx_op_types(model))
            if random_ops:
                errors.append(f"random ops in {file}: {random_ops[:10]}")
        results["onnx"] = run_onnx(version_dir, x, im.state_size)

    for backend, res in results.items():
        _compare(report, f"keras_vs_{backend}", res["sequence"], keras_ref, atol, errors)
        want = {k: res["sequence"][k] for k in OUTPUT_KEYS if k in res["sequence"]}
        _compare(report, f"{backend}_streaming_vs_sequence", res["streaming"], want, atol, errors)
        if "sequence_short" in res:  # a time axis of any length: check another length too
            want = {k: res["sequence_short"][k] for k in OUTPUT_KEYS}
            _compare(report, f"{backend}_short_streaming_vs_sequence", res["streaming_short"],
                     want, atol, errors)
    if "savedmodel" in results and "onnx" in results:
        want = {k: results["savedmodel"]["sequence"][k] for k in OUTPUT_KEYS}
        _compare(report, "savedmodel_vs_onnx", results["onnx"]["sequence"], want, atol, errors)
        want = {"new_state": results["savedmodel"]["streaming"]["new_state"]}
        _compare(report, "savedmodel_vs_onnx_streaming", results["onnx"]["streaming"], want,
                 atol, errors)
    if errors:
        raise ExportError(
            f"Verification of the export failed ({len(errors)} problem(s)):\n  "
            + "\n  ".join(errors)
        )
    return report
