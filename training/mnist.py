"""Pixel-by-pixel MNIST end to end: the paper's Tables 1 and 2 (ordered) and 5 (permuted).

    python -m training.mnist                         # NRNN 0.02/0.02, the 2-core CPU budget
    python -m training.mnist --compare               # NRNN 0.02/0.02, NRNN 0.02/0.05, Lipschitz
    python -m training.mnist --task permuted --permutation-seed 0
    python -m training.mnist --preset paper --compare --seeds 10 --precision mixed_float16 --jit

Each digit is a sequence of 784 steps of one pixel in [0, 1] (`training.data.mnist`), in
row-major order (`--task ordered`) or under the fixed permutation
`numpy.random.default_rng(--permutation-seed).permutation(784)` (`--task permuted`; the
permutation itself is stored in `config.json`, so evaluation and export read the same one). The
model is `Input((784, 1)) -> SDERNN(cell) -> Dense(10)` (logits), trained with Adam (optional
gradient-norm clipping) on the training digits, the best epoch chosen on validation digits, and
evaluated in inference mode (no noise) on test digits: clean, additive white noise
σ = 0.1 / 0.2 / 0.3, salt and pepper α = 0.03 / 0.05 / 0.1, and the adversarial perturbations of
Table 2, r = 0.01 / 0.05 / 0.1 / 0.15. The paper (section 7) builds those with the fast gradient
sign method, `x + r sign(grad_x loss)`, i.e. an L-infinity perturbation of norm r, not clipped
to [0, 1]; `training.perturbations.fgsm` is exactly that. The random perturbations are the same
inputs for every model and seed.

Two budgets (`--preset`):

- `cpu` (default): sized to finish one NRNN seed, training and evaluation, in about 30 minutes
  on two CPU cores (`CPU_PRESET`; README, "Pixel MNIST", has the measurements it comes from).
- `paper`: appendix Table 4, all 50,000 training digits, 100 epochs, learning rate x0.1 from
  epoch 91, every validation and test digit. Meant for a GPU (add `--precision mixed_float16
  --jit`); the code path is the same as on the CPU.

Explicit flags override the preset. The run folder (`--out`, default
`runs/mnist/<task>-<models>-<hash of the configuration>`) holds the same files as
`python -m training.ecg` (config.json, results.json, results.md, robustness.png, history.csv,
model.keras, per-seed folders with checkpoints and TensorBoard logs) plus `learning_curve.png`
(validation accuracy against training wall time). Repeating a command resumes it; a finished
run is never overwritten; a run folder trained under another permutation is refused.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import csv
import dataclasses
import io
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CPU_PRESET",
    "DEFAULTS",
    "PAPER_MNIST_TABLES",
    "PAPER_PRESET",
    "Entry",
    "build_mnist_parser",
    "main",
    "model_entries",
    "parse_mnist_args",
    "run",
]

# Appendix Table 4, ordered and permuted pixel MNIST.
DEFAULTS: dict[str, Any] = {
    "units": 128,
    "dt": 0.01,
    "beta": 0.75,
    "gamma_a": 0.001,
    "gamma_w": 0.001,
    "additive_noise": 0.02,
    "multiplicative_noise": 0.02,
    # As for ECG: the paper's numbers came from its research-code update (docs/schemes...).
    "scheme": "research",
    "lr": 1e-3,
    "batch_size": 128,
    "epochs": 100,
    "jit": True,
}

# The 2-core CPU budget (see the README section "Pixel MNIST" for the measurements behind it).
# Probes (lr, dt, clipnorm compared per training step) chose lr 3e-3 with clipnorm 1.0 and the
# paper's dt: lr 1e-2 did not learn, dt 0.1 was unstable, dt 0.03 was no faster than 0.01.
# 8 epochs of all 50,000 digits (400k sequences, lr x0.1 in the last two) reached 96.2 % in
# 22 minutes with the evaluation of all 10,000 test digits (a quiet 2-core AMD EPYC).
CPU_PRESET: dict[str, Any] = {
    "epochs": 8,
    "lr": 3e-3,
    "lr_decay_last_epochs": 2,
    "subset": None,
    "val_subset": 2_000,
    "test_subset": None,
    "clipnorm": 1.0,
}
PAPER_PRESET: dict[str, Any] = {
    "epochs": 100,
    "lr": 1e-3,
    "subset": None,
    "val_subset": None,
    "test_subset": None,
    "clipnorm": None,
}
PRESETS = {"cpu": CPU_PRESET, "paper": PAPER_PRESET}
COMPARE_ADDITIVE_LEVELS = (0.02, 0.05)

# Lim et al. (2021): Tables 1 and 2 (ordered), appendix Table 5 (permuted); test accuracy (%),
# mean of 10 seeds. Table 5's extracted header lost its strengths; its columns are read as
# Table 1's (σ 0.1 / 0.2 / 0.3, α 0.03 / 0.05 / 0.1), as its text describes the same kinds.
_SIGMA, _ALPHA, _R = ("0.1", "0.2", "0.3"), ("0.03", "0.05", "0.1"), ("0.01", "0.05", "0.1", "0.15")


def _row(clean, white, sp, adv=None) -> dict[str, Any]:
    row = {
        "clean": clean,
        "white_noise": dict(zip(_SIGMA, white, strict=True)),
        "salt_and_pepper": dict(zip(_ALPHA, sp, strict=True)),
    }
    if adv is not None:
        row["fgsm"] = dict(zip(_R, adv, strict=True))
    return row


PAPER_MNIST_TABLES: dict[str, dict[str, dict[str, Any]]] = {
    "ordered": {
        "Antisymmetric RNN": _row(97.5, (45.7, 22.3, 17.0), (77.1, 63.9, 42.6),
                                  (79.4, 24.7, 11.4, 10.2)),
        "coRNN": _row(99.1, (96.6, 61.9, 32.1), (95.6, 88.1, 58.9), (97.5, 85.5, 55.9, 35.1)),
        "expRNN": _row(96.7, (86.7, 58.1, 33.3), (83.6, 70.7, 43.4), (94.5, 59.3, 19.7, 14.3)),
        "Lipschitz RNN": _row(99.2, (98.4, 78.9, 47.1), (97.6, 93.4, 73.5),
                              (98.1, 85.7, 58.9, 37.1)),
        "NRNN 0.02/0.02": _row(99.1, (98.9, 88.4, 62.9), (98.3, 95.6, 78.7),
                               (98.8, 94.3, 79.6, 58.3)),
        "NRNN 0.02/0.05": _row(99.1, (98.9, 92.2, 73.5), (98.5, 97.1, 85.5),
                               (98.8, 95.5, 86.8, 70.6)),
    },
    "permuted": {
        "Antisymmetric RNN": _row(92.8, (92.4, 89.5, 81.9), (90.5, 87.9, 72.6)),
        "coRNN": _row(96.05, (65.1, 38.25, 29.1), (84.8, 73.8, 52.6)),
        "expRNN": _row(93.3, (90.6, 78.4, 61.6), (80.4, 70.6, 51.6)),
        "Lipschitz RNN": _row(95.9, (95.4, 93.5, 83.7), (93.7, 90.2, 70.8)),
        "NRNN 0.02/0.02": _row(94.9, (94.8, 94.6, 94.3), (94.0, 93.1, 88.6)),
        "NRNN 0.02/0.05": _row(94.7, (94.6, 94.6, 94.4), (94.0, 93.2, 90.5)),
    },
}  # fmt: skip

_STATUS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the report: a registered model with its own hyperparameters.

    Attributes:
        key: folder and JSON name (`"nrnn"`, `"nrnn-add0.05"`, `"lipschitz"`).
        model: the `training.models` name.
        hparams: the flat cell hyperparameters of this row.
        label: the row's name in tables and plots (the paper's "mult./add." for NRNNs).
    """

    key: str
    model: str
    hparams: dict[str, Any]
    label: str


