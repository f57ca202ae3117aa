"""The Brownian source and the noise models, on whichever backend the suite runs.

- variates are a pure function of the key, distinct keys give independent standard variates
  (moments and correlations within 5 standard errors);
- `reserve_keys` gives the keys `next_key` would give, step by step;
- noise models: config round trip, equality, the shorthand, and their refusal of bad levels.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_nrnn import brownian
from keras_nrnn import noise as noise_lib
from keras_nrnn.noise import DiagonalNoise, ResearchNoise

N = 20_000


def np_(x):
    return keras.ops.convert_to_numpy(x)


def key(a, b):
    return keras.ops.convert_to_tensor(np.array([a, b], "int64"))


def test_same_key_same_numbers_other_key_other_numbers():
    a = np_(brownian.normal((N,), "float32", key(1, 2)))
    np.testing.assert_array_equal(a, np_(brownian.normal((N,), "float32", key(1, 2))))
    for other in (key(1, 3), key(2, 2)):  # either word of the key matters
        b = np_(brownian.normal((N,), "float32", other))
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(N)


@pytest.mark.parametrize("kinds", [("normal",), ("normal", "uniform")])
def test_variates_have_the_right_moments_and_are_independent(kinds):
    draws = [
        np_(d).astype(np.float64) for d in brownian.variates(kinds, (N,), "float32", key(7, 0))
    ]
    xi = draws[0]
    assert abs(xi.mean()) < 5 / np.sqrt(N) and abs(xi.std() - 1) < 5 / np.sqrt(2 * N)
    if len(draws) == 2:
        u = draws[1]
        assert u.min() >= 0.0 and u.max() < 1.0
        assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / N)
        assert abs(np.corrcoef(xi, u)[0, 1]) < 5 / np.sqrt(N)


def test_reserved_keys_are_the_keys_drawn_step_by_step():
    a, b = keras.random.SeedGenerator(11), keras.random.SeedGenerator(11)
    reserved = np_(brownian.reserve_keys(a, 5))
    stepped = np.stack([np_(brownian.next_key(b)) for _ in range(5)])
    np.testing.assert_array_equal(reserved, stepped)
    np.testing.assert_array_equal(np_(a.state.value), np_(b.state.value))  # both advanced by 5


def test_low_precision_dtypes():
    for dtype in ("float16", "bfloat16"):
        out = brownian.normal((4, 3), dtype, key(0, 1))
        assert keras.backend.standardize_dtype(out.dtype) == dtype


def test_noise_models_round_trip_and_compare_by_value():
    for model in (DiagonalNoise(0.06, 0.03), ResearchNoise(0.02, 0.5)):
        clone = noise_lib.deserialize(noise_lib.serialize(model))
        assert clone == model and type(clone) is type(model) and hash(clone) == hash(model)
    assert DiagonalNoise(0.1, 0.0) != ResearchNoise(0.1, 0.0)


def test_the_shorthand_and_no_noise():
    assert noise_lib.get(None, 0.06, 0.03) == DiagonalNoise(0.06, 0.03)
    assert noise_lib.get("research", 0.02, 0.02) == ResearchNoise(0.02, 0.02)
    assert noise_lib.get(None) is None and noise_lib.get(DiagonalNoise(0.0, 0.0)) is None
    with pytest.raises(ValueError, match="not both"):
        noise_lib.get(DiagonalNoise(0.1), additive_noise=0.2)
    with pytest.raises(ValueError, match=r"`noise`.*'gauss'"):
        noise_lib.get("gauss")


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda: DiagonalNoise(-0.1), "additive_noise"),
        (lambda: DiagonalNoise(0.1, -1.0), "multiplicative_noise"),
        (lambda: ResearchNoise(0.1, 1.5), "multiplicative_noise"),
    ],
)
def test_bad_levels_name_the_argument(make, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        make()


def test_a_steps_kinds_are_independent_of_other_replicas_draws():
    """Replicas shift the first key word by `REPLICA_STRIDE * r`. A step's second variate
    (ResearchNoise's uniform) comes from the step's own key, so it is none of another
    replica's arrays: an earlier version derived it from a second key that one replica
    shift reached (replica r+1's normals were replica r's uniforms)."""
    base = np.array([3, 17], "int64")
    xi, u = (
        np_(a).ravel() for a in brownian.variates(("normal", "uniform"), (4000,), "float32", base)
    )
    for r in (-1, 1, 2):
        shifted = base + np.array([r * brownian.REPLICA_STRIDE, 0])
        xi_r, u_r = (
            np_(a).ravel()
            for a in brownian.variates(("normal", "uniform"), (4000,), "float32", shifted)
        )
        for a, b in ((u, u_r), (xi, xi_r), (u, np_(brownian.normal((4000,), "float32", shifted)))):
            assert not np.allclose(a, b)
            assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(4000)


@pytest.mark.parametrize("kinds", [("normal",), ("normal", "uniform")])
@pytest.mark.parametrize("shape", [(3, 8), (5, 7)])  # a step of 35 numbers: not whole blocks
def test_a_sequence_drawn_at_once_is_its_steps_drawn_one_by_one(kinds, shape):
    base = np.array([11, 40], "int64")
    whole = brownian.sequence_variates(kinds, shape, "float32", base, 6)
    for t in range(6):
        step = brownian.variates(kinds, shape, "float32", base + np.array([0, t]))
        for w, s in zip(whole, step, strict=True):
            np.testing.assert_allclose(np_(w)[t], np_(s), rtol=0, atol=1e-6)
    # Consecutive steps read consecutive, non-overlapping stretches: no two rows agree.
    rows = np_(whole[0]).reshape(6, -1)
    assert len({r.tobytes() for r in rows}) == 6
