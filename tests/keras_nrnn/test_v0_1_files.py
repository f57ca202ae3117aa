"""`.keras` files written by keras_nrnn 0.1 load without `custom_objects` and predict unchanged.

The fixtures were saved by version 0.1.0 (commit 53afad8) with
`tests/keras_nrnn/fixtures/make_v0_1_fixtures.py`; their inference outputs are stored beside them.
"""

from __future__ import annotations

import pathlib

import keras
import numpy as np
import pytest

import keras_nrnn  # registers the classes, as a user's import does

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
OUTPUTS = np.load(FIXTURES / "v0_1_outputs.npz")
NAMES = sorted(p.stem.removeprefix("v0_1_") for p in FIXTURES.glob("v0_1_*.keras"))


def test_every_fixture_has_a_stored_output():
    assert len(NAMES) == 8
    assert set(NAMES) <= set(OUTPUTS.files)


@pytest.mark.parametrize("name", NAMES)
def test_v0_1_file_loads_and_predicts_unchanged(name):
    model = keras.saving.load_model(FIXTURES / f"v0_1_{name}.keras")
    got = keras.ops.convert_to_numpy(model(OUTPUTS["x"], training=False))
    np.testing.assert_allclose(got, OUTPUTS[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("noisy") or "_rnn" in n])
def test_v0_1_noisy_file_is_still_noisy_in_training(name):
    model = keras.saving.load_model(FIXTURES / f"v0_1_{name}.keras")
    cell = model.layers[0].cell
    x = OUTPUTS["x"]
    if cell.noise is None:
        pytest.skip(f"{name} holds a deterministic cell: nothing to check in training mode")
    if keras.backend.backend() == "jax" and not isinstance(model.layers[0], keras_nrnn.SDERNN):
        with pytest.raises(RuntimeError, match="SDERNN"):  # lax.scan cannot draw per step
            model(x, training=True)
        return
    assert not np.allclose(
        keras.ops.convert_to_numpy(model(x, training=True)), OUTPUTS[name], atol=1e-6
    )


def test_v0_1_research_scheme_becomes_research_noise():
    from keras_nrnn.noise import ResearchNoise

    model = keras.saving.load_model(FIXTURES / "v0_1_noisy_lipschitz_research_sdernn.keras")
    cell = model.layers[0].cell
    assert isinstance(cell.noise, ResearchNoise)
    assert (cell.noise.additive, cell.noise.multiplicative) == (0.02, 0.02)
    assert cell.learnable_dt == "per_unit"  # the research code's default, kept from 0.1
