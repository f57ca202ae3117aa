"""Noise models: how the noise enters one step, as serializable objects passed to any cell.

A noise model says which standard variates a step needs (`variates`), how large the
diffusion is at a state (`diffusion`, for the schemes that use it), and what it adds to the
drift increment `dt f` of an explicit step (`drift_factor`, `increment`). The scheme
(`keras_nrnn.schemes`) decides how the pieces are combined; the Brownian source
(`keras_nrnn.brownian`) supplies the variates. Any drift becomes noisy by pairing it with a
noise model: `LipschitzCell(64, noise=DiagonalNoise(0.06, 0.03))`.

- `DiagonalNoise` (paper eq. 4): `sigma(h, x) = eps (sigma_1 I + sigma_2 diag(f(h, x)))`,
  the increment of an Euler-Maruyama step is `(additive + multiplicative f) sqrt(dt) xi`.
- `ResearchNoise` (the paper's public code): the drift increment is multiplied by
  `m ~ U(1 - multiplicative, 1)` and `additive * xi` is added, without `sqrt(dt)`.
- `None`: no noise (a deterministic cell).
"""

from __future__ import annotations

import math
from typing import Any

import keras

from keras_nrnn.validation import check_in_range, check_non_negative

__all__ = ["DiagonalNoise", "NoiseModel", "ResearchNoise", "deserialize", "get", "serialize"]


def _sqrt(dt):
    if isinstance(dt, int | float):
        return math.sqrt(dt)
    return keras.ops.sqrt(dt)


