"""The shared tf.data pipeline: batching, order, seeded reshuffling."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.pipeline import make_dataset

N = 23


@pytest.fixture
def arrays():
    x = np.arange(N * 3, dtype=np.float32).reshape(N, 3, 1)
    y = np.arange(N, dtype=np.int32)
    return x, y


def _epochs(ds, count: int = 3) -> list[np.ndarray]:
    """Labels seen in each of `count` passes over `ds`; also checks x/y stay paired."""
    out = []
    for _ in range(count):
        labels = []
        for xb, yb in ds:
            np.testing.assert_array_equal(xb.numpy()[:, 0, 0], yb.numpy() * 3)
            labels.append(yb.numpy())
        out.append(np.concatenate(labels))
    return out


def test_evaluation_keeps_order_and_batches(arrays):
    x, y = arrays
    ds = make_dataset(x, y, batch_size=5, training=False, seed=0)
    sizes = [int(b[1].shape[0]) for b in ds]
    assert sizes == [5, 5, 5, 5, 3]
    for epoch in _epochs(ds, 2):
        np.testing.assert_array_equal(epoch, y)


def test_training_is_a_permutation_reshuffled_each_epoch(arrays):
    x, y = arrays
    epochs = _epochs(make_dataset(x, y, batch_size=4, training=True, seed=3))
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), y)
    assert not np.array_equal(epochs[0], y)
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_same_seed_same_orders_other_seed_other_orders(arrays):
    x, y = arrays
    a = _epochs(make_dataset(x, y, batch_size=4, training=True, seed=7))
    b = _epochs(make_dataset(x, y, batch_size=4, training=True, seed=7, cache=False))
    c = _epochs(make_dataset(x, y, batch_size=4, training=True, seed=8))
    for ea, eb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(a[0], c[0])


def test_drop_remainder_and_inputs_only(arrays):
    x, y = arrays
    ds = make_dataset(x, y, batch_size=5, training=True, seed=0, drop_remainder=True)
    assert [int(b[1].shape[0]) for b in ds] == [5, 5, 5, 5]
    only_x = make_dataset(x, None, batch_size=10, training=False, seed=0)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in only_x]), x)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"y": np.zeros(3)}, "len\\(y\\)=3"),
    ],
)
def test_bad_arguments(arrays, kwargs, argument):
    x, y = arrays
    args = {"x": x, "y": y, "batch_size": 4, "training": True, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=argument):
        make_dataset(**args)
