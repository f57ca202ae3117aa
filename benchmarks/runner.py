"""The figures (training, inference, noise overhead, memory), the report and its files."""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from benchmarks.config import ECG
from benchmarks.contenders import (
    BASELINE,
    OURS,
    Contender,
    ContenderUnavailableError,
    Options,
    create,
    select,
)
from benchmarks.harness import (
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    Timing,
    format_number,
    format_table,
    log,
    ratio,
    time_alternating,
    verdict,
)
from benchmarks.memory import WHAT_IS_MEASURED, measure_in_subprocess
from benchmarks.threads import INTER_OP_THREADS, INTRA_OP_THREADS, TF_INTER_OP_THREADS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DETERMINISTIC_SUFFIX = "/deterministic"


@dataclasses.dataclass
class Settings:
    """What to run and how long.

    Args:
        quick: short run (< 1 minute for `--only keras`): fewer repeats, memory at T=140 only.
        only: None/"all", "keras" (no torch needed) or "torch".
        contenders: explicit contender names, or None for the defaults.
        savedmodel: SavedModel directory for the `savedmodel` contender.
        onnx: ONNX file for the `onnx` contender.
        out_dir: where latest.json and latest.md go.
        memory: run the peak-memory figure.
        train_batch: batch of the training figure.
        timesteps: T of the timing figures.
        long_timesteps: further T values of the training figures (784: pixel MNIST), run for
            `long_contenders` only; empty to skip (the command line's `--quick` does).
        long_contenders: the contenders of the long training figures (those present).
        infer_batch: batch of the inference throughput figure.
        memory_timesteps: T values of the memory figure.
        memory_batch: batch of the memory figure.
        seed: seed of weights, data and noise.
        isolate: run each contender in its own worker process (`benchmarks.worker`); False
            runs them all in this process (debugging, or contenders registered at run time).

    Example:

    >>> Settings(quick=True).repeats("train")
    (1, 3)
    """

    quick: bool = False
    only: str | None = None
    contenders: list[str] | None = None
    savedmodel: str | None = None
    onnx: str | None = None
    out_dir: Path = RESULTS_DIR
    memory: bool = True
    train_batch: int = 128
    timesteps: int = ECG.timesteps
    long_timesteps: tuple[int, ...] = (784,)
    long_contenders: tuple[str, ...] = ("torch-loop", "keras-sdernn-xla", "keras-rnn-cell-xla")
    infer_batch: int = 256
    memory_timesteps: tuple[int, ...] = (140, 784, 1400, 14000)
    memory_batch: int = 8
    seed: int = 0
    isolate: bool = True

    def repeats(self, figure: str) -> tuple[int, int]:
        """(warm-up calls, timed rounds) for "train", "latency" or "throughput"."""
        table = {
            "train": ((1, 3), (2, 8)),
            "latency": ((2, 5), (5, 40)),
            "throughput": ((1, 3), (2, 12)),
        }
        return table[figure][0 if self.quick else 1]

    def min_time_s(self) -> float:
        """Minimum accumulated timed seconds per contender (longer runs in full mode)."""
        return 0.0 if self.quick else 1.0


def make_figure(
    title: str,
    unit: str,
    direction: str,
    values: Mapping[str, float | None],
    sides: Mapping[str, str],
    note: str = "",
) -> dict:
    """One figure: the baseline's value, ours, and ours/baseline ratios with verdicts.

    Args:
        title: what is measured.
        unit: its unit.
        direction: `HIGHER_IS_BETTER` or `LOWER_IS_BETTER`.
        values: contender name -> value (None if it failed).
        sides: contender name -> `BASELINE` or `OURS`.
        note: optional explanation.

    Returns:
        A JSON-friendly dict.

    Example:

    >>> f = make_figure("t", "ms", LOWER_IS_BETTER, {"b": 2.0, "o": 1.0},
    ...                 {"b": "baseline", "o": "ours"})
    >>> f["ratio"], f["verdict"]
    ({'o': 0.5}, {'o': 'better'})
    """
    baselines = [n for n in values if sides[n] == BASELINE]
    base_name = baselines[0] if baselines else None
    base_value = values[base_name] if base_name else None
    ours = {n: v for n, v in values.items() if sides[n] != BASELINE}
    ratios = {n: ratio(v, base_value) for n, v in ours.items()}
    references = {n: values[n] for n in baselines[1:]}
    return {
        "title": title,
        "unit": unit,
        "direction": direction,
        "note": note,
        "baseline": {"name": base_name, "value": base_value} if base_name else None,
        "ours": ours,
        "ratio": ratios,
        "verdict": {n: verdict(r, direction) for n, r in ratios.items()},
        "references": references,
        "reference_ratio": {n: ratio(v, base_value) for n, v in references.items()},
    }


