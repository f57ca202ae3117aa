"""Versioned onnxruntime models from an export base folder, with hot reload.

An export base (see `export/`) holds integer version folders, each with `model.onnx`
(signature `serving_default`) and optionally `model_streaming.onnx` (signature
`streaming_step`) and `assets/metadata.json`. `ModelRepository` loads them into onnxruntime
sessions, keeps the latest `num_versions` versions loaded (TF Serving's default version policy
is the latest one), and `refresh()` (called by a poll thread in the server) picks up new and
removed version folders without a restart. A new folder is loaded only once its `model.onnx`
has the same size and modification time on two consecutive polls, so a folder that is still
being copied is not loaded half-written; exporters that build the folder under a temporary
non-integer name and rename it into place are picked up on the second poll.

Only numpy and onnxruntime are used (no TensorFlow).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.batching import Batcher

__all__ = ["SIGNATURE_FILES", "ModelRepository", "ModelVersion", "SignatureInfo", "TensorSpec"]

log = logging.getLogger("serving")

SIGNATURE_FILES = {"serving_default": "model.onnx", "streaming_step": "model_streaming.onnx"}
DEFAULT_SIGNATURE = "serving_default"

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
    """One onnxruntime session with its input and output specs."""

    name: str
    session: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

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


def _file_signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


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
        self._pending: dict[int, tuple[int, int]] = {}
        self._failed: dict[int, tuple[tuple[int, int] | None, str]] = {}
        self._refresh_lock = threading.Lock()
        self.name = name or self.base_path.resolve().name

    # -- discovery -------------------------------------------------------------------------
    def version_folders(self) -> dict[int, Path]:
        """Integer-named subfolders of the base that contain `model.onnx`.

        Returns:
            Version number -> folder.
        """
        found: dict[int, Path] = {}
        try:
            entries = list(os.scandir(self.base_path))
        except OSError:
            return found
        for entry in entries:
            if not entry.is_dir() or not entry.name.isdigit():
                continue
            path = Path(entry.path)
            if (path / SIGNATURE_FILES[DEFAULT_SIGNATURE]).is_file():
                found[int(entry.name)] = path
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

    def _load_version(self, version: int, path: Path) -> ModelVersion:
        signatures = {}
        for sig_name, filename in SIGNATURE_FILES.items():
            file = path / filename
            if not file.is_file():
                continue
            session = self._make_session(file)
            signatures[sig_name] = SignatureInfo(
                sig_name,
                session,
                [_spec_from_ort(a) for a in session.get_inputs()],
                [_spec_from_ort(a) for a in session.get_outputs()],
            )
        metadata: dict[str, Any] = {}
        meta_file = path / "assets" / "metadata.json"
        if meta_file.is_file():
            try:
                metadata = json.loads(meta_file.read_text())
            except (OSError, ValueError) as err:
                log.warning("Could not read %s: %s", meta_file, err)
        return ModelVersion(version, path, signatures, metadata)

    def refresh(self) -> list[int]:
        """Load new version folders, unload removed or superseded ones.

        Returns:
            The loaded version numbers after the refresh, newest first.
        """
        with self._refresh_lock:
            folders = self.version_folders()
            wanted = sorted(folders, reverse=True)[: self.num_versions]
            current = dict(self._versions)
            changed = False
            for v in wanted:
                if v in current:
                    continue
                sig = _file_signature(folders[v] / SIGNATURE_FILES[DEFAULT_SIGNATURE])
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
                    continue
                self._pending.pop(v, None)
                self._failed.pop(v, None)
                changed = True
                log.info("Loaded version %d of model %s from %s", v, self.name, folders[v])
            # The newest loaded versions whose folders still exist; an older version keeps
            # being served until a newer one has been loaded.
            present = sorted((v for v in current if v in folders), reverse=True)
            keep = set(present[: self.num_versions])
            for v in list(current):
                if v not in keep:
                    del current[v]
                    changed = True
                    log.info("Unloaded version %d of model %s", v, self.name)
            if changed:
                self._versions = current
            return sorted(self._versions, reverse=True)

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

        Returns:
            A future of output name -> array (all outputs).
        """
        if self.batcher is not None:
            return self.batcher.submit(sig, feeds)
        return self.executor.submit(sig.run, feeds)

    def close(self) -> None:
        """Stop the inference threads."""
        if self.batcher is not None:
            self.batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
