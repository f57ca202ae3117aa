"""Server-side request batching (the onnxruntime server's counterpart of TF Serving's
`--enable_batching`).

Concurrent requests for the same session whose inputs have the same shape apart from the
batch axis are concatenated along axis 0, run as one onnxruntime call, and the outputs are
split back. Workers are greedy: a worker takes the oldest queued request plus every queued
request that fits (same session and inner shapes, total batch <= `max_batch_size`) and runs
at once; while it runs, new requests queue up and form the next batch. `timeout_s` > 0 makes
a worker wait up to that long for a batch to fill (adds latency at low load, like
`batch_timeout_micros`). The models served here are row-independent (an RNN over each
sequence, then a dense head), so batching does not change results beyond float rounding.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Batcher"]


@dataclass
class _Item:
    sig: Any  # SignatureInfo
    feeds: dict[str, np.ndarray]
    key: tuple
    size: int
    future: Future = field(default_factory=Future)


class Batcher:
    """Merge concurrent requests into larger onnxruntime calls.

    Args:
        max_batch_size: largest merged batch (>= 1); a larger single request runs alone.
        timeout_s: how long a worker waits for more requests to fill a batch (>= 0).
        num_threads: worker threads running sessions (>= 1).

    Example:

    >>> class Sig:
    ...     def run(self, feeds, output_names=None):
    ...         return {"y": feeds["x"] * 2}
    >>> b = Batcher(max_batch_size=8)
    >>> b.submit(Sig(), {"x": np.ones((2, 3))}).result()["y"].shape
    (2, 3)
    >>> b.close()
    """

    def __init__(self, max_batch_size: int = 64, timeout_s: float = 0.0,
                 num_threads: int = 2) -> None:
        if max_batch_size < 1:
            raise ValueError(f"Argument `max_batch_size` must be >= 1; received "
                             f"{max_batch_size}.")
        if timeout_s < 0:
            raise ValueError(f"Argument `timeout_s` must be >= 0; received {timeout_s}.")
        if num_threads < 1:
            raise ValueError(f"Argument `num_threads` must be >= 1; received {num_threads}.")
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches_run = 0
        self.requests_run = 0
        # Called as on_batch(sig, examples, seconds) after each session run (metrics).
        self.on_batch: Any = None
        self._threads = [threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True)
                         for i in range(num_threads)]
        for t in self._threads:
            t.start()

    def submit(self, sig: Any, feeds: dict[str, np.ndarray]) -> Future:
        """Queue one request.

        Args:
            sig: object with `run(feeds) -> dict[name, array]` (a `SignatureInfo`).
            feeds: input name -> array with the batch on axis 0.

        Returns:
            A future of output name -> array for this request's rows.
        """
        key = (id(sig), tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in feeds.items())))
        size = next(iter(feeds.values())).shape[0] if feeds else 1
        item = _Item(sig, feeds, key, size)
        with self._cond:
            if self._closed:
                raise RuntimeError("The batcher is closed.")
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def _take_matching(self, first: _Item, batch: list[_Item], total: int) -> int:
        kept: collections.deque[_Item] = collections.deque()
        while self._queue:
            item = self._queue.popleft()
            if item.key == first.key and total + item.size <= self.max_batch_size:
                batch.append(item)
                total += item.size
            else:
                kept.append(item)
        self._queue.extendleft(reversed(kept))
        return total

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                first = self._queue.popleft()
                batch, total = [first], first.size
                total = self._take_matching(first, batch, total)
                deadline = time.monotonic() + self.timeout_s
                while total < self.max_batch_size and self.timeout_s > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    total = self._take_matching(first, batch, total)
            self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        start = time.perf_counter()
        try:
            if len(live) == 1:
                outputs = [live[0].sig.run(live[0].feeds)]
            else:
                feeds = {k: np.concatenate([item.feeds[k] for item in live])
                         for k in live[0].feeds}
                merged = live[0].sig.run(feeds)
                bounds = np.cumsum([0] + [item.size for item in live])
                outputs = [{k: v[bounds[i]:bounds[i + 1]] for k, v in merged.items()}
                           for i in range(len(live))]
        except Exception as err:
            if len(live) > 1:  # do not let one request's failure fail the others
                for item in live:
                    self._run_single(item)
                return
            live[0].future.set_exception(err)
            return
        self.batches_run += 1
        self.requests_run += len(live)
        if self.on_batch is not None:
            self.on_batch(live[0].sig, sum(item.size for item in live),
                          time.perf_counter() - start)
        for item, out in zip(live, outputs, strict=True):
            item.future.set_result(out)

    @staticmethod
    def _run_single(item: _Item) -> None:
        try:
            item.future.set_result(item.sig.run(item.feeds))
        except Exception as err:
            item.future.set_exception(err)

    def close(self) -> None:
        """Stop the workers after the queued requests."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
