"""Speed and memory benchmarks of keras_nrnn against a PyTorch baseline.

Run with `python -m benchmarks` (see `python -m benchmarks --help`). PyTorch is an optional
extra (`pip install -e .[bench]`); the Keras side runs without it (`--only keras`).

Modules:
    config: the ECG configuration both sides use.
    threads: thread settings applied before any TensorFlow or PyTorch work.
    harness: timing utilities (warm-up, alternating repeated runs, medians, ratios, tables).
    contenders: the registry of named contenders (implementations being measured).
    torch_baseline: the PyTorch baseline with the paper's research-code structure.
    keras_side: the Keras contenders built from keras_nrnn's public API.
    exported: contenders for an exported SavedModel and an ONNX file.
    worker: one worker process per contender, driven over pipes (no cross-framework
        thread interference; the parent alternates them so all see the same load).
    memory: peak-memory measurements, one fresh subprocess per measurement.
    runner: the figures (training, inference, noise overhead, memory) and the report.
"""
