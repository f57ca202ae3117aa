"""The Brownian source: standard variates as a pure function of a key, one key per step.

The increments of the Brownian path are `dB_t = sqrt(dt) * xi_t`, and `xi_t` is a pure
function of the key of step `t` (in the spirit of counter-based generators and diffrax's
`VirtualBrownianTree`): the same key always gives the same numbers, and drawing needs no
state. The key of step `t` of a sequence is `base + (0, t)`, where `base` is the value of
the cell's `keras.random.SeedGenerator` when the sequence starts; a sequence of `T` steps
uses `T` consecutive keys and advances the generator by `T`.

So a loop body never has to touch random state:

- `keras_nrnn.SDERNN` reserves the `T` keys of a sequence before its loop
  (`reserve_keys`) and feeds key `t` to step `t` as an input; the loop body is stateless,
  which is what `jax.lax.scan` and XLA need.
- A cell inside `keras.layers.RNN` takes its key from the generator at each step
  (`next_key`); that gives exactly the same keys, hence the same path, as `SDERNN` with
  the same seed, on the backends whose RNN loop can advance a variable (TensorFlow, torch).

Backend fast paths, one small function each (`_normal_*`):

- TensorFlow: `tf.random.stateless_uniform` with the Philox algorithm and the inverse normal
  CDF (`tf.math.ndtri`). Keras's own normal sampler leaves the algorithm to TensorFlow, which
  under XLA on a CPU picks ThreeFry, about 20x slower here (425 ms against 17 ms for the
  2.3 M normals of one ECG batch). The uniforms lie in `[2^-24, 1)`, so normals stay within
  about 5.3 standard deviations (a tail of probability 1e-7 is clipped).
- JAX: `jax.random.normal` / `jax.random.uniform` on the raw `uint32[2]` key.
- PyTorch: numpy's counter-based Philox keyed by both key words (the backend runs eagerly;
  torch's own CPU generator keeps only 32 bits of a seed).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = [
    "REPLICA_STRIDE",
    "next_key",
    "normal",
    "reserve_keys",
    "step_keys",
    "uniform",
    "variates",
]

_INT32_MAX = 2**31 - 1


#: Replica `r` of a `tf.distribute` strategy uses the keys shifted by `(r * REPLICA_STRIDE, 0)`.
REPLICA_STRIDE = 1_000_003


def _replica_shift(keys):
    """Fold the `tf.distribute` replica into the keys, so that each replica of a mirrored
    generator (the same state on every replica) draws its own Brownian path; replica 0 and
    code outside a strategy keep the keys unchanged."""
    if keras.backend.backend() != "tensorflow":
        return keys
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return keys
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: no replica of its own
        return keys
    replica = tf.cast(context.replica_id_in_sync_group, keys.dtype)
    return keys + replica * tf.constant([REPLICA_STRIDE, 0], keys.dtype)


def next_key(seed_generator: keras.random.SeedGenerator):
    """The key of the next step, advancing `seed_generator` by one (a stateful op).

    Under a `tf.distribute` strategy the key is shifted by the replica (`REPLICA_STRIDE`).

    Example:

    >>> import keras, numpy as np
    >>> g = keras.random.SeedGenerator(7)
    >>> k0, k1 = next_key(g), next_key(g)
    >>> [int(v) for v in np.asarray(k1) - np.asarray(k0)]
    [0, 1]
    """
    return _replica_shift(seed_generator.next())


def step_keys(base, steps):
    """The keys `base + (0, t)` for `t = 0 .. steps - 1`, shape `(steps, 2)` (a pure function).

    Args:
        base: the key of step 0, shape `(2,)`.
        steps: number of steps (an int or a scalar tensor).

    Example:

    >>> import numpy as np
    >>> np.asarray(step_keys(np.array([5, 10], "int64"), 3)).tolist()
    [[5, 10], [5, 11], [5, 12]]
    """
    base = ops.convert_to_tensor(base)
    counter = ops.arange(steps, dtype=base.dtype)
    offsets = ops.stack([ops.zeros_like(counter), counter], axis=1)
    return base[None, :] + offsets


def reserve_keys(seed_generator: keras.random.SeedGenerator, steps):
    """Reserve the keys of a `steps`-long sequence: `step_keys(state, steps)`, then advance
    the generator by `steps`. Called once per sequence, outside any loop.

    Example:

    >>> import keras, numpy as np
    >>> g = keras.random.SeedGenerator(3)
    >>> keys = np.asarray(reserve_keys(g, 4))
    >>> bool(np.array_equal(np.asarray(next_key(g)), keys[-1] + [0, 1]))
    True
    """
    state = seed_generator.state
    base = ops.convert_to_tensor(state.value) * 1
    steps_t = ops.cast(steps, state.dtype)
    state.assign(state.value + ops.stack([ops.zeros_like(steps_t), steps_t]))
    return step_keys(_replica_shift(base), steps)


def normal(shape, dtype, key):
    """Standard normal numbers of `shape`, a pure function of `key` (shape `(2,)`).

    Example:

    >>> import numpy as np
    >>> key = np.array([1, 2], "int64")
    >>> a, b = normal((3,), "float32", key), normal((3,), "float32", key)
    >>> bool(np.array_equal(a, b))
    True
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _normal_tensorflow(shape, dtype, key)
    if backend == "jax":
        return _jax_sample("normal", shape, dtype, key)
    if backend == "torch":
        return _torch_sample("randn", shape, dtype, key)
    return keras.random.normal(shape, dtype=dtype, seed=int(np.asarray(key).sum()))


