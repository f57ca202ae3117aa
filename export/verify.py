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


def default_sample_feeds(im, batch: int = DEFAULT_BATCH) -> dict:
    """Deterministic standard normal inputs for every input of `im`, keyed by input name.

    Sequence inputs get the model's time length (or 16 when it is dynamic); all sequence
    inputs share it.

    Example:

    >>> import keras
    >>> from keras_nrnn import LipschitzCell
    >>> from export.inference_model import build_inference_model
    >>> m = keras.Sequential([keras.Input((5, 2)), keras.layers.RNN(LipschitzCell(4)),
    ...                       keras.layers.Dense(3)])
    >>> default_sample_feeds(build_inference_model(m))["inputs"].shape
    (4, 5, 2)
    """
    rng = np.random.default_rng(0)
    time = im.time_steps or DEFAULT_TIME
    feeds = {}
    for i, (name, shape) in enumerate(zip(im.input_names, im.input_shapes, strict=True)):
        dims = [time, *shape[1:]] if im.is_sequence_input(i) else list(shape)
        feeds[name] = rng.standard_normal((batch, *dims)).astype(np.float32)
    return feeds


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
class _Plan:
    """What to feed: input names with their time flag, state names and sizes, per-step outputs."""

    def __init__(self, im_or_state_size) -> None:
        if isinstance(im_or_state_size, int):  # a single-input fast-path export
            self.inputs, self.sequence_flags = ["inputs"], [True]
            self.states = [("state", im_or_state_size)]
            self.per_step: set = set()
            self.streaming = True
        else:
            im = im_or_state_size
            self.inputs = list(im.input_names)
            self.sequence_flags = [im.is_sequence_input(i) for i in range(len(self.inputs))]
            self.states = [(st.name, st.size) for st in im.states]
            self.per_step = im.per_step_outputs()
            self.streaming = im.streaming

    def time(self, feeds: dict) -> int:
        for name, seq in zip(self.inputs, self.sequence_flags, strict=True):
            if seq:
                return int(feeds[name].shape[1])
        return 1

    def head(self, feeds: dict, steps: int) -> dict:
        """The feeds cut to their first `steps` time steps."""
        return {
            n: np.ascontiguousarray(feeds[n][:, :steps]) if seq else feeds[n]
            for n, seq in zip(self.inputs, self.sequence_flags, strict=True)
        }

    def step_feeds(self, feeds: dict, t: int, states: dict) -> dict:
        out = {
            n: np.ascontiguousarray(feeds[n][:, t]) if seq else feeds[n]
            for n, seq in zip(self.inputs, self.sequence_flags, strict=True)
        }
        return {**out, **states}

    def zero_states(self, feeds: dict) -> dict:
        batch = feeds[self.inputs[0]].shape[0]
        return {n: np.zeros((batch, size), np.float32) for n, size in self.states}


def as_feeds(x, im=None) -> dict:
    """`x` as a dict of float32 arrays keyed by input name (an array is the one `inputs`)."""
    if isinstance(x, dict):
        return {k: np.asarray(v, np.float32) for k, v in x.items()}
    name = im.input_names[0] if im is not None else "inputs"
    return {name: np.asarray(x, np.float32)}


def _stream(run_step, plan: _Plan, feeds: dict, short: int) -> dict:
    res: dict = {}
    if not plan.streaming:
        return res
    states = plan.zero_states(feeds)
    out: dict = {}
    for t in range(plan.time(feeds)):
        out = run_step(plan.step_feeds(feeds, t, states))
        states = {n: out[f"new_{n}"] for n, _ in plan.states}
        if t + 1 == short:
            res["streaming_short"] = out
    res["streaming"] = out
    return res


def run_saved_model(version_dir: str | Path, x, im_or_state_size) -> dict:
    """Whole-sequence and streamed outputs of the SavedModel on `x`.

    Args:
        version_dir: the export folder.
        x: (batch, T, features) array, or a dict of arrays keyed by input name.
        im_or_state_size: the inference model (or, for a single-input fast-path export,
            the state size).

    Returns:
        `{"sequence": {...}, "streaming": {...}}` (and `sequence_short` /
        `streaming_short` for a dynamic time axis), numpy arrays keyed by output name; the
        streaming outputs are those of the last of T `streaming_step` calls.
    """
    plan = _Plan(im_or_state_size)
    feeds = as_feeds(x, None if isinstance(im_or_state_size, int) else im_or_state_size)
    loaded = tf.saved_model.load(str(version_dir))
    seq_fn = loaded.signatures[SEQUENCE_SIGNATURE]

    def run(fn, f):
        return {k: v.numpy() for k, v in fn(**{n: tf.constant(a) for n, a in f.items()}).items()}

    res = {"sequence": run(seq_fn, feeds)}
    short = _short_length(plan.time(feeds))
    if plan.streaming:
        step_fn = loaded.signatures[STREAMING_SIGNATURE]
        res.update(_stream(lambda f: run(step_fn, f), plan, feeds, short))
    _, specs = seq_fn.structured_input_signature
    seq_names = [n for n, seq in zip(plan.inputs, plan.sequence_flags, strict=True) if seq]
    if short and seq_names and specs[seq_names[0]].shape[1] is None:
        res["sequence_short"] = run(seq_fn, plan.head(feeds, short))
    return res


