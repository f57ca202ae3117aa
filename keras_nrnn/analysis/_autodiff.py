"""Derivatives the diagnostics need, per Keras backend (private).

`keras.ops` has no autodiff, so this module is the only backend-specific code of
`keras_nrnn.analysis`. TensorFlow is the reference backend and supports everything; JAX and
PyTorch support `batch_jacobian`, `hvp` and `directional_derivatives` as well, through their
own autodiff (`jax.jacrev` / `jax.jvp` on `model.stateless_call`; `torch.autograd.grad`).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np


def backend() -> str:
    return keras.backend.backend()


def _unsupported(what: str):
    return NotImplementedError(
        f"keras_nrnn.analysis: {what} is implemented for the tensorflow, jax and torch "
        f"backends; the current Keras backend is {backend()!r}."
    )


def jacobian_function(fn: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """A function `z -> d fn(z)[b] / d z[b]` for every row `b` (numpy `(B, m, n)`).

    `fn` maps `(B, n)` to `(B, m)` row by row. On TensorFlow the Jacobian is traced once
    into a `tf.function` (eager `batch_jacobian` re-traces its vectorised loop on every call).
    """
    if backend() == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def jac(z):
            with tf.GradientTape() as tape:
                tape.watch(z)
                out = fn(z)
            return tape.batch_jacobian(out, z)

        return lambda z: jac(tf.convert_to_tensor(z)).numpy()
    return lambda z: batch_jacobian(fn, z)


def batch_jacobian(fn: Callable, z: np.ndarray) -> np.ndarray:
    """`d fn(z)[b] / d z[b]` for every row `b`: `fn` maps `(B, n)` to `(B, m)` row by row.

    Returns a numpy array `(B, m, n)`.
    """
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        z = tf.convert_to_tensor(z)
        with tf.GradientTape() as tape:
            tape.watch(z)
            out = fn(z)
        return tape.batch_jacobian(out, z).numpy()
    if name == "jax":
        import jax

        return np.asarray(jax.vmap(jax.jacrev(lambda v: fn(v[None])[0]))(z))
    if name == "torch":
        import torch

        z = torch.as_tensor(np.asarray(z)).clone().requires_grad_(True)
        out = fn(z)
        rows = [
            torch.autograd.grad(out[:, i].sum(), z, retain_graph=True)[0]
            for i in range(out.shape[1])
        ]
        return torch.stack(rows, dim=1).detach().cpu().numpy()
    raise _unsupported("batch_jacobian")


def _values(variables) -> list:
    return [v.value for v in variables]


def hvp(
    model: keras.Model,
    loss_of_logits: Callable,
    x: np.ndarray,
    vector: list[np.ndarray],
) -> list[np.ndarray]:
    """Hessian-vector product of `loss_of_logits(model(x))` w.r.t. the trainable weights."""
    variables = model.trainable_variables
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        vec = [tf.constant(v, dtype=var.dtype) for v, var in zip(vector, variables, strict=True)]
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = loss_of_logits(model(x, training=False))
            grads = inner.gradient(loss, _values(variables))
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vec, strict=True)])
        return [np.asarray(h) for h in outer.gradient(dot, _values(variables))]
    if name == "jax":
        import jax

        fn = _jax_loss(model, loss_of_logits, x)
        primals = [v.value for v in variables]
        tangents = [jax.numpy.asarray(v, p.dtype) for v, p in zip(vector, primals, strict=True)]
        _, out = jax.jvp(jax.grad(fn), (primals,), (tangents,))
        return [np.asarray(h) for h in out]
    if name == "torch":
        import torch

        params = _values(variables)
        loss = loss_of_logits(model(x, training=False))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        vec = [torch.as_tensor(v, dtype=p.dtype) for v, p in zip(vector, params, strict=True)]
        dot = sum((g * v).sum() for g, v in zip(grads, vec, strict=True))
        return [h.detach().cpu().numpy() for h in torch.autograd.grad(dot, params)]
    raise _unsupported("hvp")


def _jax_loss(model, loss_of_logits, x):
    non_trainable = [v.value for v in model.non_trainable_variables]

    def fn(trainable):
        logits, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return loss_of_logits(logits)

    return fn


def directional_derivatives(
    model: keras.Model,
    per_sample_loss: Callable,
    x: np.ndarray,
    direction: list[np.ndarray],
) -> np.ndarray:
    """`<direction, grad_theta loss_i>` for every sample `i` (forward mode), shape `(batch,)`."""
    variables = model.trainable_variables
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        tangents = [
            tf.constant(v, dtype=var.dtype) for v, var in zip(direction, variables, strict=True)
        ]
        with tf.autodiff.ForwardAccumulator(_values(variables), tangents) as acc:
            losses = per_sample_loss(model(x, training=False))
        return np.asarray(acc.jvp(losses))
    if name == "jax":
        import jax

        fn = _jax_loss(model, per_sample_loss, x)
        primals = [v.value for v in variables]
        tangents = [jax.numpy.asarray(v, p.dtype) for v, p in zip(direction, primals, strict=True)]
        return np.asarray(jax.jvp(fn, (primals,), (tangents,))[1])
    if name == "torch":
        import torch

        params = _values(variables)
        losses = per_sample_loss(model(x, training=False))
        u = torch.ones_like(losses, requires_grad=True)
        grads = torch.autograd.grad((u * losses).sum(), params, create_graph=True)
        vec = [torch.as_tensor(v, dtype=p.dtype) for v, p in zip(direction, params, strict=True)]
        dot = sum((g * v).sum() for g, v in zip(grads, vec, strict=True))
        return torch.autograd.grad(dot, u)[0].detach().cpu().numpy()
    raise _unsupported("directional_derivatives")
