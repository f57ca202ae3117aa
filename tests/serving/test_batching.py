"""`serving.batching.Batcher`: merged runs give each request exactly its own rows."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import Batcher


class _RowSig:
    """A row-independent "model": y = 2 x + 1 per row; records the batch sizes it ran."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        if np.any(x < 0):
            raise ValueError("negative input")
        if self.delay:
            threading.Event().wait(self.delay)
        with self.lock:
            self.calls.append(len(x))
        return {"y": 2 * x + 1, "s": x.sum(axis=tuple(range(1, x.ndim)))}


def test_concurrent_requests_are_merged_and_split_back() -> None:
    sig = _RowSig(delay=0.02)
    batcher = Batcher(max_batch_size=16, num_threads=1)
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(0, 1, (int(rng.integers(1, 4)), 5, 2)) for _ in range(40)]
    with ThreadPoolExecutor(8) as pool:
        futures = list(pool.map(lambda x: batcher.submit(sig, {"x": x}), inputs))
        results = [f.result(timeout=30) for f in futures]
    batcher.close()
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
        np.testing.assert_allclose(out["s"], x.sum(axis=(1, 2)))
    assert sum(sig.calls) == sum(len(x) for x in inputs)
    assert max(sig.calls) <= 16
    assert len(sig.calls) < len(inputs)  # some requests were merged
    assert batcher.requests_run == len(inputs)


def test_shapes_and_sessions_are_not_mixed() -> None:
    a, b = _RowSig(), _RowSig()
    batcher = Batcher(max_batch_size=64, timeout_s=0.05, num_threads=1)
    futures = [batcher.submit(a, {"x": np.ones((1, 3, 1))}),
               batcher.submit(a, {"x": np.ones((1, 4, 1))}),  # other time length
               batcher.submit(b, {"x": np.ones((2, 3, 1))})]
    shapes = [f.result(timeout=30)["y"].shape for f in futures]
    batcher.close()
    assert shapes == [(1, 3, 1), (1, 4, 1), (2, 3, 1)]


def test_failure_of_one_request_does_not_fail_the_batch() -> None:
    sig = _RowSig(delay=0.02)
    batcher = Batcher(max_batch_size=64, timeout_s=0.05, num_threads=1)
    good = [batcher.submit(sig, {"x": np.full((1, 2), float(i))}) for i in range(3)]
    bad = batcher.submit(sig, {"x": -np.ones((1, 2))})
    with pytest.raises(ValueError, match="negative"):
        bad.result(timeout=30)
    for i, f in enumerate(good):
        np.testing.assert_array_equal(f.result(timeout=30)["y"], np.full((1, 2), 2.0 * i + 1))
    batcher.close()


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="`max_batch_size` must be >= 1"):
        Batcher(max_batch_size=0)
    with pytest.raises(ValueError, match="`timeout_s` must be >= 0"):
        Batcher(timeout_s=-1)
