"""ECG5000 end to end: train Noisy RNNs, measure their robustness, reproduce the paper's Table 3.

    python -m training.ecg                          # NRNN, paper's ECG configuration, 1 seed
    python -m training.ecg --compare --seeds 5      # NRNN vs Lipschitz RNN, 5 seeds each
    python -m training.ecg --model cornn --units 64 --epochs 50

The model is `Input((140, 1)) -> RNN(cell) -> Dense(2)` (logits), trained with Adam and
`SparseCategoricalCrossentropy(from_logits=True)` on the 500 training beats, the best epoch chosen
on the 500 validation beats, and evaluated in inference mode (no noise) on the 4000 test beats:
clean, additive and multiplicative white noise, salt and pepper, FGSM
(`training.perturbations.ECG_ROBUSTNESS_GRID`), with the same perturbed inputs for every model
and seed.

Run folder (`--out`, default `runs/ecg/<models>-<hash of the configuration>`):

    config.json        hyperparameters, data source and sha256, versions, command
    results.json       per seed and mean/std over seeds, for every model and perturbation
    results.md         the table, the paper's Table 3 figures beside ours
    robustness.png     accuracy against perturbation strength (one line per model, ±1 std band)
    history.csv        every epoch of every model and seed
    model.keras        best seed's best-validation model (one model; with several models each
                       model folder `<out>/<model>/` has its own)
    [<model>/]seed-<k>/  model.keras, history.csv, checkpoint.npz, tensorboard/, eval.json

Killing a run and repeating the same command resumes it (per-epoch atomic checkpoints; finished
seeds are neither retrained nor re-evaluated; stale temporary files of the killed process are
removed). A command of the same configuration (`training.cli.identity`: everything but the
number of seeds and execution settings such as `--jit` and `--layer`) extends a finished run:
`--seeds 5` after a one-seed run trains seeds 1-4 only and rewrites the report over all five;
repeating a finished command changes nothing. Another configuration is refused, naming the
differing keys. `--overwrite` replaces a run folder (and only a run folder holding nothing but
what the runner writes) once the new run is finished (`training.run_folder`); a folder that is
not a run folder is never written into or deleted.

Errors of the operator (a bad flag, `--out` a file or not writable, `--data-dir` missing, a
corrupt data file) are one line on stderr and exit status 2; an interruption exits with 3.
TensorFlow is imported after the arguments are parsed, without its start-up banners
(`tf_startup`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import csv
import io
import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULTS", "DEFAULT_EPOCHS", "build_ecg_parser", "main", "run"]

# Default number of epochs: one NRNN seed must train and be evaluated in about 5 minutes on two
# shared CPU cores with the plain `keras.layers.RNN` path (measured ~0.5-0.7 s per epoch there).
# Raise it when training gets faster: accuracy keeps improving for several hundred epochs.
DEFAULT_EPOCHS = 300

# The paper's ECG configuration (appendix Table 4).
DEFAULTS: dict[str, Any] = {
    "units": 128,
    "dt": 0.1,
    "beta": 0.9,
    "gamma_a": 0.001,
    "gamma_w": 0.001,
    "additive_noise": 0.06,
    "multiplicative_noise": 0.03,
    # The paper's Table 3 came from its research code, whose update differs from eq. 5
    # (docs/schemes-and-paper-fidelity.md); the runner reproduces the paper as it was run.
    # The cells themselves default to eq. 5; `--scheme euler_maruyama` trains with it.
    "scheme": "research",
    "lr": 1e-3,
    "batch_size": 128,
    "epochs": DEFAULT_EPOCHS,
    # Measured on 2 cores with the default SDERNN layer: 0.18 s/epoch with XLA, 0.35 without.
    "jit": True,
}

EXIT_REFUSED = 2
EXIT_INTERRUPTED = 3
_STATUS_FILE = "results.json"


def build_ecg_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m training.ecg`.

    Example:

    >>> build_ecg_parser().parse_args([]).units
    128
    """
    from training.cli import build_parser

    return build_parser(
        "python -m training.ecg",
        "Train Noisy RNNs on ECG5000 (normal vs abnormal), evaluate their robustness and "
        "write the paper's Table 3 beside ours.",
        DEFAULTS,
    )


