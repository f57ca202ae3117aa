"""Fit one model for one seed with resumable, atomic per-epoch checkpoints.

`train_seed` trains into a seed folder:

    <seed_dir>/checkpoint.npz   written atomically at the end of every epoch: all model variables
                                (weights and the noise `SeedGenerator` state), the optimizer
                                variables (Adam moments, iteration count), the number of finished
                                epochs, the best validation accuracy so far and its epoch, and the
                                history rows. One file, so it is always consistent.
    <seed_dir>/model.keras      the model at the best validation accuracy (written before the
                                checkpoint that records it, so the two always agree).
    <seed_dir>/history.csv      one row per finished epoch.
    <seed_dir>/tensorboard/     TensorBoard logs: `keras.callbacks.TensorBoard` when the
                                `tensorboard` package is installed; otherwise the same
                                per-epoch scalars (`train/` and `validation/`, tags
                                `epoch_<metric>`) written with TensorFlow's own summary writer,
                                which TensorBoard reads the same way.

Running `train_seed` again on the same folder resumes after the last finished epoch: variables
(including the noise generator's state) and optimizer state are restored, and the training order
of every epoch is a pure function of `(seed, epoch)` (`epoch_permutation`), so an interrupted
and resumed run follows the same path as an uninterrupted one. (A `reshuffle_each_iteration`
dataset cannot be resumed that way: `model.fit` creates more iterators than epochs, so the
order of epoch k depends on Keras internals.) A finished folder is not retrained.

Simulated interruption (for tests): with the environment variable
`KERAS_NRNN_INTERRUPT_AFTER_EPOCH=N`, training raises `SimulatedInterruptionError` right after the
checkpoint of epoch N (1-based) has been written.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from atomic_io import atomic_write_bytes, atomic_write_text, new_temp_file

__all__ = [
    "CHECKPOINT_FILE",
    "INTERRUPT_ENV",
    "ScalarTensorBoard",
    "SeedRun",
    "SimulatedInterruptionError",
    "TrainSettings",
    "epoch_permutation",
    "lr_for_epoch",
    "read_checkpoint_state",
    "resumable_training_dataset",
    "save_model_atomic",
    "tensorboard_available",
    "train_seed",
]

CHECKPOINT_FILE = "checkpoint.npz"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
INTERRUPT_ENV = "KERAS_NRNN_INTERRUPT_AFTER_EPOCH"


class SimulatedInterruptionError(RuntimeError):
    """Raised after a checkpoint when `KERAS_NRNN_INTERRUPT_AFTER_EPOCH` asks for it."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one training run.

    Attributes:
        epochs: number of epochs (> 0).
        batch_size: examples per step (> 0).
        lr: Adam learning rate (> 0).
        lr_decay_epoch: 0-based epoch from which the learning rate is `lr * lr_decay_factor`
            (`>= epochs` means no decay).
        lr_decay_factor: multiplier applied from `lr_decay_epoch` on.
        jit_compile: compile the train step with XLA.
        progress: show a tqdm bar over epochs.
        clipnorm: clip each gradient to this L2 norm (Adam's `clipnorm`); None: no clipping.
    """

    epochs: int
    batch_size: int
    lr: float
    lr_decay_epoch: int
    lr_decay_factor: float = 0.1
    jit_compile: bool = False
    progress: bool = True
    clipnorm: float | None = None

    @classmethod
    def from_args(cls, args: Any) -> TrainSettings:
        """The settings of a runner's validated arguments (1-based `lr_decay_epoch`).

        Example:

        >>> import argparse
        >>> a = argparse.Namespace(epochs=3, batch_size=8, lr=0.1, lr_decay_epoch=3,
        ...                        lr_decay_factor=0.1, jit=False, quiet=True)
        >>> TrainSettings.from_args(a).lr_decay_epoch
        2
        """
        return cls(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_decay_epoch=args.lr_decay_epoch - 1,
            lr_decay_factor=args.lr_decay_factor,
            jit_compile=args.jit,
            progress=not args.quiet,
            clipnorm=getattr(args, "clipnorm", None),
        )


@dataclasses.dataclass(frozen=True)
class SeedRun:
    """Outcome of `train_seed`.

    Attributes:
        seed_dir: the seed folder.
        model_path: the best-validation model file.
        best_val_accuracy: the best validation accuracy.
        best_epoch: its 1-based epoch.
        epochs_done: finished epochs.
        resumed_from: epochs already finished when this call started.
        train_seconds: training time spent in this call.
        history: one dict per finished epoch.
    """

    seed_dir: Path
    model_path: Path
    best_val_accuracy: float
    best_epoch: int
    epochs_done: int
    resumed_from: int
    train_seconds: float
    history: list[dict[str, float]]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Order of the `n` training examples in 0-based `epoch` of the run with `seed`.

    A pure function of its arguments (`numpy.random.default_rng([seed, epoch])`), so a resumed
    run sees the same orders as an uninterrupted one.

    Example:

    >>> bool((epoch_permutation(5, 0, 3) == epoch_permutation(5, 0, 3)).all())
    True
    >>> sorted(epoch_permutation(5, 0, 3).tolist())
    [0, 1, 2, 3, 4]
    """
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def resumable_training_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
):
    """Batches of epochs `first_epoch .. epochs - 1`, each in the order `epoch_permutation`.

    Args:
        x: training inputs.
        y: training labels.
        batch_size: examples per batch (the last batch of an epoch may be smaller).
        seed: the run's seed.
        first_epoch: 0-based first epoch to produce (the number of finished epochs).
        epochs: total number of epochs.

    Returns:
        `(dataset, steps_per_epoch)`; pass both to `model.fit` (with `initial_epoch`).

    Example:

    >>> x = np.arange(5, dtype="float32")[:, None]; y = np.arange(5)
    >>> ds, steps = resumable_training_dataset(x, y, 2, seed=0, first_epoch=1, epochs=3)
    >>> steps, [int(b[1].shape[0]) for b in ds]
    (3, [2, 2, 1, 2, 2, 1])
    """
    import tensorflow as tf

    n = len(x)
    steps = -(-n // batch_size)
    table = np.stack([epoch_permutation(n, seed, e) for e in range(first_epoch, epochs)])
    x_t, y_t = tf.constant(x), tf.constant(y)
    ds = tf.data.Dataset.from_tensor_slices(table.astype(np.int32))
    ds = ds.flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
    ds = ds.map(lambda idx: (tf.gather(x_t, idx), tf.gather(y_t, idx)))
    return ds.prefetch(tf.data.AUTOTUNE), steps


def lr_for_epoch(epoch: int, settings: TrainSettings) -> float:
    """Learning rate of 0-based `epoch`: `lr`, times `lr_decay_factor` from `lr_decay_epoch` on.

    Example:

    >>> s = TrainSettings(epochs=10, batch_size=4, lr=1e-3, lr_decay_epoch=9)
    >>> lr_for_epoch(8, s), round(lr_for_epoch(9, s), 12)
    (0.001, 0.0001)
    """
    return settings.lr * (settings.lr_decay_factor if epoch >= settings.lr_decay_epoch else 1.0)


def save_model_atomic(model: keras.Model, path: str | os.PathLike) -> Path:
    """`model.save(path)` through a temporary `.keras` file and `os.replace`.

    Args:
        model: the model.
        path: destination, ending in `.keras`.

    Returns:
        The destination as a `Path`.
    """
    path = Path(path)
    tmp = new_temp_file(path, suffix=".keras")  # keras checks the extension; umask-respecting
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_history_csv(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    if rows:
        fields = list(rows[0])
        for row in rows[1:]:
            fields += [k for k in row if k not in fields]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _save_checkpoint(path: Path, model: keras.Model, state: dict[str, Any]) -> None:
    arrays = {f"model_{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    arrays.update(
        {f"opt_{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)}
    )
    arrays["state_json"] = np.frombuffer(json.dumps(state).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint_state(seed_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The bookkeeping of a seed folder's checkpoint, or None if there is none.

    Args:
        seed_dir: a seed folder written by `train_seed`.

    Returns:
        A dict with `epochs_done`, `epochs`, `best_val_accuracy`, `best_epoch`, `history`, ...
    """
    path = Path(seed_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    with np.load(path) as z:
        return json.loads(bytes(z["state_json"]).decode("utf-8"))


def _restore_checkpoint(path: Path, model: keras.Model) -> dict[str, Any]:
    with np.load(path) as z:
        state = json.loads(bytes(z["state_json"]).decode("utf-8"))
        model_keys = sorted(k for k in z.files if k.startswith("model_"))
        opt_keys = sorted(k for k in z.files if k.startswith("opt_"))
        if len(model_keys) != len(model.variables):
            raise ValueError(
                f"Checkpoint {path} holds {len(model_keys)} model variables but the model has "
                f"{len(model.variables)}; it was written by a different model. Use --overwrite "
                "or a new --out."
            )
        for key, var in zip(model_keys, model.variables, strict=True):
            var.assign(z[key])
        optimizer = model.optimizer
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        if len(opt_keys) != len(optimizer.variables):
            raise ValueError(
                f"Checkpoint {path} holds {len(opt_keys)} optimizer variables but the optimizer "
                f"has {len(optimizer.variables)}. Use --overwrite or a new --out."
            )
        for key, var in zip(opt_keys, optimizer.variables, strict=True):
            var.assign(z[key])
    return state


class _EpochCheckpoint(keras.callbacks.Callback):
    """Per-epoch bookkeeping: lr schedule, history, best model, atomic checkpoint, progress."""

    def __init__(
        self,
        seed_dir: Path,
        settings: TrainSettings,
        state: dict[str, Any],
        progress_desc: str,
        write: bool = True,
    ) -> None:
        super().__init__()
        self.write = write
        self.seed_dir = seed_dir
        self.settings = settings
        self.state = state
        self.progress_desc = progress_desc
        self._bar = None
        self._t0 = 0.0
        interrupt = os.environ.get(INTERRUPT_ENV, "").strip()
        self.interrupt_after = int(interrupt) if interrupt else None

    def on_train_begin(self, logs=None):
        if self.settings.progress and self.write:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.settings.epochs,
                initial=self.state["epochs_done"],
                desc=self.progress_desc,
                unit="epoch",
                dynamic_ncols=True,
                mininterval=1.0,
            )

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate.assign(lr_for_epoch(epoch, self.settings))
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.perf_counter() - self._t0
        row = {"epoch": epoch + 1}
        row.update({k: float(v) for k, v in logs.items() if np.ndim(v) == 0})
        row["lr"] = lr_for_epoch(epoch, self.settings)
        row["seconds"] = round(seconds, 4)
        state = self.state
        state["history"].append(row)
        val_acc = float(logs.get("val_accuracy", math.nan))
        if not math.isnan(val_acc) and val_acc > state["best_val_accuracy"]:
            state["best_val_accuracy"] = val_acc
            state["best_epoch"] = epoch + 1
            # Before the checkpoint that records it: the two files always agree.
            if self.write:
                save_model_atomic(self.model, self.seed_dir / MODEL_FILE)
        state["epochs_done"] = epoch + 1
        if self.write:
            _save_checkpoint(self.seed_dir / CHECKPOINT_FILE, self.model, state)
            _write_history_csv(self.seed_dir / HISTORY_FILE, state["history"])
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{row.get('loss', math.nan):.4f}",
                acc=f"{row.get('accuracy', math.nan):.4f}",
                val_acc=f"{val_acc:.4f}",
                best=f"{state['best_val_accuracy']:.4f}@{state['best_epoch']}",
                refresh=False,
            )
            self._bar.update(1)
        if self.interrupt_after is not None and epoch + 1 == self.interrupt_after:
            raise SimulatedInterruptionError(
                f"Simulated interruption after epoch {epoch + 1} ({INTERRUPT_ENV} is set)."
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def tensorboard_available() -> bool:
    """Whether the `tensorboard` package (needed by `keras.callbacks.TensorBoard`) is installed."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class ScalarTensorBoard(keras.callbacks.Callback):
    """Per-epoch scalars in TensorBoard's format without the `tensorboard` package.

    Writes `<log_dir>/train` (`epoch_loss`, `epoch_accuracy`, `epoch_learning_rate`) and
    `<log_dir>/validation` (`epoch_loss`, `epoch_accuracy`) like `keras.callbacks.TensorBoard`,
    through `tf.summary.write` with the scalars plugin's metadata.

    Args:
        log_dir: the log folder.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}

    def _writer(self, split: str):
        import tensorflow as tf

        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.log_dir / split))
        return self._writers[split]

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        meta = summary_pb2.SummaryMetadata()
        meta.plugin_data.plugin_name = "scalars"
        logs = dict(logs or {})
        logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())
        for key, value in logs.items():
            if np.ndim(value) != 0:
                continue
            split, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(split).as_default():
                tf.summary.write(
                    f"epoch_{tag}",
                    tf.constant(float(value), tf.float32),
                    step=epoch,
                    metadata=meta,
                )
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def train_seed(
    build_fn: Callable[[], keras.Model],
    train: tuple[np.ndarray, np.ndarray],
    validation: Any,
    seed_dir: str | os.PathLike,
    settings: TrainSettings,
    *,
    seed: int,
    progress_desc: str = "",
    tensorboard: bool = True,
    strategy: Any = None,
    write: bool = True,
) -> SeedRun:
    """Train (or resume, or skip if finished) one seed into `seed_dir`.

    Args:
        build_fn: returns a new, uncompiled model (called after the global seed is set).
        train: the training arrays `(x, y)`; epoch `e` visits them in the order
            `epoch_permutation(len(x), seed, e)`.
        validation: validation data accepted by `model.fit(validation_data=...)`.
        seed_dir: the seed folder (created if needed).
        settings: optimisation settings.
        seed: the run's seed (`keras.utils.set_random_seed(seed)` before building).
        progress_desc: label of the progress bar.
        tensorboard: write TensorBoard logs into `seed_dir/tensorboard`.
        strategy: a `tf.distribute.Strategy` (`training.distribute.make_strategy`) to build,
            compile and fit the model under; None: the default (one device). With several
            replicas `settings.batch_size` is the global batch and every noise generator
            draws its own stream per replica (`training.distribute.fold_replica_into_noise`).
        write: write the seed folder (checkpoint, model, history, TensorBoard); False for
            the non-chief workers of a multi-worker run, which resume from the chief's
            checkpoint in the same folder and write nothing.

    Returns:
        A `SeedRun`.

    Raises:
        SimulatedInterruptionError: when `KERAS_NRNN_INTERRUPT_AFTER_EPOCH` asks for it.
    """
    seed_dir = Path(seed_dir)
    if write:
        seed_dir.mkdir(parents=True, exist_ok=True)
    ckpt = seed_dir / CHECKPOINT_FILE
    existing = read_checkpoint_state(seed_dir)
    if existing is not None and existing["epochs_done"] >= settings.epochs:
        return _seed_run(seed_dir, existing, resumed_from=existing["epochs_done"], seconds=0.0)

    from training.distribute import jit_supported, prepare_model

    keras.utils.set_random_seed(seed)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_fn()
        prepare_model(model, strategy)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=settings.lr, clipnorm=settings.clipnorm),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=settings.jit_compile and jit_supported(strategy),
        )
    if existing is not None:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            state = _restore_checkpoint(ckpt, model)
    else:
        state = {
            "seed": seed,
            "epochs": settings.epochs,
            "epochs_done": 0,
            "best_val_accuracy": -1.0,
            "best_epoch": 0,
            "history": [],
        }
    state["epochs"] = settings.epochs
    resumed_from = state["epochs_done"]
    train_ds, steps = resumable_training_dataset(
        train[0], train[1], settings.batch_size, seed, resumed_from, settings.epochs
    )

    bookkeeping = _EpochCheckpoint(seed_dir, settings, state, progress_desc, write=write)
    callbacks: list[keras.callbacks.Callback] = []
    tensorboard = tensorboard and write
    if tensorboard and tensorboard_available():
        callbacks.append(
            keras.callbacks.TensorBoard(
                log_dir=str(seed_dir / "tensorboard"),
                write_graph=False,
                profile_batch=0,
                update_freq="epoch",
            )
        )
    elif tensorboard:
        callbacks.append(ScalarTensorBoard(seed_dir / "tensorboard"))
    callbacks.append(bookkeeping)
    t0 = time.perf_counter()
    try:
        model.fit(
            train_ds,
            validation_data=validation,
            steps_per_epoch=steps,
            epochs=settings.epochs,
            initial_epoch=resumed_from,
            callbacks=callbacks,
            shuffle=False,  # the dataset holds each epoch's order
            verbose=0,
        )
    finally:
        bookkeeping.close()
    return _seed_run(seed_dir, state, resumed_from, time.perf_counter() - t0)


def _seed_run(seed_dir: Path, state: dict, resumed_from: int, seconds: float) -> SeedRun:
    return SeedRun(
        seed_dir=seed_dir,
        model_path=seed_dir / MODEL_FILE,
        best_val_accuracy=float(state["best_val_accuracy"]),
        best_epoch=int(state["best_epoch"]),
        epochs_done=int(state["epochs_done"]),
        resumed_from=resumed_from,
        train_seconds=seconds,
        history=list(state["history"]),
    )
