"""Peak memory of a training step, one fresh subprocess per measurement.

`tracemalloc` sees only Python allocations, not TensorFlow's or PyTorch's C++ buffers, so the
figure is the resident set size (RSS) of a fresh process, read from `/proc/self/status`:

1. the child imports the framework and trains a throwaway tiny model of the same kind for one
   step (batch 1, T 2): the framework's one-time start-up (XLA's compiler and CPU runtime,
   autograd's engine threads) is a cost of the process, not of a training step, and would
   otherwise be charged to whichever step came first (`runtime_warm_up_mb` reports it);
2. it builds the contender's model, optimizer and data, calls `malloc_trim(0)` and reads its
   RSS (`VmRSS`): `rss_setup_mb`; it resets the kernel's RSS high-water mark (`VmHWM`, by
   writing 5 to `/proc/self/clear_refs`), runs one warm-up training step (tracing, XLA
   compilation, optimizer slots) and reads VmHWM: `first_step_peak_mb` = that peak minus
   rss_setup;
3. it trims again, reads VmRSS (`rss_before_step_mb`), resets VmHWM, runs one more step and
   reads VmHWM.

The reported figure, `step_peak_mb`, is VmHWM(second step) - rss_setup: the resident memory a
steady-state training step needs on top of the built model, including what the first step
created and kept (compiled programs, buffers that XLA's runtime or an allocator cache keeps
between steps). `step_transient_mb` = VmHWM(second step) - VmRSS(just before it) is reported
too, but it misses retained buffers (it is ~0 for XLA, whose runtime keeps its buffers).
`process_peak_mb` is the process's overall high-water mark (VmHWM; not `ru_maxrss`, which after
fork+exec still carries the parent's peak). If the high-water mark cannot be reset, the child
falls back to `ru_maxrss` and says so (`method`). The children run with 1 intra-op thread on
both sides (`BENCHMARKS_INTRA_OP_THREADS=1`): threads do not change what a step keeps in memory,
and on a loaded machine a 2-thread PyTorch step at T=14000 can take many minutes.

Run a single measurement by hand:

    python -m benchmarks.memory --contender torch-loop --timesteps 1400 --batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

RESULT_PREFIX = "MEMORY_RESULT "
#: Sequence length of the throwaway warm-up step (batch 1) that pays the framework's start-up.
WARM_UP_TIMESTEPS = 2
WHAT_IS_MEASURED = (
    "resident memory (RSS) a steady-state training step needs on top of the built model: "
    "RSS high-water mark during the 2nd training step minus RSS after building model, optimizer "
    "and data (so it includes compiled programs and buffers kept from the 1st step), after a "
    "throwaway step of a tiny model (batch 1, T 2) has paid the framework's one-time start-up "
    "(XLA's compiler and runtime, autograd's engine; column 'runtime warm-up'), in a fresh "
    "subprocess per contender and T (Linux /proc VmHWM reset via /proc/self/clear_refs, "
    "malloc_trim before reading RSS; 1 intra-op thread on both sides)"
)


def _status_kb(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark; False if not possible here."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _trim() -> None:
    """Return freed heap pages to the OS so they do not hide the next step's peak."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _maxrss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # kB on Linux


def measure_in_this_process(contender: str, timesteps: int, batch: int, seed: int = 0) -> dict:
    """Measure one training step's peak memory here (meant for a fresh process).

    Args:
        contender: registry name of a contender with a training step.
        timesteps: sequence length T.
        batch: sequences per step.
        seed: seed of weights and data.

    Returns:
        A dict with step_peak_mb, step_transient_mb, first_step_peak_mb, rss_setup_mb,
        rss_before_step_mb, process_peak_mb and method (see the module docstring).

    Example:

    >>> measure_in_this_process("torch-loop", 10, 2)  # doctest: +SKIP
    """
    from benchmarks.contenders import Options, create, get_spec
    from benchmarks.threads import configure_tensorflow, configure_torch

    if get_spec(contender).group != "torch":
        configure_tensorflow()
    else:
        configure_torch()  # imports torch, so that its import is not counted as start-up
    # The framework's one-time start-up (XLA's compiler and CPU runtime, autograd's engine
    # threads) is paid by a throwaway step of a tiny model of the same kind, before the
    # measured model exists: it is a cost of the process, not of a training step.
    _trim()
    rss_start = _status_kb("VmRSS")
    warm = create(contender, Options(seed=seed)).make_train_step(1, WARM_UP_TIMESTEPS, noisy=True)
    if warm is None:
        raise ValueError(f"Argument `contender` must have a training step; {contender!r} has none")
    warm()
    del warm
    gc.collect()
    _trim()
    rss_warm = _status_kb("VmRSS")
    step = create(contender, Options(seed=seed)).make_train_step(batch, timesteps, noisy=True)
    _trim()
    rss_setup = _status_kb("VmRSS")
    setup_peak = _status_kb("VmHWM") or 0
    can_reset = _reset_peak()
    step()  # warm-up: tracing / compilation / optimizer slots
    first_peak = _status_kb("VmHWM") if can_reset else _maxrss_kb()
    _trim()
    rss_before = _status_kb("VmRSS")
    can_reset = can_reset and _reset_peak()
    step()
    peak = _status_kb("VmHWM") if can_reset else _maxrss_kb()
    mb = 1.0 / 1024.0
    return {
        "contender": contender,
        "timesteps": timesteps,
        "batch": batch,
        "step_peak_mb": max(peak - rss_setup, 0) * mb if rss_setup else None,
        "step_transient_mb": max(peak - rss_before, 0) * mb if rss_before else None,
        "first_step_peak_mb": max(first_peak - rss_setup, 0) * mb if rss_setup else None,
        "rss_setup_mb": rss_setup * mb if rss_setup else None,
        "runtime_warm_up_mb": max(rss_warm - rss_start, 0) * mb if rss_start else None,
        "rss_before_step_mb": rss_before * mb if rss_before else None,
        "process_peak_mb": max(setup_peak, first_peak, peak) * mb,
        "method": "VmHWM reset via clear_refs" if can_reset else "ru_maxrss (no reset possible)",
    }


def measure_in_subprocess(
    contender: str, timesteps: int, batch: int, seed: int = 0, timeout_s: float = 900.0
) -> dict:
    """Run `measure_in_this_process` in a fresh `python -m benchmarks.memory` child.

    Args:
        contender: registry name.
        timesteps: sequence length T.
        batch: sequences per step.
        seed: seed of weights and data.
        timeout_s: kill the child after this many seconds.

    Returns:
        The child's result dict, or {"error": "..."} if it failed.

    Example:

    >>> measure_in_subprocess("torch-loop", 10, 2)["step_peak_mb"] >= 0  # doctest: +SKIP
    True
    """
    cmd = [
        sys.executable, "-m", "benchmarks.memory", "--contender", contender,
        "--timesteps", str(timesteps), "--batch", str(batch), "--seed", str(seed),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", BENCHMARKS_INTRA_OP_THREADS="1")
    root = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, cwd=root, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit code {proc.returncode}: {' | '.join(tail)}"}


def main(argv: list[str] | None = None) -> int:
    """Child entry point: measure once and print one `MEMORY_RESULT {json}` line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", required=True)
    parser.add_argument("--timesteps", type=int, default=140)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = measure_in_this_process(args.contender, args.timesteps, args.batch, args.seed)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
