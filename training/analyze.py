"""The theory as measurements on trained runs: `python -m training.analyze RUN_DIR [RUN_DIR ...]`.

    python -m training.ecg --compare --seeds 5
    python -m training.analyze runs/ecg/nrnn+lipschitz-<hash>

For every finished seed of every model of each run folder (ECG5000 runs of
`python -m training.ecg`), on the run's own data split, this measures (`keras_nrnn.analysis`):

- the spectral norms of the Jacobian products `||d h_M / d h_{M-lag}||` over the lag;
- the eq. 18 implicit regularizer `R` and the Monte Carlo gap of Theorem 1;
- the Theorem 2 margin lower bound of each test sequence;
- the Theorem 3 interval for the Lyapunov exponent and its Monte Carlo estimate;
- the top Hessian eigenvalue and the Fisher-Rao norm of the training loss;
- the memory function (response to a unit step input) and its decay rate.

Noise-dependent quantities (`R`, the Theorem 1 gap, Theorem 3, the noisy Lyapunov exponent)
are evaluated for every model at the run's noise levels (`--additive-noise`,
`--multiplicative-noise` of the training command), so a deterministic Lipschitz RNN is
measured under the same noise as the NRNN. Writes `analysis.json`, `analysis.md` (the table of
means ± std over seeds, also printed) and four plots
(`analysis-jacobian-norms.png`, `analysis-lyapunov.png`, `analysis-margins.png`,
`analysis-memory.png`) into the run folder (one RUN_DIR) or into `--out` (required with
several, which are then shown side by side). Bad input (a missing folder, a folder that is
not a finished run folder, an unsupported task) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The per-sequence matrices (units x units) are small: a multi-threaded BLAS only contends
# for the cores (measured on 2 shared cores: 57 s -> 6.5 s for the 16-sequence Jacobian sweep).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import run_folder

__all__ = [
    "ANALYSIS_FILES",
    "AnalyzeError",
    "analyze_seed",
    "build_parser",
    "discover",
    "main",
    "markdown_table",
]

EXIT_REFUSED = 2
ANALYSIS_FILES = run_folder.ANALYSIS_FILES
SUPPORTED_TASKS = ("ecg5000",)


class AnalyzeError(ValueError):
    """An argument of `python -m training.analyze` cannot be used (one-line message)."""


@dataclass
class ModelRuns:
    """The finished seeds of one model of a run folder."""

    name: str
    label: str
    seeds: list[tuple[int, Path]] = field(default_factory=list)


@dataclass
class RunInfo:
    """A run folder: its configuration and its models."""

    path: Path
    config: dict[str, Any]
    models: list[ModelRuns]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m training.analyze`.

    Example:

    >>> build_parser().parse_args(["runs/a"]).samples
    64
    """
    from training.cli import OneLineErrorParser

    p = OneLineErrorParser(
        prog="python -m training.analyze",
        description="Measure the Noisy RNN theory (Jacobians, implicit regularizer, margins, "
        "Lyapunov exponent, Hessian, Fisher-Rao norm, memory) on trained run folders.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders to analyze")
    p.add_argument("--out", default=None, help="output folder (default: the single RUN_DIR)")
    p.add_argument("--samples", type=int, default=64, help="test sequences for Jacobians/margins")
    p.add_argument("--gap-samples", type=int, default=16, help="sequences for the Theorem 1 check")
    p.add_argument("--gap-pairs", type=int, default=8, help="antithetic noise pairs per sequence")
    p.add_argument("--lyapunov-paths", type=int, default=32, help="paths of the Lyapunov estimate")
    p.add_argument("--hessian-samples", type=int, default=64, help="training sequences")
    p.add_argument("--hessian-iterations", type=int, default=15, help="power iterations")
    p.add_argument(
        "--hessian-tolerance", type=float, default=1e-3, help="relative change to stop at"
    )
    p.add_argument("--memory-steps", type=int, default=1000, help="steps of the step response")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo estimates")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# The positive integer settings (recorded in analysis.json with --seed).
