"""Command-line arguments of the experiment runners (`python -m training.ecg`).

`build_parser` defines the flags, `parse_args` parses and validates them (errors name the flag,
the bad value and what was expected, and exit with status 2 like any argparse error), and
`identity` gives the part of the configuration that determines the results, hashed into the
default output folder name.

Nothing here imports TensorFlow at module level: `--help` and every argument error except an
unknown model name are answered without it. Model names are checked last, through
`training.models` (which imports Keras), after `tf_startup.import_tensorflow_quietly`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "EXECUTION_KEYS",
    "PRECISIONS",
    "OneLineErrorParser",
    "build_parser",
    "check_model_names",
    "config_hash",
    "hparams",
    "identity",
    "identity_differences",
    "parse_args",
    "resolve_jit",
    "resolve_precision",
]

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
SCHEMES = ("euler_maruyama", "tamed", "milstein", "research")
LEARNABLE_DT = ("default", "none", "scalar", "per_unit")
COMPARE_MODELS = ("nrnn", "lipschitz")


class OneLineErrorParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (no usage block), still exit status 2.

    Example:

    >>> p = OneLineErrorParser(prog="x")
    >>> _ = p.add_argument("--n", type=int)
    >>> try:
    ...     p.parse_args(["--n", "a"])
    ... except SystemExit as e:
    ...     print(e.code)
    2
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except a `None` default (its help says what it means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(
    prog: str,
    description: str,
    defaults: dict[str, Any],
) -> argparse.ArgumentParser:
    """The argument parser of an experiment runner.

    Args:
        prog: program name shown in usage (e.g. `"python -m training.ecg"`).
        description: help text.
        defaults: default values of the hyperparameters (`units`, `dt`, `beta`, `gamma_a`,
            `gamma_w`, `additive_noise`, `multiplicative_noise`, `lr`, `batch_size`, `epochs`).

    Returns:
        An `argparse.ArgumentParser`.

    Example:

    >>> p = build_parser("x", "", {"units": 8, "epochs": 2})
    >>> p.parse_args(["--units", "4"]).units
    4
    """
    d = defaults
    p = OneLineErrorParser(
        prog=prog,
        description=description,
        formatter_class=_DefaultsHelpFormatter,
    )
    g = p.add_argument_group("models")
    g.add_argument(
        "--model",
        default="nrnn",
        help="model to train: nrnn, lipschitz, antisymmetric, cornn, exprnn, their noisy_* "
        "variants, ... (an unknown name lists every registered one)",
    )
    g.add_argument(
        "--models",
        default=None,
        help="comma-separated models trained into one report (overrides --model), e.g. "
        "'nrnn,lipschitz'",
    )
    g.add_argument(
        "--compare",
        action="store_true",
        help=f"shorthand for --models {','.join(COMPARE_MODELS)}",
    )
    g = p.add_argument_group("cell hyperparameters")
    g.add_argument("--units", type=int, default=d.get("units", 128), help="hidden units")
    g.add_argument("--dt", type=float, default=d.get("dt", 0.1), help="Euler step delta")
    g.add_argument("--beta", type=float, default=d.get("beta", 0.9), help="skew level in [0, 1]")
    g.add_argument("--gamma-a", type=float, default=d.get("gamma_a", 0.001), help="damping of A")
    g.add_argument("--gamma-w", type=float, default=d.get("gamma_w", 0.001), help="damping of W")
    g.add_argument(
        "--additive-noise",
        type=float,
        default=d.get("additive_noise", 0.06),
        help="eps*sigma_1, additive noise level of noisy models",
    )
    g.add_argument(
        "--multiplicative-noise",
        type=float,
        default=d.get("multiplicative_noise", 0.03),
        help="eps*sigma_2, multiplicative noise level of noisy models",
    )
    g.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="gamma of the Antisymmetric RNN (diffusion) and coRNN; None: the cell's own",
    )
    g.add_argument(
        "--epsilon", type=float, default=None, help="epsilon of coRNN; None: the cell's own"
    )
    g.add_argument(
        "--init-std", type=float, default=d.get("init_std", 0.1), help="M_A, M_W ~ N(0, (s/N)^2)"
    )
    g.add_argument(
        "--scheme",
        choices=SCHEMES,
        default=d.get("scheme", "euler_maruyama"),
        help="integration scheme: eq. 5, tamed, Milstein, or 'research' = the paper's "
        "research-code update (Euler steps with keras_nrnn.noise.ResearchNoise)",
    )
    g.add_argument(
        "--learnable-dt",
        choices=LEARNABLE_DT,
        default="default",
        help="learnable step: scheme default (per_unit for 'research', else none) or explicit",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.get("epochs", 100), help="training epochs")
    g.add_argument("--lr", type=float, default=d.get("lr", 1e-3), help="Adam learning rate")
    g.add_argument("--batch-size", type=int, default=d.get("batch_size", 128), help="batch size")
    g.add_argument(
        "--lr-decay-epoch",
        type=int,
        default=None,
        help="1-based epoch from which lr is multiplied by --lr-decay-factor "
        "(default: the first epoch after 90%% of them; --epochs+1 disables the decay)",
    )
    g.add_argument("--lr-decay-factor", type=float, default=0.1, help="lr multiplier")
    g.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1) per model")
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="dtype policy; auto = mixed_float16 with a GPU, float32 otherwise",
    )
    g.add_argument(
        "--jit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"XLA-compile the train step (jit_compile); default: {_jit_default_text(d)}",
    )
    g.add_argument(
        "--layer",
        choices=("auto", "rnn", "sdernn"),
        default="auto",
        help="recurrent layer: keras_nrnn.SDERNN (fast path) or keras.layers.RNN; "
        "auto = SDERNN for single-state cells",
    )
    g = p.add_argument_group("input / output")
    g.add_argument("--out", default=None, help="run folder (default: runs/<task>/<models>-<hash>)")
    g.add_argument("--data-dir", default=None, help="folder with the dataset files")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing run folder (finished or not) and start afresh",
    )
    g.add_argument(
        "--perturbation-seed",
        type=int,
        default=d.get("perturbation_seed", 20211206),
        help="seed of the perturbed test inputs (shared by every model and seed)",
    )
    g.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="train only the (model, seed) pairs whose index is I modulo N, to run N processes "
        "in parallel on one --out; the last one to finish (or a rerun without --shard) writes "
        "the report",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    from training.distribute import add_strategy_arguments

    add_strategy_arguments(p)
    g.add_argument("--no-tensorboard", action="store_true", help="skip TensorBoard logs")
    # Hidden debug flags: train and evaluate on the first N examples of a split.
    for split in ("train", "val", "test"):
        g.add_argument(f"--limit-{split}", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _fail(parser: argparse.ArgumentParser, flag: str, value: Any, expected: str) -> None:
    parser.error(f"argument {flag} must be {expected}; received {flag} {value!r}")


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    check_models: bool = True,
) -> argparse.Namespace:
    """Parse and validate; fill `models` (list) and `lr_decay_epoch` (1-based int).

    Invalid values exit with status 2 and a message naming the flag and the value. Everything
    but the model names is checked without TensorFlow.

    Args:
        parser: from `build_parser`.
        argv: arguments (default `sys.argv[1:]`).
        check_models: check the model names too (`check_model_names`, which imports
            TensorFlow); pass False to do it later, after other cheap checks.

    Returns:
        The namespace.

    Example:

    >>> p = build_parser("x", "", {"epochs": 10})
    >>> a = parse_args(p, ["--compare"])
    >>> a.models, a.lr_decay_epoch
    (['nrnn', 'lipschitz'], 10)
    """
    args = parser.parse_args(argv)
    if args.compare and args.models:
        parser.error("use either --compare or --models, not both")
    if args.compare:
        models = list(COMPARE_MODELS)
    elif args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            _fail(parser, "--models", args.models, "a comma-separated list of model names")
    else:
        models = [args.model]
    if len(set(models)) != len(models):
        _fail(parser, "--models", ",".join(models), "a list without repeated names")
    args.models = models

    def positive_int(flag: str, value: Any) -> None:
        if value is None or value < 1:
            _fail(parser, flag, value, "an integer >= 1")

    def number(flag: str, value: float, lo: float, hi: float = math.inf, lo_open=False) -> None:
        ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            bracket = "(" if lo_open else "["
            _fail(parser, flag, value, f"a number in {bracket}{lo:g}, {hi:g}]")

    positive_int("--units", args.units)
    positive_int("--epochs", args.epochs)
    positive_int("--batch-size", args.batch_size)
    positive_int("--seeds", args.seeds)
    number("--dt", args.dt, 0.0, lo_open=True)
    number("--beta", args.beta, 0.0, 1.0)
    number("--gamma-a", args.gamma_a, 0.0)
    number("--gamma-w", args.gamma_w, 0.0)
    number("--additive-noise", args.additive_noise, 0.0)
    number("--multiplicative-noise", args.multiplicative_noise, 0.0)
    number("--init-std", args.init_std, 0.0)
    if args.gamma is not None:
        number("--gamma", args.gamma, 0.0)
    if args.epsilon is not None:
        number("--epsilon", args.epsilon, 0.0)
    number("--lr", args.lr, 0.0, lo_open=True)
    number("--lr-decay-factor", args.lr_decay_factor, 0.0, lo_open=True)
    if args.lr_decay_epoch is None:
        args.lr_decay_epoch = round(0.9 * args.epochs) + 1
    elif not 1 <= args.lr_decay_epoch <= args.epochs + 1:
        _fail(
            parser,
            "--lr-decay-epoch",
            args.lr_decay_epoch,
            f"an integer in [1, {args.epochs + 1}] (epochs + 1 disables the decay)",
        )
    if args.perturbation_seed < 0:
        _fail(parser, "--perturbation-seed", args.perturbation_seed, "an integer >= 0")
    if args.shard is not None:
        try:
            index, count = (int(v) for v in args.shard.split("/"))
        except ValueError:
            index, count = -1, 0
        if not 0 <= index < count:
            _fail(parser, "--shard", args.shard, "I/N with integers 0 <= I < N, e.g. 0/2")
        args.shard = (index, count)
    for split in ("train", "val", "test"):
        value = getattr(args, f"limit_{split}")
        if value is not None:
            positive_int(f"--limit-{split}", value)
    if args.overwrite and args.shard is not None:
        parser.error("use either --overwrite or --shard, not both (replace the run folder first)")
    from training.distribute import check_strategy_args

    check_strategy_args(parser, args)
    if check_models:
        check_model_names(parser, args.models)
    return args


def check_model_names(parser: argparse.ArgumentParser, models: Sequence[str]) -> None:
    """Exit with status 2 unless every name in `models` is registered in `training.models`.

    Imports TensorFlow (quietly) the first time: call it after every cheaper check.

    Args:
        parser: from `build_parser` (for the error exit).
        models: model names.
    """
    from tf_startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from training.models import model_names

    for m in models:
        if m not in model_names():
            flag = "--models" if len(models) > 1 else "--model"
            _fail(parser, flag, m, f"one of {model_names()}")


def resolve_precision(precision: str) -> str:
    """The dtype policy name for `--precision` (auto: mixed_float16 with a GPU, else float32).

    Example:

    >>> resolve_precision("float32")
    'float32'
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"Argument `precision` must be one of {list(PRECISIONS)}; received "
            f"precision={precision!r}."
        )
    if precision != "auto":
        return precision
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def _jit_default_text(defaults: dict[str, Any]) -> str:
    if not defaults.get("jit", False):
        return "off"
    return "on, except with --precision mixed_bfloat16 on a CPU"


