"""Noise models: the diffusion coefficient sigma(h, x) of the SDE (paper eq. 4).

A noise model only says how large the noise is at a given state; how it enters the
update (the sqrt(dt) scaling, which random numbers are drawn) belongs to the
integration scheme (`keras_nrnn.schemes`). Any drift becomes noisy by pairing it with a
noise model, which is how every cell of this package gets its noisy variant.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_nrnn.validation import check_non_negative

__all__ = ["DiagonalNoise"]


@dataclass(frozen=True)
class DiagonalNoise:
    """Diagonal additive + multiplicative noise, sigma(h, x) = eps (sigma_1 I + sigma_2 diag(f)).

    `additive` is eps * sigma_1 and `multiplicative` is eps * sigma_2 of the paper's eq. 4,
    so the noise increment of one Euler-Maruyama step is
    `(additive + multiplicative * f) * sqrt(dt) * xi`, with `xi ~ N(0, I)`.

    Args:
        additive: eps * sigma_1, >= 0.
        multiplicative: eps * sigma_2, >= 0.

    Example:

    >>> import numpy as np
    >>> noise = DiagonalNoise(additive=0.06, multiplicative=0.03)
    >>> round(float(noise.diffusion(np.float32(2.0))), 6)
    0.12
    """

    additive: float = 0.0
    multiplicative: float = 0.0

    def __post_init__(self) -> None:
        check_non_negative("additive_noise", self.additive)
        check_non_negative("multiplicative_noise", self.multiplicative)

    @property
    def active(self) -> bool:
        """True when either noise level is non-zero."""
        return self.additive > 0.0 or self.multiplicative > 0.0

    def diffusion(self, f):
        """The diagonal of sigma(h, x) given the drift value `f` (same shape as `f`)."""
        if self.multiplicative == 0.0:
            return self.additive  # broadcasts; saves one multiply per step
        return self.additive + self.multiplicative * f
