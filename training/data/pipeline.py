"""The tf.data input pipeline shared by the experiment runners.

`make_dataset` turns in-memory arrays into `cache -> shuffle (training only) -> batch ->
prefetch`. Shuffling uses the op-level `seed` with `reshuffle_each_iteration=True`: every epoch
(each new iteration over the dataset, as `model.fit` does) sees a new order, and the sequence of
orders is the same for two datasets built with the same `seed` under the same TensorFlow global
seed (`keras.utils.set_random_seed` sets it; when it is unset TensorFlow uses a fixed default).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["make_dataset"]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(
            f"Argument `{name}` must be an integer >= {minimum}; received {name}={value!r}."
        )
    return int(value)


def make_dataset(
    x: np.ndarray,
    y: np.ndarray | None,
    batch_size: int,
    training: bool,
    seed: int,
    cache: bool = True,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Build a batched, prefetched `tf.data.Dataset` from arrays.

    Args:
        x: inputs, any array whose first axis indexes examples.
        y: targets with the same first axis, or None for an inputs-only dataset.
        batch_size: examples per batch (> 0).
        training: if True, shuffle over the whole dataset with `seed`, with a new order at
            every epoch; if False, keep the order of `x`.
        seed: shuffle seed (integer >= 0); ignored when `training` is False.
        cache: cache the elements in memory before shuffling (cheap for arrays, and keeps
            any later map in front of the cache from rerunning).
        drop_remainder: drop the last incomplete batch (useful for fixed-shape XLA steps).

    Returns:
        A `tf.data.Dataset` yielding `(x_batch, y_batch)`, or `x_batch` if `y` is None.

    Example:

    >>> import numpy as np
    >>> x = np.zeros((10, 4, 1), "float32"); y = np.arange(10, dtype="int32")
    >>> ds = make_dataset(x, y, batch_size=4, training=True, seed=0)
    >>> [int(b[1].shape[0]) for b in ds]
    [4, 4, 2]
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    n = len(x)
    if n == 0:
        raise ValueError("Argument `x` must hold at least one example; received len(x)=0.")
    if y is not None and len(y) != n:
        raise ValueError(
            f"Arguments `x` and `y` must have the same length; received len(x)={n}, "
            f"len(y)={len(y)}."
        )
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(buffer_size=n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