# ----------------------------------------------------------------------------- arguments


def _optional_count(flag: str):
    def parse(text: str) -> int | None:
        if text.strip().lower() == "all":
            return None
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(
                f"argument {flag} must be an integer >= 1 or 'all'; received {flag} {text!r}"
            )
        return value

    return parse


def _levels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(not (v >= 0.0 and v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(
            "argument --additive-noise-levels must be comma-separated numbers >= 0, e.g. "
            f"0.02,0.05; received --additive-noise-levels {text!r}"
        )
    return values


def build_mnist_parser(preset: str = "cpu") -> argparse.ArgumentParser:
    """The argument parser of `python -m training.mnist`, with the defaults of `preset`.

    Args:
        preset: `"cpu"` or `"paper"` (see `CPU_PRESET`, `PAPER_PRESET`).

    Returns:
        An `argparse.ArgumentParser`: the flags of `training.cli.build_parser` plus the MNIST
        group (`--task`, `--permutation-seed`, `--preset`, `--subset`, `--val-subset`,
        `--test-subset`, `--clipnorm`, `--additive-noise-levels`, `--eval-batch-size`).

    Example:

    >>> build_mnist_parser().parse_args([]).dt
    0.01
    """
    from training.cli import build_parser

    values = PRESETS[preset]
    p = build_parser(
        "python -m training.mnist",
        "Train Noisy RNNs on pixel-by-pixel MNIST (ordered or permuted), evaluate their "
        "robustness and write the paper's Tables 1, 2 (and 5) beside ours.",
        {**DEFAULTS, "epochs": values["epochs"], "lr": values["lr"]},
    )
    last = values.get("lr_decay_last_epochs")
    if last is not None:
        for action in p._actions:
            if "--lr-decay-epoch" in action.option_strings:
                action.help = (
                    "1-based epoch from which lr is multiplied by --lr-decay-factor "
                    f"(default with --preset {preset}: the last {last} epochs; --epochs+1 "
                    "disables the decay)"
                )
    g = p.add_argument_group("pixel MNIST")
    g.add_argument("--task", choices=("ordered", "permuted"), default="ordered")
    g.add_argument(
        "--permutation-seed",
        type=int,
        default=0,
        help="seed of the fixed pixel permutation of --task permuted "
        "(numpy default_rng(seed).permutation(784))",
    )
    g.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="cpu",
        help="defaults: 'cpu' = the 30-minute 2-core budget, 'paper' = appendix Table 4 "
        "(100 epochs, all digits; for a GPU)",
    )
    g.add_argument(
        "--subset",
        type=_optional_count("--subset"),
        default=values["subset"],
        help="training digits used (the first N of the 50,000), or 'all'",
    )
    g.add_argument(
        "--val-subset",
        type=_optional_count("--val-subset"),
        default=values["val_subset"],
        help="validation digits scored every epoch (first N of 10,000), or 'all'",
    )
    g.add_argument(
        "--test-subset",
        type=_optional_count("--test-subset"),
        default=values["test_subset"],
        help="test digits evaluated (first N of 10,000), or 'all'",
    )
    g.add_argument(
        "--clipnorm",
        type=float,
        default=values["clipnorm"],
        help="clip each gradient to this L2 norm (Adam's clipnorm); None: no clipping",
    )
    g.add_argument(
        "--additive-noise-levels",
        type=_levels,
        default=None,
        help="train every noisy model once per additive level (comma-separated), e.g. "
        f"'0.02,0.05'; default: --additive-noise, or {','.join(map(str, COMPARE_ADDITIVE_LEVELS))}"
        " with --compare (the paper's two NRNN rows)",
    )
    g.add_argument(
        "--eval-batch-size", type=int, default=500, help="batch of prediction and FGSM gradients"
    )
    return p


def parse_mnist_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate `python -m training.mnist` arguments (exit status 2 on bad input).

    Example:

    >>> a = parse_mnist_args(["--preset", "paper", "--compare"])
    >>> a.epochs, a.lr_decay_epoch, a.subset, a.additive_noise_levels
    (100, 91, None, (0.02, 0.05))
    """
    from training import cli

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    pre.add_argument("--lr-decay-epoch", default=None)
    known, _ = pre.parse_known_args(argv)
    parser = build_mnist_parser(known.preset)
    args = cli.parse_args(parser, argv)
    last = PRESETS[known.preset].get("lr_decay_last_epochs")
    if known.lr_decay_epoch is None and last is not None:
        # The preset's decay covers its last epochs, however many epochs are asked for.
        args.lr_decay_epoch = max(1, args.epochs - last + 1)
    if args.permutation_seed < 0:
        parser.error(
            "argument --permutation-seed must be an integer >= 0; received "
            f"--permutation-seed {args.permutation_seed}"
        )
    if args.clipnorm is not None and not (0.0 < args.clipnorm < float("inf")):
        parser.error(
            f"argument --clipnorm must be a number > 0; received --clipnorm {args.clipnorm}"
        )
    if args.eval_batch_size < 1:
        parser.error(
            "argument --eval-batch-size must be an integer >= 1; received "
            f"--eval-batch-size {args.eval_batch_size}"
        )
    if args.additive_noise_levels is None and args.compare:
        args.additive_noise_levels = COMPARE_ADDITIVE_LEVELS
    return args


def model_entries(args: argparse.Namespace) -> list[Entry]:
    """The report's rows: each model of `args.models`, noisy ones once per additive level.

    Example:

    >>> [e.key for e in model_entries(parse_mnist_args(["--compare"]))]
    ['nrnn-add0.02', 'nrnn-add0.05', 'lipschitz']
    """
    from training import cli
    from training.models import MODELS

    base = cli.hparams(args)
    levels = args.additive_noise_levels or (args.additive_noise,)
    out = []
    for name in args.models:
        spec = MODELS[name]
        if not spec.noisy:
            out.append(Entry(name, name, dict(base), spec.label))
            continue
        for level in levels:
            hp = dict(base, additive_noise=float(level))
            key = name if len(levels) == 1 else f"{name}-add{level:g}"
            label = f"{spec.label} {hp['multiplicative_noise']:g}/{level:g}"
            out.append(Entry(key, name, hp, label))
    return out


# ----------------------------------------------------------------------------- the run


def _permutation_refusal(out: Path, args: argparse.Namespace, permutation) -> str | None:
    """Refuse a run folder trained under another pixel order than this command's."""
    config_path = out / "config.json"
    if not config_path.is_file():
        return None
    previous = json.loads(config_path.read_text()).get("pixel_order")
    if previous is None:
        return None
    mine = (
        "ordered"
        if args.task == "ordered"
        else f"permuted, --permutation-seed {args.permutation_seed}"
    )
    theirs = (
        "ordered"
        if previous["task"] == "ordered"
        else f"permuted, --permutation-seed {previous['permutation_seed']}"
    )
    if mine != theirs:
        return (
            f"Run folder {out} was trained on pixels in the order ({theirs}); this command asks "
            f"for ({mine}). A model must be evaluated under the permutation it was trained with: "
            "repeat the training command's --task/--permutation-seed, or choose another --out."
        )
    recorded = previous.get("permutation")
    if permutation is not None and recorded is not None and list(permutation) != recorded:
        return (
            f"Run folder {out} records a permutation that numpy's default_rng("
            f"{args.permutation_seed}) no longer reproduces (numpy changed?); refusing to mix "
            "them. Use the numpy version in its config.json, or choose another --out."
        )
    return None


def _plot_learning_curves(path: Path, curves: dict[str, list[tuple[float, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from atomic_io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for label, pts in curves.items():
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot([x / 60.0 for x in xs], [100 * y for y in ys], marker="o", label=label)
    ax.set_xlabel("training wall time (min)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Pixel MNIST: validation accuracy against training time")
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _results_md(path: Path, task: str, labels, grid, command: str, notes: list[str]) -> None:
    from atomic_io import atomic_write_text
    from training import reporting

    paper = PAPER_MNIST_TABLES[task]
    random_grid = {k: v for k, v in grid.items() if k != "fgsm"}
    table = "Tables 1 and 2" if task == "ordered" else "appendix Table 5"
    parts = [
        f"# Pixel MNIST ({task}): robustness to input perturbations",
        "",
        "Test accuracy (%), mean ± standard deviation over seeds (ddof=1). s: additive white "
        "noise σ, a: salt-and-pepper α, r: FGSM step (L-infinity). NRNN rows are labelled "
        f"mult./add. noise as in the paper. Paper: Lim et al. (2021), {table}, mean of 10 seeds.",
        "",
        reporting.markdown_table(labels, random_grid, paper),
        "",
    ]
    if "fgsm" in grid:
        fgsm_paper = {k: v for k, v in paper.items() if "fgsm" in v} or None
        parts += [
            "Adversarial perturbations (FGSM" + (", paper Table 2" if fgsm_paper else "") + "):",
            "",
            reporting.markdown_table(labels, {"fgsm": grid["fgsm"]}, fgsm_paper),
            "",
        ]
    parts += ["```", command, "```", "", *[f"- {n}" for n in notes]]
    atomic_write_text(path, "\n".join(parts).rstrip() + "\n")


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the experiment described by validated `args`; return the exit status."""
    import keras
    import numpy as np

    from atomic_io import atomic_write_bytes, atomic_write_text
    from training import cli, distribute, reporting, robustness, run_folder
    from training.data.mnist import load_mnist, mnist_dataset, pixel_permutation, to_sequences
    from training.ecg import (
        EXIT_REFUSED,
        _message,
        _versions,
        _without_shard,
    )
    from training.models import MODELS, build_model, resolve_cell_class
    from training.perturbations import MNIST_ROBUSTNESS_GRID
    from training.runner import TrainSettings, train_seed

    strategy, writes = distribute.runner_strategy(args)
    precision = cli.resolve_precision(args.precision)
    args.jit = cli.resolve_jit(args.jit, precision, DEFAULTS["jit"])
    entries = model_entries(args)
    permutation = pixel_permutation(args.permutation_seed) if args.task == "permuted" else None
    subsets = {
        "train": args.limit_train or args.subset,
        "validation": args.limit_val or args.val_subset,
        "test": args.limit_test or args.test_subset,
    }
    ident = cli.identity(args, precision)
    ident["mnist"] = {
        "task": args.task,
        "permutation_seed": args.permutation_seed if args.task == "permuted" else None,
        "subsets": subsets,
        "clipnorm": args.clipnorm,
        "entries": {e.key: e.hparams for e in entries},
    }
    chash = cli.config_hash(ident)
    keys = "+".join(e.key for e in entries)
    out = Path(args.out) if args.out else Path("runs") / "mnist" / f"{args.task}-{keys}-{chash}"
    refusal = None if args.overwrite else _permutation_refusal(out, args, permutation)
    if refusal:
        _message(refusal)
        return EXIT_REFUSED
    # The shared run-folder rules (training.run_folder): a folder that is not this tool's run is
    # never written into or deleted; --overwrite builds the new run in a staging folder that
    # replaces the old one only when it has finished.
    task_name = f"mnist-{args.task}"
    plan = run_folder.plan_run(
        out, ident, task=task_name, overwrite=args.overwrite, prog="python -m training.mnist"
    )
    for name in args.models:  # fail early, before any training, on a missing baseline cell
        resolve_cell_class(name)
    keras.mixed_precision.set_global_policy(precision)

    data = load_mnist(args.data_dir)
    pixels, labels_of = {}, {}
    for split, n in subsets.items():
        px, y = data.split(split)
        pixels[split], labels_of[split] = px[:n], y[:n]
    x_train = to_sequences(pixels["train"], permutation)
    x_test = to_sequences(pixels["test"], permutation)
    y_train, y_test = labels_of["train"], labels_of["test"]
    grid = dict(MNIST_ROBUSTNESS_GRID)
    command = ("python -m training.mnist " + shlex.join(_without_shard(list(argv)))).strip()

    several = len(entries) > 1
    if plan.mode == "resume" and (out / _STATUS_FILE).is_file():
        seed_dirs = [
            (out / e.key if several else out) / f"seed-{k}"
            for e in entries
            for k in range(args.seeds)
        ]
        if all((d / "eval.json").is_file() for d in seed_dirs):
            _message(
                f"Run folder {out} already holds this finished run ({args.seeds} seed(s)); "
                "nothing to do. Pass a larger --seeds to extend it."
            )
            print(f"Run folder: {out}")
            return 0

    settings = TrainSettings.from_args(args)
    validation = mnist_dataset(
        pixels["validation"],
        labels_of["validation"],
        args.eval_batch_size,
        training=False,
        permutation=permutation,
    )

    def build_fn(entry: Entry, seed: int):
        return lambda: build_model(
            entry.model,
            entry.hparams,
            seed=seed,
            timesteps=784,
            features=1,
            classes=10,
            layer=args.layer,
        )

    if not writes:  # a non-chief worker of --strategy multi_worker (the chief writes the run)
        jobs = [
            ((out / e.key if several else out) / f"seed-{k}", k, build_fn(e, k))
            for e in entries
            for k in range(args.seeds)
        ]
        distribute.train_as_worker(jobs, (x_train, y_train), validation, settings, strategy)
        print(f"Worker done; the chief writes the run folder: {out}")
        return 0

    final_out = out
    if plan.mode == "replace":
        out = run_folder.prepare_staging(final_out, ident, task=task_name)
    out.mkdir(parents=True, exist_ok=True)
    run_folder.check_writable(out)
    config_path = out / "config.json"
    if not config_path.exists():
        config = {
            "task": f"mnist-{args.task}",
            "command": command,
            "config_hash": chash,
            "identity": ident,
            "seeds": list(range(args.seeds)),
            "jit_compile": args.jit,
            "precision_requested": args.precision,
            "preset": args.preset,
            "pixel_order": {
                "task": args.task,
                "permutation_seed": args.permutation_seed if permutation is not None else None,
                "rule": "sequence step t reads pixel permutation[t] of the row-major 28x28 "
                "image; permutation = numpy.random.default_rng(seed).permutation(784)",
                "permutation": None if permutation is None else permutation.tolist(),
            },
            "models": {
                e.key: {
                    "model": e.model,
                    "cell": MODELS[e.model].cell,
                    "label": e.label,
                    "noisy": MODELS[e.model].noisy,
                    "hparams": e.hparams,
                }
                for e in entries
            },
            "data": {
                "source": data.source,
                "file": data.file,
                "sha256": data.sha256,
                "splits": "train = first 50,000 original training digits, validation = the "
                "last 10,000, test = the 10,000 test digits; each used from its start",
                "sizes": {split: len(y) for split, y in labels_of.items()},
                "scaling": "pixel / 255, float32, shape (784, 1)",
            },
            "perturbation_grid": robustness.grid_to_json(grid),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")

    shared_inputs = robustness.PerturbedInputs(x_test, base_seed=args.perturbation_seed)
    t_start = time.perf_counter()

    def seed_dir(entry: Entry, seed: int) -> Path:
        return (out / entry.key if several else out) / f"seed-{seed}"

    def train_and_evaluate(entry: Entry, seed: int) -> dict[str, Any]:
        sdir = seed_dir(entry, seed)
        eval_path = sdir / "eval.json"
        if eval_path.exists():
            _message(f"[{entry.key} seed {seed}] finished earlier; reusing {eval_path}")
            return json.loads(eval_path.read_text())
        seed_run = train_seed(
            build_fn(entry, seed),
            (x_train, y_train),
            validation,
            sdir,
            settings,
            seed=seed,
            progress_desc=f"{entry.key} seed {seed}",
            tensorboard=not args.no_tensorboard,
            strategy=strategy,
        )
        if seed_run.resumed_from:
            _message(f"[{entry.key} seed {seed}] resumed from epoch {seed_run.resumed_from}")
        t_eval = time.perf_counter()
        model = keras.saving.load_model(seed_run.model_path, compile=False)
        model.compile(jit_compile=args.jit)
        accs = robustness.evaluate_robustness(
            model, x_test, y_test, grid, shared_inputs, batch_size=args.eval_batch_size
        )
        epoch_seconds = [r["seconds"] for r in seed_run.history]
        # Epoch 1 includes tracing and XLA compilation; the rate is that of the later epochs.
        steady = epoch_seconds[1:] or epoch_seconds
        record = {
            "model": entry.key,
            "seed": seed,
            "accuracy": accs,
            "best_val_accuracy": seed_run.best_val_accuracy,
            "best_epoch": seed_run.best_epoch,
            "epochs": seed_run.epochs_done,
            "median_seconds_per_epoch": float(np.median(epoch_seconds)),
            "train_sequences_per_second": round(len(x_train) / float(np.median(steady)), 1),
            "train_seconds_total": round(float(np.sum(epoch_seconds)), 2),
            "eval_seconds": round(time.perf_counter() - t_eval, 2),
            "strategy": args.strategy,
            "replicas": 1 if strategy is None else strategy.num_replicas_in_sync,
        }
        atomic_write_text(eval_path, json.dumps(record, indent=2) + "\n")
        keras.backend.clear_session()
        _message(
            f"[{entry.key} seed {seed}] best val acc {seed_run.best_val_accuracy:.4f} (epoch "
            f"{seed_run.best_epoch}); test clean {accs['clean']:.4f}, white 0.3 "
            f"{accs['white_noise']['0.3']:.4f}, s&p 0.1 {accs['salt_and_pepper']['0.1']:.4f}"
        )
        return record

    pairs = [(e, s) for e in entries for s in range(args.seeds)]
    if args.shard is not None:
        index, count = args.shard
        for i, (entry, seed) in enumerate(pairs):
            if i % count == index:
                train_and_evaluate(entry, seed)
        missing = [
            f"{e.key} seed {s}" for e, s in pairs if not (seed_dir(e, s) / "eval.json").exists()
        ]
        if missing:
            _message(
                f"Shard {index}/{count} done; still missing: {', '.join(missing)}. The report "
                "is written by the last shard to finish, or by the same command without --shard."
            )
            return 0

    results_models: dict[str, Any] = {}
    history_rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[float, float]]] = {}
    for entry in entries:
        per_seed, summaries = {}, {}
        for seed in range(args.seeds):
            record = train_and_evaluate(entry, seed)
            per_seed[str(seed)] = record["accuracy"]
            summaries[str(seed)] = {k: v for k, v in record.items() if k != "accuracy"}
            history_path = seed_dir(entry, seed) / "history.csv"
            if history_path.exists():
                elapsed, curve = 0.0, []
                with open(history_path, newline="") as f:
                    for row in csv.DictReader(f):
                        history_rows.append({"model": entry.key, "seed": seed, **row})
                        elapsed += float(row["seconds"])
                        if row.get("val_accuracy"):
                            curve.append((elapsed, float(row["val_accuracy"])))
                curves[f"{entry.label} seed {seed}"] = curve
        best_seed = max(summaries, key=lambda s: summaries[s]["best_val_accuracy"])
        mdir = out / entry.key if several else out
        atomic_write_bytes(
            mdir / "model.keras", (mdir / f"seed-{best_seed}" / "model.keras").read_bytes()
        )
        results_models[entry.key] = {
            "label": entry.label,
            "model": entry.model,
            "hparams": entry.hparams,
            "best_seed": int(best_seed),
            **robustness.aggregate_results(per_seed),
            "per_seed": per_seed,
            "training": summaries,
        }

    labels = {r["label"]: r for r in results_models.values()}
    rates = [s["train_sequences_per_second"] for r in results_models.values()
             for s in r["training"].values()]  # fmt: skip
    results = {
        "task": f"mnist-{args.task}",
        "config_hash": chash,
        "command": command,
        "grid": robustness.grid_to_json(grid),
        "accuracy_unit": "fraction",
        "std": "sample standard deviation over seeds (ddof=1)",
        "perturbation_seed": args.perturbation_seed,
        "permutation_seed": args.permutation_seed if permutation is not None else None,
        "models": results_models,
        "paper_percent": PAPER_MNIST_TABLES[args.task],
        "median_train_sequences_per_second": float(np.median(rates)) if rates else None,
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
        atomic_write_text(out / "history.csv", buf.getvalue())
    sizes = {split: len(y) for split, y in labels_of.items()}
    notes = [
        f"data: MNIST from {data.source} ({data.file}, sha256 verified); {sizes['train']} train "
        f"/ {sizes['validation']} validation / {sizes['test']} test digits; task {args.task}"
        + (f", permutation seed {args.permutation_seed}" if permutation is not None else ""),
        f"epochs {args.epochs}, lr {args.lr} x{args.lr_decay_factor} from epoch "
        f"{args.lr_decay_epoch}, batch {args.batch_size}, clipnorm {args.clipnorm}, precision "
        f"{precision}, layer {args.layer}, jit_compile {args.jit}, preset {args.preset}",
        f"median training throughput: {results['median_train_sequences_per_second']} sequences/s "
        "(epochs after the first, validation included)",
        "best epoch chosen on validation accuracy; evaluated in inference mode (no noise); "
        "FGSM without clipping to [0, 1], as the paper defines it",
    ]
    _plot_learning_curves(out / "learning_curve.png", curves)
    reporting.plot_robustness(
        out / "robustness.png", labels, grid, title=f"Pixel MNIST ({args.task}) robustness"
    )
    _results_md(out / "results.md", args.task, labels, grid, command, notes)
    # results.json last: its presence marks the run folder as finished.
    reporting.write_results_json(out / _STATUS_FILE, results)
    if out != final_out:
        run_folder.swap_in(out, final_out)
        out = final_out
    print(reporting.markdown_table(labels, grid, None))
    print(f"Run folder: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m training.mnist`; returns the exit status.

    Example:

    >>> main(["--task", "spiral"])  # doctest: +SKIP
    2
    """
    from tf_startup import import_tensorflow_quietly
    from training.data.mnist import DataIntegrityError, DataUnavailableError
    from training.distribute import DistributeConfigError, configure_cpu_replicas
    from training.ecg import EXIT_INTERRUPTED, EXIT_REFUSED, _message
    from training.run_folder import RunFolderError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_mnist_args(argv)
        # As training.ecg: TensorFlow (and with it Keras) is imported only after the arguments
        # are checked, and without its start-up banners.
        import_tensorflow_quietly()
        configure_cpu_replicas(args.cpu_replicas)
    except SystemExit as e:
        return int(e.code or 0)
    except DistributeConfigError as e:
        _message(f"error: {e}")
        return EXIT_REFUSED
    import keras

    from training.models import UnknownModelError
    from training.runner import SimulatedInterruptionError

    previous_policy = keras.mixed_precision.global_policy().name
    try:
        return run(args, argv)
    except (
        UnknownModelError,
        DataIntegrityError,
        DataUnavailableError,
        RunFolderError,
        DistributeConfigError,
    ) as e:
        _message(f"error: {e}")
        return EXIT_REFUSED
    except (KeyboardInterrupt, SimulatedInterruptionError) as e:
        _message(
            f"Interrupted ({type(e).__name__}: {e}). Repeat the same command to resume from the "
            "last finished epoch."
        )
        return EXIT_INTERRUPTED
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


if __name__ == "__main__":
    sys.exit(main())