def figure_rows(figures: Mapping[str, dict]) -> list[list[str]]:
    """Table rows: figure, contender, ours, baseline, ours/baseline, direction, verdict.

    Further baseline-side contenders (references such as `torch-loop-1thread`) follow as rows
    marked "(ref)", their ratio also taken against the baseline, with no verdict.

    Example:

    >>> f = make_figure("t", "ms", LOWER_IS_BETTER, {"b": 2.0, "o": 1.0},
    ...                 {"b": "baseline", "o": "ours"})
    >>> figure_rows({"t": f})[0]
    ['t [ms]', 'o', '1.00', '2.00 (b)', '0.500', 'lower is better', 'better']
    """
    rows = []
    for fig in figures.values():
        base = fig["baseline"]
        base_text = f"{format_number(base['value'])} ({base['name']})" if base else "-"
        label = f"{fig['title']} [{fig['unit']}]"
        if not fig["ours"]:
            rows.append([label, "-", "-", base_text, "-", fig["direction"], "n/a"])
        for name, value in fig["ours"].items():
            rows.append(
                [
                    label,
                    name,
                    format_number(value),
                    base_text,
                    format_number(fig["ratio"][name]),
                    fig["direction"],
                    fig["verdict"][name],
                ]
            )
        for name, value in fig.get("references", {}).items():
            rows.append(
                [
                    label,
                    f"{name} (ref)",
                    format_number(value),
                    base_text,
                    format_number(fig["reference_ratio"][name]),
                    fig["direction"],
                    "-",
                ]
            )
    return rows


TABLE_HEADERS = [
    "figure",
    "ours",
    "ours value",
    "baseline value",
    "ours/baseline",
    "direction",
    "verdict",
]


MEMORY_HEADERS = [
    "T",
    "contender",
    "step peak MB (above setup)",
    "transient MB (above RSS just before)",
    "1st step peak MB (incl. tracing/compile)",
    "RSS after setup MB",
    "runtime warm-up MB (excluded)",
    "process peak MB",
]
MEMORY_KEYS = (
    "step_peak_mb",
    "step_transient_mb",
    "first_step_peak_mb",
    "rss_setup_mb",
    "runtime_warm_up_mb",
    "process_peak_mb",
)


def memory_rows(memory: Mapping[str, Mapping[str, dict]]) -> list[list[str]]:
    """Detail rows of the memory measurements (T, contender, the six figures in MB).

    Example:

    >>> memory_rows({"140": {"x": {"error": "boom"}}})
    [['140', 'x', 'error: boom', '-', '-', '-', '-', '-']]
    """
    rows = []
    for steps, by_name in memory.items():
        for name, out in by_name.items():
            if "error" in out:
                blanks = ["-"] * (len(MEMORY_KEYS) - 1)
                rows.append([steps, name, f"error: {out['error']}", *blanks])
                continue
            rows.append([steps, name] + [format_number(out.get(key)) for key in MEMORY_KEYS])
    return rows


def _instantiate(settings: Settings) -> tuple[dict[str, Contender], dict[str, str]]:
    options = Options(seed=settings.seed, savedmodel=settings.savedmodel, onnx=settings.onnx)
    specs = select(settings.only, settings.contenders)
    contenders: dict[str, Contender] = {}
    skipped: dict[str, str] = {}
    if settings.isolate:
        from benchmarks.worker import RemoteContender, WorkerError

        log(f"starting {len(specs)} worker processes (one per contender)")
        started = {spec.name: RemoteContender(spec.name, options) for spec in specs}
        for name, remote in started.items():
            try:
                remote.wait_ready()
                contenders[name] = remote
            except (ContenderUnavailableError, WorkerError) as err:
                remote.close()
                skipped[name] = str(err)
                log(f"skipping {name}: {err}")
        return contenders, skipped
    for spec in specs:
        try:
            contenders[spec.name] = create(spec.name, options)
        except ContenderUnavailableError as err:
            skipped[spec.name] = str(err)
            log(f"skipping {spec.name}: {err}")
    return contenders, skipped