def _short_length(time: int) -> int:
    """A second sequence length, T // 2 (0 if T < 2), for the dynamic-time check."""
    return time // 2 if time >= 2 else 0


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(version_dir: str | Path, x, im_or_state_size, runtime: str = "onnxruntime") -> dict:
    """Like `run_saved_model`, on `model.onnx` / `model_streaming.onnx`.

    Args:
        runtime: `"onnxruntime"`, or `"reference"` for `onnx.reference.ReferenceEvaluator`
            (the ONNX reference implementation, a second, independent runtime).
    """
    version_dir = Path(version_dir)
    plan = _Plan(im_or_state_size)
    feeds = as_feeds(x, None if isinstance(im_or_state_size, int) else im_or_state_size)
    open_session = _session if runtime == "onnxruntime" else reference_session
    seq_sess = open_session(version_dir / "model.onnx")
    res = {"sequence": seq_sess(feeds)}
    short = _short_length(plan.time(feeds))
    seq_names = [n for n, seq in zip(plan.inputs, plan.sequence_flags, strict=True) if seq]
    if short and seq_names and not isinstance(seq_sess.input_shapes[seq_names[0]][1], int):
        res["sequence_short"] = seq_sess(plan.head(feeds, short))
    if plan.streaming:
        step_sess = open_session(version_dir / "model_streaming.onnx")
        res.update(_stream(step_sess, plan, feeds, short))
    return res


class _OnnxSession:
    def __init__(self, run, names: list[str], input_shapes: dict) -> None:
        self._run, self.names, self.input_shapes = run, names, input_shapes

    def __call__(self, feeds: dict) -> dict:
        return dict(zip(self.names, self._run(feeds), strict=True))


def _session(path: Path) -> _OnnxSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    return _OnnxSession(lambda f: sess.run(None, f), names, shapes)


def reference_session(path: str | Path) -> _OnnxSession:
    """An `onnx.reference.ReferenceEvaluator` session of an ONNX file (called with feeds).

    Its `Loop` stacks scan outputs along a new first axis as the ONNX specification says
    (onnx 1.23's reference `Loop` concatenates them with `np.vstack`, which breaks the
    `Loop`s tf2onnx makes of Keras RNN loops).
    """
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops import op_loop

    class _StackingNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def vstack(arrays):
            return np.stack(arrays)

    class Loop(op_loop.Loop):  # new_ops are matched by class name: this replaces Loop
        op_domain = ""

        def _run(self, *args, **kwargs):
            previous = op_loop.np
            op_loop.np = _StackingNumpy()  # only op_loop's module global, for this call
            try:
                return super()._run(*args, **kwargs)
            finally:
                op_loop.np = previous

    model = onnx.load(str(path))
    sess = ReferenceEvaluator(model, new_ops=[Loop])
    names = [o.name for o in model.graph.output]
    shapes = {
        i.name: [
            d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in i.type.tensor_type.shape.dim
        ]
        for i in model.graph.input
    }
    return _OnnxSession(lambda f: sess.run(None, f), names, shapes)


# --------------------------------------------------------------------------- checks
class SavedModelCliCheck:
    """`saved_model_cli show --all --dir version_dir`, started in the background.

    The tool imports all of TensorFlow (seconds), so the export starts it as soon as the
    SavedModel is written and collects it with `result()` after the other work.

    Args:
        version_dir: the SavedModel folder.
        timeout: seconds to wait in `result()`.
    """

    def __init__(
        self, version_dir: str | Path, timeout: float = 300.0, streaming: bool = True
    ) -> None:
        exe = shutil.which("saved_model_cli")
        cmd = [exe] if exe else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
        self.cmd = [*cmd, "show", "--all", "--dir", str(version_dir)]
        self.version_dir = version_dir
        self.timeout = timeout
        self.signatures = (SEQUENCE_SIGNATURE, *([STREAMING_SIGNATURE] if streaming else []))
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
        for signature in self.signatures:
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
        if key.endswith("classes"):
            same = np.array_equal(np.asarray(got[key]), np.asarray(value))
            report[f"{label}/classes_equal"] = bool(same)
            if not same:
                errors.append(f"{label}: classes differ ({got[key]} vs {value})")
            continue
        diff = _max_diff(got[key], value)
        report[f"{label}/{key}"] = diff
        if not diff <= atol:
            errors.append(f"{label}: max |diff| of {key!r} is {diff:.3g} > {atol:g}")


def _final(value: np.ndarray, per_step: bool, steps: int | None = None) -> np.ndarray:
    """The output of the last (or the `steps`-th) step of a sequence output."""
    if not per_step:
        return value
    return value[:, -1] if steps is None else value[:, steps - 1]


