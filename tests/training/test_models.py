"""The model registry: lazy cell lookup, argument routing, model shape and dtype."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_nrnn
from training import models

HP = {
    "units": 8,
    "dt": 0.1,
    "beta": 0.9,
    "gamma_a": 0.001,
    "gamma_w": 0.002,
    "additive_noise": 0.06,
    "multiplicative_noise": 0.03,
}


def test_registry_lists_paper_models_and_baselines():
    names = models.model_names()
    for name in ("nrnn", "lipschitz", "antisymmetric", "noisy_antisymmetric", "cornn",
                 "noisy_cornn", "exprnn", "noisy_exprnn"):  # fmt: skip
        assert name in names


def test_nrnn_gets_noise_and_seed_lipschitz_does_not():
    kw = models.cell_kwargs("nrnn", HP, seed=3)
    assert kw == {**HP, "seed": 3}
    kw = models.cell_kwargs("lipschitz", HP, seed=3)
    assert kw == {k: HP[k] for k in ("units", "dt", "beta", "gamma_a", "gamma_w")}


def test_built_cells_carry_the_hyperparameters():
    model = models.build_model("nrnn", HP, seed=5)
    cell = model.get_layer("rnn").cell
    assert isinstance(cell, keras_nrnn.NoisyLipschitzCell)
    assert (cell.units, cell.dt, cell.beta, cell.gamma_a, cell.gamma_w, cell.seed) == (
        8,
        0.1,
        0.9,
        0.001,
        0.002,
        5,
    )
    assert cell.noise.additive == 0.06 and cell.noise.multiplicative == 0.03
    assert model.input_shape == (None, 140, 1) and model.output_shape == (None, 2)
    lip = models.build_model("lipschitz", HP).get_layer("rnn").cell
    assert type(lip) is keras_nrnn.LipschitzCell


def test_sdernn_layer_gives_the_same_inference_as_rnn():
    x = np.random.default_rng(0).normal(size=(3, 140, 1)).astype("float32")
    plain = models.build_model("nrnn", HP, seed=0)
    fast = models.build_model("nrnn", HP, seed=0, layer="sdernn")
    fast.set_weights(plain.get_weights())
    np.testing.assert_allclose(fast(x), plain(x), atol=1e-5)


def test_unknown_model_and_missing_cell(monkeypatch):
    with pytest.raises(models.UnknownModelError, match="model='gru'"):
        models.get_model_spec("gru")
    monkeypatch.setitem(
        models.MODELS, "ghost", models.ModelSpec("ghost", "GhostCell", False, "Ghost")
    )
    with pytest.raises(models.UnknownModelError, match=r"keras_nrnn\.GhostCell"):
        models.build_model("ghost", HP)


@pytest.mark.parametrize("name", ["antisymmetric", "noisy_antisymmetric", "cornn", "noisy_cornn",
                                  "exprnn", "noisy_exprnn"])  # fmt: skip
def test_baselines_build_when_available(name):
    spec = models.get_model_spec(name)
    if not hasattr(keras_nrnn, spec.cell):
        pytest.skip(f"keras_nrnn.{spec.cell} is not in this keras_nrnn yet")
    model = models.build_model(name, HP, seed=0, timesteps=12)
    out = model(np.zeros((2, 12, 1), "float32"))
    assert tuple(out.shape) == (2, 2)


def test_logits_are_float32_under_mixed_precision():
    previous = keras.mixed_precision.global_policy().name
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = models.build_model("nrnn", HP, timesteps=6)
        out = model(np.zeros((2, 6, 1), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert model.get_layer("rnn").cell.compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_invalid_layer():
    with pytest.raises(ValueError, match="layer='lstm'"):
        models.build_model("nrnn", HP, layer="lstm")
