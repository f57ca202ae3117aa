"""The Brownian source: standard variates as a pure function of a key, one key per step.

The increments of the Brownian path are `dB_t = sqrt(dt) * xi_t`, and `xi_t` is a pure
function of the key of step `t` (in the spirit of counter-based generators and diffrax's
`VirtualBrownianTree`): the same key always gives the same numbers, and drawing needs no
state. The key of step `t` of a sequence is `base + (0, t)`, where `base` is the value of
the cell's `keras.random.SeedGenerator` when the sequence starts; a sequence of `T` steps
uses `T` consecutive keys and advances the generator by `T`.

So a loop body never has to touch random state:

- `keras_nrnn.SDERNN` reserves the `T` keys of a sequence before its loop (`reserve_base`)
  and draws the variates of all `T` steps at once (`sequence_variates`), feeding row `t` to
  step `t` as an input; the loop body has no random op, which is what `jax.lax.scan` and
  XLA need (docs/performance.md has the measurements).
- A cell inside `keras.layers.RNN` takes its key from the generator at each step
  (`next_key`) and draws that step's variates (`variates`); row `t` of `sequence_variates`
  is exactly what step `t` draws, so both layers follow the same path with the same seed,
  on the backends whose RNN loop can advance a variable (TensorFlow, torch).

A step needs one array per variate kind of its noise model (`"normal"`, `"uniform"`): it
draws `kinds * prod(shape)` uniform numbers from its key at once, and the `i`-th stretch
becomes the `i`-th array (normals through the inverse normal CDF of uniforms moved into
`[2^-24, 1)`, so they stay within about 5.3 standard deviations: a tail of probability 1e-7
is clipped). The kinds of a step thus come from one stream, never from a second key that a
replica's shift could reach.

Uniform numbers per backend, one small function each:

- TensorFlow: Philox (`StatelessRandomUniformV2`) with a counter layout. The key's first word
  is the Philox key and the second word says where the step's numbers start in that key's
  stream: a step of `S` numbers with key `(k0, k1)` reads Philox blocks `k1 * ceil(S / 4)`
  onwards (a block is 4 numbers). Consecutive steps read consecutive stretches of one
  stream, so a sequence is one op. (Keras's own normal sampler leaves the algorithm to
  TensorFlow, which under XLA on a CPU picks ThreeFry, about 20x slower here.)
- JAX: `jax.random.uniform` on the raw `uint32[2]` key; a sequence is the same sampler under
  `jax.vmap` over the step keys.
- PyTorch: numpy's counter-based Philox keyed by both key words (the backend runs eagerly;
  torch's own CPU generator keeps only 32 bits of a seed); a sequence is stacked step by step.

The numbers of a key depend on the shape drawn with it; a cell always draws one shape.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

__all__ = [
    "REPLICA_STRIDE",
    "next_key",
    "normal",
    "reserve_base",
    "reserve_keys",
    "sequence_variates",
    "step_keys",
    "uniform",
    "variates",
]

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


def reserve_base(seed_generator: keras.random.SeedGenerator, steps):
    """Reserve the keys of a `steps`-long sequence and return the first: the generator's
    state (shifted by the replica), then advance the generator by `steps`. Step `t` of the
    sequence has the key `base + (0, t)`. Called once per sequence, outside any loop.

    Example:

    >>> import keras, numpy as np
    >>> g = keras.random.SeedGenerator(3)
    >>> base = np.asarray(reserve_base(g, 4))
    >>> bool(np.array_equal(np.asarray(next_key(g)), base + [0, 4]))
    True
    """
    state = seed_generator.state
    base = ops.convert_to_tensor(state.value) * 1
    steps_t = ops.cast(steps, state.dtype)
    state.assign(state.value + ops.stack([ops.zeros_like(steps_t), steps_t]))
    return _replica_shift(base)


def reserve_keys(seed_generator: keras.random.SeedGenerator, steps):
    """Reserve the keys of a `steps`-long sequence: `step_keys(reserve_base(...), steps)`.

    Example:

    >>> import keras, numpy as np
    >>> g = keras.random.SeedGenerator(3)
    >>> keys = np.asarray(reserve_keys(g, 4))
    >>> bool(np.array_equal(np.asarray(next_key(g)), keys[-1] + [0, 1]))
    True
    """
    return step_keys(reserve_base(seed_generator, steps), steps)


def normal(shape, dtype, key):
    """Standard normal numbers of `shape`, a pure function of `key` (shape `(2,)`).

    Example:

    >>> import numpy as np
    >>> key = np.array([1, 2], "int64")
    >>> a, b = normal((3,), "float32", key), normal((3,), "float32", key)
    >>> bool(np.array_equal(a, b))
    True
    """
    return variates(("normal",), shape, dtype, key)[0]


def uniform(shape, dtype, key):
    """Uniform numbers in `[0, 1)` of `shape`, a pure function of `key` (shape `(2,)`).

    Example:

    >>> import numpy as np
    >>> u = np.asarray(uniform((1000,), "float32", np.array([0, 9], "int64")))
    >>> bool(u.min() >= 0.0 and u.max() < 1.0)
    True
    """
    return variates(("uniform",), shape, dtype, key)[0]


def variates(kinds: tuple[str, ...], shape, dtype, key) -> tuple:
    """One array of `shape` per entry of `kinds` (`"normal"` or `"uniform"`), all from `key`.

    The step draws `len(kinds) * prod(shape)` uniform numbers from its key at once; array
    `i` is the `i`-th stretch of them (normals through the inverse normal CDF), so the
    arrays of one step are independent.

    Example:

    >>> import numpy as np
    >>> xi, u = variates(("normal", "uniform"), (2,), "float32", np.array([0, 1], "int64"))
    >>> tuple(xi.shape), tuple(u.shape)
    ((2,), (2,))
    """
    _check_kinds(kinds)
    u = _uniforms(len(kinds), tuple(shape), key, steps=None)
    return tuple(_transform(kind, u[i], dtype) for i, kind in enumerate(kinds))


def sequence_variates(kinds: tuple[str, ...], shape, dtype, base, steps) -> tuple:
    """The variates of `steps` consecutive steps, stacked: `(steps, *shape)` per kind.

    Row `t` equals `variates(kinds, shape, dtype, base + (0, t))`, so a layer that draws a
    whole sequence before its loop follows the same Brownian path as a cell that draws step
    by step. One random op on TensorFlow and JAX.

    Args:
        kinds: the variate kinds, as in `variates`.
        shape: the shape of one step's variates, e.g. `(batch, units)`.
        dtype: the dtype of the result.
        base: the key of step 0, shape `(2,)` (`reserve_base`).
        steps: the number of steps (an int, or a scalar tensor on TensorFlow).

    Example:

    >>> import numpy as np
    >>> base = np.array([4, 20], "int64")
    >>> (xi,) = sequence_variates(("normal",), (2, 3), "float32", base, 5)
    >>> tuple(xi.shape)
    (5, 2, 3)
    >>> row = variates(("normal",), (2, 3), "float32", base + [0, 3])[0]
    >>> bool(np.allclose(xi[3], row, atol=1e-6))
    True
    """
    _check_kinds(kinds)
    u = _uniforms(len(kinds), tuple(shape), base, steps=steps)
    return tuple(_transform(kind, u[:, i], dtype) for i, kind in enumerate(kinds))


def _check_kinds(kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        if kind not in ("normal", "uniform"):
            raise ValueError(f"Unknown variate kind {kind!r}; expected 'normal' or 'uniform'.")


def _transform(kind: str, u, dtype):
    """Uniforms in `[0, 1)` (float32) to the variate `kind`, cast to `dtype`."""
    if kind == "normal":
        # The inverse normal CDF, in float32 (it needs it for the tails), of uniforms moved
        # into [2^-24, 1): normals within about 5.3 standard deviations.
        u = _ndtri(u * (1.0 - 2.0**-24) + 2.0**-24)
    return ops.cast(u, dtype)


def _ndtri(p):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.math.ndtri(p)
    if backend == "jax":
        import jax

        return jax.scipy.special.ndtri(p)
    if backend == "torch":
        import torch

        return torch.special.ndtri(p)
    return math.sqrt(2.0) * ops.erfinv(2.0 * p - 1.0)


def _uniforms(kinds: int, shape: tuple, key, steps):
    """float32 uniforms in `[0, 1)` of shape `(kinds, *shape)` for the step `key`, or
    `(steps, kinds, *shape)` for `steps` consecutive steps from it."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tf_uniforms((kinds, *shape), key, steps)
    if backend == "jax":
        if steps is None:
            return _jax_uniforms((kinds, *shape), key)
        import jax

        return jax.vmap(lambda k: _jax_uniforms((kinds, *shape), k))(step_keys(key, steps))
    if steps is None:
        return _numpy_philox_uniforms((kinds, *shape), key)
    keys = step_keys(key, steps)
    return ops.stack([_numpy_philox_uniforms((kinds, *shape), keys[t]) for t in range(int(steps))])