def _versions() -> dict[str, str]:
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_nrnn

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "keras_nrnn": keras_nrnn.__version__,
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count()),
    }


def _limit(x, y, n):
    return (x, y) if n is None else (x[:n], y[:n])


def _model_dir(out: Path, models: list[str], name: str) -> Path:
    return out if len(models) == 1 else out / name


def _message(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _without_shard(argv: list[str]) -> list[str]:
    """`argv` without `--shard I/N` (an execution detail, not part of the experiment)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--shard":
            skip = True
        elif not arg.startswith("--shard="):
            out.append(arg)
    return out


def _finished_seeds(out: Path, models: list[str], seeds: range) -> bool:
    return all(
        (_model_dir(out, models, m) / f"seed-{k}" / "eval.json").is_file()
        for m in models
        for k in seeds
    )


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the experiment described by validated `args`; return the exit status.

    Raises:
        training.run_folder.RunFolderError: `--out` cannot be used (see `plan_run`).
        training.data.DataIntegrityError: a data file is missing or corrupt.
        training.data.DataUnavailableError: no copy of the data could be found.
    """
    import keras
    import numpy as np

    from atomic_io import atomic_write_bytes, atomic_write_text, remove_stale_temp_files
    from training import cli, distribute, reporting, robustness, run_folder
    from training.data import load_ecg5000, make_dataset
    from training.models import MODELS, build_model, resolve_cell_class
    from training.perturbations import ECG_ROBUSTNESS_GRID
    from training.runner import TrainSettings, train_seed

    strategy, writes = distribute.runner_strategy(args)
    precision = cli.resolve_precision(args.precision)
    args.jit = cli.resolve_jit(args.jit, precision, DEFAULTS["jit"])
    ident = cli.identity(args, precision)
    chash = cli.config_hash(ident)
    out = Path(args.out) if args.out else Path("runs") / "ecg" / f"{'+'.join(args.models)}-{chash}"
    plan = run_folder.plan_run(
        out, ident, task="ecg5000", overwrite=args.overwrite, prog="python -m training.ecg"
    )
    for name in args.models:  # fail early, before any training, on a missing baseline cell
        resolve_cell_class(name)
    keras.mixed_precision.set_global_policy(precision)

    data = load_ecg5000(args.data_dir)
    x_train, y_train = _limit(data.x_train, data.y_train, args.limit_train)
    x_val, y_val = _limit(data.x_val, data.y_val, args.limit_val)
    x_test, y_test = _limit(data.x_test, data.y_test, args.limit_test)
    grid = dict(ECG_ROBUSTNESS_GRID)
    command = "python -m training.ecg " + shlex.join(_without_shard(list(argv)))

    n_seeds = args.seeds
    if plan.mode == "resume":
        previous = plan.config
        recorded = (previous.get("data") or {}).get("sha256")
        if recorded is not None and recorded != data.sha256:
            raise run_folder.RunFolderError(
                f"--out {str(out)!r} holds a run trained on other data (sha256 {recorded}; "
                f"the data found now has {data.sha256}); refusing to mix them. Choose another "
                "--out."
            )
        reported = list(previous.get("seeds", []))
        finished = (out / _STATUS_FILE).is_file()
        if finished and n_seeds < len(reported):
            _message(
                f"Run folder {out} holds {len(reported)} finished seeds; keeping all of them "
                f"(--seeds {n_seeds} does not shrink a run)."
            )
            n_seeds = len(reported)
        if (
            finished
            and reported == list(range(n_seeds))
            and _finished_seeds(out, args.models, range(n_seeds))
        ):
            _message(
                f"Run folder {out} already holds this finished run ({n_seeds} seed(s)); "
                "nothing to do. Pass a larger --seeds to extend it."
            )
            print(f"Run folder: {out}")
            return 0

    settings = TrainSettings.from_args(args)
    hp = cli.hparams(args)
    validation = make_dataset(
        x_val, y_val, batch_size=max(args.batch_size, 500), training=False, seed=0
    )
    pairs = [(name, seed) for name in args.models for seed in range(n_seeds)]
    if not writes:
        # A non-chief worker of --strategy multi_worker: train in step with the chief (which
        # writes the run folder, evaluates and reports), resuming from its checkpoints.
        jobs = [
            (
                _model_dir(out, args.models, name) / f"seed-{seed}",
                seed,
                lambda name=name, seed=seed: build_model(name, hp, seed=seed, layer=args.layer),
            )
            for name, seed in pairs
        ]
        distribute.train_as_worker(jobs, (x_train, y_train), validation, settings, strategy)
        print(f"Worker done; the chief writes the run folder: {out}")
        return 0

    # Where this call writes: the run folder itself, or (--overwrite of an existing run) a
    # staging folder swapped in at the end, so the old run survives any failure before that.
    work = out
    if plan.mode == "replace":
        work = run_folder.prepare_staging(out, ident, task="ecg5000")
    run_folder.check_writable(work)
    removed = remove_stale_temp_files(work, min_age_seconds=600.0 if args.shard else 0.0)
    if removed:
        _message(f"Removed {len(removed)} stale temporary file(s) of an interrupted run in {work}")
    config_path = work / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        if config.get("seeds") != list(range(n_seeds)):
            config["seeds"] = list(range(n_seeds))
            atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
    else:
        config = {
            "task": "ecg5000",
            "tool": "python -m training.ecg",
            "command": command.strip(),
            "config_hash": chash,
            "identity": ident,
            "seeds": list(range(n_seeds)),
            "jit_compile": args.jit,
            "precision_requested": args.precision,
            "models": {
                m: {"cell": MODELS[m].cell, "label": MODELS[m].label, "noisy": MODELS[m].noisy}
                for m in args.models
            },
            "data": {
                "source": data.source,
                "files": data.files,
                "sha256": data.sha256,
                "split_seed": data.split_seed,
                "validation_size": data.validation_size,
                "sizes": {"train": len(x_train), "validation": len(x_val), "test": len(x_test)},
                "labels": "UCR class 1 (normal) -> 0, classes 2-5 (abnormal) -> 1",
            },
            "perturbation_grid": robustness.grid_to_json(grid),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")

    shared_inputs = robustness.PerturbedInputs(x_test, base_seed=args.perturbation_seed)
    results_models: dict[str, Any] = {}
    history_rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()

    def _train_and_evaluate(name: str, seed: int) -> dict[str, Any]:
        """Train (or resume) one (model, seed) and evaluate it; reuse a finished one."""
        sdir = _model_dir(work, args.models, name) / f"seed-{seed}"
        eval_path = sdir / "eval.json"
        if eval_path.exists():
            _message(f"[{name} seed {seed}] finished earlier; reusing {eval_path}")
            return json.loads(eval_path.read_text())
        seed_run = train_seed(
            lambda name=name, seed=seed: build_model(name, hp, seed=seed, layer=args.layer),
            (x_train, y_train),
            validation,
            sdir,
            settings,
            seed=seed,
            progress_desc=f"{name} seed {seed}",
            tensorboard=not args.no_tensorboard,
            strategy=strategy,
        )
        if seed_run.resumed_from:
            _message(f"[{name} seed {seed}] resumed from epoch {seed_run.resumed_from}")
        t_eval = time.perf_counter()
        model = keras.saving.load_model(seed_run.model_path, compile=False)
        model.compile(jit_compile=args.jit)
        accs = robustness.evaluate_robustness(
            model, x_test, y_test, grid, shared_inputs, jit_compile=False
        )
        epoch_seconds = [r["seconds"] for r in seed_run.history]
        record = {
            "model": name,
            "seed": seed,
            "accuracy": accs,
            "best_val_accuracy": seed_run.best_val_accuracy,
            "best_epoch": seed_run.best_epoch,
            "epochs": seed_run.epochs_done,
            "median_seconds_per_epoch": float(np.median(epoch_seconds)),
            "train_seconds_last_call": round(seed_run.train_seconds, 2),
            "eval_seconds": round(time.perf_counter() - t_eval, 2),
            "layer": args.layer,
            "jit_compile": args.jit,
            "strategy": args.strategy,
            "replicas": 1 if strategy is None else strategy.num_replicas_in_sync,
        }
        atomic_write_text(eval_path, json.dumps(record, indent=2) + "\n")
        keras.backend.clear_session()
        _message(
            f"[{name} seed {seed}] best val acc {seed_run.best_val_accuracy:.4f} "
            f"(epoch {seed_run.best_epoch}); test clean {accs['clean']:.4f}, "
            f"white 1.2 {accs['white_noise'].get('1.2', float('nan')):.4f}, "
            f"mult 1.2 {accs['multiplicative_noise'].get('1.2', float('nan')):.4f}"
        )
        return record

    if args.shard is not None:
        index, count = args.shard
        mine = {p for i, p in enumerate(pairs) if i % count == index}
        for name, seed in pairs:
            if (name, seed) in mine:
                _train_and_evaluate(name, seed)
        missing = [
            f"{n} seed {s}"
            for n, s in pairs
            if not (_model_dir(work, args.models, n) / f"seed-{s}" / "eval.json").exists()
        ]
        if missing:
            _message(
                f"Shard {index}/{count} done; still missing: {', '.join(missing)}. The report "
                "is written by the last shard to finish, or by the same command without --shard."
            )
            return 0

    for name in args.models:
        mdir = _model_dir(work, args.models, name)
        per_seed: dict[str, Any] = {}
        summaries: dict[str, Any] = {}
        for seed in range(n_seeds):
            sdir = mdir / f"seed-{seed}"
            record = _train_and_evaluate(name, seed)
            per_seed[str(seed)] = record["accuracy"]
            summaries[str(seed)] = {k: v for k, v in record.items() if k != "accuracy"}
            history_path = sdir / "history.csv"
            if history_path.exists():
                with open(history_path, newline="") as f:
                    for row in csv.DictReader(f):
                        history_rows.append({"model": name, "seed": seed, **row})
        best_seed = max(summaries, key=lambda s: summaries[s]["best_val_accuracy"])
        atomic_write_bytes(
            mdir / "model.keras", (mdir / f"seed-{best_seed}" / "model.keras").read_bytes()
        )
        results_models[name] = {
            "label": MODELS[name].label,
            "best_seed": int(best_seed),
            **robustness.aggregate_results(per_seed),
            "per_seed": per_seed,
            "training": summaries,
        }

    # Reports.
    labels = {results_models[m]["label"]: results_models[m] for m in args.models}
    seconds = [
        s["median_seconds_per_epoch"]
        for r in results_models.values()
        for s in r["training"].values()
    ]
    results = {
        "task": "ecg5000",
        "config_hash": chash,
        "command": command.strip(),
        "grid": robustness.grid_to_json(grid),
        "accuracy_unit": "fraction",
        "std": "sample standard deviation over seeds (ddof=1)",
        "perturbation_seed": args.perturbation_seed,
        "models": results_models,
        "paper_table3_percent": reporting.PAPER_ECG_TABLE3,
        "median_seconds_per_epoch": float(np.median(seconds)) if seconds else None,
        "wall_seconds_this_call": round(time.perf_counter() - t_start, 1),
    }
    if history_rows:
        buf = io.StringIO()
        fields: list[str] = []
        for row in history_rows:
            fields += [k for k in row if k not in fields]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history_rows)
        atomic_write_text(work / "history.csv", buf.getvalue())
    notes = [
        f"data: ECG5000 from {data.source} ({len(x_train)} train / {len(x_val)} validation / "
        f"{len(x_test)} test), sha256 verified",
        f"epochs {args.epochs}, lr {args.lr} x{args.lr_decay_factor} from epoch "
        f"{args.lr_decay_epoch}, batch {args.batch_size}, precision {precision}, "
        f"layer {args.layer}, jit_compile {args.jit} (this call; each seed's eval.json "
        "records its own)",
        f"median seconds per epoch: {results['median_seconds_per_epoch']:.3f}"
        if seconds
        else "median seconds per epoch: n/a",
        "best epoch chosen on validation accuracy; evaluated in inference mode (no noise)",
    ]
    reporting.plot_robustness(
        work / "robustness.png", labels, grid, title="ECG5000 robustness (test accuracy)"
    )
    reporting.write_results_md(
        work / "results.md",
        labels,
        grid,
        title="ECG5000: robustness to input perturbations",
        command=command.strip(),
        notes=notes,
        paper=reporting.PAPER_ECG_TABLE3,
    )
    # results.json last: its presence marks the run folder as finished.
    reporting.write_results_json(work / _STATUS_FILE, results)
    if work != out:
        run_folder.swap_in(work, out)
        _message(f"Replaced the previous run in {out} (--overwrite).")
    print(reporting.markdown_table(labels, {k: grid[k] for k in grid}, None))
    print(f"Run folder: {out}")
    return 0


def _precheck(args: argparse.Namespace) -> None:
    """Checks of paths that need no TensorFlow (raise `RunFolderError` / `DataIntegrityError`)."""
    from training.data import DataIntegrityError
    from training.data.ecg5000 import FILES
    from training.run_folder import check_out_path

    if args.out is not None:
        check_out_path(args.out)
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise DataIntegrityError(
            f"argument --data-dir must be an existing folder holding {' and '.join(FILES)}; "
            f"received --data-dir {args.data_dir!r}, which is not a folder"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m training.ecg`; returns the exit status.

    Arguments are parsed and paths checked before TensorFlow is imported; operator errors
    print one line (`error: ...`) and return 2, an interruption returns 3.

    Example:

    >>> main(["--units", "0"])  # doctest: +SKIP
    2
    """
    from tf_startup import import_tensorflow_quietly
    from training import cli
    from training.data import DataIntegrityError, DataUnavailableError
    from training.distribute import DistributeConfigError, configure_cpu_replicas
    from training.run_folder import RunFolderError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_ecg_parser()
    try:
        args = cli.parse_args(parser, argv, check_models=False)
        _precheck(args)
        import_tensorflow_quietly()
        configure_cpu_replicas(args.cpu_replicas)
        cli.check_model_names(parser, args.models)
    except SystemExit as e:
        return int(e.code or 0)
    except (RunFolderError, DataIntegrityError, DistributeConfigError) as e:
        _message(f"error: {_one_line(e)}")
        return EXIT_REFUSED

    import keras

    from training.models import UnknownModelError
    from training.runner import SimulatedInterruptionError

    previous_policy = keras.mixed_precision.global_policy().name
    try:
        return run(args, argv)
    except (
        UnknownModelError,
        RunFolderError,
        DataIntegrityError,
        DataUnavailableError,
        DistributeConfigError,
    ) as e:
        _message(f"error: {_one_line(e)}")
        return EXIT_REFUSED
    except OSError as e:  # e.g. the disk filled up or a folder became read-only mid-run
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _message(f"error: {e.strerror or e}{where}; the run folder keeps its last checkpoint.")
        return EXIT_REFUSED
    except (KeyboardInterrupt, SimulatedInterruptionError) as e:
        _message(
            f"Interrupted ({type(e).__name__}: {e}). Repeat the same command to resume from the "
            "last finished epoch."
        )
        return EXIT_INTERRUPTED
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
