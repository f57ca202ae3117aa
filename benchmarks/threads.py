"""Explicit thread settings, applied before TensorFlow or PyTorch run anything.

The benchmark machine has 2 cores shared with other people, so every framework gets the same
2 cores: 2 intra-op threads each. The inter-op count is each framework's own default for
those cores:

- TensorFlow: 2 (`TF_INTER_OP_THREADS`), its default on a 2-core machine (one per core). Its
  graph executor uses these threads to run independent ops side by side; in the loop of
  `keras.layers.RNN` without XLA that puts each step's random draw beside the previous step's
  matmuls. With 1, the noisy step was 1.7x slower (about 120 against 70 ms per batch,
  `docs/performance.md`); users who write nothing get 2.
- PyTorch and onnxruntime: 1 (`INTER_OP_THREADS`). PyTorch's inter-op pool serves only
  `torch.jit.fork`, which the baseline does not use; onnxruntime runs sequentially.

The environment variable `BENCHMARKS_INTRA_OP_THREADS` overrides the intra-op count (the memory
children use 1: threads do not change a step's memory, and one thread keeps them fast on a
loaded machine) and TensorFlow's inter-op count follows it; `BENCHMARKS_TF_INTER_OP_THREADS`
overrides the latter alone.
"""

from __future__ import annotations

import contextlib
import os

INTRA_OP_THREADS = int(os.environ.get("BENCHMARKS_INTRA_OP_THREADS", "2"))
INTER_OP_THREADS = 1
TF_INTER_OP_THREADS = int(
    os.environ.get("BENCHMARKS_TF_INTER_OP_THREADS", str(INTRA_OP_THREADS))
)

_tf_done = False
_torch_done = False


def configure_tensorflow(
    intra: int = INTRA_OP_THREADS, inter: int = TF_INTER_OP_THREADS
) -> None:
    """Set TensorFlow's thread pools. Must run before TensorFlow executes any op.

    Args:
        intra: intra-op parallelism threads.
        inter: inter-op parallelism threads.

    Example:

    >>> configure_tensorflow()  # doctest: +SKIP
    """
    global _tf_done
    if _tf_done:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as err:  # the runtime was already initialised by someone else
        print(f"warning: could not set TensorFlow threads ({err}); results may use more threads")
    _tf_done = True


def configure_torch(intra: int = INTRA_OP_THREADS, inter: int = INTER_OP_THREADS) -> None:
    """Set PyTorch's thread counts (call after `torch` is importable).

    Args:
        intra: intra-op threads (`torch.set_num_threads`).
        inter: inter-op threads (`torch.set_num_interop_threads`).

    Example:

    >>> configure_torch()  # doctest: +SKIP
    """
    global _torch_done
    if _torch_done:
        return
    from benchmarks.torch_baseline import import_torch

    torch = import_torch()
    torch.set_num_threads(intra)
    # RuntimeError: already set, or inter-op work already started.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(inter)
    _torch_done = True
