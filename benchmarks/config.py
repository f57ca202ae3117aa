"""The configuration both sides of the benchmark use (paper Table 4, ECG row)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ECGConfig:
    """Noisy Lipschitz RNN hyperparameters of the paper's ECG experiment.

    Args:
        units: hidden state size.
        input_dim: channels per time step.
        timesteps: sequence length T.
        num_classes: classifier outputs.
        dt: Euler-Maruyama step delta.
        beta: skew level of the A and W parametrization.
        gamma_a: damping of A.
        gamma_w: damping of W.
        additive_noise: sigma_1 (times eps).
        multiplicative_noise: sigma_2 (times eps).
        init_std: M_A, M_W start from N(0, (init_std / units)^2).

    Example:

    >>> ECGConfig().units
    128
    """

    units: int = 128
    input_dim: int = 1
    timesteps: int = 140
    num_classes: int = 2
    dt: float = 0.1
    beta: float = 0.9
    gamma_a: float = 0.001
    gamma_w: float = 0.001
    additive_noise: float = 0.06
    multiplicative_noise: float = 0.03
    init_std: float = 0.1


ECG = ECGConfig()
