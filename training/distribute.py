"""Data-parallel training of the experiment runners with `tf.distribute`.

`--strategy` of `python -m training.ecg` and `python -m training.mnist`:

- `default`: one process, one device (TensorFlow's default strategy).
- `mirrored`: `tf.distribute.MirroredStrategy` over the local devices: every GPU, else the CPU;
  `--cpu-replicas N` splits the CPU into N logical devices (set before TensorFlow initialises
  its devices), which is how a CPU machine runs (and the tests check) several replicas.
- `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy` over the processes described by the
  `TF_CONFIG` environment variable (one process per worker, each with its local replicas).

`--batch-size` is the *global* batch: each of the R replicas gets `batch_size / R` examples of
every step (so it must be a multiple of R), the loss of each replica is its mean scaled by 1/R
and the gradients are summed over the replicas, i.e. the update is the one of the mean loss over
the global batch, as with one replica. The learning rate is not rescaled (same global batch,
same optimisation). See docs/distributed-training.md.

Noise: the cells draw their training noise from a `keras.random.SeedGenerator` whose state is a
mirrored variable, identical on every replica, so without care every replica would draw the
*same* noise for its part of the batch. `fold_replica_into_noise(model)` makes each generator
add `REPLICA_SEED_STRIDE * replica_id` to the first (seed) component of every seed it hands out,
so replica r draws from its own stream, a deterministic function of (seed, r, step): the run is
still reproducible from its seed, and replica 0 draws what a one-replica run would draw for a
batch of the per-replica size.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

__all__ = [
    "CPU_REPLICAS_ENV",
    "REPLICA_SEED_STRIDE",
    "STRATEGIES",
    "DistributeConfigError",
    "add_strategy_arguments",
    "check_strategy_args",
    "configure_cpu_replicas",
    "fold_replica_into_noise",
    "is_chief",
    "jit_supported",
    "make_strategy",
    "prepare_model",
    "runner_strategy",
    "train_as_worker",
]

STRATEGIES = ("default", "mirrored", "multi_worker")
CPU_REPLICAS_ENV = "KERAS_NRNN_CPU_REPLICAS"
# Added (times the replica id) to the seed component of every noise seed: far beyond any seed
# a run uses, prime so that no two (seed, replica) pairs of a sweep share a stream.
REPLICA_SEED_STRIDE = 1_000_003


class DistributeConfigError(ValueError):
    """The requested strategy cannot run with these settings (an operator error, exit 2)."""


def add_strategy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--strategy` and `--cpu-replicas` to a runner's parser.

    Args:
        parser: the runner's `argparse.ArgumentParser`.

    Example:

    >>> p = argparse.ArgumentParser(); add_strategy_arguments(p)
    >>> p.parse_args(["--strategy", "mirrored", "--cpu-replicas", "2"]).cpu_replicas
    2
    """
    g = parser.add_argument_group("distribution")
    g.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="default",
        help="tf.distribute strategy: one device, MirroredStrategy over the local devices, or "
        "MultiWorkerMirroredStrategy over the processes in TF_CONFIG; --batch-size is global",
    )
    g.add_argument(
        "--cpu-replicas",
        type=int,
        default=None,
        help=f"split the CPU into this many logical devices (replicas) when no GPU is used "
        f"(default: ${CPU_REPLICAS_ENV} or 1)",
    )


def _tf_config() -> dict[str, Any] | None:
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return config if isinstance(config, dict) else {}


