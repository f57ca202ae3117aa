"""`python -m serving.loadtest` against the real server (tiny, bounded runs; no timing
assertions) and the report arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _serving_helpers import ROOT, Server, env

from serving.loadtest import run_loadtest, summarize


@pytest.mark.parametrize("protocol", ["rest", "rest-httpx", "grpc"])
def test_loadtest_cli_tiny_run(server: Server, tmp_path: Path, protocol: str) -> None:
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "serving.loadtest", "--url", server.url, "--model",
           server.name, "--concurrency", "4", "--requests", "50", "--batch", "2",
           "--input-shape", "20,1", "--max-seconds", "60", "--out", str(out)]
    if protocol == "grpc":
        cmd += ["--grpc", server.grpc]
    elif protocol == "rest-httpx":
        cmd += ["--http-client", "httpx"]
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "p50=" in r.stdout and "errors=0" in r.stdout
    report = json.loads(out.read_text())
    assert report["config"]["protocol"] == protocol.split("-")[0]
    assert report["config"]["http_client"] == {"rest": "raw", "rest-httpx": "httpx",
                                               "grpc": None}[protocol]
    assert report["config"]["input_shape"] == [2, 20, 1]
    assert (report["requests"], report["ok"], report["errors"]) == (50, 50, 0)
    assert report["error_samples"] == {}
    lat = report["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert report["throughput_rps"] == pytest.approx(50 / report["elapsed_s"])
    assert report["throughput_examples_per_s"] == pytest.approx(2 * report["throughput_rps"])


def test_loadtest_counts_errors(server: Server) -> None:
    # Version 9 does not exist: metadata lookup fails before any load is sent.
    from serving.client import ServingError

    with pytest.raises(ServingError):
        run_loadtest(server.url, server.name, 2, 4, version=9)
    with pytest.raises(ValueError, match="`requests` must be in"):
        run_loadtest(server.url, server.name, 2, 0)
    with pytest.raises(ValueError, match="`concurrency` must be in"):
        run_loadtest(server.url, server.name, 1000, 10)


def test_summarize_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    lat = rng.uniform(0.001, 0.05, 101)
    report = summarize(lat.tolist(), ["HTTP 400: x", "HTTP 400: x", "boom"], 2.0, 4)
    assert (report["requests"], report["ok"], report["errors"]) == (104, 101, 3)
    assert report["error_samples"] == {"HTTP 400: x": 2, "boom": 1}
    assert report["latency_ms"]["p50"] == pytest.approx(np.median(lat) * 1e3)
    # 101 samples: the 99th percentile is exactly the 100th smallest (linear interpolation).
    assert report["latency_ms"]["p99"] == pytest.approx(np.sort(lat)[99] * 1e3)
    assert report["latency_ms"]["max"] == pytest.approx(lat.max() * 1e3)
    assert report["throughput_rps"] == pytest.approx(50.5)
    assert report["throughput_examples_per_s"] == pytest.approx(202.0)
    assert summarize([], ["e"], 1.0, 1)["latency_ms"] is None
