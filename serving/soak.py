"""Bounded soak test of the onnxruntime server: load while versions come and go and the server
is killed and restarted (loopback only).

Usage:

    python -m serving.soak EXPORT_BASE [--clients 16,64] [--phase-seconds 30]
        [--grpc-fraction 0.5] [--input-shape 140,1] [--out soak.json]

The newest version folder of EXPORT_BASE is copied into a private temporary export base (the
original is never touched), and `python -m serving.onnx_server` is started on it on free
127.0.0.1 ports. Then, for each client count, one phase of `--phase-seconds` runs that many
concurrent clients (asyncio; a `--grpc-fraction` of them use gRPC Predict, the rest REST with
keep-alive) while this timeline plays:

    15 %  a new version is added (copied under a temporary name, renamed into place)
    35 %  the newest version is removed (the previous one must take over)
    50 %  a new version is added again
    65 %  the server is killed with SIGKILL and started again on the same ports

Every request is classified by when it failed: a failure between the kill and one second
after the restarted server's `/healthz` answers (clients reconnecting) is counted as
`failed_while_down`; any other failure is `failed` and must be zero. The report gives per
phase the requests sent, ok, failed, failed_while_down, p50/p99 latency of the successful
requests, the server's peak RSS (sampled every 0.2 s), the versions that answered and the
event times. The exit status is 1 if any request failed outside the down windows. The run
is bounded: at most 256 clients and 600 s per phase. The temporary folder is removed at the
end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.loadtest import _RawHttp

__all__ = ["main", "run_soak"]

MAX_CLIENTS = 256
MAX_PHASE_SECONDS = 600.0
DOWN_GRACE_S = 1.0


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Server:
    """The server process on fixed loopback ports, restartable."""

    def __init__(self, base: Path, name: str, log: Path, extra: Sequence[str]) -> None:
        self.base, self.name, self.log, self.extra = base, name, log, list(extra)
        self.port, self.grpc_port = _free_port(), _free_port()
        self.proc: subprocess.Popen | None = None
        self.peak_rss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self, timeout: float = 120.0) -> float:
        cmd = [sys.executable, "-m", "serving.onnx_server", str(self.base), "--name", self.name,
               "--port", str(self.port), "--grpc-port", str(self.grpc_port), "--poll-seconds",
               "0.5", *self.extra]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        if not self._sampler.is_alive():
            self._sampler.start()
        return self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> float:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz",
                             timeout=2).status_code == 200:
                    return time.monotonic()
            time.sleep(0.05)
        raise RuntimeError(f"server not healthy after {timeout} s; log: {self.log}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            if self.proc is not None:
                self.peak_rss = max(self.peak_rss, _rss(self.proc.pid))


class _Phase:
    """Counters of one phase."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures: list[tuple[float, str]] = []
        self.versions: dict[str, int] = {}
        self.down: list[list[float]] = []  # [kill time, healthy + grace]
        self.events: list[tuple[float, str]] = []


def _is_down(phase: _Phase, t: float) -> bool:
    return any(start <= t <= end for start, end in phase.down)