def _self_timed(fn: Callable | None, remote: bool) -> Callable[[], float] | None:
    """Callables of remote contenders already return seconds; time local ones here."""
    if fn is None or remote:
        return fn

    def timed() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return timed


def _collect(
    contenders: Mapping[str, Contender], make: Callable[[Contender], Callable | None]
) -> dict[str, Callable]:
    fns = {}
    for name, contender in contenders.items():
        fn = _self_timed(make(contender), _is_remote(contender))
        if fn is not None:
            fns[name] = fn
    return fns


def _is_remote(contender: Contender) -> bool:
    return contender.self_timed


def _release(contenders: Mapping[str, Contender]) -> None:
    for contender in contenders.values():
        contender.release()
    gc.collect()


def run_training(
    settings: Settings,
    contenders: Mapping[str, Contender],
    results: dict,
    steps: int | None = None,
) -> None:
    """Training throughput (batch 128) and noise overhead, all alternated in one loop.

    `steps` (default `settings.timesteps`) other than that default adds `_T<steps>` to the
    figure keys, so the long-sequence figures sit beside the main ones.
    """
    batch = settings.train_batch
    steps = settings.timesteps if steps is None else steps
    suffix = "" if steps == settings.timesteps else f"_T{steps}"
    log(f"training: building noisy and deterministic models (batch {batch}, T {steps})")
    fns: dict[str, Callable] = {}
    for name, contender in contenders.items():
        remote = _is_remote(contender)
        noisy = _self_timed(contender.make_train_step(batch, steps, noisy=True), remote)
        if noisy is None:
            continue
        fns[name] = noisy
        det = _self_timed(contender.make_train_step(batch, steps, noisy=False), remote)
        if det is not None:
            fns[name + DETERMINISTIC_SUFFIX] = det
    warmup, repeats = settings.repeats("train")
    log(f"training: {len(fns)} step functions, {warmup} warm-up + {repeats}+ alternating rounds")
    timings = time_alternating(
        fns, warmup=warmup, repeats=repeats, items_per_call=batch,
        min_time_s=settings.min_time_s(), progress=log, self_timed=True,
    )
    results["timings"]["train" + suffix] = {n: t.to_dict() for n, t in timings.items()}
    results["timings"]["train" + suffix]["loadavg_after"] = list(os.getloadavg())
    sides = {n: c.side for n, c in contenders.items()}
    trained = [n for n in contenders if n in timings]
    results["figures"]["train_seq_per_s" + suffix] = make_figure(
        f"training throughput, batch {batch}, T {steps} (fwd+bwd+Adam)",
        "sequences/s",
        HIGHER_IS_BETTER,
        {n: timings[n].items_per_s for n in trained},
        sides,
    )
    overhead = {}
    for n in trained:
        det = timings.get(n + DETERMINISTIC_SUFFIX)
        overhead[n] = timings[n].median_s / det.median_s if det else None
    results["figures"]["noise_overhead" + suffix] = make_figure(
        f"noise overhead: noisy / deterministic training step time, T {steps}",
        "x",
        LOWER_IS_BETTER,
        overhead,
        sides,
        note="each side's own ratio; ours/baseline compares the two overheads",
    )
    results["figures"].update(precision_figures(timings, steps, suffix))


#: The float32 and mixed_bfloat16 contenders of the precision figures: same layer, same path.
PRECISION_PAIR = ("keras-sdernn", "keras-sdernn-bf16")


