"""Rate-limited logging: a repeated error is logged once per interval with a count of the
repeats that were suppressed, so a fault that recurs thousands of times a second (EMFILE on
every poll or accept) cannot flood the log."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimitedLogger"]


class RateLimitedLogger:
    """Log each distinct key at most once per `interval_s`.

    Args:
        logger: where the records go.
        interval_s: minimum time between two records of the same key (> 0).

    Example:

    >>> rl = RateLimitedLogger(logging.getLogger("demo"), interval_s=60)
    >>> rl.log(logging.WARNING, "k", "first")   # logged
    True
    >>> rl.log(logging.WARNING, "k", "second")  # suppressed, counted
    False
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"Argument `interval_s` must be > 0; received {interval_s}.")
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log `msg % args` unless `key` was logged less than `interval_s` ago.

        Returns:
            True if the record was emitted.
        """
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (float("-inf"), 0))
            if now - last < self.interval_s:
                self._last[key] = (last, suppressed + 1)
                return False
            self._last[key] = (now, 0)
        if suppressed:
            msg = f"{msg} ({suppressed} similar messages suppressed)"
        self.logger.log(level, msg, *args)
        return True

    def clear(self, key: str) -> None:
        """Forget `key` (the fault is over: its next occurrence is logged at once)."""
        with self._lock:
            self._last.pop(key, None)