def resolve_jit(jit: bool | None, precision: str, default: bool) -> bool:
    """`--jit` as given, else the runner's `default`, except that a `mixed_bfloat16` policy on
    a CPU runs without XLA: XLA's CPU matmul has no fast bf16 kernel (the training step was
    1.6x slower than float32), while TensorFlow's own ops hand bf16 matmuls to oneDNN, which
    uses the CPU's bf16 instructions (AVX-512 bf16, AMX); docs/performance.md has the figures.

    Example:

    >>> resolve_jit(None, "float32", True), resolve_jit(False, "float32", True)
    (True, False)
    """
    if jit is not None:
        return bool(jit)
    if not default or precision != "mixed_bfloat16":
        return bool(default)
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def hparams(args: argparse.Namespace) -> dict[str, Any]:
    """The flat cell hyperparameters of `args` (input of `training.models.cell_kwargs`)."""
    out = {
        "units": args.units,
        "dt": args.dt,
        "beta": args.beta,
        "gamma_a": args.gamma_a,
        "gamma_w": args.gamma_w,
        "additive_noise": args.additive_noise,
        "multiplicative_noise": args.multiplicative_noise,
        "init_std": args.init_std,
        "scheme": args.scheme,
    }
    if args.learnable_dt != "default":
        out["learnable_dt"] = args.learnable_dt
    for name in ("gamma", "epsilon"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    return out


def identity(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """Everything that determines the mathematics of a run.

    Not the number of seeds (a run can be extended with more), nor how it is executed: paths,
    `--jit`, `--layer` (`SDERNN` and `keras.layers.RNN` run the same cell update; they draw the
    noise in another order, which changes a seed's result but not what is computed), `--shard`,
    verbosity. Two commands with the same identity share a run folder: the second resumes or
    extends the first.
    """
    return {
        "models": list(args.models),
        "hparams": hparams(args),
        "training": {
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "lr_decay_epoch": args.lr_decay_epoch,
            "lr_decay_factor": args.lr_decay_factor,
            "optimizer": "adam",
        },
        "precision": precision,
        "perturbation_seed": args.perturbation_seed,
        "limits": {
            "train": args.limit_train,
            "val": args.limit_val,
            "test": args.limit_test,
        },
    }


# Keys that identities of older run folders held although they do not change the mathematics.
EXECUTION_KEYS = ("layer",)


def identity_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys in which two identities differ, as `"key: old -> new"` lines.

    Keys in `EXECUTION_KEYS` are ignored at the top level.

    Args:
        old: the identity recorded in a run folder.
        new: the identity of the current command.

    Returns:
        Sorted differences; empty if the two describe the same mathematics.

    Example:

    >>> identity_differences({"training": {"epochs": 300}, "layer": "rnn"},
    ...                      {"training": {"epochs": 5}})
    ['training.epochs: 300 -> 5']
    """

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, dict):
            return {prefix: tree}
        out: dict[str, Any] = {}
        for key, value in tree.items():
            if not prefix and key in EXECUTION_KEYS:
                continue
            out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out

    a, b = flat(old), flat(new)
    missing = object()
    return [
        f"{key}: {_show(a.get(key, missing))} -> {_show(b.get(key, missing))}"
        for key in sorted(set(a) | set(b))
        if a.get(key, missing) != b.get(key, missing)
    ]


def _show(value: Any) -> str:
    if isinstance(value, (str, int, float, bool, list, dict, type(None))):
        return json.dumps(value)
    return "(absent)"


def config_hash(ident: dict[str, Any], length: int = 8) -> str:
    """Short sha256 of a JSON-serialisable identity (sorted keys).

    Example:

    >>> config_hash({"a": 1}) == config_hash({"a": 1}) != config_hash({"a": 2})
    True
    """
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]
