"""Keras's own layer-test harness over every registered cell, in `keras.layers.RNN` and `SDERNN`.

`keras.src.testing.TestCase.run_layer_test` builds the layer, checks shapes, dtypes, weight and
seed-generator counts, `get_config`/`from_config`, a `.keras` round trip, a short `fit`
(training check) and a `mixed_float16` pass (mixed-precision check). The cell list comes from
`keras_nrnn.registry`, so a new cell is covered by registering it.
"""

from __future__ import annotations

import keras
import pytest
from keras.src.testing import TestCase

import keras_nrnn
from keras_nrnn import registry

ENTRIES = registry.cells()
BATCH, TIME, FEATURES = 3, 5, 4


def _ids(entry):
    return entry.cls.__name__


@pytest.fixture(scope="module")
def harness():
    return TestCase()


@pytest.mark.parametrize("noisy", [False, True], ids=["deterministic", "noisy"])
@pytest.mark.parametrize("layer_cls", [keras.layers.RNN, keras_nrnn.SDERNN], ids=["RNN", "SDERNN"])
@pytest.mark.parametrize("entry", ENTRIES, ids=_ids)
def test_run_layer_test(harness, entry, layer_cls, noisy):
    if noisy and layer_cls is keras.layers.RNN and keras.backend.backend() == "jax":
        pytest.skip(
            "keras.layers.RNN cannot draw per-step noise under jax.lax.scan: the cell raises a "
            "RuntimeError naming SDERNN (test_noisy_rnn_on_jax_names_sdernn), SDERNN is tested"
        )
    cell = entry.make(noisy=noisy)
    units = cell.units
    harness.run_layer_test(
        layer_cls,
        init_kwargs={"cell": cell, "return_sequences": True},
        input_shape=(BATCH, TIME, FEATURES),
        expected_output_shape=(BATCH, TIME, units),
        expected_num_seed_generators=1 if noisy else 0,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        run_training_check=True,
        run_mixed_precision_check=True,
    )


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX backend's limit only")
def test_noisy_rnn_on_jax_names_sdernn():
    import numpy as np

    model = keras.Sequential(
        [keras.Input((TIME, FEATURES)), keras.layers.RNN(ENTRIES[0].make(noisy=True))]
    )
    model.compile("adam", "mse")
    x = np.zeros((BATCH, TIME, FEATURES), "float32")
    y = np.zeros((BATCH, ENTRIES[0].make().units), "float32")
    with pytest.raises(RuntimeError, match="SDERNN"):
        model(x, training=True)  # eager: refused instead of reusing one draw at every step
    with pytest.raises(RuntimeError, match="SDERNN"):
        model.fit(x, y, verbose=0)  # jit: refused instead of leaking a tracer
    # What the error recommends works: the same cell config under SDERNN trains.
    cell = keras_nrnn.NoisyLipschitzCell.from_config(model.layers[0].cell.get_config())
    fixed = keras.Sequential([keras.Input((TIME, FEATURES)), keras_nrnn.SDERNN(cell)])
    fixed.compile("adam", "mse")
    assert np.isfinite(fixed.fit(x, y, verbose=0).history["loss"][0])
    # So does an unrolled keras.layers.RNN, whose steps are traced one by one.
    unrolled = keras.Sequential(
        [keras.Input((TIME, FEATURES)), keras.layers.RNN(ENTRIES[0].make(noisy=True), unroll=True)]
    )
    unrolled.compile("adam", "mse")
    assert np.isfinite(unrolled.fit(x, y, verbose=0).history["loss"][0])