def check_strategy_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Validate `--strategy`/`--cpu-replicas` (and `TF_CONFIG`); exit 2 with one line if wrong.

    Fills `args.cpu_replicas` from `$KERAS_NRNN_CPU_REPLICAS` when the flag is absent.

    Args:
        parser: the runner's parser (for the error exit).
        args: parsed arguments.

    Example:

    >>> p = argparse.ArgumentParser(); add_strategy_arguments(p)
    >>> a = p.parse_args(["--cpu-replicas", "1"]); check_strategy_args(p, a); a.cpu_replicas
    1
    """
    if args.cpu_replicas is None:
        text = os.environ.get(CPU_REPLICAS_ENV, "").strip()
        if text:
            try:
                args.cpu_replicas = int(text)
            except ValueError:
                parser.error(
                    f"environment variable {CPU_REPLICAS_ENV} must be an integer >= 1; "
                    f"received {CPU_REPLICAS_ENV}={text!r}"
                )
        else:
            args.cpu_replicas = 1
    if args.cpu_replicas < 1:
        parser.error(
            f"argument --cpu-replicas must be an integer >= 1; received --cpu-replicas "
            f"{args.cpu_replicas}"
        )
    if args.cpu_replicas > 1 and args.strategy == "default":
        parser.error(
            f"argument --cpu-replicas {args.cpu_replicas} needs --strategy mirrored or "
            "multi_worker; received --strategy default"
        )
    if args.strategy == "multi_worker":
        config = _tf_config()
        task = (config or {}).get("task") or {}
        cluster = (config or {}).get("cluster") or {}
        ok = (
            isinstance(cluster, dict)
            and isinstance(task, dict)
            and task.get("type") in cluster
            and isinstance(task.get("index"), int)
            and 0 <= task["index"] < len(cluster[task["type"]])
        )
        if not ok:
            shown = "unset" if config is None else repr(os.environ["TF_CONFIG"])
            parser.error(
                "--strategy multi_worker needs the environment variable TF_CONFIG, JSON with "
                '"cluster" (task type -> list of host:port) and "task" ({"type", "index"} '
                f"naming one of them); received TF_CONFIG {shown}"
            )
        for flag in ("overwrite", "shard"):
            if getattr(args, flag, None):
                parser.error(
                    f"use either --strategy multi_worker or --{flag}, not both (every worker "
                    "runs the same command on one run folder)"
                )


def configure_cpu_replicas(n: int) -> None:
    """Split the first CPU into `n` logical devices; call before TensorFlow initialises them.

    Does nothing for `n == 1` or when a GPU is present (the replicas are then the GPUs).

    Args:
        n: number of logical CPU devices (>= 1).

    Raises:
        DistributeConfigError: TensorFlow's devices are already initialised.

    Example:

    >>> configure_cpu_replicas(1)
    """
    if n == 1:
        return
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError as e:
        if len(tf.config.list_logical_devices("CPU")) == n:
            return  # configured the same way earlier in this process
        raise DistributeConfigError(
            f"--cpu-replicas {n}: TensorFlow's devices were initialised before the logical CPU "
            f"devices could be set ({e})"
        ) from None


def make_strategy(name: str):
    """The `tf.distribute.Strategy` called `name` (see the module docstring).

    Args:
        name: one of `STRATEGIES`.

    Returns:
        A strategy; `num_replicas_in_sync` is the number of replicas.

    Example:

    >>> make_strategy("default").num_replicas_in_sync
    1
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"Argument `name` must be one of {list(STRATEGIES)}; received {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief() -> bool:
    """Whether this process writes the run folder: no `TF_CONFIG`, its chief, or worker 0.

    Example:

    >>> os.environ.pop("TF_CONFIG", None) is None or True
    True
    >>> is_chief()
    True
    """
    config = _tf_config() or {}
    task = config.get("task") or {}
    cluster = config.get("cluster") or {}
    kind, index = task.get("type"), task.get("index", 0)
    if kind is None:
        return True
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


