"""What the library tests need to know about the backend they run on."""

from __future__ import annotations

import keras
import pytest

from keras_nrnn import SDERNN

BACKEND = keras.backend.backend()
JAX = BACKEND == "jax"

#: For tests that call TensorFlow directly (tf.function graphs, tf.GradientTape).
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="inspects TensorFlow graphs / uses tf APIs directly"
)


def recurrent_layer(cell, **kwargs):
    """`keras.layers.RNN(cell)`, or `SDERNN(cell)` for a noisy cell on JAX, where
    `keras.layers.RNN`'s `lax.scan` cannot draw per-step noise (the cell refuses, naming
    SDERNN; test_keras_harness checks that refusal)."""
    if JAX and getattr(cell, "noise", None) is not None and not kwargs.get("unroll"):
        return SDERNN(cell, **kwargs)
    return keras.layers.RNN(cell, **kwargs)
