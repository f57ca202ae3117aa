"""Command line: `python -m export MODEL_OR_RUN_DIR --out EXPORT_BASE [--name NAME]
[--version N] [--formats savedmodel,onnx,tflite] [--onnx-time-steps auto|dynamic|fixed|hybrid]
[--savedmodel-time-steps auto|dynamic|fixed|hybrid] [--savedmodel-jit]`.

Prints the version folder on stdout and exits 0. A bad command line -- an unknown flag, a bad
value, a model path that does not exist, an `--out` that is a file or not writable -- is found
before TensorFlow is imported and exits 2 with one line, `error: ...`, on stderr. An export
that fails later (a model that cannot be loaded, converted or verified) exits 1, also with one
line. Nothing is left behind either way.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from export.errors import ExportError
from export.options import (
    TIME_STEPS_CHOICES,
    check_keras_archive,
    check_version,
    parse_formats,
)

__all__ = ["EXIT_EXPORT_FAILED", "EXIT_USAGE", "main", "make_parser"]

EXIT_USAGE = 2
EXIT_EXPORT_FAILED = 1
EXIT_INTERRUPTED = 130


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that the export cleans up as on Ctrl-C
    (temporary version folder, created parent folders, the `saved_model_cli` child)."""


_SIGNALLED: list[int] = []


def _raise_terminated(signum, frame) -> None:
    del frame
    _SIGNALLED.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(f"terminated by signal {signum}")


def _undo(path: Path, created: list[Path]) -> None:
    """Remove an export that finished although a signal asked it to stop: Python ignores an
    exception raised by a signal handler while it runs a weakref callback or `__del__`, so
    the interrupt can be lost; what this run created (the version folder, its parents) goes."""
    from export.api import remove_empty_folders

    shutil.rmtree(path, ignore_errors=True)
    remove_empty_folders(created)


def _check_out(out: str) -> None:
    """`--out` must be a folder, or a path whose nearest existing parent is a writable folder."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ExportError(f"argument --out must be a folder; received --out {out!r}, a file.")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ExportError(
            f"argument --out must be a folder path; received --out {out!r}, whose parent "
            f"{str(existing)!r} is a file."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(
            f"argument --out must be a folder this user can write into; received --out {out!r} "
            f"({str(existing)!r} is not writable)."
        )


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m export`.

    Example:

    >>> make_parser().parse_args(["run", "--out", "exports"]).formats
    'savedmodel,onnx'
    """
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a keras_nrnn classifier to a verified SavedModel (TF Serving "
        "layout) and ONNX, in EXPORT_BASE/<version>/.",
    )
    parser.add_argument("model", help="a .keras file, or a run folder containing model.keras")
    parser.add_argument("--out", required=True, help="the export base folder (TF Serving)")
    parser.add_argument("--name", default=None, help="model name (default: run folder name)")
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: next integer)"
    )
    parser.add_argument(
        "--formats",
        default="savedmodel,onnx",
        help="comma-separated: savedmodel,onnx,tflite (default savedmodel,onnx)",
    )
    parser.add_argument(
        "--onnx-time-steps",
        choices=TIME_STEPS_CHOICES,
        default="auto",
        help="model.onnx time loop: auto (fixed if the model's length is fixed, else "
        "dynamic), dynamic (Loop), fixed (unrolled; other lengths rejected), hybrid",
    )
    parser.add_argument(
        "--savedmodel-time-steps",
        choices=TIME_STEPS_CHOICES,
        default="auto",
        help="serving_default time loop: auto (hybrid if the model's length is fixed, else "
        "dynamic), dynamic, fixed, hybrid (unrolled for the model's length, loop otherwise)",
    )
    parser.add_argument(
        "--savedmodel-jit",
        action="store_true",
        help="XLA-compile serving_default (TF Serving needs --xla_cpu_compilation_enabled=true)",
    )
    parser.add_argument("--verbose", action="store_true", help="log the verification report")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = make_parser().parse_args(argv)
    # Cheap checks first, before TensorFlow is imported.
    try:
        formats = parse_formats(args.formats)
        version = None if args.version is None else check_version(args.version)
        if not Path(args.model).exists():
            raise ExportError(f"Model path {args.model!r} does not exist.")
        _check_out(args.out)
        archive = Path(args.model)
        if archive.is_dir():
            archive = archive / "model.keras"
        if archive.is_file() and archive.suffix == ".keras":
            problem = check_keras_archive(str(archive))
            if problem:
                raise ExportError(problem)
    except (ExportError, ValueError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    # TensorFlow's start-up banners (oneDNN, "Could not find cuda drivers", cuInit) are
    # dropped; anything else it prints while starting still reaches standard error.
    from tf_startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from export.api import export_model, missing_folders

    created = missing_folders(args.out)
    _SIGNALLED.clear()
    previous = {
        sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        path = export_model(
            args.model,
            args.out,
            name=args.name,
            version=version,
            formats=formats,
            onnx_time_steps=args.onnx_time_steps,
            savedmodel_time_steps=args.savedmodel_time_steps,
            savedmodel_jit_compile=args.savedmodel_jit,
        )
    except (ExportError, ValueError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_EXPORT_FAILED
    except (KeyboardInterrupt, Terminated) as err:
        what = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err)
        print(f"error: export {what}; nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if _SIGNALLED:  # the signal's exception was swallowed (see `_undo`): undo the export
        _undo(Path(path), created)
        print("error: export interrupted; nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(path)
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
