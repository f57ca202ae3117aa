"""Batch-1 latency and batch-256 throughput of export folders, alternated in one process.

`python -m benchmarks.compare_exports VERSION_DIR [VERSION_DIR ...] [--onnx-file
model_fixed.onnx] [--rounds 9] [--calls 40] [--batch-rounds 5] [--batch-calls 2]`

For each folder written by `python -m export`, loads the SavedModel's `serving_default`
(TensorFlow 1 intra-op / 1 inter-op thread) and the ONNX file (`model_fixed.onnx` by default,
else `model.onnx`) in an onnxruntime session configured as `serving/model_repo.py` does (1
intra-op thread, sequential, `ORT_ENABLE_ALL`, no spinning), checks that all of them give
the same logits within 1e-5, and times them block by block, alternating, on random inputs of
the folder's length and features. Prints medians. For before/after comparisons of two
exports of the same model (e.g. one written by an older checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path


def _time(runners: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each runner, alternated block by block."""
    import numpy as np

    for run in runners.values():
        run()
        run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(calls):
                run()
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: float(np.median(v)) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> dict[str, dict[int, float]]:
    """Run the comparison; returns median milliseconds per call by runner and batch."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_exports")
    parser.add_argument("folders", nargs="+", type=Path, help="export version folders")
    parser.add_argument("--onnx-file", default="model_fixed.onnx")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batch-rounds", type=int, default=5)
    parser.add_argument("--batch-calls", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf

    from benchmarks.threads import configure_tensorflow

    configure_tensorflow(intra=1, inter=1)  # warns if TensorFlow already runs (tests)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    models: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    shape = None
    for folder in args.folders:
        meta = json.loads((folder / "assets" / "metadata.json").read_text(encoding="utf-8"))
        folder_shape = (meta["time_steps"], meta["features"])
        if shape not in (None, folder_shape):
            parser.error(f"{folder} takes {folder_shape}, the first folder {shape}")
        shape = folder_shape
        signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
        onnx_path = folder / args.onnx_file
        if not onnx_path.exists():
            onnx_path = folder / "model.onnx"
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

        def run_savedmodel(x, signature=signature):
            out = {k: v.numpy() for k, v in signature(inputs=tf.constant(x)).items()}
            return out["logits"]

        def run_onnx(x, session=session):
            return session.run(["logits"], {"inputs": x})[0]

        models[f"{folder} savedmodel"] = run_savedmodel
        models[f"{folder} {onnx_path.name}"] = run_onnx
    results: dict[str, dict[int, float]] = {name: {} for name in models}
    rng = np.random.default_rng(0)
    for batch, rounds, calls in (
        (1, args.rounds, args.calls),
        (args.batch, args.batch_rounds, args.batch_calls),
    ):
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        outputs = {name: run(x) for name, run in models.items()}
        first = next(iter(outputs.values()))
        for name, out in outputs.items():
            if not np.allclose(out, first, atol=1e-5):
                raise SystemExit(f"error: {name} differs from the first runner by more than 1e-5")
        medians = _time({n: (lambda r=r, x=x: r(x)) for n, r in models.items()}, rounds, calls)
        for name, seconds in medians.items():
            results[name][batch] = seconds * 1e3
            print(
                f"batch {batch:>3}  {name}: {seconds * 1e3:.3f} ms, "
                f"{batch / seconds:,.0f} sequences/s (median of {rounds} x {calls})"
            )
    print(f"load average: {os.getloadavg()[0]:.1f}")
    return results


if __name__ == "__main__":
    main()
