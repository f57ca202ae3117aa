"""Integration schemes: one step of `dh = f dt + sigma dB`, given the drift as a function.

A scheme is a small stateless object:

- `step(h, drift, dt, noise, draws)` returns the new state. `drift` is a function
  `h -> f(h, x)` (the input of the step is bound in it), so a scheme may evaluate it at other
  states than `h`; `noise` is a `keras_nrnn.noise.NoiseModel` or None; `draws` are the
  standard variates of the step from the Brownian source (`keras_nrnn.brownian`), or None
  for inference (no noise and no random op).
- `accepts`: the noise model classes it can integrate (checked when a cell is built).

Schemes (`s = noise.diffusion(f)`, `dB = sqrt(dt) xi`):

- `EulerMaruyama` (eq. 5): `h + dt f + s dB`; with `ResearchNoise`, the research code's
  `h + dt m f + additive xi`. Inference: `h + dt f`.
- `TamedEulerMaruyama` (appendix, Example 1): the drift increment `dt f` is divided by
  `1 + ||dt f||` (Euclidean norm over the units of each sequence), so one increment never
  exceeds one in norm.
- `Milstein` (derivative-free, Kloeden & Platen eq. 11.1.7, diagonal noise): adds
  `(s(h_s) - s(h)) (dB^2 - dt) / (2 sqrt(dt))` with the support state
  `h_s = h + dt f + s sqrt(dt)`; one extra drift evaluation when the diffusion depends on
  the state. Strong order 1 for diagonal noise (Euler-Maruyama: 1/2); see
  `tests/keras_nrnn/test_scheme_convergence.py`.
"""

from __future__ import annotations

import math
import warnings

from keras import ops

from keras_nrnn.noise import DiagonalNoise, NoiseModel, ResearchNoise
from keras_nrnn.validation import check_choice

__all__ = ["SCHEMES", "EulerMaruyama", "Milstein", "Scheme", "TamedEulerMaruyama", "get"]


def _sqrt(dt):
    if isinstance(dt, int | float):
        return math.sqrt(dt)
    return ops.sqrt(dt)


class Scheme:
    """Base class of integration schemes. Subclasses set `name`, `accepts` and `step`."""

    name: str = ""
    #: Noise model classes the scheme integrates.
    accepts: tuple[type[NoiseModel], ...] = ()
    #: Whether the noise-free update is exactly `h + dt f` (an explicit Euler step).
    noise_free_is_euler: bool = True

    def step(self, h, drift, dt, noise: NoiseModel | None, draws: tuple | None):
        """Advance `h` by one step; `draws=None` gives the deterministic (inference) update."""
        raise NotImplementedError

    def check_noise(self, noise: NoiseModel | None) -> None:
        """Raise a `ValueError` when `noise` is not one of the models this scheme accepts."""
        if noise is not None and not isinstance(noise, self.accepts):
            names = ", ".join(c.__name__ for c in self.accepts)
            raise ValueError(
                f"Scheme {self.name!r} integrates {names} noise; received noise={noise!r}. "
                "Choose another `scheme` or noise model."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _explicit_increment(f, dt, noise, draws):
    """`dt f`, times the noise model's random drift factor in training mode."""
    inc = dt * f
    if draws is not None:
        factor = noise.drift_factor(draws)
        if factor is not None:
            inc = inc * factor
    return inc


class EulerMaruyama(Scheme):
    """Explicit Euler-Maruyama, the paper's eq. 5.

    Example:

    >>> import numpy as np
    >>> h = np.zeros((1, 2), "float32")
    >>> np.asarray(EulerMaruyama().step(h, lambda h: h + 1.0, 0.1, None, None)).tolist()
    [[0.10000000149011612, 0.10000000149011612]]
    """

    name = "euler_maruyama"
    accepts = (DiagonalNoise, ResearchNoise)

    def step(self, h, drift, dt, noise, draws):
        h = ops.convert_to_tensor(h)
        f = drift(h)
        if draws is None or noise is None:
            return h + dt * f
        return h + _explicit_increment(f, dt, noise, draws) + noise.increment(h, f, dt, draws)


class TamedEulerMaruyama(Scheme):
    """Drift-tamed Euler-Maruyama (appendix, Example 1): the drift increment is divided by
    `1 + ||dt f||`, so one large increment cannot blow the state up.

    Example:

    >>> import numpy as np
    >>> h = np.zeros((1, 1), "float32")
    >>> out = TamedEulerMaruyama().step(h, lambda h: h + 100.0, 1.0, None, None)
    >>> float(np.asarray(out)[0, 0]) < 1.0
    True
    """

    name = "tamed"
    accepts = (DiagonalNoise, ResearchNoise)
    noise_free_is_euler = False

    def step(self, h, drift, dt, noise, draws):
        h = ops.convert_to_tensor(h)
        f = drift(h)
        inc = _explicit_increment(f, dt, noise, None if noise is None else draws)
        norm = ops.sqrt(ops.sum(ops.square(inc), axis=-1, keepdims=True))
        h_new = h + inc / (1.0 + norm)
        if draws is None or noise is None:
            return h_new
        return h_new + noise.increment(h, f, dt, draws)


class Milstein(Scheme):
    """Derivative-free Milstein scheme for diagonal noise (strong order 1).

    With `s(h) = noise.diffusion(f(h))` and `dB = sqrt(dt) xi`:
    `h + dt f + s dB + (s(h_s) - s(h)) (dB^2 - dt) / (2 sqrt(dt))`,
    `h_s = h + dt f + s sqrt(dt)`. For additive noise the correction vanishes and the scheme
    is Euler-Maruyama. Inference: `h + dt f`.

    Example:

    >>> import numpy as np
    >>> from keras_nrnn.noise import DiagonalNoise
    >>> h = np.ones((1, 1), "float32"); xi = np.zeros((1, 1), "float32")
    >>> out = Milstein().step(h, lambda h: h, 0.01, DiagonalNoise(0.0, 0.5), (xi,))
    >>> round(float(np.asarray(out)[0, 0]), 4)  # dB = 0: only the -dt part of the correction
    1.0085
    """

    name = "milstein"
    accepts = (DiagonalNoise,)

    def step(self, h, drift, dt, noise, draws):
        h = ops.convert_to_tensor(h)
        f = drift(h)
        if draws is None or noise is None:
            return h + dt * f
        sqrt_dt = _sqrt(dt)
        s = noise.diffusion(f)
        d_b = sqrt_dt * draws[0]
        h_new = h + dt * f + s * d_b
        if noise.multiplicative == 0.0:
            return h_new  # the diffusion does not depend on the state
        s_support = noise.diffusion(drift(h + dt * f + s * sqrt_dt))
        return h_new + (s_support - s) * (ops.square(d_b) - dt) / (2.0 * sqrt_dt)


SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls for cls in (EulerMaruyama, TamedEulerMaruyama, Milstein)
}

#: Scheme names of version 0.1 that are now something else.
DEPRECATED = {"research": "euler_maruyama"}


def get(name: str) -> Scheme:
    """Return the scheme called `name` (one of `SCHEMES`), or raise a `ValueError`.

    Example:

    >>> get("milstein").name
    'milstein'
    """
    if name in DEPRECATED:
        warnings.warn(
            f"scheme={name!r} is deprecated: the research code's update is a noise model now; "
            "use scheme='euler_maruyama' with noise=keras_nrnn.noise.ResearchNoise(...).",
            DeprecationWarning,
            stacklevel=3,
        )
        name = DEPRECATED[name]
    check_choice("scheme", name, SCHEMES)
    return SCHEMES[name]()
