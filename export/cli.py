"""Command line: `python -m export MODEL_OR_RUN_DIR --out EXPORT_BASE [--name NAME]
[--version N] [--formats savedmodel,onnx] [--onnx-time-steps auto|dynamic|fixed|hybrid]
[--savedmodel-time-steps auto|dynamic|fixed|hybrid] [--savedmodel-jit]`.

Prints the version folder on stdout and exits 0; on any error prints `error: ...` on stderr
and exits 1 (2 for bad command-line usage), leaving nothing behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from export.errors import ExportError
from export.options import TIME_STEPS_CHOICES, check_version, parse_formats

__all__ = ["main", "make_parser"]


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
        "--formats", default="savedmodel,onnx", help="comma-separated: savedmodel,onnx"
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
    except (ExportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    from export.api import export_model

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
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
