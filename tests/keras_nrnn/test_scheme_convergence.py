"""Strong order of convergence of the schemes on geometric Brownian motion.

`dh = mu h dt + s h dB` has the exact solution `h_T = h_0 exp((mu - s^2 / 2) T + s B_T)`. With
the drift `f(h) = mu h` and `DiagonalNoise(0, s / mu)` (eq. 4: diffusion `s / mu * f = s h`),
each scheme is run with `n` steps on Brownian paths whose increments sum to `B_T`, for at least
four step sizes; the slope of `log E|h_n - h_T|` against `log dt` is the strong order:
1/2 for Euler-Maruyama, 1 for Milstein.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from keras_nrnn import schemes
from keras_nrnn.noise import DiagonalNoise

MU, SIGMA, T, H0 = 1.5, 0.8, 1.0, 1.0
PATHS = 4000
STEPS = (8, 16, 32, 64, 128)


def strong_errors(scheme_name: str) -> list[float]:
    rng = np.random.default_rng(0)
    finest = STEPS[-1]
    xi_fine = rng.normal(size=(finest, PATHS))
    d_b_fine = np.sqrt(T / finest) * xi_fine
    exact = H0 * np.exp((MU - SIGMA**2 / 2) * T + SIGMA * d_b_fine.sum(0))
    noise = DiagonalNoise(0.0, SIGMA / MU)
    scheme = schemes.get(scheme_name)
    errors = []
    for n in STEPS:
        dt = T / n
        # Coarse increments are sums of fine ones: the same Brownian path at every dt.
        d_b = d_b_fine.reshape(n, finest // n, PATHS).sum(1)
        h = np.full((1, PATHS), H0)
        for k in range(n):
            xi = (d_b[k] / np.sqrt(dt))[None]
            h = keras.ops.convert_to_numpy(
                scheme.step(h, lambda state: MU * state, dt, noise, (xi,))
            )
        errors.append(float(np.mean(np.abs(h[0] - exact))))
    return errors


@pytest.mark.slow
@pytest.mark.parametrize(("scheme_name", "order"), [("euler_maruyama", 0.5), ("milstein", 1.0)])
def test_strong_order_on_geometric_brownian_motion(scheme_name, order):
    errors = strong_errors(scheme_name)
    slope = np.polyfit(np.log([T / n for n in STEPS]), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.15, (scheme_name, slope, errors)
    assert all(a > b for a, b in itertools.pairwise(errors))  # error falls with dt


@pytest.mark.slow
def test_milstein_is_more_accurate_than_euler_maruyama_at_the_finest_step():
    assert strong_errors("milstein")[-1] < 0.5 * strong_errors("euler_maruyama")[-1]