async def _phase(server: _Server, clients: int, grpc_fraction: float, seconds: float,
                 body: bytes, request: Any, batch: int) -> _Phase:
    import grpc

    from serving._protos import protos

    phase = _Phase()
    start = time.monotonic()
    stop_at = start + seconds
    path = f"/v1/models/{server.name}:predict"
    raw_request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
    n_grpc = round(clients * grpc_fraction)
    options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
               ("grpc.max_reconnect_backoff_ms", 500)]

    def record(t0: float, err: str | None, version: str | None) -> None:
        now = time.monotonic()
        if err is None:
            phase.latencies.append(now - t0)
            phase.versions[version or "?"] = phase.versions.get(version or "?", 0) + 1
        else:
            phase.failures.append((now, err[:200]))

    async def rest_client() -> None:
        conn = _RawHttp("127.0.0.1", server.port, raw_request, timeout=30)
        try:
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                try:
                    status, content = await conn.post()
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as err:
                    await conn.close()
                    record(t0, f"REST {type(err).__name__}: {err}", None)
                    await asyncio.sleep(0.05)
                    continue
                if status != 200:
                    record(t0, f"REST HTTP {status}: {content[:120]!r}", None)
                    continue
                preds = json.loads(content).get("predictions")
                ok = isinstance(preds, list) and len(preds) == batch
                record(t0, None if ok else f"REST malformed {content[:120]!r}",
                       conn.last_headers.get("x-model-version"))
        finally:
            await conn.close()

    async def grpc_client(stub: Any) -> None:
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                response = await stub.Predict(request, timeout=30)
            except grpc.aio.AioRpcError as err:
                record(t0, f"gRPC {err.code().name}: {err.details()}", None)
                await asyncio.sleep(0.05)
                continue
            record(t0, None, str(response.model_spec.version.value))

    async def chaos() -> None:
        loop = asyncio.get_running_loop()
        plan = [(0.15, "add"), (0.35, "remove_newest"), (0.50, "add"), (0.65, "kill")]
        for frac, action in plan:
            await asyncio.sleep(max(0.0, start + frac * seconds - time.monotonic()))
            t = time.monotonic()
            if action == "add":
                versions = sorted(int(p.name) for p in server.base.iterdir() if p.name.isdigit()
                                  and p.name.isascii())
                new = versions[-1] + 1
                tmp = server.base / f".soak-{new}"
                await loop.run_in_executor(None, shutil.copytree, server.base / str(versions[-1]),
                                           tmp)
                os.rename(tmp, server.base / str(new))
                phase.events.append((t - start, f"added version {new}"))
            elif action == "remove_newest":
                versions = sorted(int(p.name) for p in server.base.iterdir() if p.name.isdigit()
                                  and p.name.isascii())
                if len(versions) > 1:
                    await loop.run_in_executor(None, shutil.rmtree,
                                               server.base / str(versions[-1]))
                    phase.events.append((t - start, f"removed version {versions[-1]}"))
            else:
                window = [t, float("inf")]
                phase.down.append(window)
                server.kill()
                phase.events.append((t - start, "SIGKILL"))
                healthy = await loop.run_in_executor(None, server.start)
                window[1] = healthy + DOWN_GRACE_S
                phase.events.append((healthy - start, "restarted, healthy"))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}",
                                         options=options) as channel:
        stub = protos().prediction_service_pb2_grpc.PredictionServiceStub(channel)
        tasks = [grpc_client(stub) for _ in range(n_grpc)]
        tasks += [rest_client() for _ in range(clients - n_grpc)]
        await asyncio.gather(chaos(), *tasks)
    return phase


