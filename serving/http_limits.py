"""Connection limits of the REST front end: a cap on open connections, a deadline for the
request head, and rate-limited logging of repeated transport errors.

uvicorn's h11 protocol closes a keep-alive connection that stays idle (`timeout_keep_alive`)
and answers 503 beyond `limit_concurrency`, but a socket that never sends a complete request
head is kept forever and every accepted socket holds a descriptor. `guarded_h11_protocol`
adds what is missing:

* when a connection arrives while `max_connections` are open, the connection idle the longest
  (no request in progress) is closed to make room, or the new one if none is idle; so idle
  sockets can neither use up the process's file descriptors nor lock good clients out;
* a connection that has not sent a complete request head `header_timeout_s` after it was
  opened (or after its previous response) is closed.

`fd_connection_cap` derives a safe cap from RLIMIT_NOFILE (after raising the soft limit to the
hard one), and `RateLimitFilter` keeps errors such as "Too many open files" from flooding the
log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["RateLimitFilter", "fd_connection_cap", "guarded_h11_protocol"]

log = logging.getLogger("serving")

# Descriptors kept free for model files, the version poll, gRPC and logging.
FD_RESERVE = 64


def fd_connection_cap(requested: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return a connection cap under it.

    Args:
        requested: the cap asked for (>= 1).

    Returns:
        `min(requested, soft_limit - FD_RESERVE)`, at least 1.

    Example:

    >>> fd_connection_cap(10) <= 10
    True
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return requested
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(1, min(requested, soft - FD_RESERVE))


def guarded_h11_protocol(max_connections: int, header_timeout_s: float) -> type:
    """A uvicorn h11 protocol class with a connection cap and a request-head deadline.

    Args:
        max_connections: most open connections; a connection beyond is closed at once.
        header_timeout_s: a connection that has not sent a full request head this long after
            it opened or after its last response is closed (> 0).

    Returns:
        The class, to pass as `uvicorn.Config(http=...)`.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    limited = logging.getLogger("serving")
    state = {"last_warning": float("-inf"), "refused": 0}

    class GuardedH11Protocol(H11Protocol):
        _head_timer: Any = None

        _idle_since: float = 0.0

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._idle_since = time.monotonic()
            if len(self.connections) > max_connections:
                state["refused"] += 1
                now = time.monotonic()
                if now - state["last_warning"] > 10:
                    limited.warning("Connection limit of %d reached: closing the longest idle "
                                    "connections (%d closed so far).", max_connections,
                                    state["refused"])
                    state["last_warning"] = now
                victim = min((c for c in self.connections
                              if c is not self and isinstance(c, GuardedH11Protocol)
                              and c._is_idle()), key=lambda c: c._idle_since, default=self)
                victim.transport.close()
                if victim is self:
                    return
            self._arm_head_timer()

        def _is_idle(self) -> bool:
            return (self.conn.their_state is h11.IDLE and not self.transport.is_closing()
                    and (self.cycle is None or self.cycle.response_complete))

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                limited.debug("Closing a connection without a request head after %.1f s.",
                              header_timeout_s)
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            self._idle_since = time.monotonic()
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


class RateLimitFilter(logging.Filter):
    """Let a record through at most once per `interval_s` per (logger, message template).

    Args:
        interval_s: minimum time between two records of the same template (> 0).

    Example:

    >>> f = RateLimitFilter(60)
    >>> r = logging.LogRecord("asyncio", logging.ERROR, "", 0, "accept failed", None, None)
    >>> f.filter(r), f.filter(r)
    (True, False)
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self._last.get(key, float("-inf")) < self.interval_s:
            return False
        self._last[key] = now
        return True
