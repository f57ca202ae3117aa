"""`python -m serving.onnx_server --workers 2`: two processes on one REST and one gRPC port.

Each request opens a new connection, which the kernel (`SO_REUSEPORT`) hands to one of the
workers; `/healthz` names the answering process. Both workers must answer, predict correctly,
and pick up a new version folder (hot reload) on their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving_helpers import ExportInfo, copy_export, run_server, wait_for

pytestmark = pytest.mark.timeout(300)


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(c) for c in text.split()}


def _healthz_by_pid(url: str, n: int = 40) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    for _ in range(n):
        with httpx.Client(timeout=10) as fresh:  # a new connection per request
            body = fresh.get(url + "/healthz").json()
        seen[body["pid"]] = body["versions"]
    return seen


def test_two_workers_share_the_ports_and_hot_reload(export_info: ExportInfo, tmp_path: Path):
    base = copy_export(export_info, tmp_path / export_info.name)
    with run_server(base, export_info.name, tmp_path / "server.log", "--workers", "2",
                    "--poll-seconds", "0.3") as srv:  # fmt: skip
        wait_for(lambda: len(_children(srv.proc.pid)) == 2, 60, "two worker processes")
        workers = _children(srv.proc.pid)
        # Wait until both workers have loaded the model, then see both of them answer.
        wait_for(lambda: set(_healthz_by_pid(srv.url, 10)) == workers, 90, "both workers answer")
        assert all(v == [1] for v in _healthz_by_pid(srv.url).values())
        url = f"{srv.url}/v1/models/{srv.name}:predict"
        for _ in range(6):
            with httpx.Client(timeout=30) as fresh:
                r = fresh.post(url, json={"instances": export_info.x[:2].tolist()})
            assert r.status_code == 200, r.text
            logits = [p["logits"] for p in r.json()["predictions"]]
            np.testing.assert_allclose(logits, export_info.logits[:2], atol=1e-4)

        # gRPC on the shared gRPC port answers too.
        from serving.client import ServingClient

        with ServingClient(srv.grpc, srv.name) as client:
            out = client.predict(export_info.x[:1])
        np.testing.assert_allclose(out["logits"], export_info.logits[:1], atol=1e-4)

        # Hot reload reaches every worker: version 2 appears on both.
        shutil.copytree(base / "1", base / "2")
        wait_for(
            lambda: (
                (s := _healthz_by_pid(srv.url, 20))
                and set(s) == workers
                and all(v == [2] for v in s.values())
            ),
            60,
            "version 2 on both workers",
        )

        # A worker that dies is replaced; the group keeps serving on the same port.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(_children(srv.proc.pid) - {victim}) == 2, 60, "a new worker")
        wait_for(lambda: httpx.get(srv.url + "/healthz", timeout=5).status_code == 200, 60,
                 "healthy after the restart")  # fmt: skip
        children = _children(srv.proc.pid)
    # The parent stopped every worker on SIGTERM.
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), pid


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_workers_must_be_positive(export_info: ExportInfo, tmp_path: Path):
    import sys

    from _serving_helpers import ROOT, env

    proc = subprocess.run(
        [sys.executable, "-m", "serving.onnx_server", str(export_info.base), "--workers", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env(),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--workers" in proc.stderr and "received 0" in proc.stderr, proc.stderr
