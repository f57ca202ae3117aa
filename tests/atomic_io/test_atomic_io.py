"""`atomic_io`: permissions of what it writes, and the clean-up of a killed writer's leftovers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import atomic_io
from atomic_io import atomic_directory, atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_and_folders_respect_the_umask(tmp_path, umask_027):
    assert mode(atomic_write_bytes(tmp_path / "a.bin", b"x")) == 0o640  # not mkstemp's 0o600
    assert mode(atomic_write_text(tmp_path / "sub" / "b.txt", "y")) == 0o640
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "f").write_text("z")
    assert mode(tmp_path / "folder") == 0o750  # not mkdtemp's 0o700


def test_an_existing_file_keeps_its_mode(tmp_path, umask_027):
    path = tmp_path / "shared.json"
    path.write_text("{}")
    path.chmod(0o664)
    atomic_write_text(path, '{"a": 1}')
    assert mode(path) == 0o664 and path.read_text() == '{"a": 1}'


def test_umask_is_read_without_being_changed():
    code = "import os, atomic_io; os.umask(0o077); print(oct(atomic_io.current_umask()))"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60
    )
    assert proc.stdout.strip() == "0o77", proc.stderr


def test_remove_stale_temp_files_removes_only_its_own_names(tmp_path):
    (tmp_path / "seed-0").mkdir()
    ours = [
        tmp_path / ".results.json.k3j_9x2a.tmp",
        tmp_path / "seed-0" / ".model.keras.abcd1234.tmp.keras",
    ]
    theirs = [
        tmp_path / "results.json",
        tmp_path / "notes.tmp",
        tmp_path / ".hidden.tmp",  # no random part
        tmp_path / ".x.json.TOOLONG123.tmp",
        tmp_path / "seed-0" / ".cache.tmp.d",
    ]
    for path in ours + theirs:
        path.write_text("x")
    folder = tmp_path / ".run.abcdefgh.tmp"  # a folder with a temporary-looking name is kept
    folder.mkdir()
    removed = atomic_io.remove_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted(ours)
    assert all(p.exists() for p in theirs) and folder.is_dir()
    assert not any(p.exists() for p in ours)


def test_remove_stale_temp_files_spares_recent_files_when_asked(tmp_path):
    fresh = tmp_path / ".a.json.abcd1234.tmp"
    old = tmp_path / ".b.json.abcd1234.tmp"
    fresh.write_text("live writer")
    old.write_text("dead writer")
    os.utime(old, (0, 0))
    assert atomic_io.remove_stale_temp_files(tmp_path, min_age_seconds=600) == [old]
    assert fresh.exists()


def test_names_made_by_the_writers_match_the_pattern(tmp_path):
    tmp = atomic_io.new_temp_file(tmp_path / "model.keras", suffix=".keras")
    assert atomic_io.is_temp_name(tmp.name) and tmp.name.startswith(".model.keras.")
