"""Package rules: `export` never imports `training`; the CLI's argument checks are light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from export.options import check_version, parse_formats

EXPORT_DIR = Path(__file__).resolve().parents[2] / "export"


def test_no_source_file_imports_training():
    for path in sorted(EXPORT_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert name != "training" and not name.startswith("training."), (path, name)


def test_importing_everything_does_not_load_training():
    code = (
        "import sys, export, export.api, export.cli, export.verify;"
        "bad = [m for m in sys.modules if m == 'training' or m.startswith('training.')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=EXPORT_DIR.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_import_export_is_light():
    code = "import sys, export; sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=EXPORT_DIR.parent, timeout=120)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("formats", "expected"),
    [
        ("savedmodel", ["savedmodel"]),
        (["onnx", "savedmodel"], ["savedmodel", "onnx"]),
        (" onnx , ", ["onnx"]),
    ],
)
def test_parse_formats(formats, expected):
    assert parse_formats(formats) == expected


@pytest.mark.parametrize("formats", ["", "tfjs", ["onnx", "pb"], ()])
def test_parse_formats_rejects(formats):
    with pytest.raises(ValueError, match="formats"):
        parse_formats(formats)


@pytest.mark.parametrize("version", [0, -1, 1.5, "2", True, None])
def test_check_version_rejects(version):
    with pytest.raises(ValueError, match="version"):
        check_version(version)