def verify_export(
    version_dir: str | Path,
    im,
    sample_inputs,
    formats: list[str],
    atol: float = ATOL,
    cli_check: SavedModelCliCheck | None = None,
) -> dict:
    """Run every check on a (temporary) version folder; raise `ExportError` on any failure.

    Args:
        version_dir: the folder holding the export.
        im: the inference model it was made from (fast or general path).
        sample_inputs: float32 (batch, T, features) inputs, or a dict of them by input name.
        formats: the formats written (`"savedmodel"`, `"onnx"`, `"tflite"`).
        atol: the agreement tolerance (max absolute difference).
        cli_check: a `SavedModelCliCheck` already started on `version_dir`, or None to run
            `saved_model_cli` here.

    Returns:
        A report: max absolute differences keyed `"<what>/<output>"` (e.g.
        `"keras_vs_savedmodel/logits"`), random ops found (empty), ONNX op types.
    """
    version_dir = Path(version_dir)
    feeds = as_feeds(sample_inputs, im)
    errors: list[str] = []
    report: dict = {"path": im.path}
    per_step = im.per_step_outputs()
    keys = im.output_names()

    keras_ref = im.reference(feeds)
    originals = im.original_outputs(feeds)
    compared = [k for k in keras_ref if not k.endswith("classes")]
    diff = max(_max_diff(o, keras_ref[k]) for o, k in zip(originals, compared, strict=True))
    if _computes_in_float32(im.original):
        report["original_vs_rebuilt"] = diff
        if not diff <= atol:
            errors.append(f"the float32 rebuild differs from the model by {diff:.3g} > {atol:g}")
    else:
        report["original_vs_rebuilt_mixed_precision"] = diff

    results = {}
    if "savedmodel" in formats:
        random_ops = find_random_tf_ops(version_dir)
        report["savedmodel_random_ops"] = random_ops
        if random_ops:
            errors.append(f"random ops in the SavedModel: {random_ops[:10]}")
        results["savedmodel"] = run_saved_model(version_dir, feeds, im)
        (cli_check or SavedModelCliCheck(version_dir, streaming=im.streaming)).result()
        report["saved_model_cli"] = "signatures listed"
    if "onnx" in formats:
        import onnx

        from export.onnx_export import onnx_op_types

        files = ["model.onnx", *(["model_streaming.onnx"] if im.streaming else [])]
        for file in files:
            model = onnx.load(str(version_dir / file))
            random_ops = find_random_onnx_ops(model)
            report[f"{file}_random_ops"] = random_ops
            report[f"{file}_op_types"] = sorted(onnx_op_types(model))
            if random_ops:
                errors.append(f"random ops in {file}: {random_ops[:10]}")
        results["onnx"] = run_onnx(version_dir, feeds, im)
        if (version_dir / "model_fixed.onnx").exists():  # the unrolled graph for T only
            fixed = _session(version_dir / "model_fixed.onnx")
            results["onnx_fixed_time"] = {"sequence": fixed(feeds)}
            report["model_fixed.onnx_random_ops"] = find_random_onnx_ops(
                onnx.load(str(version_dir / "model_fixed.onnx"))
            )
            if report["model_fixed.onnx_random_ops"]:
                errors.append(
                    f"random ops in model_fixed.onnx: {report['model_fixed.onnx_random_ops']}"
                )
    if "tflite" in formats:
        from export.tflite_export import run_tflite

        results["tflite"] = run_tflite(version_dir, feeds, im)

    for backend, res in results.items():
        _compare(report, f"keras_vs_{backend}", res["sequence"], keras_ref, atol, errors)
        if "streaming" in res:
            want = {k: _final(res["sequence"][k], k in per_step) for k in keys}
            _compare(
                report, f"{backend}_streaming_vs_sequence", res["streaming"], want, atol, errors
            )
        if "sequence_short" in res and "streaming_short" in res:  # another length too
            want = {k: _final(res["sequence_short"][k], k in per_step) for k in keys}
            _compare(
                report,
                f"{backend}_short_streaming_vs_sequence",
                res["streaming_short"],
                want,
                atol,
                errors,
            )
    first = "savedmodel" if "savedmodel" in results else None
    for other in [b for b in results if b != first and first]:
        want = {k: results[first]["sequence"][k] for k in keys}
        _compare(report, f"savedmodel_vs_{other}", results[other]["sequence"], want, atol, errors)
        if "streaming" in results[other] and "streaming" in results[first]:
            want = {
                f"new_{st.name}": results[first]["streaming"][f"new_{st.name}"] for st in im.states
            }
            _compare(
                report,
                f"savedmodel_vs_{other}_streaming",
                results[other]["streaming"],
                want,
                atol,
                errors,
            )
    if errors:
        raise ExportError(
            f"Verification of the export failed ({len(errors)} problem(s)):\n  "
            + "\n  ".join(errors)
        )
    return report