def _summary(phase: _Phase, clients: int, seconds: float, peak_rss: int) -> dict[str, Any]:
    lat = np.asarray(phase.latencies) * 1e3
    down = [f for f in phase.failures if _is_down(phase, f[0])]
    failed = [f for f in phase.failures if not _is_down(phase, f[0])]
    samples: dict[str, int] = {}
    for _, msg in failed[:1000]:
        samples[msg] = samples.get(msg, 0) + 1
    return {
        "clients": clients,
        "seconds": seconds,
        "sent": len(lat) + len(phase.failures),
        "ok": int(lat.size),
        "failed": len(failed),
        "failed_while_down": len(down),
        "down_seconds": round(sum(end - start for start, end in phase.down), 2),
        "throughput_rps": round(lat.size / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "max_ms": round(float(lat.max()), 2) if lat.size else None,
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "versions_answered": phase.versions,
        "events": [(round(t, 2), e) for t, e in phase.events],
        "failure_samples": dict(sorted(samples.items(), key=lambda kv: -kv[1])[:5]),
    }


def run_soak(export_base: str | os.PathLike, clients: Sequence[int] = (16, 64),
             phase_seconds: float = 30.0, grpc_fraction: float = 0.5,
             input_shape: Sequence[int] | None = None, batch: int = 1,
             server_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run the soak test and return its report.

    Args:
        export_base: an export base; its newest version folder is copied (read only).
        clients: one phase per entry, with that many concurrent clients (1-256 each).
        phase_seconds: length of each phase (1-600 s).
        grpc_fraction: share of the clients that use gRPC (0-1).
        input_shape: one example's shape (default: the signature's, dynamic axes as 1).
        batch: examples per request (>= 1).
        server_args: extra arguments for `python -m serving.onnx_server`.

    Returns:
        `{"config", "machine", "phases": [...], "failed", "failed_while_down"}`.

    Example:

    >>> report = run_soak("exports/ecg", clients=[4], phase_seconds=5)  # doctest: +SKIP
    >>> report["failed"]  # doctest: +SKIP
    0
    """
    source = Path(export_base)
    versions = sorted(int(p.name) for p in source.iterdir() if p.is_dir() and p.name.isdigit()
                      and p.name.isascii()) if source.is_dir() else []
    if not versions:
        raise ValueError(f"Argument `export_base` must be a folder with integer version "
                         f"folders; received {str(source)!r}.")
    if not clients or any(not 1 <= c <= MAX_CLIENTS for c in clients):
        raise ValueError(f"Argument `clients` must be counts in [1, {MAX_CLIENTS}]; received "
                         f"{list(clients)}.")
    if not 1 <= phase_seconds <= MAX_PHASE_SECONDS:
        raise ValueError(f"Argument `phase_seconds` must be in [1, {MAX_PHASE_SECONDS}]; "
                         f"received {phase_seconds}.")
    if not 0 <= grpc_fraction <= 1:
        raise ValueError(f"Argument `grpc_fraction` must be in [0, 1]; received "
                         f"{grpc_fraction}.")
    if batch < 1:
        raise ValueError(f"Argument `batch` must be >= 1; received {batch}.")
    from serving._protos import ndarray_to_tensor_proto, protos
    from serving.client import ServingClient

    work = Path(tempfile.mkdtemp(prefix="serving-soak-"))
    try:
        name = "soak"
        base = work / name
        base.mkdir()
        shutil.copytree(source / str(versions[-1]), base / "1")
        server = _Server(base, name, work / "server.log", server_args)
        server.start()
        try:
            with ServingClient(f"http://127.0.0.1:{server.port}", name) as client:
                (input_name, (_, shape)), = client.input_specs().items()
            inner = list(input_shape) if input_shape else [d if d > 0 else 1 for d in shape[1:]]
            data = np.random.default_rng(0).standard_normal([batch, *inner]).astype(np.float32)
            body = json.dumps({"instances": data.tolist()}).encode()
            request = protos().predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.inputs[input_name].CopyFrom(ndarray_to_tensor_proto(data))
            phases = []
            for c in clients:
                server.peak_rss = _rss(server.proc.pid)
                phase = asyncio.run(_phase(server, c, grpc_fraction, phase_seconds, body,
                                           request, batch))
                phases.append(_summary(phase, c, phase_seconds, server.peak_rss))
        finally:
            server.stop()
            log_tail = server.log.read_text(errors="replace").splitlines()[-20:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "config": {"export_base": str(source), "version_copied": versions[-1],
                   "clients": list(clients), "phase_seconds": phase_seconds,
                   "grpc_fraction": grpc_fraction, "input_shape": [batch, *inner],
                   "server_args": list(server_args)},
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                    "finished_at": datetime.now(UTC).isoformat(timespec="seconds")},
        "phases": phases,
        "failed": sum(p["failed"] for p in phases),
        "failed_while_down": sum(p["failed_while_down"] for p in phases),
        "server_log_tail": log_tail,
    }


def _format(report: dict[str, Any]) -> str:
    rows = ["| clients | sent | ok | failed | failed while down (s down) | req/s | p50 ms | "
            "p99 ms | peak RSS MB | versions answered |", "|---" * 10 + "|"]
    for p in report["phases"]:
        rows.append(f"| {p['clients']} | {p['sent']} | {p['ok']} | {p['failed']} | "
                    f"{p['failed_while_down']} ({p['down_seconds']}) | {p['throughput_rps']} | "
                    f"{p['p50_ms']} | {p['p99_ms']} | {p['peak_rss_mb']} | "
                    f"{p['versions_answered']} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m serving.soak`.

    Returns:
        0 if no request failed outside the down windows, 1 otherwise, 2 for bad arguments.

    Example:

    >>> main(["exports/ecg", "--clients", "4", "--phase-seconds", "5"])  # doctest: +SKIP
    0
    """
    ap = argparse.ArgumentParser(prog="python -m serving.soak", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("export_base", help="export base to copy the newest version from")
    ap.add_argument("--clients", default="16,64", help="client counts, one phase each")
    ap.add_argument("--phase-seconds", type=float, default=30.0)
    ap.add_argument("--grpc-fraction", type=float, default=0.5)
    ap.add_argument("--input-shape", default=None, help="one example's shape, e.g. 140,1")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for the server (repeat)")
    ap.add_argument("--out", default=None, help="write the JSON report here")
    args = ap.parse_args(argv)
    try:
        clients = [int(c) for c in args.clients.split(",")]
        shape = [int(d) for d in args.input_shape.split(",")] if args.input_shape else None
    except ValueError:
        ap.error(f"Arguments `--clients` and `--input-shape` must be comma-separated integers; "
                 f"received {args.clients!r}, {args.input_shape!r}.")
    try:
        report = run_soak(args.export_base, clients, args.phase_seconds, args.grpc_fraction,
                          shape, args.batch, args.server_arg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_format(report))
    print(f"failed: {report['failed']}, failed while down: {report['failed_while_down']}, "
          f"load average at end: {report['machine']['loadavg_1m_at_end']}")
    if args.out:
        from atomic_io import atomic_write_text

        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