def uniform(shape, dtype, key):
    """Uniform numbers in `[0, 1)` of `shape`, a pure function of `key` (shape `(2,)`).

    Example:

    >>> import numpy as np
    >>> u = np.asarray(uniform((1000,), "float32", np.array([0, 9], "int64")))
    >>> bool(u.min() >= 0.0 and u.max() < 1.0)
    True
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.random.stateless_uniform(shape, seed=_tf_key(key), dtype=dtype, alg="philox")
    if backend == "jax":
        return _jax_sample("uniform", shape, dtype, key)
    if backend == "torch":
        return _torch_sample("rand", shape, dtype, key)
    return keras.random.uniform(shape, dtype=dtype, seed=int(np.asarray(key).sum()))


def variates(kinds: tuple[str, ...], shape, dtype, key) -> tuple:
    """One array of `shape` per entry of `kinds` (`"normal"` or `"uniform"`), all from `key`.

    The second and later arrays use keys derived from `key` (first word XOR-ed with a
    constant), so the arrays of one step are independent.

    Example:

    >>> import numpy as np
    >>> xi, u = variates(("normal", "uniform"), (2,), "float32", np.array([0, 1], "int64"))
    >>> tuple(xi.shape), tuple(u.shape)
    ((2,), (2,))
    """
    draws = []
    for i, kind in enumerate(kinds):
        k = key if i == 0 else _derived_key(key, i)
        if kind == "normal":
            draws.append(normal(shape, dtype, k))
        elif kind == "uniform":
            draws.append(uniform(shape, dtype, k))
        else:
            raise ValueError(f"Unknown variate kind {kind!r}; expected 'normal' or 'uniform'.")
    return tuple(draws)


def _derived_key(key, i: int):
    """The key of the `i`-th variate kind of a step: the first word XOR-ed with a constant.

    Not an addition: replicas shift the first word by multiples of `REPLICA_STRIDE`, and an
    additive offset per kind would make one replica's second kind the next replica's first.
    """
    key = ops.convert_to_tensor(key)
    mask = ops.cast(ops.convert_to_tensor([(0x2545F491 * i) & 0x7FFFFFFF, 0]), key.dtype)
    return ops.bitwise_xor(key, mask)


# ------------------------------------------------------------------ backend fast paths
def _tf_key(key):
    import tensorflow as tf

    return tf.cast(tf.math.floormod(tf.cast(key, tf.int64), _INT32_MAX - 1), "int32")


def _normal_tensorflow(shape, dtype, key):
    import tensorflow as tf

    # Sampled in float32 (ndtri needs it for the tails), then cast to `dtype`.
    u = tf.random.stateless_uniform(
        shape, seed=_tf_key(key), minval=2.0**-24, maxval=1.0, alg="philox"
    )
    return tf.cast(tf.math.ndtri(u), dtype)


def _jax_sample(kind: str, shape, dtype, key):
    import jax
    import jax.numpy as jnp

    raw = jnp.asarray(key).astype("uint32")
    sampler = jax.random.normal if kind == "normal" else jax.random.uniform
    return sampler(raw, shape=tuple(shape), dtype="float32").astype(dtype)


def _torch_sample(kind: str, shape, dtype, key):
    # torch's CPU generator (mt19937) keeps only 32 bits of its seed, so keys differing in
    # the other word would collide; numpy's Philox takes the whole key and is counter-based,
    # like the TensorFlow path. The torch backend runs eagerly, so the key is concrete here.
    import torch
    from keras.src.backend.torch.core import get_device, to_torch_dtype

    words = [int(v) & 0xFFFFFFFF for v in ops.convert_to_numpy(key).tolist()]
    rng = np.random.Generator(np.random.Philox(key=(words[0] << 32) | words[1]))
    shape = tuple(int(s) for s in shape)
    if kind == "randn":
        sample = rng.standard_normal(shape, dtype=np.float32)
    else:
        sample = rng.random(shape, dtype=np.float32)
    return torch.from_numpy(sample).to(device=get_device(), dtype=to_torch_dtype(dtype))