def _replica_offset(key):
    """`[REPLICA_SEED_STRIDE * replica_id, 0]` in the dtype of `key` (0 outside a replica)."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: no replica of its own
        return tf.zeros([2], key.dtype)
    replica = tf.cast(context.replica_id_in_sync_group, key.dtype)
    return replica * tf.constant([REPLICA_SEED_STRIDE, 0], key.dtype)


def _replica_folded_class(base: type) -> type:
    class ReplicaFoldedSeedGenerator(base):
        """A SeedGenerator whose seeds differ per replica (see `fold_replica_into_noise`)."""

        _folds_replica = True

        def next(self, ordered=True):
            seed = super().next(ordered=ordered)
            return seed + _replica_offset(seed)

    ReplicaFoldedSeedGenerator.__name__ = base.__name__  # same name in reprs and errors
    return ReplicaFoldedSeedGenerator


def _fold_layer_keys(layer) -> bool:
    """Fold the replica into the keys a sequence layer reserves before its loop (SDERNN)."""
    reserve = getattr(layer, "_reserve_keys", None)
    if reserve is None or getattr(reserve, "_folds_replica", False):
        return False

    def reserve_keys(steps):
        keys = reserve(steps)  # (steps, 2)
        return keys + _replica_offset(keys)[None, :]

    reserve_keys._folds_replica = True
    layer._reserve_keys = reserve_keys
    return True


def _seed_generators(model) -> list:
    import keras

    found: dict[int, Any] = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for value in list(vars(layer).values()):
            if isinstance(value, keras.random.SeedGenerator):
                found[id(value)] = value
    return list(found.values())


def fold_replica_into_noise(model) -> int:
    """Make every noise source of `model` give each replica its own Brownian path.

    The cells take the keys of their noise from a `keras.random.SeedGenerator` whose state is
    mirrored (the same on every replica): per step through `SeedGenerator.next()` (a cell in
    `keras.layers.RNN`), or all keys of a sequence at once (`keras_nrnn.SDERNN`'s
    `_reserve_keys`). Both then hand replica r the keys shifted by
    `[REPLICA_SEED_STRIDE * r, 0]`, with `r = tf.distribute.get_replica_context()
    .replica_id_in_sync_group` (0 outside `strategy.run`, so a one-replica run is unchanged).
    The generator's state, its checkpointed value and the saved model are unchanged.

    Args:
        model: a built Keras model (its layers and cells are searched).

    Returns:
        The number of generators and sequence layers changed.

    Example:

    >>> import keras_nrnn, keras
    >>> cell = keras_nrnn.NoisyLipschitzCell(4, additive_noise=0.1, seed=0)
    >>> m = keras.Sequential([keras.Input((3, 1)), keras.layers.RNN(cell)])
    >>> fold_replica_into_noise(m)
    1
    """
    generators = _seed_generators(model)
    changed = 0
    for gen in generators:
        if not getattr(type(gen), "_folds_replica", False):
            gen.__class__ = _replica_folded_class(type(gen))
            changed += 1
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if getattr(layer, "cell", None) is not None and getattr(layer.cell, "seed_generator", None):
            changed += _fold_layer_keys(layer)
    return changed


def runner_strategy(args: argparse.Namespace) -> tuple[Any, bool]:
    """The strategy of a runner's validated `args` and whether this process writes the run.

    Args:
        args: arguments checked by `check_strategy_args` (`strategy`, `batch_size`).

    Returns:
        `(strategy, writes)`: None for `--strategy default`; `writes` is False only on the
        non-chief workers of `--strategy multi_worker`.

    Raises:
        DistributeConfigError: `--batch-size` is not a multiple of the number of replicas.

    Example:

    >>> runner_strategy(argparse.Namespace(strategy="default", batch_size=3))
    (None, True)
    """
    if args.strategy == "default":
        return None, True
    strategy = make_strategy(args.strategy)
    replicas = strategy.num_replicas_in_sync
    if args.batch_size % replicas:
        raise DistributeConfigError(
            f"argument --batch-size must be a multiple of the {replicas} replicas of "
            f"--strategy {args.strategy} (it is the global batch); received --batch-size "
            f"{args.batch_size}"
        )
    return strategy, args.strategy != "multi_worker" or is_chief()


def train_as_worker(
    jobs: list[tuple[Any, int, Any]],
    train: tuple[Any, Any],
    validation: Any,
    settings: Any,
    strategy: Any,
) -> None:
    """Train every seed of a run as a non-chief worker of `--strategy multi_worker`.

    The chief trains the same seeds in the same order (writing the run folder, evaluating
    and reporting); this worker trains in step with it, resuming from the chief's checkpoints
    (the run folder must be on a filesystem both see), and writes nothing.

    Args:
        jobs: `(seed_dir, seed, build_fn)` of every (model, seed), in the chief's order; a
            seed whose `eval.json` exists is skipped, as the chief skips it.
        train: the training arrays.
        validation: the validation data.
        settings: the `training.runner.TrainSettings`.
        strategy: the `MultiWorkerMirroredStrategy`.
    """
    from pathlib import Path

    import keras

    from training.runner import train_seed

    for seed_dir, seed, build_fn in jobs:
        if (Path(seed_dir) / "eval.json").exists():
            continue
        train_seed(
            build_fn, train, validation, seed_dir, settings, seed=seed, strategy=strategy,
            write=False, progress_desc="",
        )  # fmt: skip
        keras.backend.clear_session()


def jit_supported(strategy: Any) -> bool:
    """Whether Keras can XLA-compile the train step under `strategy`.

    Not with several replicas on CPU devices: in one process XLA places the compiled step of
    every replica on the first CPU device and fails on the variables of the others ("Trying to
    access resource ... located in device CPU:1 from device CPU:0"), and across workers XLA
    has no CPU collectives ("Collectives are not yet implemented for CPU devices when
    compiling with XLA").

    Args:
        strategy: a `tf.distribute.Strategy` or None.

    Returns:
        False for that case, True otherwise.

    Example:

    >>> jit_supported(None)
    True
    """
    if strategy is None:
        return True
    devices = list(strategy.extended.worker_devices)
    cpu = any("CPU" in d.upper() for d in devices)
    return not (strategy.num_replicas_in_sync > 1 and cpu)


def prepare_model(model: Any, strategy: Any) -> None:
    """Make a model built under `strategy` train correctly on it (call before `compile`).

    - Several replicas: `fold_replica_into_noise`, so that each replica draws its own noise.
    - `MultiWorkerMirroredStrategy`: two Keras 3.15 bugs make `fit` fail there
      (tensorflow/tensorflow#72388). It builds its metrics from one batch reduced with
      `strategy.reduce("MEAN", (x, y))` ("Attempt to convert a value (PerReplica...)"): the
      model builds from this worker's first local replica batch instead (only the shapes
      matter). And it reduces the scalar loss and metric values of every step with
      `strategy.reduce("MEAN", v, axis=0)` ("Invalid reduction dimension 0 for input with 0
      dimensions"): `_patch_keras_multi_worker_reduce` reduces scalars with `axis=None`
      (the mean over replicas, as `MirroredStrategy` does).

    Args:
        model: the model, built in `strategy.scope()`.
        strategy: a `tf.distribute.Strategy` or None (nothing to do).

    Example:

    >>> prepare_model(None, None)
    """
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return
    import tensorflow as tf

    fold_replica_into_noise(model)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    original = model._maybe_symbolic_build

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
        return original(iterator=None, data_batch=data_batch)

    model._maybe_symbolic_build = symbolic_build
    _patch_keras_multi_worker_reduce()


def _patch_keras_multi_worker_reduce() -> None:
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "_keras_nrnn_fixed", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or reduction not in (
            "auto",
            "mean",
        ):
            return original(values, strategy, reduction)

        def reduce(v):
            if v.shape.rank == 0:
                return strategy.reduce("MEAN", v, axis=None)
            return original(v, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    reduce_per_replica._keras_nrnn_fixed = True
    trainer.reduce_per_replica = reduce_per_replica
