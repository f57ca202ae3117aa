"""`get_config` / `from_config` of every constructor argument, and `.keras` files loaded in a
fresh Python process with nothing but `import keras_nrnn` (no `custom_objects`)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_nrnn import LipschitzCell, NoisyLipschitzCell, SDECell

UNITS, FEATURES, T, BATCH = 6, 3, 7, 4
# On JAX, keras.layers.RNN's lax.scan cannot draw per-step noise; its unrolled loop can.
UNROLL = keras.backend.backend() == "jax"


def non_default_arguments() -> dict:
    """One non-default value for every constructor argument of `NoisyLipschitzCell`."""
    return {
        "units": 5,
        "dt": 0.23,
        "beta": 0.3,
        "gamma_a": 0.11,
        "gamma_w": 0.07,
        "additive_noise": 0.12,
        "multiplicative_noise": 0.21,
        "activation": "softsign",
        "init_std": 0.5,
        "seed": 1234,
        "learnable_dt": "per_unit",
        "scheme": "tamed",
        "use_bias": False,
        "kernel_initializer": keras.initializers.Orthogonal(gain=0.5, seed=1),
        "bias_initializer": keras.initializers.Constant(0.3),
        "kernel_regularizer": keras.regularizers.L2(1e-3),
        "recurrent_regularizer": keras.regularizers.L1L2(1e-4, 2e-4),
        "bias_regularizer": keras.regularizers.L1(0.01),
        "kernel_constraint": keras.constraints.MaxNorm(2.0),
        "bias_constraint": keras.constraints.NonNeg(),
    }


def constructor_arguments(cls) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        if klass in (keras.layers.Layer, object) or "__init__" not in klass.__dict__:
            continue
        if not issubclass(klass, SDECell):
            continue
        for p in inspect.signature(klass.__dict__["__init__"]).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                names.add(p.name)
    return names


def serialized(value):
    return keras.saving.serialize_keras_object(value)


NOISE_ARGS = {"additive_noise", "multiplicative_noise"}


def test_every_constructor_argument_is_covered():
    # `noise=` (the noise model object) is covered by test_noise_model_round_trip.
    covered = set(non_default_arguments()) | {"noise"}
    assert constructor_arguments(NoisyLipschitzCell) == covered
    assert constructor_arguments(LipschitzCell) == covered


@pytest.mark.parametrize("arg", sorted(non_default_arguments()))
def test_single_argument_round_trip(arg):
    value = non_default_arguments()[arg]
    kwargs = {"units": UNITS, arg: value}
    if arg == "use_bias":
        kwargs["bias_initializer"] = keras.initializers.Constant(0.3)
    cell = NoisyLipschitzCell(**kwargs)
    config = cell.get_config()
    default = NoisyLipschitzCell(UNITS).get_config()
    key = "noise" if arg in NOISE_ARGS else arg  # the shorthand is stored as the noise model
    assert config[key] != default[key], f"get_config ignores {arg}"
    assert json.loads(json.dumps(config)) == config  # JSON-serializable as it is
    clone = NoisyLipschitzCell.from_config(config)
    assert clone.get_config() == config
    if arg in NOISE_ARGS:
        assert getattr(clone.noise, arg.removesuffix("_noise")) == value
    elif isinstance(value, int | float | str | bool):
        assert config[arg] == value
    else:
        assert config[arg] == serialized(value)


def test_all_arguments_at_once_behave_the_same_after_round_trip():
    args = non_default_arguments()
    cell = NoisyLipschitzCell(**args, name="my_cell", dtype="float64", trainable=False)
    clone = keras.saving.deserialize_keras_object(serialized(cell))
    assert type(clone) is NoisyLipschitzCell
    assert clone.get_config() == cell.get_config()
    assert (clone.name, clone.dtype_policy.name, clone.trainable) == ("my_cell", "float64", False)
    assert clone.noise == cell.noise and clone.seed == 1234 and clone.scheme == "tamed"
    assert clone.activation is keras.activations.softsign
    for c in (cell, clone):
        c.build((None, FEATURES))
    # Seeded / constant initializers give the same weights; dt starts at dt per unit.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(cell.kernel),
                                  keras.ops.convert_to_numpy(clone.kernel))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone.dt_variable), np.full(5, 0.23))
    assert clone.bias is None
    clone.set_weights(cell.get_weights())
    # Same regularization losses (Keras only counts those of trainable layers) and constraints.
    cell.trainable = clone.trainable = True
    np.testing.assert_allclose([float(v) for v in clone.losses], [float(v) for v in cell.losses])
    assert len(cell.losses) == 3  # kernel, m_a, m_w (no bias)
    big = np.full((FEATURES, 5), 10.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone.kernel.constraint(big)),
                               keras.ops.convert_to_numpy(cell.kernel.constraint(big)))
    # And the same inference step.
    x = np.random.default_rng(0).normal(size=(BATCH, FEATURES))
    h = np.random.default_rng(1).normal(size=(BATCH, 5))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(cell(x, [h])[0]),
                                  keras.ops.convert_to_numpy(clone(x, [h])[0]))


@pytest.mark.parametrize("learnable_dt", [None, "none", "scalar", "per_unit"])
@pytest.mark.parametrize("scheme", ["euler_maruyama", "tamed", "milstein"])
def test_learnable_dt_and_scheme_round_trip(learnable_dt, scheme):
    cell = NoisyLipschitzCell(UNITS, learnable_dt=learnable_dt, scheme=scheme, additive_noise=0.1)
    clone = NoisyLipschitzCell.from_config(cell.get_config())
    assert (clone.learnable_dt, clone.scheme) == (learnable_dt or "none", scheme)
    for c in (cell, clone):
        c.build((None, FEATURES))
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in cell.weights]


@pytest.mark.parametrize("learnable_dt", [None, "none", "scalar", "per_unit"])
def test_deprecated_research_scheme_maps_to_research_noise(learnable_dt):
    from keras_nrnn.noise import ResearchNoise

    with pytest.warns(DeprecationWarning, match="ResearchNoise"):
        cell = NoisyLipschitzCell(
            UNITS, learnable_dt=learnable_dt, scheme="research", additive_noise=0.1
        )
    assert cell.scheme == "euler_maruyama" and cell.noise == ResearchNoise(0.1, 0.0)
    assert cell.learnable_dt == (learnable_dt or "per_unit")  # the research code's default
    clone = NoisyLipschitzCell.from_config(cell.get_config())
    assert clone.get_config() == cell.get_config()


@pytest.mark.parametrize(
    "noise", ["DiagonalNoise(0.1, 0.2)", "ResearchNoise(0.02, 0.5)", "None"]
)
def test_noise_model_round_trip(noise):
    from keras_nrnn.noise import DiagonalNoise, ResearchNoise  # noqa: F401

    model = eval(noise)
    cell = LipschitzCell(UNITS, noise=model, seed=None if model is None else 4)
    config = cell.get_config()
    assert json.loads(json.dumps(config)) == config
    clone = keras.saving.deserialize_keras_object(serialized(cell))
    assert clone.noise == model and clone.seed == cell.seed
    assert (clone.seed_generator is None) == (model is None)


def test_one_class_per_drift_takes_noise_and_a_v0_1_config_without_noise_loads():
    noisy = LipschitzCell(UNITS, additive_noise=0.1, seed=3)
    assert noisy.noise is not None and noisy.get_config()["seed"] == 3
    # Version 0.1 wrote no noise keys for the deterministic cell: it loads without noise.
    config = LipschitzCell(UNITS, dt=0.3, beta=0.9, learnable_dt="scalar").get_config()
    for key in ("noise", "seed"):
        config.pop(key)
    clone = LipschitzCell.from_config(config)
    assert clone.noise is None and clone.seed_generator is None
    with pytest.raises(ValueError, match="not both"):
        from keras_nrnn.noise import DiagonalNoise

        LipschitzCell(UNITS, noise=DiagonalNoise(0.1), additive_noise=0.1)


def test_rnn_layer_config_with_the_cell():
    layer = keras.layers.RNN(NoisyLipschitzCell(UNITS, additive_noise=0.1, seed=5),
                             return_sequences=True, go_backwards=True)
    clone = keras.layers.RNN.from_config(layer.get_config())
    assert type(clone.cell) is NoisyLipschitzCell
    assert clone.cell.get_config() == layer.cell.get_config()


# ------------------------------------------------------------ .keras in a fresh process


def models_to_save() -> dict[str, tuple[keras.Model, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, T, FEATURES)).astype("float32")
    tokens = rng.integers(0, 9, size=(BATCH, T)).astype("int32")
    tokens[:, -2:] = 0  # padding, masked by the embedding

    def noisy(**kwargs):
        kwargs = {"additive_noise": 0.06, "multiplicative_noise": 0.03, "seed": 7, **kwargs}
        return NoisyLipschitzCell(UNITS, **kwargs)

    seq = keras.Sequential([
        keras.Input((T, FEATURES)),
        keras.layers.RNN(noisy(dt=0.2, beta=0.9, activation="softsign",
                               kernel_regularizer=keras.regularizers.L2(1e-3)), unroll=UNROLL),
        keras.layers.Dense(2),
    ])
    inputs = keras.Input((T, FEATURES))
    h = keras.layers.Bidirectional(
        keras.layers.RNN(noisy(scheme="research"), return_sequences=True, unroll=UNROLL))(inputs)
    h = keras.layers.RNN(keras.layers.StackedRNNCells([
        noisy(scheme="tamed", learnable_dt="scalar"), LipschitzCell(4, use_bias=False)]),
        unroll=UNROLL)(h)
    functional = keras.Model(inputs, keras.layers.Dense(3)(h))
    tok = keras.Input((T,), dtype="int32")
    e = keras.layers.Embedding(9, FEATURES, mask_zero=True)(tok)
    masked = keras.Model(tok, keras.layers.RNN(noisy(learnable_dt="per_unit"),
                                               return_sequences=True, unroll=UNROLL)(e))
    models = {"sequential": (seq, x), "functional": (functional, x), "masked": (masked, tokens)}
    for i, (model, _) in enumerate(models.values()):
        rng_w = np.random.default_rng(10 + i)
        # Random non-trivial weights (dt variables kept positive).
        model.set_weights([
            np.abs(w) + 0.05 if "dt" in v.path else rng_w.normal(0, 0.3, w.shape).astype(w.dtype)
            for v, w in zip(model.weights, model.get_weights(), strict=True)
        ])
    return models


LOADER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    import keras
    import keras_nrnn  # noqa: F401  -- the only import: registers the cells
    folder = Path(sys.argv[1])
    out = {}
    for name in json.loads((folder / "names.json").read_text()):
        model = keras.models.load_model(folder / f"{name}.keras")
        x = np.load(folder / f"{name}_x.npy")
        call = keras.ops.convert_to_numpy(model(x, training=False))
        train = keras.ops.convert_to_numpy(model(x, training=True))
        out[name] = {
            "call_equal": bool(np.array_equal(call, np.load(folder / f"{name}_call.npy"))),
            "train_equal": bool(np.array_equal(train, np.load(folder / f"{name}_train.npy"))),
            "train_differs": bool(not np.array_equal(train, call)),
            "cells": sorted(type(layer.cell).__name__ for layer in model._flatten_layers()
                            if isinstance(layer, keras.layers.RNN)),
        }
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow  # ~15-20 s: a second Python process importing TensorFlow
def test_keras_file_loads_bit_identically_in_a_fresh_process(tmp_path):
    models = models_to_save()
    expected_cells = {}
    for name, (model, x) in models.items():
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}_x.npy", x)
        np.save(tmp_path / f"{name}_call.npy", keras.ops.convert_to_numpy(model(x)))
        # The next training-mode call draws from the generator state that was saved.
        np.save(tmp_path / f"{name}_train.npy",
                keras.ops.convert_to_numpy(model(x, training=True)))
        expected_cells[name] = sorted(type(layer.cell).__name__ for layer in
                                      model._flatten_layers()
                                      if isinstance(layer, keras.layers.RNN))
    (tmp_path / "names.json").write_text(json.dumps(list(models)))
    (tmp_path / "load.py").write_text(LOADER)
    proc = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    results = json.loads(line[len("RESULT"):])
    assert set(results) == set(models)
    for name, r in results.items():
        assert r["call_equal"], (name, r)
        assert r["cells"] == expected_cells[name], (name, r)
        assert r["train_differs"], (name, r)
        # The noise generator's state is saved with the weights: training noise resumes.
        assert r["train_equal"], (name, r)
