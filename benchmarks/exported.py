"""Contenders for exported inference models: a SavedModel directory and an ONNX file.

Both are optional: they run only when `--savedmodel DIR` / `--onnx FILE` are given, and are
skipped with a message otherwise. They measure inference only (batch 1 latency and batch 256
throughput); the input is random float32 of shape (batch, T, input_dim).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.contenders import OURS, Contender, ContenderUnavailableError, Options
from benchmarks.keras_side import random_batch
from benchmarks.threads import INTER_OP_THREADS, INTRA_OP_THREADS, configure_tensorflow


class SavedModelContender(Contender):
    """Inference through the `serving_default` signature of a SavedModel.

    Args:
        name: registry name.
        options: shared options (`options.savedmodel` is the directory).
    """

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, OURS, options)
        import tensorflow as tf

        self._loaded = tf.saved_model.load(str(options.savedmodel))
        signatures = getattr(self._loaded, "signatures", {})
        if "serving_default" not in signatures:
            raise ContenderUnavailableError(
                f"SavedModel {options.savedmodel} has no 'serving_default' signature "
                f"(has {sorted(signatures)})"
            )
        self._fn = signatures["serving_default"]
        _, kwargs = self._fn.structured_input_signature
        if len(kwargs) != 1:
            raise ContenderUnavailableError(
                f"SavedModel signature must take one input; it takes {sorted(kwargs)}"
            )
        self._input_name = next(iter(kwargs))

    def make_inference(self, batch: int, timesteps: int) -> Callable[[], object]:
        import tensorflow as tf

        x, _ = random_batch(batch, timesteps, self.options.config, self.options.seed)
        x = tf.constant(x)
        fn, key = self._fn, self._input_name

        def infer() -> object:
            return {k: v.numpy() for k, v in fn(**{key: x}).items()}

        return infer


class OnnxContender(Contender):
    """Inference of an ONNX file in an onnxruntime session with 2 intra-op / 1 inter-op threads
    (`onnx`), or 1 intra-op thread as the onnxruntime server creates its sessions
    (`onnx-1thread`).

    Spinning of idle intra-op threads is off, as in `serving/model_repo.py`: on 2 shared cores
    spinning threads halved the batch-256 throughput (measured 7,800 vs 14,400 sequences/s,
    2 threads, same process, alternated) and steal time from the other contenders' workers.

    Args:
        name: registry name.
        options: shared options (`options.onnx` is the file).
        intra_op_threads: onnxruntime intra-op threads (default: the harness's budget).
    """

    def __init__(
        self, name: str, options: Options, intra_op_threads: int = INTRA_OP_THREADS
    ) -> None:
        super().__init__(name, OURS, options)
        try:
            import onnxruntime as ort
        except ModuleNotFoundError as err:
            raise ContenderUnavailableError(
                "onnxruntime is not installed (pip install -e .[export])"
            ) from err
        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = INTER_OP_THREADS
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(options.onnx), so, providers=["CPUExecutionProvider"]
        )
        self._input_name = self._session.get_inputs()[0].name

    def make_inference(self, batch: int, timesteps: int) -> Callable[[], object]:
        x, _ = random_batch(batch, timesteps, self.options.config, self.options.seed)
        session, key = self._session, self._input_name

        def infer() -> Any:
            return session.run(None, {key: x})

        return infer


def create(name: str, options: Options) -> Contender:
    """Contender factory for `savedmodel`, `onnx` and `onnx-1thread`.

    Raises:
        ContenderUnavailableError: the path flag was not given, does not exist, or cannot be loaded.

    Example:

    >>> create("onnx", Options())
    Traceback (most recent call last):
    ...
    benchmarks.contenders.ContenderUnavailableError: no --onnx FILE given
    """
    if name == "savedmodel":
        path, flag = options.savedmodel, "--savedmodel DIR"
    elif name in ("onnx", "onnx-1thread"):
        path, flag = options.onnx, "--onnx FILE"
    else:
        raise ValueError(
            "Argument `name` must be 'savedmodel', 'onnx' or 'onnx-1thread'; "
            f"received name={name!r}"
        )
    if not path:
        raise ContenderUnavailableError(f"no {flag} given")
    if not Path(path).exists():
        raise ContenderUnavailableError(f"{flag.split()[0]} {path} does not exist")
    if name == "savedmodel":
        configure_tensorflow()
        try:
            return SavedModelContender(name, options)
        except (OSError, ValueError) as err:
            raise ContenderUnavailableError(f"cannot load SavedModel {path}: {err}") from err
    try:
        if name == "onnx-1thread":
            return OnnxContender(name, options, intra_op_threads=1)
        return OnnxContender(name, options)
    except ContenderUnavailableError:
        raise
    except Exception as err:  # onnxruntime raises its own exception types
        raise ContenderUnavailableError(f"cannot load ONNX file {path}: {err}") from err