_COUNTS = (
    "samples",
    "gap_samples",
    "gap_pairs",
    "lyapunov_paths",
    "hessian_samples",
    "hessian_iterations",
    "memory_steps",
)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag in _COUNTS:
        value = getattr(args, flag)
        if value < 1:
            parser.error(
                f"argument --{flag.replace('_', '-')}: expected an integer >= 1, got {value}"
            )
    if not args.hessian_tolerance > 0:
        parser.error(
            f"argument --hessian-tolerance: expected a number > 0, got {args.hessian_tolerance}"
        )
    if len(args.run_dirs) > 1 and args.out is None:
        parser.error("argument --out: required with several RUN_DIRs (where to put the comparison)")


def discover(run_dir: str | os.PathLike) -> RunInfo:
    """The finished seeds of a run folder of `python -m training.ecg`.

    Args:
        run_dir: a run folder.

    Returns:
        A `RunInfo`.

    Raises:
        AnalyzeError: the folder is missing, is not a run folder, has an unsupported task, or
            holds no finished seed.

    Example:

    >>> try:
    ...     discover("/nonexistent")
    ... except AnalyzeError as e:
    ...     print(e)
    argument RUN_DIR: '/nonexistent' is not a folder
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise AnalyzeError(f"argument RUN_DIR: {str(run_dir)!r} is not a folder")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or "task" not in config or "models" not in config:
        raise AnalyzeError(
            f"argument RUN_DIR: {str(run_dir)!r} is not a run folder (expected the config.json "
            "written by python -m training.ecg)"
        )
    if config["task"] not in SUPPORTED_TASKS:
        raise AnalyzeError(
            f"argument RUN_DIR: {str(run_dir)!r} holds a {config['task']!r} run; supported "
            f"tasks: {', '.join(SUPPORTED_TASKS)}"
        )
    names = list(config["models"])
    models = []
    for name in names:
        folder = path if len(names) == 1 else path / name
        runs = ModelRuns(name, config["models"][name].get("label", name))
        for seed in config.get("seeds", []):
            sdir = folder / f"seed-{seed}"
            if (sdir / "eval.json").is_file() and (sdir / "model.keras").is_file():
                runs.seeds.append((int(seed), sdir))
        if runs.seeds:
            models.append(runs)
    if not models:
        raise AnalyzeError(
            f"argument RUN_DIR: {str(run_dir)!r} holds no finished seed (no seed-*/eval.json "
            "with its model.keras); finish the run first"
        )
    return RunInfo(path, config, models)


def _load_data(config: dict[str, Any]):
    from training.data import load_ecg5000

    data_cfg = config.get("data", {})
    data = load_ecg5000(
        None,
        split_seed=int(data_cfg.get("split_seed", 0)),
        validation_size=int(data_cfg.get("validation_size", 500)),
    )
    recorded = data_cfg.get("sha256")
    if recorded is not None and recorded != data.sha256:
        raise AnalyzeError(
            "the ECG5000 files found now differ from the run's (sha256 "
            f"{data.sha256} vs {recorded}); cannot analyze on the same data"
        )
    return data


def _reference_noise(config: dict[str, Any]) -> tuple[float, float]:
    hparams = config.get("identity", {}).get("hparams", {})
    return float(hparams.get("additive_noise", 0.0)), float(
        hparams.get("multiplicative_noise", 0.0)
    )


def _finite(value: Any) -> Any:
    """JSON-safe floats (NaN and infinities become None)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def analyze_seed(
    model,
    data,
    args: argparse.Namespace,
    noise: tuple[float, float],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every diagnostic of one trained model; returns `(scalars, curves for the plots)`.

    Args:
        model: the trained Keras model (`Input -> recurrent layer -> Dense`).
        data: the run's `ECG5000Data`.
        args: parsed arguments (sample sizes, seed).
        noise: `(additive, multiplicative)` at which noise-dependent quantities are measured.

    Returns:
        Two dicts: JSON-ready scalars, and numpy arrays for the plots.
    """
    import numpy as np

    from keras_nrnn import analysis
    from keras_nrnn.analysis import _sweep
    from keras_nrnn.analysis._cell_access import get_cell, mean_time_step

    cell = get_cell(model)
    x_test, y_test = data.x_test[: args.samples], data.y_test[: args.samples].astype("int64")
    result = _sweep.sweep(model, x_test, noise_levels=noise)
    margins = _sweep.margins_from_sweep(result, y_test)
    correct = margins["score"] > 0
    regularizer = result["regularizer_terms"].sum(axis=1)
    gap = analysis.noisy_loss_gap(
        model,
        data.x_test[: args.gap_samples],
        data.y_test[: args.gap_samples].astype("int64"),
        samples=args.gap_pairs,
        seed=args.seed,
        noise_levels=noise,
    )
    paths = data.x_test[: args.lyapunov_paths]
    lyap = analysis.lyapunov_exponent(model, paths, seed=args.seed, noise_levels=noise)
    lyap_det = analysis.lyapunov_exponent(model, paths, seed=args.seed, noise_scale=0.0)
    try:
        bounds: dict[str, Any] = analysis.lyapunov_bounds(model, noise_levels=noise)
    except ValueError as e:
        bounds = {"not_applicable": str(e)}
    x_train = data.x_train[: args.hessian_samples]
    y_train = data.y_train[: args.hessian_samples].astype("int64")
    hessian = analysis.top_hessian_eigenvalue(
        model,
        x_train,
        y_train,
        iterations=args.hessian_iterations,
        tolerance=args.hessian_tolerance,
        seed=args.seed,
    )
    fisher = analysis.fisher_rao_norm(model, data.x_train, data.y_train.astype("int64"))
    dt = mean_time_step(cell)
    rho = analysis.memory_function(model, args.memory_steps, "logits")
    norms = result["norms"]
    steps = norms.shape[1] - 1
    scalars = {
        "jacobian_norm_final": float(norms[:, steps].mean()),
        "jacobian_norm_max": float(norms.max(axis=1).mean()),
        "jacobian_log10_norm_mean": float(np.log10(norms).mean()),
        "regularizer_R_mean": float(regularizer.mean()),
        "regularizer_R_median": float(np.median(regularizer)),
        "theorem1_gap": gap["gap"],
        "theorem1_gap_stderr": gap["stderr"],
        "theorem1_predicted_R": gap["predicted"],
        "margin_gamma_median": float(np.median(margins["gamma"][correct]))
        if correct.any()
        else None,
        "margin_gamma_mean": float(np.mean(margins["gamma"][correct])) if correct.any() else None,
        "margin_score_mean": float(margins["score"].mean()),
        "margin_constant_C_mean": float(margins["constant"].mean()),
        "margin_chain_mean": float(margins["chain"].mean()),
        "fraction_correct_analyzed": float(correct.mean()),
        "lyapunov_mc": lyap["exponent"],
        "lyapunov_mc_stderr": lyap["stderr"],
        "lyapunov_mc_deterministic": lyap_det["exponent"],
        "lyapunov_time": lyap["time"],
        "lyapunov_bounds": bounds,
        "hessian_top_eigenvalue": hessian["eigenvalue"],
        "hessian_converged": hessian["converged"],
        "hessian_iterations": hessian["iterations"],
        "fisher_rao_norm": fisher,
        "memory_decay_rate": analysis.memory_decay_rate(rho, dt),
        "memory_at_140_over_0": float(abs(rho[min(139, len(rho) - 1)]) / max(abs(rho[0]), 1e-300)),
    }
    curves = {
        "norms": norms.mean(axis=0),
        "gamma": margins["gamma"][correct],
        "memory": np.abs(rho),
        "dt": dt,
    }
    return scalars, curves


def _aggregate(per_seed: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    import numpy as np

    keys = [k for k, v in next(iter(per_seed.values())).items() if isinstance(v, int | float)]
    mean, std = {}, {}
    for key in keys:
        values = [s[key] for s in per_seed.values() if isinstance(s.get(key), int | float)]
        values = [float(v) for v in values if math.isfinite(float(v))]
        mean[key] = float(np.mean(values)) if values else None
        std[key] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    for bound in ("lower", "lower_valid", "upper"):
        values = [s["lyapunov_bounds"].get(bound) for s in per_seed.values()]
        values = [v for v in values if v is not None]
        if values:
            mean[f"lyapunov_{bound}"] = float(np.mean(values))
            std[f"lyapunov_{bound}"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return mean, std


# The rows of the summary table: (key in the per-model mean/std, label, format).
TABLE_ROWS = (
    ("test_accuracy_clean", "test accuracy, clean", "{:.4f}"),
    ("jacobian_norm_final", "‖d h_M / d h_0‖₂ (lag M)", "{:.3g}"),
    ("regularizer_R_mean", "eq. 18 regularizer R", "{:.3g}"),
    ("theorem1_gap", "Theorem 1: MC loss gap", "{:.3g}"),
    ("theorem1_predicted_R", "Theorem 1: R on the same sequences", "{:.3g}"),
    ("margin_gamma_median", "Theorem 2: median margin bound γ", "{:.3g}"),
    ("lyapunov_mc", "Lyapunov exponent, MC (noisy)", "{:.3g}"),
    ("lyapunov_mc_deterministic", "Lyapunov exponent, MC (no noise)", "{:.3g}"),
    ("lyapunov_lower_valid", "Theorem 3 lower (corrected)", "{:.3g}"),
    ("lyapunov_lower", "Theorem 3 lower (paper)", "{:.3g}"),
    ("lyapunov_upper", "Theorem 3 upper", "{:.3g}"),
    ("hessian_top_eigenvalue", "top Hessian eigenvalue", "{:.3g}"),
    ("fisher_rao_norm", "Fisher-Rao norm", "{:.3g}"),
    ("memory_decay_rate", "memory decay rate (1/time)", "{:.3g}"),
)


def markdown_table(report: dict[str, Any]) -> str:
    """The main diagnostics of an `analysis.json` report, mean ± std over seeds, as markdown.

    Args:
        report: the parsed `analysis.json`.

    Returns:
        A markdown table, one column per (run, model).

    Example:

    >>> r = {"runs": [{"run_dir": "r", "models": {"nrnn": {"label": "NRNN", "seeds": {"0": {}},
    ...     "mean": {"fisher_rao_norm": 2.0}, "std": {"fisher_rao_norm": None}}}}]}
    >>> print(markdown_table(r).splitlines()[-1])
    | Fisher-Rao norm | 2 |
    """
    columns = [
        (m["label"] if len(report["runs"]) == 1 else f"{m['label']} ({Path(r['run_dir']).name})", m)
        for r in report["runs"]
        for m in r["models"].values()
    ]
    lines = [
        "| diagnostic | "
        + " | ".join(f"{label} (n={len(m['seeds'])})" for label, m in columns)
        + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key, label, fmt in TABLE_ROWS:
        cells = []
        for _, m in columns:
            mean, std = m["mean"].get(key), m["std"].get(key)
            if mean is None:
                cells.append("n/a")
            else:
                cells.append(fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std)))
        if any(c != "n/a" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from atomic_io import atomic_write_bytes

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _plots(out: Path, entries: list[dict[str, Any]]) -> None:
    """The four figures; `entries` hold `label`, per-seed `curves` and `scalars`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for e in entries:
        curve = np.exp(np.mean([np.log(c["norms"]) for c in e["curves"]], axis=0))
        ax.plot(np.arange(len(curve)), curve, label=e["label"])
    ax.set_yscale("log")
    ax.set(xlabel="lag (steps)", ylabel="||d h_M / d h_{M-lag}||_2", title="Jacobian products")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, out / "analysis-jacobian-norms.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, e in enumerate(entries):
        for j, s in enumerate(e["scalars"]):
            xpos = i + 0.08 * (j - (len(e["scalars"]) - 1) / 2)
            b = s["lyapunov_bounds"]
            if "upper" in b:
                ax.plot([xpos, xpos], [b["lower_valid"], b["upper"]], color="0.7", lw=4)
                ax.plot([xpos], [b["lower"]], marker="_", color="k", ms=8)
            ax.errorbar(
                [xpos], [s["lyapunov_mc"]], yerr=[2 * s["lyapunov_mc_stderr"]], fmt="o", ms=3
            )
    ax.set_xticks(range(len(entries)), [e["label"] for e in entries], fontsize="small")
    ax.set(ylabel="Lyapunov exponent (1/time)", title="MC estimate (dots) in Theorem 3 bounds")
    ax.grid(True, alpha=0.3)
    _save(fig, out / "analysis-lyapunov.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for e in entries:
        gammas = np.concatenate([c["gamma"] for c in e["curves"]])
        gammas = gammas[gammas > 0]
        if gammas.size:
            ax.hist(np.log10(gammas), bins=30, alpha=0.5, label=e["label"])
    ax.set(xlabel="log10 margin lower bound gamma", ylabel="test sequences", title="Theorem 2")
    ax.legend(fontsize="small")
    _save(fig, out / "analysis-margins.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for e in entries:
        dt = e["curves"][0]["dt"]
        curve = np.mean([c["memory"] for c in e["curves"]], axis=0)
        ax.plot(dt * np.arange(len(curve)), curve, label=e["label"])
    ax.set_yscale("log")
    ax.set(xlabel="time since the step", ylabel="|rho(t)| (logit difference)", title="Memory")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, out / "analysis-memory.png")


def run(args: argparse.Namespace, runs: list[RunInfo], out: Path) -> dict[str, Any]:
    """Analyze every finished seed of `runs`; write `analysis.json` and the plots to `out`."""
    import keras

    import keras_nrnn  # noqa: F401  (registers the cells and layers for load_model)
    from atomic_io import atomic_write_text

    items = [(r, m, s, p) for r in runs for m in r.models for s, p in m.seeds]
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="analyze", unit="model", file=sys.stderr)
    report: dict[str, Any] = {"runs": [], "settings": {}}
    entries: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for r in runs:
        data = _load_data(r.config)
        noise = _reference_noise(r.config)
        run_entry: dict[str, Any] = {
            "run_dir": str(r.path),
            "config_hash": r.config.get("config_hash"),
            "command": r.config.get("command"),
            "noise_levels": {"additive": noise[0], "multiplicative": noise[1]},
            "models": {},
        }
        for m in r.models:
            per_seed: dict[str, Any] = {}
            curves = []
            for seed, sdir in m.seeds:
                if bar is not None:
                    bar.set_postfix_str(f"{m.name} seed {seed}")
                model = keras.saving.load_model(sdir / "model.keras", compile=False)
                scalars, curve = analyze_seed(model, data, args, noise)
                evaluation = json.loads((sdir / "eval.json").read_text())
                scalars["test_accuracy_clean"] = evaluation.get("accuracy", {}).get("clean")
                per_seed[str(seed)] = _finite(scalars)
                curves.append(curve)
                keras.backend.clear_session()
                if bar is not None:
                    bar.update(1)
            mean, std = _aggregate(per_seed)
            run_entry["models"][m.name] = {
                "label": m.label,
                "seeds": per_seed,
                "mean": _finite(mean),
                "std": _finite(std),
            }
            label = m.label if len(runs) == 1 else f"{m.label} ({r.path.name})"
            entries.append({"label": label, "curves": curves, "scalars": list(per_seed.values())})
        report["runs"].append(run_entry)
    if bar is not None:
        bar.close()
    report["settings"] = {k: getattr(args, k) for k in (*_COUNTS, "hessian_tolerance", "seed")}
    report["notes"] = [
        "noise-dependent quantities use the run's noise levels for every model",
        "margin bound and Lipschitz constants are evaluated on each sample's own trajectory",
        "lyapunov_mc is a finite-time exponent over the test sequences (M dt time units)",
        "lower: the paper's Theorem 3 lower bound; lower_valid adds -L_a sigma_max(W)",
    ]
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    _plots(out, entries)
    atomic_write_text(out / "analysis.md", markdown_table(report))
    atomic_write_text(out / "analysis.json", json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m training.analyze`; returns the exit status.

    Example:

    >>> main(["/nonexistent"])  # doctest: +SKIP
    2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_args(parser, args)
        runs = [discover(d) for d in args.run_dirs]
        out = Path(args.out) if args.out else runs[0].path
        if out.exists() and not out.is_dir():
            raise AnalyzeError(f"argument --out: {str(out)!r} exists and is not a folder")
    except SystemExit as e:
        return int(e.code or 0)
    except AnalyzeError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    from tf_startup import import_tensorflow_quietly
    from training.data import DataIntegrityError, DataUnavailableError

    import_tensorflow_quietly()
    try:
        run(args, runs, out)
    except (AnalyzeError, DataIntegrityError, DataUnavailableError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_REFUSED
    print((out / "analysis.md").read_text(encoding="utf-8"), end="")
    print(f"Wrote {out / 'analysis.json'}, analysis.md and 4 plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