# ------------------------------------------------------------------ backend fast paths
def _tf_uniforms(shape: tuple, key, steps):
    """Philox (`StatelessRandomUniformV2`) with the counter layout of the module docstring.

    The key reaches the random op as it was read, with no arithmetic on it: XLA compiled the
    draw about 3x slower when the key was computed (an added offset or an XOR-ed word).
    """
    import tensorflow as tf

    words = tf.bitcast(tf.cast(key, tf.int64), tf.uint64)
    dims = [tf.cast(d, tf.int64) for d in shape]
    numel = tf.reduce_prod(tf.stack(dims))
    blocks = (numel + 3) // 4  # Philox4x32 gives 4 numbers per counter value
    counter = tf.stack([words[1] * tf.cast(blocks, tf.uint64), tf.constant(0, tf.uint64)])
    lead = [] if steps is None else [tf.cast(steps, tf.int64)]
    # A step of a multiple of 4 numbers fills its blocks exactly: draw the final shape at
    # once (no slice, which XLA would not fuse when the batch size is dynamic).
    exact = isinstance(shape[-1], int) and shape[-1] % 4 == 0
    u = tf.raw_ops.StatelessRandomUniformV2(
        shape=tf.stack(lead + dims) if exact else tf.stack([*(lead or [1]), 4 * blocks]),
        key=words[:1],
        counter=counter,
        alg=1,  # Philox
        dtype=tf.float32,
    )
    if not exact:
        u = tf.reshape(u[:, :numel], tf.stack(lead + dims))
    return u


def _jax_uniforms(shape: tuple, key):
    import jax
    import jax.numpy as jnp

    return jax.random.uniform(jnp.asarray(key).astype("uint32"), shape=shape, dtype="float32")


def _numpy_philox_uniforms(shape: tuple, key):
    # torch's CPU generator (mt19937) keeps only 32 bits of its seed, so keys differing in
    # the other word would collide; numpy's Philox takes the whole key and is counter-based,
    # like the TensorFlow path. The torch backend runs eagerly, so the key is concrete here.
    words = [int(v) & 0xFFFFFFFF for v in ops.convert_to_numpy(key).tolist()]
    rng = np.random.Generator(np.random.Philox(key=(words[0] << 32) | words[1]))
    sample = rng.random(tuple(int(s) for s in shape), dtype=np.float32)
    return ops.convert_to_tensor(sample)
