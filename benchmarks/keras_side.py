"""Keras contenders built from keras_nrnn's public API.

Models are exactly what a user writes:

    keras.Sequential([
        keras.Input((T, 1)),
        keras.layers.RNN(NoisyLipschitzCell(128, dt=0.1, beta=0.9, gamma_a=0.001, gamma_w=0.001,
                                            additive_noise=0.06, multiplicative_noise=0.03,
                                            seed=0)),
        keras.layers.Dense(2),
    ])

with `LipschitzCell(128, dt=0.1, beta=0.9, gamma_a=0.001, gamma_w=0.001)` for the deterministic
model. Training steps go through `model.compile(optimizer="adam",
loss=SparseCategoricalCrossentropy(from_logits=True), jit_compile=...)` and
`model.train_on_batch`; inference through a `tf.function` calling `model(x, training=False)`
(XLA-compiled for the `-xla` contender), or `model.predict` for the reference contender.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.config import ECGConfig
from benchmarks.contenders import OURS, Contender, ContenderUnavailableError, Options
from benchmarks.threads import configure_tensorflow


def random_batch(batch: int, timesteps: int, config: ECGConfig, seed: int) -> tuple:
    """Random float32 inputs (batch, T, input_dim) ~ N(0, 1) and int32 binary labels (numpy).

    Example:

    >>> from benchmarks.config import ECG
    >>> x, y = random_batch(2, 5, ECG, 0)
    >>> x.shape, x.dtype, y.shape
    ((2, 5, 1), dtype('float32'), (2,))
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, timesteps, config.input_dim)).astype("float32")
    y = rng.integers(0, config.num_classes, size=(batch,)).astype("int32")
    return x, y


def build_model(
    config: ECGConfig,
    timesteps: int,
    noisy: bool,
    seed: int,
    layer: str = "rnn",
    precision: str = "float32",
) -> Any:
    """The user-level Sequential model (noisy or deterministic cell) for sequences of length T.

    Args:
        config: hyperparameters.
        timesteps: T of `keras.Input((T, input_dim))`.
        noisy: NoisyLipschitzCell if True, LipschitzCell if False.
        seed: seed of the noise generator and of the weights.
        layer: `"rnn"` (`keras.layers.RNN(cell)`, what users write first) or `"sdernn"`
            (`keras_nrnn.SDERNN(cell)`, the library's fast path).
        precision: the dtype policy the model is built under, as `training.ecg --precision`
            sets it (`"float32"`, `"mixed_bfloat16"`, ...); the logits layer stays float32.
            The global policy is restored afterwards.

    Returns:
        An uncompiled `keras.Sequential`.

    Example:

    >>> from benchmarks.config import ECG
    >>> build_model(ECG, 140, True, 0).output_shape  # doctest: +SKIP
    (None, 2)
    """
    import keras

    keras.utils.set_random_seed(seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return _sequential(config, timesteps, noisy, seed, layer)
    finally:
        keras.config.set_dtype_policy(previous)


def _sequential(config: ECGConfig, timesteps: int, noisy: bool, seed: int, layer: str) -> Any:
    import keras

    from keras_nrnn import SDERNN, LipschitzCell, NoisyLipschitzCell

    common = dict(dt=config.dt, beta=config.beta, gamma_a=config.gamma_a, gamma_w=config.gamma_w)
    if noisy:
        cell = NoisyLipschitzCell(
            config.units,
            additive_noise=config.additive_noise,
            multiplicative_noise=config.multiplicative_noise,
            seed=seed,
            **common,
        )
    else:
        cell = LipschitzCell(config.units, **common)
    return keras.Sequential(
        [
            keras.Input((timesteps, config.input_dim)),
            SDERNN(cell) if layer == "sdernn" else keras.layers.RNN(cell),
            keras.layers.Dense(config.num_classes, dtype="float32"),
        ]
    )


class KerasCellContender(Contender):
    """`keras.layers.RNN` over the library's cells, with or without XLA.

    Args:
        name: registry name.
        options: shared options.
        jit_compile: XLA for training (`compile(jit_compile=...)`) and for inference.
        inference: "function" (a `tf.function` calling the model with training=False) or
            "predict" (`model.predict`, reference only; no training step).
        layer: `"rnn"` or `"sdernn"` (see `build_model`).
        precision: dtype policy of the model (see `build_model`); a contender other than
            float32 measures training only (what is exported and served is float32).
    """

    def __init__(
        self,
        name: str,
        options: Options,
        jit_compile: bool,
        inference: str = "function",
        layer: str = "rnn",
        precision: str = "float32",
    ) -> None:
        super().__init__(name, OURS, options)
        if inference not in ("function", "predict"):
            raise ValueError(
                f"Argument `inference` must be 'function' or 'predict'; received {inference!r}"
            )
        self.jit_compile = jit_compile
        self.inference = inference
        self.layer = layer
        self.precision = precision

    def make_train_step(
        self, batch: int, timesteps: int, noisy: bool = True
    ) -> Callable[[], object] | None:
        if self.inference == "predict":
            return None
        import keras
        import tensorflow as tf

        cfg = self.options.config
        model = build_model(cfg, timesteps, noisy, self.options.seed, self.layer, self.precision)
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=self.jit_compile,
        )
        x, y = random_batch(batch, timesteps, cfg, self.options.seed)
        x, y = tf.constant(x), tf.constant(y)

        def step() -> object:
            return model.train_on_batch(x, y)  # returns numpy: blocks until done

        return step

    def make_inference(self, batch: int, timesteps: int) -> Callable[[], object] | None:
        if self.precision != "float32":
            return None
        import tensorflow as tf

        cfg = self.options.config
        model = build_model(cfg, timesteps, True, self.options.seed, self.layer)
        x, _ = random_batch(batch, timesteps, cfg, self.options.seed)
        if self.inference == "predict":

            def predict() -> object:
                return model.predict(x, batch_size=batch, verbose=0)

            return predict
        x = tf.constant(x)
        fn = tf.function(lambda inputs: model(inputs, training=False), jit_compile=self.jit_compile)

        def infer() -> object:
            return fn(x).numpy()

        return infer

    def release(self) -> None:
        import keras

        keras.backend.clear_session()


def create(name: str, options: Options) -> Contender:
    """Contender factory for the registry (`keras-rnn-cell`, `-xla`, `-predict`,
    `keras-sdernn`, `-xla`, `-bf16`).

    Raises:
        ContenderUnavailableError: keras_nrnn's cells cannot be imported yet.

    Example:

    >>> from benchmarks.contenders import create as create_contender
    >>> c = create_contender("keras-rnn-cell", Options())  # doctest: +SKIP
    """
    configure_tensorflow()
    try:
        from keras_nrnn import LipschitzCell, NoisyLipschitzCell  # noqa: F401
    except ImportError as err:
        raise ContenderUnavailableError(
            f"keras_nrnn does not provide NoisyLipschitzCell/LipschitzCell yet ({err})"
        ) from err
    variants = {
        "keras-rnn-cell": dict(jit_compile=False),
        "keras-rnn-cell-xla": dict(jit_compile=True),
        "keras-rnn-cell-predict": dict(jit_compile=False, inference="predict"),
        "keras-sdernn": dict(jit_compile=False, layer="sdernn"),
        "keras-sdernn-xla": dict(jit_compile=True, layer="sdernn"),
        "keras-sdernn-bf16": dict(jit_compile=False, layer="sdernn", precision="mixed_bfloat16"),
    }
    if name not in variants:
        raise ValueError(
            f"Argument `name` must be one of {', '.join(variants)}; received name={name!r}"
        )
    return KerasCellContender(name, options, **variants[name])
