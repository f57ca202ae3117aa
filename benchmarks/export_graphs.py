"""Batch-1 latency of the export's whole-sequence graphs: fast vs general path, ONNX variants.

`python -m benchmarks.export_graphs [--units 128] [--time 140] [--batch 1] [--rounds 7]
[--calls 50]`

Builds the ECG configuration (1 feature, 2 classes, NoisyLipschitzCell) in memory, traces
the fast path (`hybrid`, `fixed`, `dynamic`) and the general path (the Keras model's own RNN
loop) as `tf.function`s, writes the ONNX graphs (`model_fixed.onnx` as the export writes it,
hand-built for the folded cell; the same unrolled graph converted by tf2onnx; `If`; `Loop`),
and times all of them in one process, alternated block by block (1 thread each, onnxruntime
as `serving/model_repo.py` configures it); prints medians in ms.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the measurement; returns the median milliseconds per call by graph."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_graphs")
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--time", type=int, default=140)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf

    from export.inference_model import build_inference_model
    from export.onnx_export import convert_function
    from export.onnx_folded import convert_fixed_sequence
    from keras_nrnn import NoisyLipschitzCell

    tf.config.threading.set_intra_op_parallelism_threads(1)
    model = keras.Sequential(
        [
            keras.Input((args.time, 1)),
            keras.layers.RNN(NoisyLipschitzCell(args.units, additive_noise=0.1, seed=0)),
            keras.layers.Dense(2),
        ]
    )
    fast = build_inference_model(model)
    general = build_inference_model(model, path="general")
    x = np.random.default_rng(0).standard_normal((args.batch, args.time, 1)).astype("float32")
    calls = {
        "tf fast hybrid": fast.sequence_function("hybrid"),
        "tf fast fixed": fast.sequence_function("fixed"),
        "tf fast dynamic": fast.sequence_function("dynamic"),
        "tf general dynamic": general.sequence_function("dynamic"),
    }
    runners = {name: (lambda f=f: f(inputs=x)) for name, f in calls.items()}
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as tmp:
        for name, im, mode in (
            ("ort model_fixed.onnx (hand-built)", fast, "hand"),
            ("ort fast fixed (tf2onnx)", fast, "fixed"),
            ("ort fast hybrid", fast, "hybrid"),
            ("ort fast dynamic", fast, "dynamic"),
            ("ort general dynamic", general, "dynamic"),
        ):
            path = Path(tmp) / f"{len(runners)}.onnx"
            start = time.perf_counter()
            if mode == "hand":
                model = convert_fixed_sequence(im, path)
            else:
                model = convert_function(
                    im.sequence_function(mode),
                    im.sequence_inputs(fixed_time=mode == "fixed"),
                    path,
                    output_names=im.output_names(),
                )
            print(
                f"{name}: written in {time.perf_counter() - start:.1f} s, "
                f"{len(model.graph.node)} nodes",
                flush=True,
            )
            sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            runners[name] = lambda s=sess: s.run(None, {"inputs": x})
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                run()
            times[name].append((time.perf_counter() - start) / args.calls * 1e3)
    medians = {name: float(np.median(v)) for name, v in times.items()}
    for name, ms in medians.items():
        rate = f", {args.batch / ms * 1e3:,.0f} sequences/s" if args.batch > 1 else ""
        print(f"{name}: {ms:.2f} ms (batch {args.batch}, median of {args.rounds}){rate}")
    print(f"load average: {os.getloadavg()[0]:.1f}")
    return medians


if __name__ == "__main__":
    main()