def precision_figures(
    timings: Mapping[str, Timing], steps: int, suffix: str = ""
) -> dict[str, dict]:
    """mixed_bfloat16 against float32 on the same path (`PRECISION_PAIR`): training throughput
    of the noisy and of the deterministic step, float32 as the baseline (ratio > 1: bf16 is
    faster). Figures whose two timings are not both present are left out.

    Example:

    >>> from benchmarks.harness import Timing
    >>> t = {"keras-sdernn": Timing("a", [0.04], 128),
    ...      "keras-sdernn-bf16": Timing("b", [0.02], 128)}
    >>> figures = precision_figures(t, 140)
    >>> list(figures), figures["bf16_speedup"]["ratio"]
    (['bf16_speedup'], {'keras-sdernn-bf16': 2.0})
    """
    f32, bf16 = PRECISION_PAIR
    figures = {}
    for variant, label in (("", "noisy"), (DETERMINISTIC_SUFFIX, "deterministic")):
        base, ours = timings.get(f32 + variant), timings.get(bf16 + variant)
        if base is None or ours is None:
            continue
        key = "bf16_speedup" + ("_deterministic" if variant else "") + suffix
        figures[key] = make_figure(
            f"mixed_bfloat16 against float32, training throughput, {label} step, T {steps}, "
            "SDERNN without XLA",
            "sequences/s",
            HIGHER_IS_BETTER,
            {f32: base.items_per_s, bf16: ours.items_per_s},
            {f32: BASELINE, bf16: OURS},
            note="the baseline of this figure is our own float32 path, not PyTorch; "
            "ratio > 1: mixed_bfloat16 trains faster",
        )
    return figures


#: Consecutive batch-1 calls per sample of the back-to-back latency figure.
BURST_CALLS = 20


def run_inference(settings: Settings, contenders: Mapping[str, Contender], results: dict) -> None:
    """Inference latency at batch 1 and throughput at batch `infer_batch` (no noise)."""
    steps = settings.timesteps
    sides = {n: c.side for n, c in contenders.items()}
    for key, batch, kind in (
        ("infer_latency_ms_b1", 1, "latency"),
        (f"infer_seq_per_s_b{settings.infer_batch}", settings.infer_batch, "throughput"),
    ):
        log(f"inference: building batch-{batch} callables")
        fns = _collect(contenders, lambda c, b=batch: c.make_inference(b, steps))
        warmup, repeats = settings.repeats(kind)
        log(f"inference batch {batch}: {len(fns)} contenders, {warmup} warm-up + {repeats}+ rounds")
        timings = time_alternating(
            fns, warmup=warmup, repeats=repeats, items_per_call=batch,
            min_time_s=settings.min_time_s(), progress=log, self_timed=True,
        )
        results["timings"][key] = {n: t.to_dict() for n, t in timings.items()}
        results["timings"][key]["loadavg_after"] = list(os.getloadavg())
        if kind == "latency":
            results["figures"][key] = make_figure(
                f"inference latency, batch 1, T {steps} (median)",
                "ms",
                LOWER_IS_BETTER,
                {n: t.median_ms for n, t in timings.items()},
                sides,
            )
        else:
            results["figures"][key] = make_figure(
                f"inference throughput, batch {batch}, T {steps}",
                "sequences/s",
                HIGHER_IS_BETTER,
                {n: t.items_per_s for n, t in timings.items()},
                sides,
            )


def run_latency_back_to_back(
    settings: Settings, contenders: Mapping[str, Contender], results: dict
) -> None:
    """Batch-1 latency with the calls back to back in one process (a busy server's setting):
    each sample is the median of `BURST_CALLS` consecutive calls of one contender, and the
    contenders alternate sample by sample."""
    steps = settings.timesteps
    sides = {n: c.side for n, c in contenders.items()}
    fns = {}
    for name, contender in contenders.items():
        fn = contender.make_inference_burst(1, steps, BURST_CALLS)
        if fn is not None:
            fns[name] = fn
    warmup, repeats = settings.repeats("throughput")
    log(f"inference batch 1, back to back: {len(fns)} contenders, {BURST_CALLS} calls a sample")
    timings = time_alternating(fns, warmup=warmup, repeats=repeats, progress=log, self_timed=True)
    key = "infer_latency_ms_b1_back_to_back"
    results["timings"][key] = {n: t.to_dict() for n, t in timings.items()}
    results["figures"][key] = make_figure(
        f"inference latency, batch 1, T {steps}, {BURST_CALLS} calls back to back in one "
        "process (median)",
        "ms",
        LOWER_IS_BETTER,
        {n: t.median_ms for n, t in timings.items()},
        sides,
        note="each sample is the median of consecutive calls in the contender's own process, "
        "as a server under load makes them; the other latency figure times single calls that "
        "alternate between processes, so caches and thread pools are cold",
    )


