"""Versioned onnxruntime models from an export base folder, with hot reload.

An export base (see `export/`) holds integer version folders, each with `model.onnx`
(signature `serving_default`) and optionally `model_streaming.onnx` (signature
`streaming_step`), `model_fixed.onnx` (the fast path of `serving_default` for the trained
length T only: the unrolled graph without the `If`/`Loop` of `model.onnx`) and
`assets/metadata.json`. A request to `serving_default` whose inputs have the fixed graph's
shape (time length T) runs `model_fixed.onnx`, any other length runs `model.onnx`
(`SignatureInfo.route`). `ModelRepository` loads them into onnxruntime sessions, keeps the
latest `num_versions` versions loaded (TF Serving's default version policy is the latest one),
and `refresh()` (called by a poll thread in the server) picks up new and removed version
folders without a restart. A new folder is loaded only once its ONNX files have the same size
and modification time on two consecutive polls, so a folder that is still being copied is not
loaded half-written; exporters that build the folder under a temporary non-integer name and
rename it into place are picked up on the second poll.

Version changes follow TF Serving's availability-preserving policy: a new version becomes
available before an old one is retired, and when the newest folder is removed its session keeps
answering until the next older one has loaded. A poll whose listing fails (folder moved away,
out of file descriptors) or finds no version folder at all changes nothing.

Only numpy and onnxruntime are used (no TensorFlow).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving._ratelimit import RateLimitedLogger
from serving.batching import Batcher

__all__ = ["FAST_PATH_FILES", "SIGNATURE_FILES", "ListingError", "ModelRepository",
           "ModelVersion", "SignatureInfo", "TensorSpec"]

log = logging.getLogger("serving")

SIGNATURE_FILES = {"serving_default": "model.onnx", "streaming_step": "model_streaming.onnx"}
DEFAULT_SIGNATURE = "serving_default"
# Optional faster graph of a signature for the inputs of its fixed shape (see `route`).
FAST_PATH_FILES = {"serving_default": "model_fixed.onnx"}

_ORT_TO_NP = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape (None for a dynamic dimension) of a model input/output."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


@dataclass
class SignatureInfo:
    """One onnxruntime session with its input and output specs (and the version it belongs to).

    `graph` is the ONNX file the session was loaded from; `fast` an optional session of the
    same signature for inputs of its fixed shape (`model_fixed.onnx`), used by `route`.
    """

    name: str
    session: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    version: int | None = None
    graph: str = ""
    fast: SignatureInfo | None = None

    def accepts(self, feeds: dict[str, np.ndarray]) -> bool:
        """Whether `feeds` match every input's fixed dimensions (None: any size)."""
        for spec in self.inputs:
            value = feeds.get(spec.name)
            if value is None or value.ndim != len(spec.shape):
                return False
            if any(d is not None and d != n for d, n in zip(spec.shape, value.shape,
                                                            strict=True)):
                return False
        return True

    def route(self, feeds: dict[str, np.ndarray]) -> SignatureInfo:
        """The session to run for validated `feeds`: `fast` if it accepts them, else self.

        Example:

        >>> spec = lambda t: [TensorSpec("inputs", np.dtype("float32"), (None, t, 1))]
        >>> general = SignatureInfo("serving_default", None, spec(None), [], graph="model.onnx")
        >>> general.fast = SignatureInfo("serving_default", None, spec(20), [],
        ...                              graph="model_fixed.onnx")
        >>> general.route({"inputs": np.zeros((1, 20, 1), np.float32)}).graph
        'model_fixed.onnx'
        >>> general.route({"inputs": np.zeros((1, 7, 1), np.float32)}).graph
        'model.onnx'
        """
        if self.fast is not None and self.fast.accepts(feeds):
            return self.fast
        return self

    def run(self, feeds: dict[str, np.ndarray],
            output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the session.

        Args:
            feeds: input name -> array (already validated).
            output_names: outputs to compute (default: all).

        Returns:
            Output name -> array.
        """
        names = output_names or [o.name for o in self.outputs]
        values = self.session.run(names, feeds)
        return dict(zip(names, values, strict=True))


@dataclass
class ModelVersion:
    """A loaded version: its number, folder, signatures and `metadata.json` content."""

    version: int
    path: Path
    signatures: dict[str, SignatureInfo]
    metadata: dict[str, Any] = field(default_factory=dict)


def _spec_from_ort(arg: Any) -> TensorSpec:
    dtype = _ORT_TO_NP.get(arg.type)
    if dtype is None:
        raise ValueError(f"Unsupported ONNX tensor type {arg.type!r} for {arg.name!r}.")
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or []))
    return TensorSpec(arg.name, np.dtype(dtype), shape)


def _fast_path_problem(general: SignatureInfo, fast: SignatureInfo) -> str | None:
    """Why `fast` cannot stand in for `general` on the inputs it accepts (None: it can)."""
    by_name = {s.name: s for s in general.inputs}
    if set(by_name) != {s.name for s in fast.inputs}:
        return f"inputs {sorted(s.name for s in fast.inputs)} differ from {sorted(by_name)}"
    for spec in fast.inputs:
        ref = by_name[spec.name]
        if spec.dtype != ref.dtype or len(spec.shape) != len(ref.shape) or any(
                r is not None and d != r for d, r in zip(spec.shape, ref.shape, strict=True)):
            return f"input {spec.name!r} {spec.shape} does not fit {ref.shape}"
    if {o.name: o.dtype for o in fast.outputs} != {o.name: o.dtype for o in general.outputs}:
        return "its outputs differ"
    return None


class ListingError(OSError):
    """The export base could not be listed reliably (the poll must change nothing)."""


def _file_signature(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of `path`, None if it does not exist.

    Raises:
        ListingError: any other error (EMFILE, EACCES, EIO, ...): the state is unknown.
    """
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise ListingError(err.errno, f"Could not stat {path}: {err.strerror}") from err
    return (st.st_size, st.st_mtime_ns)


def _folder_signature(path: Path) -> tuple:
    """What the load state watches in a version folder: every ONNX file's (size, mtime)."""
    files = (*SIGNATURE_FILES.values(), *FAST_PATH_FILES.values())
    return tuple(_file_signature(path / f) for f in files)


class ModelRepository:
    """The versions of one model found under an export base folder.

    Args:
        base_path: the export base (`EXPORT_BASE`) with integer version subfolders.
        name: model name used in URLs; default: the folder name of `base_path`, as TF
            Serving's `--model_base_path` convention suggests.
        num_versions: how many of the newest versions to keep loaded (>= 1).
        intra_op_threads: onnxruntime intra-op threads per session (>= 1). On a small machine
            1 is best for throughput: concurrency comes from `inference_threads` sessions
            running at once.
        inference_threads: size of the thread pool that runs sessions (>= 1).
        wait_for_stable: require `model.onnx` to be unchanged over two refreshes before a
            new version is loaded (set False to load on first sight).
        batching: merge concurrent requests into larger session runs (see
            `serving.batching.Batcher`); otherwise each request runs alone in the pool.
        batch_max_size: largest merged batch when batching.
        batch_timeout_s: how long to wait for a batch to fill when batching (0: greedy).

    Example:

    >>> repo = ModelRepository("/nonexistent/export_base", name="m")  # doctest: +SKIP
    >>> repo.refresh(); repo.latest().version  # doctest: +SKIP
    1
    """

    def __init__(
        self,
        base_path: str | os.PathLike,
        name: str | None = None,
        num_versions: int = 1,
        intra_op_threads: int = 1,
        inference_threads: int | None = None,
        wait_for_stable: bool = True,
        batching: bool = True,
        batch_max_size: int = 64,
        batch_timeout_s: float = 0.0,
    ) -> None:
        if num_versions < 1:
            raise ValueError(f"Argument `num_versions` must be >= 1; received {num_versions}.")
        if intra_op_threads < 1:
            raise ValueError(
                f"Argument `intra_op_threads` must be >= 1; received {intra_op_threads}."
            )
        inference_threads = inference_threads or max(1, os.cpu_count() or 1)
        if inference_threads < 1:
            raise ValueError(
                f"Argument `inference_threads` must be >= 1; received {inference_threads}."
            )
        self.base_path = Path(base_path)
        self.num_versions = num_versions
        self.intra_op_threads = intra_op_threads
        self.wait_for_stable = wait_for_stable
        self.executor = ThreadPoolExecutor(inference_threads, thread_name_prefix="onnx")
        self.batcher = Batcher(batch_max_size, batch_timeout_s, inference_threads) if (
            batching) else None
        self._versions: dict[int, ModelVersion] = {}
        self._pending: dict[int, tuple] = {}
        self._failed: dict[int, tuple[tuple, str]] = {}
        self._refresh_lock = threading.Lock()
        self._warn = RateLimitedLogger(log, interval_s=30.0)
        self.name = name or self.base_path.resolve().name
        # Called as on_event("load"|"unload", version, "ok"|"error") (metrics).
        self.on_event: Callable[[str, int, str], None] | None = None
        self._on_batch: Callable[[SignatureInfo, int, float], None] | None = None

    # -- discovery -------------------------------------------------------------------------
    def version_folders(self) -> dict[int, Path]:
        """Integer-named (ASCII digits) subfolders of the base that contain `model.onnx`.

        Returns:
            Version number -> folder.

        Raises:
            ListingError: the base could not be listed or a folder could not be examined
                (missing base, EMFILE, EACCES, ...); the caller must not act on a partial view.
        """
        found: dict[int, Path] = {}
        try:
            with os.scandir(self.base_path) as it:
                entries = list(it)
        except OSError as err:
            raise ListingError(err.errno, f"Could not list {self.base_path}: "
                                          f"{err.strerror}") from err
        for entry in entries:
            name = entry.name
            if not name.isdigit():
                continue
            if not name.isascii():
                self._warn.log(logging.WARNING, f"non-ascii:{name}",
                               "Ignoring folder %r under %s: version folders must be named "
                               "with ASCII digits 0-9.", name, self.base_path)
                continue
            try:
                is_dir = entry.is_dir()
            except OSError as err:
                raise ListingError(err.errno, f"Could not examine {entry.path}: "
                                              f"{err.strerror}") from err
            if is_dir:
                path = Path(entry.path)
                if _file_signature(path / SIGNATURE_FILES[DEFAULT_SIGNATURE]) is not None:
                    found[int(name)] = path
        return found

    def _make_session(self, path: Path) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Do not busy-wait on a machine shared with other processes.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def _load_signature(self, sig_name: str, file: Path, version: int) -> SignatureInfo:
        session = self._make_session(file)
        return SignatureInfo(
            sig_name,
            session,
            [_spec_from_ort(a) for a in session.get_inputs()],
            [_spec_from_ort(a) for a in session.get_outputs()],
            version,
            file.name,
        )

    def _load_version(self, version: int, path: Path) -> ModelVersion:
        signatures = {}
        for sig_name, filename in SIGNATURE_FILES.items():
            file = path / filename
            if file.is_file():
                signatures[sig_name] = self._load_signature(sig_name, file, version)
        for sig_name, filename in FAST_PATH_FILES.items():
            file, general = path / filename, signatures.get(sig_name)
            if general is None or not file.is_file():
                continue
            fast = self._load_signature(sig_name, file, version)
            problem = _fast_path_problem(general, fast)
            if problem is None:
                general.fast = fast
            else:
                log.warning("Not using %s of version %d: %s.", file, version, problem)
        metadata: dict[str, Any] = {}
        meta_file = path / "assets" / "metadata.json"
        if meta_file.is_file():
            try:
                metadata = json.loads(meta_file.read_text())
            except (OSError, ValueError) as err:
                log.warning("Could not read %s: %s", meta_file, err)
        return ModelVersion(version, path, signatures, metadata)

    def refresh(self) -> list[int]:
        """Load new version folders, retire removed or superseded ones (availability first).

        The aspired versions are the newest `num_versions` folders. Each is loaded once its
        files are stable; a loaded version that is no longer aspired is retired only when
        enough aspired versions are loaded to take its place, so some version always answers.
        A listing that fails or finds no version folder changes nothing.

        Returns:
            The loaded version numbers after the refresh, newest first.
        """
        with self._refresh_lock:
            try:
                folders = self.version_folders()
            except ListingError as err:
                self._warn.log(logging.WARNING, "listing",
                               "Poll of %s failed (%s); keeping versions %s.", self.base_path,
                               err.strerror or err, sorted(self._versions))
                return sorted(self._versions, reverse=True)
            if not folders:
                if self._versions:
                    self._warn.log(logging.WARNING, "empty",
                                   "No version folder under %s; keeping versions %s.",
                                   self.base_path, sorted(self._versions))
                return sorted(self._versions, reverse=True)
            self._warn.clear("listing")
            self._warn.clear("empty")
            aspired = sorted(folders, reverse=True)[: self.num_versions]
            current = dict(self._versions)
            changed = False
            for v in aspired:
                if v in current:
                    continue
                try:
                    sig = _folder_signature(folders[v])
                except ListingError as err:
                    self._warn.log(logging.WARNING, "listing", "Poll of %s failed (%s).",
                                   folders[v], err.strerror or err)
                    continue
                if self.wait_for_stable and self._pending.get(v) != sig:
                    self._pending[v] = sig
                    continue
                if v in self._failed and self._failed[v][0] == sig:
                    continue
                try:
                    current[v] = self._load_version(v, folders[v])
                except Exception as err:  # an unloadable folder must not stop the server
                    self._failed[v] = (sig, str(err))
                    log.error("Could not load version %d from %s: %s", v, folders[v], err)
                    self._event("load", v, "error")
                    continue
                self._pending.pop(v, None)
                self._failed.pop(v, None)
                changed = True
                log.info("Loaded version %d of model %s from %s", v, self.name, folders[v])
                self._event("load", v, "ok")
            # Retire what is not aspired, keeping as many stand-ins as aspired versions are
            # missing (not yet loaded or failed): still-present folders first, newest first.
            missing = self.num_versions - sum(v in current for v in aspired)
            others = sorted((v for v in current if v not in aspired),
                            key=lambda v: (v in folders, v), reverse=True)
            for v in others[max(missing, 0):]:
                del current[v]
                changed = True
                log.info("Unloaded version %d of model %s", v, self.name)
                self._event("unload", v, "ok")
            for v in list(self._pending):
                if v not in folders:
                    del self._pending[v]
            if changed:
                self._versions = current
            return sorted(self._versions, reverse=True)

    def _event(self, kind: str, version: int, status: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, version, status)
            except Exception:  # metrics must never break loading
                log.debug("on_event hook failed", exc_info=True)

    # -- lookup ----------------------------------------------------------------------------
    def versions(self) -> dict[int, ModelVersion]:
        """A snapshot of the loaded versions (version -> `ModelVersion`)."""
        return self._versions

    def latest(self) -> ModelVersion | None:
        """The newest loaded version, or None when nothing is loaded."""
        snapshot = self._versions
        return snapshot[max(snapshot)] if snapshot else None

    def get(self, version: int | None) -> ModelVersion | None:
        """The loaded `version` (None: the latest), or None if it is not loaded."""
        if version is None:
            return self.latest()
        return self._versions.get(version)

    def failures(self) -> dict[int, str]:
        """Version -> error message of version folders that could not be loaded."""
        return {v: msg for v, (_, msg) in self._failed.items()}

    def submit(self, sig: SignatureInfo, feeds: dict[str, np.ndarray]) -> Future:
        """Run `sig` on validated `feeds` in the background (batched if enabled).

        `sig` is routed first (`SignatureInfo.route`): inputs of the trained length run the
        fixed graph when the version has one.

        Returns:
            A future of output name -> array (all outputs).
        """
        sig = sig.route(feeds)
        if self.batcher is not None:
            return self.batcher.submit(sig, feeds)
        return self.executor.submit(self._run_alone, sig, feeds)

    def _run_alone(self, sig: SignatureInfo, feeds: dict[str, np.ndarray]
                   ) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = sig.run(feeds)
        if self.on_batch is not None:
            self.on_batch(sig, next(iter(feeds.values())).shape[0] if feeds else 1,
                          time.perf_counter() - start)
        return out

    @property
    def on_batch(self) -> Callable[[SignatureInfo, int, float], None] | None:
        """Called as `on_batch(sig, examples, seconds)` after each session run (metrics)."""
        return self._on_batch

    @on_batch.setter
    def on_batch(self, hook: Callable[[SignatureInfo, int, float], None] | None) -> None:
        self._on_batch = hook
        if self.batcher is not None:
            self.batcher.on_batch = hook

    def close(self) -> None:
        """Stop the inference threads."""
        if self.batcher is not None:
            self.batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
