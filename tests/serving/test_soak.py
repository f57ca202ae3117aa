"""A short run of the soak test (`python -m serving.soak`): load while versions are added and
removed and the server is killed and restarted; zero failures outside the down window."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _serving_helpers import ROOT, ExportInfo, env


@pytest.mark.slow
def test_short_soak_has_no_failures_across_version_changes(export_info: ExportInfo,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    r = subprocess.run(
        [sys.executable, "-m", "serving.soak", str(export_info.base), "--clients", "4,16",
         "--phase-seconds", "8", "--out", str(out)],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert [p["clients"] for p in report["phases"]] == [4, 16]
    for p in report["phases"]:
        assert p["failed"] == 0, p
        assert p["ok"] > 50 and p["sent"] == p["ok"] + p["failed_while_down"], p
        assert p["p50_ms"] <= p["p99_ms"] and p["peak_rss_mb"] > 10, p
        events = [e for _, e in p["events"]]
        assert "SIGKILL" in events and "restarted, healthy" in events, events
        assert any(e.startswith("removed version") for e in events), events
        assert len(p["versions_answered"]) >= 2, p  # a new version answered
    assert not list(Path(export_info.base).glob(".soak-*"))  # the source was not touched
    assert sorted(x.name for x in Path(export_info.base).iterdir()) == ["1"]


def test_soak_bad_arguments_exit_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "serving.soak", str(tmp_path / "none")],
                       cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "export_base" in r.stderr and "Traceback" not in r.stderr