def run_memory(settings: Settings, names: list[str], sides: Mapping[str, str], results: dict):
    """Peak memory of a training step for each T, one fresh subprocess per measurement."""
    timesteps = settings.memory_timesteps[:1] if settings.quick else settings.memory_timesteps
    for steps in timesteps:
        values: dict[str, float | None] = {}
        for name in names:
            log(f"memory: {name}, T {steps}, batch {settings.memory_batch} (fresh subprocess)")
            out = measure_in_subprocess(name, steps, settings.memory_batch, settings.seed)
            results["memory"].setdefault(str(steps), {})[name] = out
            if "error" in out:
                log(f"memory: {name} T {steps} failed: {out['error']}")
            else:
                log(
                    f"memory: {name} T {steps}: step peak {out['step_peak_mb']:.1f} MB, "
                    f"process peak {out['process_peak_mb']:.0f} MB"
                )
            values[name] = out.get("step_peak_mb")
        results["figures"][f"memory_step_peak_mb_T{steps}"] = make_figure(
            f"peak memory of a training step, batch {settings.memory_batch}, T {steps}",
            "MB",
            LOWER_IS_BETTER,
            values,
            sides,
            note=WHAT_IS_MEASURED,
        )
    if len(timesteps) >= 2:
        short, long = str(min(timesteps)), str(max(timesteps))
        results["figures"]["memory_mb_per_1000_steps"] = make_figure(
            f"memory per 1,000 steps of T (slope of the step peak, T {short} to {long}), "
            f"batch {settings.memory_batch}",
            "MB",
            LOWER_IS_BETTER,
            {name: memory_slope(results["memory"], name, short, long) for name in names},
            sides,
            note="what the step keeps per time step for the backward pass; the step peak at "
            "small T is mostly the fixed cost of the traced or compiled program",
        )


def memory_slope(memory: Mapping[str, Mapping[str, dict]], name: str, short: str, long: str):
    """MB per 1,000 steps of T between two measured lengths, or None if one failed.

    Example:

    >>> memory_slope({"100": {"x": {"step_peak_mb": 10.0}},
    ...               "1100": {"x": {"step_peak_mb": 30.0}}}, "x", "100", "1100")
    20.0
    """
    low = memory.get(short, {}).get(name, {}).get("step_peak_mb")
    high = memory.get(long, {}).get(name, {}).get("step_peak_mb")
    if low is None or high is None or int(long) <= int(short):
        return None
    return (high - low) * 1000.0 / (int(long) - int(short))


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "torch", "numpy", "onnxruntime"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_bf16(flags: str | None = None) -> str:
    """What the CPU offers for bfloat16 matmuls, from its flags (`/proc/cpuinfo` by default):
    `"AMX"` (tile matmuls, Intel Sapphire Rapids and later), `"AVX-512 bf16"` (dot products,
    e.g. AMD Zen 4) or `"none"` (bf16 emulated in float32); `"unknown"` without `/proc`.

    Example:

    >>> cpu_bf16("fpu avx512f avx512_bf16 amx_bf16 amx_tile"), cpu_bf16("fpu avx512_bf16")
    ('AMX', 'AVX-512 bf16')
    """
    if flags is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
        lines = [line for line in text.splitlines() if line.startswith("flags")]
        flags = lines[0].split(":", 1)[1] if lines else ""
    words = set(flags.split())
    if "amx_bf16" in words:
        return "AMX"
    if "avx512_bf16" in words:
        return "AVX-512 bf16"
    return "none"


