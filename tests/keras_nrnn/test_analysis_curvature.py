"""Hessian top eigenvalue against the dense Hessian; Fisher-Rao norm against per-sample
gradients (TensorFlow autodiff formed independently of the code under test)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from analysis_helpers import make_model

from keras_nrnn.analysis import fisher_rao_norm, top_hessian_eigenvalue

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the references use tf.GradientTape"
)


def _loss(model, x, y):
    logits = model(x, training=False)
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))


def _dense_hessian(model, x, y):
    variables = [v.value for v in model.trainable_variables]
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            loss = _loss(model, x, y)
        flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, variables)], 0)
    blocks = outer.jacobian(flat, variables)
    return np.concatenate([np.reshape(b, (flat.shape[0], -1)) for b in blocks], axis=1)


def test_top_eigenvalue_matches_dense_hessian():
    model, _ = make_model(3, timesteps=4, seed=0, scale=2.0)
    x = np.random.default_rng(0).normal(size=(6, 4, 1))
    y = np.array([0, 1, 0, 1, 1, 0])
    hess = _dense_hessian(model, x, y)
    np.testing.assert_allclose(hess, hess.T, atol=1e-10)
    eig = np.linalg.eigvalsh(hess)
    dominant = eig[np.argmax(np.abs(eig))]
    out = top_hessian_eigenvalue(model, x, y, iterations=500, tolerance=1e-10, seed=1)
    assert out["converged"]
    assert out["eigenvalue"] == pytest.approx(dominant, rel=1e-5)


def test_fisher_rao_norm_matches_per_sample_gradients():
    model, _ = make_model(3, timesteps=5, seed=2)
    x = np.random.default_rng(2).normal(size=(5, 5, 1))
    y = np.array([0, 1, 1, 0, 1])
    variables = model.trainable_variables
    dots = []
    for i in range(5):
        with tf.GradientTape() as tape:
            loss = _loss(model, x[i : i + 1], y[i : i + 1])
        grads = tape.gradient(loss, [v.value for v in variables])
        dots.append(
            sum(float(tf.reduce_sum(g * v.value)) for g, v in zip(grads, variables, strict=True))
        )
    expected = float(np.mean(np.square(dots)))
    assert fisher_rao_norm(model, x, y, batch_size=2) == pytest.approx(expected, rel=1e-8)


def test_arguments_are_checked():
    model, _ = make_model(3, timesteps=4)
    with pytest.raises(ValueError, match="`iterations` must be an int > 0"):
        top_hessian_eigenvalue(model, np.zeros((1, 4, 1)), np.array([0]), iterations=0)
    with pytest.raises(ValueError, match="`labels` must be integer class indices"):
        fisher_rao_norm(model, np.zeros((2, 4, 1)), np.array([0.5, 1.0]))