class NoiseModel:
    """Base class of noise models (immutable; compared and serialized by their config).

    Subclasses set `variates` and implement `increment`, and may override `drift_factor`
    and `diffusion`.
    """

    #: The standard variates one step draws, in order (`"normal"`, `"uniform"`).
    variates: tuple[str, ...] = ("normal",)

    @property
    def active(self) -> bool:
        """True when the model adds any noise."""
        raise NotImplementedError

    def drift_factor(self, draws: tuple):
        """A random factor of the drift increment `dt f`, or None (factor 1)."""
        return None

    def increment(self, h, f, dt, draws: tuple):
        """The additive noise term of an explicit step from `h` with drift value `f`."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoiseModel:
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_nrnn")
class DiagonalNoise(NoiseModel):
    """Diagonal additive + multiplicative noise, `sigma(h, x) = eps (sigma_1 I + sigma_2 diag(f))`.

    `additive` is `eps * sigma_1` and `multiplicative` is `eps * sigma_2` of the paper's
    eq. 4, so the noise of one Euler-Maruyama step is
    `(additive + multiplicative * f) * sqrt(dt) * xi`, with `xi ~ N(0, I)`.

    Args:
        additive: `eps * sigma_1`, >= 0.
        multiplicative: `eps * sigma_2`, >= 0.

    Example:

    >>> import numpy as np
    >>> noise = DiagonalNoise(additive=0.06, multiplicative=0.03)
    >>> round(float(noise.diffusion(np.float32(2.0))), 6)
    0.12
    """

    variates = ("normal",)

    def __init__(self, additive: float = 0.0, multiplicative: float = 0.0) -> None:
        self.additive = check_non_negative("additive_noise", additive)
        self.multiplicative = check_non_negative("multiplicative_noise", multiplicative)

    @property
    def active(self) -> bool:
        return self.additive > 0.0 or self.multiplicative > 0.0

    def diffusion(self, f):
        """The diagonal of `sigma(h, x)` given the drift value `f` (broadcasts with `f`)."""
        if self.multiplicative == 0.0:
            return self.additive  # a Python float: saves one multiply per step
        return self.additive + self.multiplicative * f

    def increment(self, h, f, dt, draws):
        return self.diffusion(f) * (_sqrt(dt) * draws[0])

    def get_config(self) -> dict[str, Any]:
        return {"additive": self.additive, "multiplicative": self.multiplicative}


@keras.saving.register_keras_serializable(package="keras_nrnn")
class ResearchNoise(NoiseModel):
    """The noise of the paper's public research code.

    One step is `h + dt m f + additive xi` with `m ~ U(1 - multiplicative, 1)` and
    `xi ~ N(0, I)`: a uniform factor on the drift and an additive term without `sqrt(dt)`.
    It is not a diffusion in the sense of eq. 4, so only explicit schemes accept it.

    Args:
        additive: the standard deviation of the additive term, >= 0.
        multiplicative: width of the uniform factor's interval, in [0, 1].

    Example:

    >>> import numpy as np
    >>> noise = ResearchNoise(additive=0.02, multiplicative=0.5)
    >>> float(noise.drift_factor((None, np.float32(1.0))))  # the factor at u = 1
    0.5
    """

    variates = ("normal", "uniform")

    def __init__(self, additive: float = 0.0, multiplicative: float = 0.0) -> None:
        self.additive = check_non_negative("additive_noise", additive)
        self.multiplicative = check_in_range("multiplicative_noise", multiplicative, 0.0, 1.0)

    @property
    def active(self) -> bool:
        return self.additive > 0.0 or self.multiplicative > 0.0

    def drift_factor(self, draws):
        if self.multiplicative == 0.0:
            return None
        return 1.0 - self.multiplicative * draws[1]

    def increment(self, h, f, dt, draws):
        return self.additive * draws[0]

    def get_config(self) -> dict[str, Any]:
        return {"additive": self.additive, "multiplicative": self.multiplicative}


def serialize(noise: NoiseModel | None) -> dict | None:
    """The Keras serialization of a noise model (None stays None).

    Example:

    >>> serialize(DiagonalNoise(0.1))["class_name"]
    'DiagonalNoise'
    """
    return None if noise is None else keras.saving.serialize_keras_object(noise)


def deserialize(config: dict | None) -> NoiseModel | None:
    """Inverse of `serialize`.

    Example:

    >>> deserialize(serialize(ResearchNoise(0.02, 0.02)))
    ResearchNoise(additive=0.02, multiplicative=0.02)
    """
    if config is None:
        return None
    return keras.saving.deserialize_keras_object(config)


def get(
    noise: NoiseModel | dict | str | None = None,
    additive_noise: float | None = None,
    multiplicative_noise: float | None = None,
) -> NoiseModel | None:
    """Resolve a cell's noise arguments to a noise model, or None for no noise.

    Args:
        noise: a `NoiseModel`, its serialization (dict), `"diagonal"`, `"research"` or None.
        additive_noise: shorthand for eq. 4 (with `noise` None or a name): the additive level.
        multiplicative_noise: shorthand: the multiplicative level.

    Returns:
        The noise model, or None when no noise is asked for (all levels zero).

    Example:

    >>> get(additive_noise=0.06, multiplicative_noise=0.03)
    DiagonalNoise(additive=0.06, multiplicative=0.03)
    >>> get(None) is None
    True
    """
    levels = {
        k: v
        for k, v in (("additive", additive_noise), ("multiplicative", multiplicative_noise))
        if v is not None
    }
    if isinstance(noise, dict):
        noise = deserialize(noise)
    if isinstance(noise, NoiseModel):
        if levels:
            raise ValueError(
                "Pass the noise either as `noise=` or as `additive_noise=` / "
                f"`multiplicative_noise=`, not both; received noise={noise!r}, "
                f"additive_noise={additive_noise!r}, multiplicative_noise={multiplicative_noise!r}."
            )
        return noise if noise.active else None
    kinds = {None: DiagonalNoise, "diagonal": DiagonalNoise, "research": ResearchNoise}
    if not (noise is None or isinstance(noise, str)) or noise not in kinds:
        raise ValueError(
            "Argument `noise` must be a keras_nrnn.noise.NoiseModel, its config, 'diagonal', "
            f"'research' or None; received noise={noise!r}."
        )
    model = kinds[noise](**levels)
    return model if model.active else None
