"""onnxruntime model server with TF Serving's REST and gRPC APIs.

Usage:

    python -m serving.onnx_server EXPORT_BASE [--name NAME] [--port 8501] [--grpc-port 8500]
        [--host 127.0.0.1] [--poll-seconds 1] [--num-versions 1] [--max-batch-size 256]
        [--max-body-bytes 8388608] [--intra-op-threads 1] [--inference-threads N]
        [--batching/--no-batching] [--batch-max-size 64] [--batch-timeout-micros 0]
        [--decode-threads 2] [--max-inflight-bytes 4*MAX_BODY] [--max-connections 1024]
        [--header-timeout-seconds 10] [--body-timeout-seconds 30] [--keep-alive-seconds 5]
        [--workers 1]

Serves `EXPORT_BASE/<version>/model.onnx` (signature `serving_default`; requests of the
trained length run `model_fixed.onnx` when present) and `model_streaming.onnx`
(`streaming_step`) of the newest version(s), polls the folder every
`--poll-seconds` for new or removed versions (no restart needed), answers TF Serving's REST API
on `--port` (FastAPI + uvicorn) and TF Serving's gRPC PredictionService/ModelService on
`--grpc-port` (0 disables gRPC). Concurrent requests are merged into one onnxruntime run
(`serving.batching`; `--no-batching` turns it off). Binds 127.0.0.1 unless told otherwise.
Prometheus metrics are at `/monitoring/prometheus/metrics` on the REST port. Connections are
capped (`--max-connections`, and under the file-descriptor limit) and slow or idle clients are
closed (`--header-timeout-seconds`, `--body-timeout-seconds`, `--keep-alive-seconds`).
TensorFlow is not imported (the gRPC protos are loaded without it, see `serving/_protos.py`).

`--workers N` (N > 1) runs N server processes on the same REST and gRPC ports (`SO_REUSEPORT`:
the kernel spreads new connections over them), each loading the export base and polling it on
its own, so a new version reaches every worker within `--poll-seconds`. The parent process only
supervises: it restarts a worker that dies and stops them all on SIGINT/SIGTERM. `/healthz`
names the answering process (`pid`); metrics are per worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

__all__ = ["build_parser", "main", "serve", "supervise"]

log = logging.getLogger("serving")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of `python -m serving.onnx_server`."""
    ap = argparse.ArgumentParser(
        prog="python -m serving.onnx_server",
        description="Serve an export base with onnxruntime behind TF Serving's REST/gRPC APIs.")
    ap.add_argument("export_base", type=Path, help="folder with integer version subfolders")
    ap.add_argument("--name", default=None,
                    help="model name in URLs (default: the export base folder's name)")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    ap.add_argument("--port", type=int, default=8501, help="REST port (default 8501)")
    ap.add_argument("--grpc-port", type=int, default=8500,
                    help="gRPC port (default 8500; 0 disables gRPC)")
    ap.add_argument("--poll-seconds", type=float, default=1.0,
                    help="how often to look for new version folders (default 1 s)")
    ap.add_argument("--num-versions", type=int, default=1,
                    help="how many of the newest versions to keep loaded (default 1)")
    ap.add_argument("--max-batch-size", type=int, default=256,
                    help="largest batch per request (default 256)")
    ap.add_argument("--max-body-bytes", type=int, default=8 << 20,
                    help="largest REST request body / gRPC message (default 8 MiB)")
    ap.add_argument("--intra-op-threads", type=int, default=1,
                    help="onnxruntime intra-op threads per session (default 1)")
    ap.add_argument("--inference-threads", type=int, default=None,
                    help="sessions run concurrently in this many threads (default: CPU count)")
    ap.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                    help="merge concurrent requests into one session run (default on)")
    ap.add_argument("--batch-max-size", type=int, default=64,
                    help="largest merged batch when batching (default 64)")
    ap.add_argument("--batch-timeout-micros", type=int, default=0,
                    help="wait this long for a batch to fill (default 0: greedy, no wait)")
    ap.add_argument("--decode-threads", type=int, default=2,
                    help="threads decoding/validating REST bodies off the event loop (default 2)")
    ap.add_argument("--max-inflight-bytes", type=int, default=None,
                    help="most bytes of REST bodies read or decoded at once (default 4 x "
                         "--max-body-bytes)")
    ap.add_argument("--max-connections", type=int, default=1024,
                    help="most open REST connections, kept below the descriptor limit "
                         "(default 1024)")
    ap.add_argument("--header-timeout-seconds", type=float, default=10.0,
                    help="close a connection without a complete request head after this long "
                         "(default 10)")
    ap.add_argument("--body-timeout-seconds", type=float, default=30.0,
                    help="408 for a body not received within this long (default 30)")
    ap.add_argument("--keep-alive-seconds", type=float, default=5.0,
                    help="close idle keep-alive connections after this long (default 5)")
    ap.add_argument("--workers", type=int, default=1,
                    help="server processes sharing the REST and gRPC ports (SO_REUSEPORT; "
                         "default 1)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # a worker
    return ap


def _check_args(args: argparse.Namespace) -> None:
    for flag in ("port", "grpc_port"):
        value = getattr(args, flag)
        if not 0 <= value <= 65535:
            raise SystemExit(f"Argument `--{flag.replace('_', '-')}` must be in [0, 65535]; "
                             f"received {value}.")
    for flag in ("poll_seconds", "header_timeout_seconds", "body_timeout_seconds",
                 "keep_alive_seconds"):
        value = getattr(args, flag)
        if not value > 0:
            raise SystemExit(f"Argument `--{flag.replace('_', '-')}` must be > 0; received "
                             f"{value}.")
    for flag in ("decode_threads", "max_connections", "max_body_bytes", "max_batch_size",
                 "workers"):
        value = getattr(args, flag)
        if value < 1:
            raise SystemExit(f"Argument `--{flag.replace('_', '-')}` must be >= 1; received "
                             f"{value}.")
    if args.max_inflight_bytes is not None and args.max_inflight_bytes < args.max_body_bytes:
        raise SystemExit(f"Argument `--max-inflight-bytes` must be >= --max-body-bytes "
                         f"({args.max_body_bytes}); received {args.max_inflight_bytes}.")
    if not args.export_base.is_dir():
        raise SystemExit(f"Argument `export_base` must be an existing folder; received "
                         f"{str(args.export_base)!r}.")


def serve(args: argparse.Namespace) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM).

    Args:
        args: parsed arguments of `build_parser()`.
    """
    import uvicorn

    from serving.http_limits import fd_connection_cap, guarded_h11_protocol
    from serving.metrics import ServerMetrics
    from serving.model_repo import ModelRepository
    from serving.rest_api import create_app

    try:
        repo = ModelRepository(
            args.export_base, name=args.name, num_versions=args.num_versions,
            intra_op_threads=args.intra_op_threads, inference_threads=args.inference_threads,
            wait_for_stable=False, batching=args.batching, batch_max_size=args.batch_max_size,
            batch_timeout_s=args.batch_timeout_micros / 1e6)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # no `_created` series next to every counter (as TF Serving)
    metrics = ServerMetrics(repo.name)
    repo.on_event = metrics.version_event
    repo.on_batch = lambda sig, size, seconds: metrics.batch(sig.name, size, seconds, sig.graph)
    repo.refresh()
    repo.wait_for_stable = True  # versions present at start-up load at once
    if not repo.versions():
        log.warning("No loadable version under %s yet; waiting for one (failures: %s)",
                    args.export_base, repo.failures())
    else:
        log.info("Serving model %s versions %s from %s", repo.name,
                 sorted(repo.versions()), args.export_base)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("Binding %s: the server is reachable from other hosts.", args.host)

    stop = threading.Event()

    def poll() -> None:
        last_error = float("-inf")
        while not stop.wait(args.poll_seconds):
            try:
                repo.refresh()
            except Exception:  # keep polling whatever happens (logged at most every 30 s)
                if time.monotonic() - last_error > 30:
                    log.exception("Refresh of %s failed", args.export_base)
                    last_error = time.monotonic()

    grpc_server = None
    if args.grpc_port:
        from serving.grpc_service import start_grpc_server

        grpc_server = start_grpc_server(repo, args.host, args.grpc_port,
                                        max_batch_size=args.max_batch_size,
                                        max_message_bytes=args.max_body_bytes, metrics=metrics)
        log.info("gRPC PredictionService on %s:%d", args.host, grpc_server.bound_port)

    app = create_app(repo, max_body_bytes=args.max_body_bytes,
                     max_batch_size=args.max_batch_size, metrics=metrics,
                     decode_threads=args.decode_threads,
                     max_inflight_bytes=args.max_inflight_bytes,
                     body_timeout_s=args.body_timeout_seconds)
    max_connections = fd_connection_cap(args.max_connections)
    if max_connections < args.max_connections:
        log.info("REST connections capped at %d (file-descriptor limit).", max_connections)

    @contextlib.asynccontextmanager
    async def lifespan(_app: object) -> AsyncIterator[None]:
        poller = threading.Thread(target=poll, name="version-poll", daemon=True)
        poller.start()
        yield
        stop.set()

    app.router.lifespan_context = lifespan
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False,
        lifespan="on", timeout_graceful_shutdown=5,
        http=guarded_h11_protocol(max_connections, args.header_timeout_seconds),
        timeout_keep_alive=args.keep_alive_seconds, limit_concurrency=max_connections + 1,
        h11_max_incomplete_event_size=16 * 1024, backlog=256, log_config=None)
    log.info("REST API on http://%s:%d/v1/models/%s", args.host, args.port, repo.name)
    sockets = [_reuse_port_socket(args.host, args.port)] if args.reuse_port else None
    try:
        asyncio.run(uvicorn.Server(config).serve(sockets=sockets))
    finally:
        stop.set()
        if grpc_server is not None:
            grpc_server.stop(grace=1).wait(2)
        app.state.decode_pool.shutdown(wait=False, cancel_futures=True)
        repo.close()


def _reuse_port_socket(host: str, port: int, listen: bool = True) -> socket.socket:
    """A TCP socket bound to `host:port` with `SO_REUSEPORT` (shared by the workers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket's proto says TCP (with proto 0, Nagle + delayed ACKs add ~40 ms per response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise SystemExit(f"Argument `--port` {port}: cannot bind {host}:{port} ({err.strerror})."
                         ) from None
    if listen:
        sock.listen(256)
    sock.set_inheritable(False)
    return sock


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """`argv` without the given `--flag VALUE` / `--flag=VALUE` pairs."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not arg.startswith(tuple(f + "=" for f in flags)):
            out.append(arg)
    return out


def supervise(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run `args.workers` server processes on the same ports until SIGINT/SIGTERM.

    Port 0 is resolved here once (a bound, non-listening `SO_REUSEPORT` socket keeps the port
    reserved for the workers). A worker that exits while the group is running is restarted
    (at most once per second per worker).

    Args:
        args: parsed and checked arguments (`workers` > 1).
        argv: the command-line arguments, passed on to every worker.

    Returns:
        0 after a requested stop.
    """
    reserved = [_reuse_port_socket(args.host, args.port, listen=False)]
    port = reserved[0].getsockname()[1]
    grpc_port = args.grpc_port
    if grpc_port:
        reserved.append(_reuse_port_socket(args.host, grpc_port, listen=False))
        grpc_port = reserved[-1].getsockname()[1]
    command = [sys.executable, "-m", "serving.onnx_server",
               *_without(list(argv), ("--workers", "--port", "--grpc-port")),
               "--port", str(port), "--grpc-port", str(grpc_port), "--reuse-port"]
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs: list[subprocess.Popen] = [subprocess.Popen(command) for _ in range(args.workers)]
    started = [time.monotonic()] * len(procs)
    log.info("%d workers (pids %s) on REST port %d, gRPC port %d", len(procs),
             [p.pid for p in procs], port, grpc_port)
    try:
        while not stopping.wait(0.2):
            for i, proc in enumerate(procs):
                if proc.poll() is not None and time.monotonic() - started[i] > 1.0:
                    log.warning("Worker %d exited with %s; restarting it.", proc.pid,
                                proc.returncode)
                    procs[i], started[i] = subprocess.Popen(command), time.monotonic()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for sock in reserved:
            sock.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m serving.onnx_server`.

    Args:
        argv: arguments (default: `sys.argv[1:]`).

    Returns:
        Process exit code.

    Example:

    >>> main(["/path/to/export_base", "--port", "8501"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving.http_limits import RateLimitFilter

    for handler in logging.getLogger().handlers:  # no floods of a repeated error
        handler.addFilter(RateLimitFilter(10.0))
    _check_args(args)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.workers > 1 and not args.reuse_port:
        return supervise(args, argv)
    serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
