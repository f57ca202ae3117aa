"""Run folders of the experiment runners: recognise them, decide what a command may do with
one, and replace one only when a new run has been completely built (stdlib only).

A run folder is recognised by its `config.json`, written by the runner before anything else:
a JSON object with the runner's `task`, an `identity` and a `config_hash`. Anything else that
is not empty is somebody else's folder, which is never written into and never deleted, with
or without `--overwrite`. A run folder is replaced (`--overwrite`) only if it holds nothing
but what the runners write, only after the new run's configuration and data were checked, and
only once the new run is finished: it is built in a sibling staging folder
(`.<name>.overwrite.tmp`, resumable like any run), and the two are swapped at the end
(`swap_in`), so a failed or interrupted replacement leaves the old run untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atomic_io import is_temp_name, new_temp_file

__all__ = [
    "RunFolderError",
    "RunPlan",
    "check_out_path",
    "check_writable",
    "foreign_entries",
    "plan_run",
    "prepare_staging",
    "read_run_config",
    "staging_folder",
    "swap_in",
]

CONFIG_FILE = "config.json"
#: What `python -m training.analyze` writes into a run folder.
ANALYSIS_FILES = (
    "analysis.json",
    "analysis.md",
    "analysis-jacobian-norms.png",
    "analysis-lyapunov.png",
    "analysis-margins.png",
    "analysis-memory.png",
)
# What the runners write (training.ecg, training.runner, training.reporting, training.analyze).
RUN_FILES = frozenset(
    {"config.json", "results.json", "results.md", "robustness.png", "history.csv", "model.keras"}
    | set(ANALYSIS_FILES)
)
SEED_FILES = frozenset({"model.keras", "history.csv", "checkpoint.npz", "eval.json", "tensorboard"})
_SEED_DIR = re.compile(r"^seed-\d+$")


class RunFolderError(ValueError):
    """An `--out` folder cannot be used by this command (a one-line, operator-facing message)."""


def read_run_config(folder: str | os.PathLike, task: str) -> dict[str, Any] | None:
    """The `config.json` of a run folder of `task`, or None if `folder` is not one.

    Args:
        folder: a folder.
        task: the runner's task name (e.g. `"ecg5000"`).

    Returns:
        The parsed configuration, or None.

    Example:

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> text = '{"task": "ecg5000", "identity": {}, "config_hash": "0"}'
    >>> _ = (d / "config.json").write_text(text)
    >>> read_run_config(d, "ecg5000")["config_hash"], read_run_config(d, "mnist")
    ('0', None)
    """
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("task") != task:
        return None
    if not isinstance(config.get("identity"), dict) or "config_hash" not in config:
        return None
    return config


def foreign_entries(folder: str | os.PathLike, models: Sequence[str]) -> list[str]:
    """Entries of a run folder that the runners did not write (relative paths, sorted).

    Args:
        folder: a run folder.
        models: the run's model names (with several models each has a sub-folder).

    Returns:
        The foreign entries; empty if the folder holds only what a run writes.

    Example:

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "seed-0").mkdir(); _ = (d / "seed-0" / "eval.json").write_text("{}")
    >>> _ = (d / "notes.txt").write_text("mine")
    >>> foreign_entries(d, ["nrnn"])
    ['notes.txt']
    """
    folder = Path(folder)
    foreign: list[str] = []

    def seed_dir(path: Path, rel: str) -> None:
        for entry in path.iterdir():
            if entry.name not in SEED_FILES and not is_temp_name(entry.name):
                foreign.append(f"{rel}/{entry.name}")

    for entry in folder.iterdir():
        name = entry.name
        if is_temp_name(name) or (name in RUN_FILES and not entry.is_dir()):
            continue
        if entry.is_dir() and not entry.is_symlink() and _SEED_DIR.match(name):
            seed_dir(entry, name)
        elif entry.is_dir() and not entry.is_symlink() and name in models and len(models) > 1:
            for sub in entry.iterdir():
                if sub.is_dir() and not sub.is_symlink() and _SEED_DIR.match(sub.name):
                    seed_dir(sub, f"{name}/{sub.name}")
                elif sub.name != "model.keras" and not is_temp_name(sub.name):
                    foreign.append(f"{name}/{sub.name}")
        else:
            foreign.append(name)
    return sorted(foreign)


def check_out_path(out: str | os.PathLike, flag: str = "--out") -> None:
    """Cheap checks of an output folder path, before anything is loaded or trained.

    Args:
        out: the path.
        flag: the flag named in errors.

    Raises:
        RunFolderError: `out` is a file (or another non-folder), or it does not exist and its
            nearest existing parent is not a folder this process can write into.

    Example:

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "f"; _ = f.write_text("")
    >>> try:
    ...     check_out_path(f)
    ... except RunFolderError as e:
    ...     print(str(e)[:33])
    argument --out must be a folder (
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunFolderError(
            f"argument {flag} must be a folder (existing or to be created); received {flag} "
            f"{str(out)!r}, which is a file"
        )
    if path.is_dir():
        writable, where = os.access(path, os.W_OK | os.X_OK), path
    else:
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise RunFolderError(
                f"argument {flag} must be a folder path; received {flag} {str(out)!r}, whose "
                f"parent {str(parent)!r} is a file"
            )
        writable, where = os.access(parent, os.W_OK | os.X_OK), parent
    if not writable:
        raise RunFolderError(
            f"argument {flag} must be a folder this user can write into; received {flag} "
            f"{str(out)!r} ({str(where)!r} is not writable)"
        )


def check_writable(folder: Path) -> None:
    """Create and remove a temporary file in `folder` (created if missing), or raise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        new_temp_file(folder / ".write-test").unlink()
    except OSError as e:
        raise RunFolderError(
            f"cannot write into run folder {str(folder)!r}: {e.strerror or e}"
        ) from e


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a command does with its `--out` folder.

    Attributes:
        mode: `"new"` (missing or empty folder), `"resume"` (a run of the same configuration:
            resume it, or extend it with more seeds) or `"replace"` (`--overwrite` of a run
            folder: build the new run in `staging_folder(out)`, then `swap_in`).
        config: the existing run's configuration (`"resume"`, `"replace"`), else None.
    """

    mode: str
    config: dict[str, Any] | None = None


def plan_run(
    out: Path,
    identity: dict[str, Any],
    *,
    task: str,
    overwrite: bool,
    prog: str,
) -> RunPlan:
    """Decide what a command with `identity` may do with `out`; refuse with `RunFolderError`.

    Args:
        out: the run folder.
        identity: the command's identity (`training.cli.identity`).
        task: the runner's task name.
        overwrite: `--overwrite` was given.
        prog: the runner's command (named in messages).

    Returns:
        A `RunPlan`.

    Raises:
        RunFolderError: `out` is not a folder, is somebody else's non-empty folder, holds a
            run of another configuration (without `--overwrite`; the message names the
            differing keys), or holds foreign files that `--overwrite` would delete.
    """
    from training.cli import identity_differences

    check_out_path(out)
    if not out.exists() or not any(out.iterdir()):
        return RunPlan("new")
    config = read_run_config(out, task)
    if config is None:
        raise RunFolderError(
            f"--out {str(out)!r} is a folder that is not empty and is not a run folder of "
            f"{prog} (no {CONFIG_FILE} written by it); refusing to write into it or delete it, "
            "with or without --overwrite. Choose another --out."
        )
    models = list(config["identity"].get("models", []))
    if overwrite:
        foreign = foreign_entries(out, models)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise RunFolderError(
                f"--out {str(out)!r} is a run folder but also holds files {prog} did not write "
                f"({shown}); refusing to delete it. Move them out of the folder, or choose "
                "another --out."
            )
        return RunPlan("replace", config)
    differences = identity_differences(config["identity"], identity)
    if differences:
        raise RunFolderError(
            f"--out {str(out)!r} holds a run of another configuration (config hash "
            f"{config.get('config_hash')}; differing: {'; '.join(differences)}); refusing to "
            "mix them. Choose another --out for this configuration, or repeat the run's own "
            "settings to resume or extend it."
        )
    return RunPlan("resume", config)


def staging_folder(out: Path) -> Path:
    """The sibling folder in which a replacement of `out` is built (`.<name>.overwrite.tmp`).

    Example:

    >>> staging_folder(Path("runs/ecg/a")).as_posix()
    'runs/ecg/.a.overwrite.tmp'
    """
    return out.parent / f".{out.name}.overwrite.tmp"


def prepare_staging(out: Path, identity: dict[str, Any], *, task: str) -> Path:
    """The staging folder of a replacement of `out`, ready to be trained into.

    A staging folder left by an interrupted replacement with the same identity is kept (the
    new run resumes there); one of another identity, or empty, is removed. Anything else under
    that name is refused.

    Raises:
        RunFolderError: the staging name is taken by something that is not a run folder.
    """
    from training.cli import identity_differences

    staging = staging_folder(out)
    if not staging.exists():
        return staging
    config = read_run_config(staging, task)
    if not staging.is_dir() or (config is None and any(staging.iterdir())):
        raise RunFolderError(
            f"the staging path {str(staging)!r} of --overwrite exists and is not a run folder; "
            "refusing to touch it. Move it away, or choose another --out."
        )
    if config is not None and not identity_differences(config["identity"], identity):
        return staging
    shutil.rmtree(staging)
    return staging


def swap_in(staging: Path, out: Path) -> None:
    """Move the finished `staging` run into `out`'s place and delete the old `out` after.

    `out` is first renamed aside (`.<name>.replaced.tmp`), then `staging` renamed to `out`,
    then the old run removed: at every instant either the old or the new run is complete
    under one of the names.
    """
    aside = out.parent / f".{out.name}.replaced.tmp"
    if aside.exists():
        shutil.rmtree(aside)
    if out.exists():
        os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        if aside.exists() and not out.exists():
            os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
