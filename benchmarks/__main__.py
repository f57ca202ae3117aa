"""`python -m benchmarks`: keras_nrnn against the PyTorch baseline (speed and memory).

Examples:

    python -m benchmarks                      # full run, a few minutes
    python -m benchmarks --quick --only keras # < 1 minute, needs no torch (what tests run)
    python -m benchmarks --only torch         # the baseline alone
    python -m benchmarks --savedmodel exported/ecg/1 --onnx exported/ecg.onnx
    python -m benchmarks --list               # the registered contenders
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Example:

    >>> parse_args(["--quick", "--only", "keras"]).only
    'keras'
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Speed and memory of keras_nrnn against a PyTorch baseline (ECG config).",
    )
    parser.add_argument("--quick", action="store_true", help="short run (< 1 min, --only keras)")
    parser.add_argument(
        "--only", choices=("all", "keras", "torch"), default="all",
        help="'keras': our contenders only (no torch needed); 'torch': the baseline only",
    )
    parser.add_argument(
        "--contenders", default=None,
        help="comma-separated contender names (default: all default contenders; see --list)",
    )
    parser.add_argument("--savedmodel", default=None, metavar="DIR", help="exported SavedModel")
    parser.add_argument("--onnx", default=None, metavar="FILE", help="exported ONNX file")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output folder for latest.json/latest.md "
        "(default benchmarks/results, or benchmarks/results/quick with --quick)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory figure")
    parser.add_argument(
        "--memory-timesteps", default="140,784,1400,14000",
        help="comma-separated T values of the memory figure (--quick uses the first only)",
    )
    parser.add_argument(
        "--timesteps", type=int, default=140,
        help="sequence length T of the training and inference figures (140: ECG; 784: pixel "
        "MNIST); the other hyperparameters stay the ECG configuration's",
    )
    parser.add_argument(
        "--long-timesteps", default="784",
        help="comma-separated further T values of the training figures, for torch-loop and "
        "our XLA contenders (784: pixel MNIST); '' to skip; not run with --quick",
    )
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--in-process", action="store_true",
        help="run all contenders in this process instead of one worker process each "
        "(debugging only: PyTorch and TensorFlow threads then interfere)",
    )
    parser.add_argument("--list", action="store_true", help="list contenders and exit")
    return parser.parse_args(argv)


def _positive_ints(text: str) -> tuple[int, ...] | None:
    """Comma-separated integers >= 1 (empty parts skipped), or None if any part is not one.

    Example:

    >>> _positive_ints("784, 1568"), _positive_ints(""), _positive_ints("0"), _positive_ints("x")
    ((784, 1568), (), None, None)
    """
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not all(t.isdigit() and int(t) >= 1 for t in parts):
        return None
    return tuple(int(t) for t in parts)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up logs quiet
    if args.list:
        from benchmarks.contenders import registry

        for spec in registry().values():
            default = "" if spec.default else " (not run by default)"
            print(f"{spec.name:24s} {spec.side:8s} {spec.group:8s} {spec.description}{default}")
        return 0

    if args.in_process and args.only != "torch":
        # Thread pools must be set before TensorFlow runs anything, so before anything else.
        # (Worker processes set their own threads first thing.)
        from benchmarks.threads import configure_tensorflow

        configure_tensorflow()
    if args.only != "keras":
        # The baseline is PyTorch; `--only keras` runs our contenders alone and needs no torch.
        from benchmarks.torch_baseline import INSTALL_HINT, torch_available

        if not torch_available():
            print(INSTALL_HINT, file=sys.stderr)
            return 2

    from benchmarks.harness import log
    from benchmarks.runner import RESULTS_DIR, Settings, render, run, write

    names = [n.strip() for n in args.contenders.split(",")] if args.contenders else None
    try:
        memory_timesteps = tuple(int(t) for t in args.memory_timesteps.split(","))
    except ValueError:
        print(
            "Argument `--memory-timesteps` must be comma-separated integers; "
            f"received {args.memory_timesteps!r}",
            file=sys.stderr,
        )
        return 2
    long_timesteps = _positive_ints(args.long_timesteps)
    if long_timesteps is None:
        print(
            "Argument `--long-timesteps` must be comma-separated integers >= 1 (or ''); "
            f"received {args.long_timesteps!r}",
            file=sys.stderr,
        )
        return 2
    if args.timesteps < 1:
        print(
            f"Argument `--timesteps` must be an integer >= 1; received {args.timesteps}",
            file=sys.stderr,
        )
        return 2
    out_dir = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    settings = Settings(
        quick=args.quick,
        only=args.only,
        contenders=names,
        savedmodel=args.savedmodel,
        onnx=args.onnx,
        out_dir=out_dir,
        memory=not args.no_memory,
        memory_timesteps=memory_timesteps,
        memory_batch=args.memory_batch,
        timesteps=args.timesteps,
        long_timesteps=()
        if args.quick
        else tuple(t for t in long_timesteps if t != args.timesteps),
        seed=args.seed,
        isolate=not args.in_process,
    )
    results = run(settings)
    if "torch-loop" in results["skipped"]:
        print(results["skipped"]["torch-loop"], file=sys.stderr)
    print(render(results, markdown=False))
    json_path, md_path = write(results, settings.out_dir)
    log(f"wrote {json_path} and {md_path}")
    return 0 if results["figures"] else 1


if __name__ == "__main__":
    sys.exit(main())
