"""The baseline cells (Antisymmetric, coRNN, expRNN and their noisy variants) as Keras cells.

- inside `keras.layers.RNN`: return_sequences / return_state, go_backwards, masking, unroll,
  `Bidirectional`, `fit` with `jit_compile=True`;
- serialization: `get_config` round trip of every argument, and a `.keras` file reloaded in a
  fresh Python process with only `import keras_nrnn` giving bit-identical outputs;
- mixed precision: `mixed_float16` / `mixed_bfloat16` training stays finite, variables float32;
- every bad argument raises a `ValueError` naming the argument.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from backend_helpers import recurrent_layer

from keras_nrnn import (
    SDERNN,
    AntisymmetricCell,
    CoRNNCell,
    ExpRNNCell,
    NoisyAntisymmetricCell,
    NoisyCoRNNCell,
    NoisyExpRNNCell,
)
from keras_nrnn.cells.exprnn import SkewBlockInitializer

UNITS, FEATURES, T, BATCH = 5, 3, 10, 4

# Factories of small cells whose dynamics are far from trivial over T steps.
CELLS = {
    "antisymmetric": lambda: AntisymmetricCell(UNITS, dt=0.3, gamma=0.01, init_std=4.0),
    "noisy_antisymmetric": lambda: NoisyAntisymmetricCell(
        UNITS, dt=0.3, gamma=0.01, init_std=4.0, additive_noise=0.1, multiplicative_noise=0.1,
        seed=1,
    ),
    "cornn": lambda: CoRNNCell(UNITS, dt=0.2, gamma=1.0, epsilon=1.0),
    "noisy_cornn": lambda: NoisyCoRNNCell(
        UNITS, dt=0.2, gamma=1.0, epsilon=1.0, additive_noise=0.1, multiplicative_noise=0.1,
        seed=2,
    ),
    "exprnn": lambda: ExpRNNCell(UNITS),
    "noisy_exprnn": lambda: NoisyExpRNNCell(
        UNITS, additive_noise=0.1, multiplicative_noise=0.1, seed=3
    ),
}
NOISY = ["noisy_antisymmetric", "noisy_cornn", "noisy_exprnn"]


def to_np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.ops.convert_to_numpy(x))


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(BATCH, T, FEATURES)).astype("float32")


def built_layer(name: str, **kwargs):
    cell = CELLS[name]()
    layer = recurrent_layer(cell, **kwargs)
    layer.build((None, T, FEATURES))
    return layer


def n_states(cell) -> int:
    return len(cell.state_size) if isinstance(cell.state_size, list) else 1


# ------------------------------------------------------------------- keras.layers.RNN


@pytest.mark.parametrize("name", list(CELLS))
def test_return_sequences_state_backwards_unroll(x, name):
    layer = built_layer(name, return_sequences=True, return_state=True)
    out = layer(x)
    seq, states = to_np(out[0]), [to_np(s) for s in out[1:]]
    assert seq.shape == (BATCH, T, UNITS)
    assert len(states) == n_states(layer.cell)
    np.testing.assert_array_equal(states[0], seq[:, -1])
    assert np.abs(seq[:, -1] - seq[:, 0]).max() > 1e-2  # the state moves

    last = recurrent_layer(layer.cell)(x)
    np.testing.assert_array_equal(to_np(last), seq[:, -1])

    back = recurrent_layer(layer.cell, return_sequences=True, go_backwards=True)(x)
    np.testing.assert_allclose(to_np(back), to_np(recurrent_layer(
        layer.cell, return_sequences=True)(x[:, ::-1])), rtol=1e-6, atol=1e-6)

    unrolled = recurrent_layer(layer.cell, return_sequences=True, unroll=True)(x)
    np.testing.assert_allclose(to_np(unrolled), seq, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CELLS))
def test_masked_steps_keep_the_state(x, name):
    """Trailing masked steps: each sequence's last output is that of its unpadded prefix."""
    layer = built_layer(name, return_state=True)
    lengths = [T, 7, 4, 1]
    mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
    out = layer(x, mask=mask)
    for i, n in enumerate(lengths):
        want = layer(x[i : i + 1, :n])
        for got_part, want_part in zip(out, want, strict=True):
            np.testing.assert_allclose(to_np(got_part)[i], to_np(want_part)[0], rtol=1e-5,
                                       atol=1e-6)
    # The Masking layer path (zeros in all features) gives the same result.
    padded = np.where(mask[..., None], x, 0.0).astype("float32")
    model_out = layer(padded, mask=keras.layers.Masking(0.0).compute_mask(padded))
    np.testing.assert_allclose(to_np(model_out[0]), to_np(out[0]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(CELLS))
def test_precompute_runs_once_per_sequence(x, name, monkeypatch):
    """W, [W; W_z] or exp(S) are formed once per call of the RNN layer, not once per step."""
    layer = built_layer(name, return_sequences=True)
    calls = []
    original = layer.cell.precompute
    monkeypatch.setattr(layer.cell, "precompute", lambda: calls.append(1) or original())
    layer(x, training=True)
    layer(x)
    assert len(calls) == 2


@pytest.mark.parametrize("name", ["antisymmetric", "cornn", "noisy_exprnn"])
def test_bidirectional_halves(x, name):
    bi = keras.layers.Bidirectional(recurrent_layer(CELLS[name]()), merge_mode="concat")
    got = to_np(bi(x))
    assert got.shape == (BATCH, 2 * UNITS)
    fwd = recurrent_layer(CELLS[name]())
    bwd = recurrent_layer(CELLS[name](), go_backwards=True)
    fwd.build(x.shape)
    bwd.build(x.shape)
    fwd.set_weights(bi.forward_layer.get_weights())
    bwd.set_weights(bi.backward_layer.get_weights())
    np.testing.assert_allclose(got[:, :UNITS], to_np(fwd(x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[:, UNITS:], to_np(bwd(x)), rtol=1e-6, atol=1e-6)


def classifier(cell, bidirectional: bool = False) -> keras.Model:
    rnn = recurrent_layer(cell)
    return keras.Sequential([
        keras.Input((T, FEATURES)),
        keras.layers.Bidirectional(rnn) if bidirectional else rnn,
        keras.layers.Dense(2),
    ])


@pytest.mark.parametrize("name", NOISY)
def test_fit_with_jit_compile_trains_every_weight(x, name):
    keras.utils.set_random_seed(0)
    cell = CELLS[name]()
    model = classifier(cell)
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    y = (x[:, :, 0].mean(1) > 0).astype("int32")
    before = [to_np(w).copy() for w in cell.trainable_weights]
    history = model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    assert all(math.isfinite(v) for v in history.history["loss"])
    for w0, w in zip(before, cell.trainable_weights, strict=True):
        assert np.abs(to_np(w) - w0).max() > 0, w.path
    pred = model.predict(x, verbose=0)
    np.testing.assert_array_equal(pred, model.predict(x, verbose=0))  # inference: no noise


def test_sdernn_runs_every_baseline_including_the_two_part_cornn(x):
    for name in ("antisymmetric", "noisy_exprnn", "cornn", "noisy_cornn"):
        fast = SDERNN(CELLS[name](), return_sequences=True)
        plain = recurrent_layer(CELLS[name](), return_sequences=True)
        fast.build(x.shape)
        plain.build(x.shape)
        plain.set_weights(fast.get_weights())
        np.testing.assert_allclose(to_np(fast(x)), to_np(plain(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["noisy_antisymmetric", "noisy_cornn", "noisy_exprnn"])
def test_freeze_keeps_inference_and_ignores_later_weight_changes(x, name):
    layer = built_layer(name, return_sequences=True)
    want = to_np(layer(x))
    layer.cell.freeze()
    np.testing.assert_array_equal(to_np(layer(x)), want)
    first = layer.cell.trainable_weights[0]
    first.assign(first + 1.0)
    recurrent = next(w for w in layer.cell.trainable_weights
                     if w.path.split("/")[-1] in ("m_w", "m", "recurrent_kernel"))
    recurrent.assign(recurrent * 0.5)
    frozen_out = to_np(layer(x))
    layer.cell.unfreeze()
    assert np.abs(to_np(layer(x)) - frozen_out).max() > 1e-4


# --------------------------------------------------------------------------- config


def non_default_args():
    common = dict(
        kernel_regularizer="l2", recurrent_regularizer="l1", bias_regularizer="l2",
        kernel_constraint="max_norm", bias_constraint="non_neg", name="c", learnable_dt="scalar",
    )
    anti = dict(units=7, dt=0.05, gamma=0.2, activation="relu", init_std=0.5, scheme="tamed",
                use_bias=False, kernel_initializer="orthogonal", bias_initializer="ones",
                **common)
    cornn = dict(units=7, dt=0.1, gamma=1.5, epsilon=2.0, implicit_damping=False,
                 activation="sigmoid",
                 scheme="tamed", use_bias=False, kernel_initializer="orthogonal",
                 recurrent_initializer="glorot_normal", bias_initializer="ones",
                 recurrent_constraint="unit_norm", **common)
    exp = dict(units=7, dt=0.5, recurrent_initializer="cayley",
               kernel_initializer="glorot_uniform", bias_initializer="zeros", scheme="milstein",
               **common)
    noise = dict(additive_noise=0.1, multiplicative_noise=0.2, seed=3)
    return [
        (AntisymmetricCell, anti),
        (NoisyAntisymmetricCell, {**anti, **noise}),
        (CoRNNCell, cornn),
        (NoisyCoRNNCell, {**cornn, **noise}),
        (ExpRNNCell, exp),
        (NoisyExpRNNCell, {**exp, **noise, "learnable_dt": "per_unit"}),
        (ExpRNNCell, {"units": 4, "recurrent_initializer": SkewBlockInitializer("henaff", 5)}),
        (ExpRNNCell, {"units": 4, "recurrent_initializer": "orthogonal"}),
    ]


SCALARS = ("units", "dt", "gamma", "epsilon", "implicit_damping", "init_std", "scheme",
           "use_bias", "learnable_dt", "additive_noise", "multiplicative_noise", "seed", "name")


@pytest.mark.parametrize(("cls", "kwargs"), non_default_args(),
                         ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_get_config_round_trips_every_argument(cls, kwargs):
    cell = cls(**kwargs)
    config = cell.get_config()
    for key, value in kwargs.items():
        if key in ("additive_noise", "multiplicative_noise"):  # stored as the noise model
            assert getattr(cell.noise, key.removesuffix("_noise")) == value
            assert config["noise"]["config"][key.removesuffix("_noise")] == value
            continue
        assert key in config, key
        if key in SCALARS:
            assert config[key] == value, key
    if "activation" in kwargs:
        assert config["activation"] == kwargs["activation"]
    clone = cls.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(cell))))
    assert type(revived) is cls and revived.get_config() == config
    # The objects themselves came back, not just their names.
    assert type(revived.kernel_initializer) is type(cell.kernel_initializer)
    assert type(revived.kernel_regularizer) is type(cell.kernel_regularizer)
    if isinstance(cell, ExpRNNCell):
        assert type(revived.recurrent_initializer) is type(cell.recurrent_initializer)
        if isinstance(cell.recurrent_initializer, SkewBlockInitializer):
            assert revived.recurrent_initializer.get_config() == (
                cell.recurrent_initializer.get_config())


def test_keras_file_reloads_bit_identically_in_a_fresh_process(tmp_path, x):
    """One model per cell, saved here, loaded in a new interpreter with only keras_nrnn."""
    rng = np.random.default_rng(1)
    for name in CELLS:
        model = classifier(CELLS[name](), bidirectional=name == "cornn")
        # Random O(1) weights (not the initial ones), so every weight matters in the output.
        model.set_weights([rng.normal(0, 0.5, w.shape).astype(w.dtype)
                           for w in model.get_weights()])
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}.npy", to_np(model(x)))
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        import keras, numpy as np
        import keras_nrnn  # registers the cells: no custom_objects below
        assert "test_baseline_cells" not in sys.modules
        x = np.load({str(tmp_path / "x.npy")!r})
        for name in {list(CELLS)!r}:
            model = keras.saving.load_model({str(tmp_path)!r} + "/" + name + ".keras")
            got = keras.ops.convert_to_numpy(model(x))
            want = np.load({str(tmp_path)!r} + "/" + name + ".npy")
            assert got.dtype == want.dtype and np.array_equal(got, want), name
            cell = model.layers[0].cell if hasattr(model.layers[0], "cell") else (
                model.layers[0].forward_layer.cell)
            print(name, type(cell).__name__, "OK")
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("OK") == len(CELLS), proc.stdout


# ---------------------------------------------------------------------- mixed precision


@pytest.fixture
def restore_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", NOISY)
def test_mixed_precision_training_is_finite(x, restore_policy, policy, name):
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    cell = CELLS[name]()
    model = classifier(cell)
    assert cell.compute_dtype == policy.split("_")[1]
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y = (x[:, :, 0].mean(1) > 0).astype("int32")
    history = model.fit(x, y, epochs=2, batch_size=BATCH, verbose=0)
    assert all(math.isfinite(v) for v in history.history["loss"])
    assert all(w.dtype == "float32" for w in cell.weights if w.trainable)
    assert all(np.isfinite(to_np(w)).all() for w in cell.weights)
    seq = recurrent_layer(cell, return_sequences=True)(x, training=True)
    assert keras.backend.standardize_dtype(seq.dtype) == policy.split("_")[1]
    assert np.isfinite(to_np(seq).astype("float32")).all()
    if isinstance(cell, ExpRNNCell):  # exp(S) is formed in float32, then cast
        q = to_np(cell.recurrent_matrix())
        assert q.dtype == np.float32 and np.abs(q.T @ q - np.eye(UNITS)).max() < 1e-5


# ------------------------------------------------------------------------ validation


BAD_ARGS = [
    (AntisymmetricCell, {"units": 0}, "units"),
    (AntisymmetricCell, {"units": 4.0}, "units"),
    (AntisymmetricCell, {"units": 4, "dt": -0.1}, "dt"),
    (AntisymmetricCell, {"units": 4, "gamma": -0.1}, "gamma"),
    (AntisymmetricCell, {"units": 4, "gamma": float("nan")}, "gamma"),
    (AntisymmetricCell, {"units": 4, "init_std": -1.0}, "init_std"),
    (AntisymmetricCell, {"units": 4, "activation": "nope"}, "activation"),
    (AntisymmetricCell, {"units": 4, "scheme": "rk4"}, "scheme"),
    (AntisymmetricCell, {"units": 4, "learnable_dt": "yes"}, "learnable_dt"),
    (AntisymmetricCell, {"units": 4, "use_bias": "no"}, "use_bias"),
    (AntisymmetricCell, {"units": 4, "kernel_initializer": "nope"}, "kernel_initializer"),
    (AntisymmetricCell, {"units": 4, "bias_regularizer": "nope"}, "bias_regularizer"),
    (NoisyAntisymmetricCell, {"units": 4, "additive_noise": -1.0}, "additive_noise"),
    (NoisyAntisymmetricCell, {"units": 4, "multiplicative_noise": -0.5}, "multiplicative_noise"),
    (NoisyAntisymmetricCell, {"units": 4, "additive_noise": 0.1, "seed": "x"}, "seed"),
    (CoRNNCell, {"units": -2}, "units"),
    (CoRNNCell, {"units": 4, "dt": 0.0}, "dt"),
    (CoRNNCell, {"units": 4, "gamma": -1.0}, "gamma"),
    (CoRNNCell, {"units": 4, "epsilon": -1.0}, "epsilon"),
    (CoRNNCell, {"units": 4, "epsilon": float("inf")}, "epsilon"),
    (CoRNNCell, {"units": 4, "implicit_damping": "yes"}, "implicit_damping"),
    (CoRNNCell, {"units": 4, "activation": 3}, "activation"),
    (CoRNNCell, {"units": 4, "recurrent_initializer": "nope"}, "recurrent_initializer"),
    (CoRNNCell, {"units": 4, "recurrent_constraint": "nope"}, "recurrent_constraint"),
    (NoisyCoRNNCell, {"units": 4, "additive_noise": float("inf")}, "additive_noise"),
    (NoisyCoRNNCell, {"units": 4, "scheme": "research", "multiplicative_noise": 1.5},
     "multiplicative_noise"),
    (ExpRNNCell, {"units": 2.5}, "units"),
    (ExpRNNCell, {"units": 4, "dt": 0}, "dt"),
    (ExpRNNCell, {"units": 4, "recurrent_initializer": "nope"}, "recurrent_initializer"),
    (ExpRNNCell, {"units": 4, "recurrent_initializer": None}, "recurrent_initializer"),
    (ExpRNNCell, {"units": 4, "bias_initializer": "nope"}, "bias_initializer"),
    (ExpRNNCell, {"units": 4, "kernel_constraint": 3}, "kernel_constraint"),
    (NoisyExpRNNCell, {"units": 4, "multiplicative_noise": -1.0}, "multiplicative_noise"),
    (NoisyExpRNNCell, {"units": 4, "additive_noise": 0.1, "seed": 1.5}, "seed"),
    (SkewBlockInitializer, {"kind": "random"}, "kind"),
    (SkewBlockInitializer, {"kind": "henaff", "seed": "1"}, "seed"),
]


@pytest.mark.parametrize(("cls", "kwargs", "arg"), BAD_ARGS,
                         ids=[f"{c.__name__}-{a}-{i}" for i, (c, _, a) in enumerate(BAD_ARGS)])
def test_bad_arguments_raise_value_error_naming_them(cls, kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`") as info:
        cls(**kwargs)
    assert f"{arg}=" in str(info.value)  # ... and the received value


@pytest.mark.parametrize("name", ["antisymmetric", "cornn", "exprnn"])
def test_bad_inputs_raise(name):
    cell = CELLS[name]()
    with pytest.raises(ValueError, match="features"):
        recurrent_layer(cell)(np.zeros((2, 3), "float32"))
    layer = built_layer(name)
    with pytest.raises(ValueError, match="floating-point"):
        layer.cell(np.zeros((2, FEATURES), "int32"), layer.cell.get_initial_state(2))