def run(settings: Settings) -> dict:
    """Run every figure for the selected contenders and return the results dict.

    Example:

    >>> results = run(Settings(quick=True, only="torch", memory=False))  # doctest: +SKIP
    """
    started = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    contenders, skipped = _instantiate(settings)
    results: dict = {
        "meta": {},
        "figures": {},
        "timings": {},
        "memory": {},
        "skipped": skipped,
        "contenders": {n: c.side for n, c in contenders.items()},
    }
    try:
        if contenders:
            run_training(settings, contenders, results)
            _release(contenders)
            long = {n: c for n, c in contenders.items() if n in settings.long_contenders}
            for steps in settings.long_timesteps if long else ():
                run_training(settings, long, results, steps=steps)
                _release(long)
            run_inference(settings, contenders, results)
            run_latency_back_to_back(settings, contenders, results)
    finally:
        for contender in contenders.values():
            if hasattr(contender, "close"):
                contender.close()
            else:
                contender.release()
    from benchmarks.contenders import get_spec

    memory_names = [n for n in contenders if get_spec(n).memory]
    if settings.quick:  # one contender per side
        firsts = {contenders[n].side: n for n in reversed(memory_names)}
        memory_names = [n for n in memory_names if n in firsts.values()]
    if settings.memory and memory_names:
        sides = {n: contenders[n].side for n in memory_names}
        run_memory(settings, memory_names, sides, results)
    results["meta"] = {
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": settings.quick,
        "only": settings.only or "all",
        "cpu": _cpu_model(),
        "cpu_bf16": cpu_bf16(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "threads": {
            "intra_op": INTRA_OP_THREADS,
            "inter_op": INTER_OP_THREADS,
            "tensorflow_inter_op": TF_INTER_OP_THREADS,
        },
        "versions": _versions(),
        "config": dataclasses.asdict(ECG),
        "train_batch": settings.train_batch,
        "timesteps": settings.timesteps,
        "long_timesteps": list(settings.long_timesteps),
        "infer_batch": settings.infer_batch,
        "memory_batch": settings.memory_batch,
        "memory_measure": WHAT_IS_MEASURED,
        "ratio": "ours / baseline (torch-loop); each figure says whether higher or lower is better",
    }
    return results


def _tf_inter_text(threads: Mapping) -> str:
    """`' (TensorFlow inter-op N)'` when TensorFlow's inter-op count differs, else ''."""
    tf_inter = threads.get("tensorflow_inter_op")  # absent in results of older versions
    if tf_inter is None or tf_inter == threads["inter_op"]:
        return ""
    return f" (TensorFlow inter-op {tf_inter})"


def render(results: Mapping, markdown: bool) -> str:
    """The report: the figures table, then skipped contenders and notes."""
    lines = []
    meta = results["meta"]
    if markdown:
        lines += ["# keras_nrnn benchmark results", ""]
    lines.append(
        f"{meta['started_utc']}  {meta['cpu']} ({meta['cpu_count']} CPUs, bf16 matmuls: "
        f"{meta.get('cpu_bf16', 'unknown')}), threads "
        f"{meta['threads']['intra_op']}/{meta['threads']['inter_op']} intra/inter-op"
        f"{_tf_inter_text(meta['threads'])}, load "
        f"{meta['loadavg_start'][0]:.2f} -> {meta['loadavg_end'][0]:.2f}, "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + (" [QUICK]" if meta["quick"] else "")
    )
    lines.append("")
    lines.append(format_table(TABLE_HEADERS, figure_rows(results["figures"]), markdown))
    lines.append("")
    lines.append("ratio = ours / baseline; 'direction' says whether higher or lower is better.")
    lines.append(f"memory: {meta['memory_measure']}.")
    if results["memory"]:
        lines += ["", format_table(MEMORY_HEADERS, memory_rows(results["memory"]), markdown)]
    for name, reason in results["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines) + "\n"


def write(results: Mapping, out_dir: Path) -> tuple[Path, Path]:
    """Write latest.json and latest.md atomically; returns their paths."""
    from atomic_io import atomic_write_text

    out_dir = Path(out_dir)
    json_path = atomic_write_text(out_dir / "latest.json", json.dumps(results, indent=2) + "\n")
    md_path = atomic_write_text(out_dir / "latest.md", render(results, markdown=True))
    return json_path, md_path
