"""Helpers shared by the serving tests: dataclasses, free ports, server processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "nrnn_tiny"
T, F, UNITS, CLASSES = 20, 1, 8, 2


@dataclass
class ExportInfo:
    base: Path  # EXPORT_BASE with version folder 1
    name: str
    x: np.ndarray  # [4, T, F] inputs
    logits: np.ndarray  # Keras logits for `x` (the independent reference)


@dataclass
class Server:
    url: str
    grpc: str
    base: Path
    name: str
    proc: subprocess.Popen
    log: Path


def env() -> dict[str, str]:
    """Environment for subprocesses: the repository on PYTHONPATH, one OpenMP thread."""
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    out.setdefault("OMP_NUM_THREADS", "1")
    return out


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_export(info: ExportInfo, dest: Path) -> Path:
    """A private copy of the export base (tests that add version folders use their own)."""
    shutil.copytree(info.base, dest)
    return dest


@contextlib.contextmanager
def run_server(base: Path, name: str, log: Path, *extra: str,
               timeout: float = 90.0, nofile: int | None = None) -> Iterator[Server]:
    """Start `python -m serving.onnx_server` on free loopback ports and wait for /healthz.

    `nofile` sets the server's RLIMIT_NOFILE (soft and hard) to test descriptor exhaustion.
    """
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "serving.onnx_server", str(base), "--port", str(port),
           "--grpc-port", str(grpc_port), *extra]

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=limit if nofile else None)
    server = Server(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", base, name, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident set size (`VmRSS`) or its peak so far (`VmHWM`) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `cond()` every 0.1 s until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.1)


