"""Integration schemes: one step of an SDE given the drift value, the noise model and the draws.

A scheme is a small stateless object with two methods:

- `draw(shape, dtype, seed)`: the standard random numbers one step needs (a tuple of
  tensors of `shape`). Cells call it once per step with `shape = (batch, units)`; a
  sequence-level layer may call it once with `shape = (time, batch, units)` and slice.
- `step(h, f, dt, noise, draws)`: the new state. `draws=None` means inference: no noise
  and no random op.

Schemes (`h` state, `f = f(h, x)` drift, `dt` step, `s = noise.diffusion(f)`):

- `"euler_maruyama"` (eq. 5), training: `h + dt f + s sqrt(dt) xi`, `xi ~ N(0, I)`;
  inference: `h + dt f`.
- `"tamed"` (appendix, Example 1), training: `h + dt f / (1 + ||dt f||) + s sqrt(dt) xi`;
  inference: `h + dt f / (1 + ||dt f||)`.
- `"research"` (the paper's public code), training: `h + dt m f + additive xi`,
  `m ~ U(1 - multiplicative, 1)`; inference: `h + dt f`.

`||.||` is the Euclidean norm over the units of each sequence, so the tamed drift increment
never exceeds one in norm. The research variant is the update of the paper's public
code: the multiplicative factor is uniform and the additive noise has no sqrt(dt).
"""

from __future__ import annotations

import math

from keras import ops

from keras_nrnn import random_ops
from keras_nrnn.noise import DiagonalNoise
from keras_nrnn.validation import check_choice

__all__ = ["SCHEMES", "EulerMaruyama", "ResearchEuler", "Scheme", "TamedEulerMaruyama", "get"]


def _sqrt(dt):
    if isinstance(dt, int | float):
        return math.sqrt(dt)
    return ops.sqrt(dt)


class Scheme:
    """Base class of integration schemes. Subclasses set `name` and override the methods."""

    name: str = ""

    def draw(self, shape, dtype, seed) -> tuple:
        """Standard normal draws for one step (or a stack of steps) of `shape`."""
        return (random_ops.normal(shape, dtype, seed),)

    def step(self, h, f, dt, noise: DiagonalNoise | None, draws: tuple | None):
        """Advance `h` by one step; `draws=None` gives the deterministic (inference) update."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EulerMaruyama(Scheme):
    """Explicit Euler-Maruyama, the paper's eq. 5.

    Example:

    >>> import numpy as np
    >>> h = np.zeros((1, 2), "float32"); f = np.ones((1, 2), "float32")
    >>> np.asarray(EulerMaruyama().step(h, f, 0.1, None, None)).tolist()
    [[0.10000000149011612, 0.10000000149011612]]
    """

    name = "euler_maruyama"

    def step(self, h, f, dt, noise, draws):
        h_new = h + dt * f
        if draws is not None and noise is not None and noise.active:
            h_new = h_new + noise.diffusion(f) * (_sqrt(dt) * draws[0])
        return h_new


class TamedEulerMaruyama(Scheme):
    """Drift-tamed Euler-Maruyama (appendix, Example 1): the drift increment is divided by
    `1 + ||dt f||`, so one large increment cannot blow the state up.

    Example:

    >>> import numpy as np
    >>> h = np.zeros((1, 1), "float32"); f = np.full((1, 1), 100.0, "float32")
    >>> float(np.asarray(TamedEulerMaruyama().step(h, f, 1.0, None, None))[0, 0]) < 1.0
    True
    """

    name = "tamed"

    def step(self, h, f, dt, noise, draws):
        inc = dt * f
        norm = ops.sqrt(ops.sum(ops.square(inc), axis=-1, keepdims=True))
        h_new = h + inc / (1.0 + norm)
        if draws is not None and noise is not None and noise.active:
            h_new = h_new + noise.diffusion(f) * (_sqrt(dt) * draws[0])
        return h_new


class ResearchEuler(Scheme):
    """The update of the paper's public research code (see module docstring).

    Training: `h + dt * m * f + additive * xi` with `m ~ U(1 - multiplicative, 1)`
    and `xi ~ N(0, I)`; inference: `h + dt * f`. Cells default to a learnable per-unit
    `dt` with this scheme, as the research code does.

    Example:

    >>> import numpy as np
    >>> h = np.zeros((1, 1), "float32"); f = np.ones((1, 1), "float32")
    >>> float(np.asarray(ResearchEuler().step(h, f, 0.5, None, None))[0, 0])
    0.5
    """

    name = "research"

    def draw(self, shape, dtype, seed) -> tuple:
        return (random_ops.normal(shape, dtype, seed), random_ops.uniform(shape, dtype, seed))

    def step(self, h, f, dt, noise, draws):
        if draws is None or noise is None or not noise.active:
            return h + dt * f
        xi, u = draws
        drift = dt * f
        if noise.multiplicative > 0.0:
            drift = drift * (1.0 - noise.multiplicative * u)
        h_new = h + drift
        if noise.additive > 0.0:
            h_new = h_new + noise.additive * xi
        return h_new


SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls for cls in (EulerMaruyama, TamedEulerMaruyama, ResearchEuler)
}


def get(name: str) -> Scheme:
    """Return the scheme called `name` (one of `SCHEMES`), or raise a `ValueError`.

    Example:

    >>> get("tamed").name
    'tamed'
    """
    check_choice("scheme", name, SCHEMES)
    return SCHEMES[name]()
