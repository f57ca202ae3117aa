"""PyTorch baseline: the Noisy Lipschitz RNN with the paper's research-code structure.

Written from the equations in DESIGN.md section 1 (no code copied):

    A = (1 - beta) (M_A + M_A^T) + beta (M_A - M_A^T) - gamma_A I      (same for W)
    f(h, x) = h A^T + tanh(h W^T + U x + b)
    train:  h <- h + dt f + (sigma_1 + sigma_2 f) sqrt(dt) xi,  xi ~ N(0, I) fresh each step
    eval:   h <- h + dt f
    logits = V h_T + c

The structure deliberately follows the paper's research code, which is what DESIGN section 4's
"figures to beat" were measured on: A and W are formed once per forward, a Python loop runs over
the time steps, the input projection `U(x_t)` (an `nn.Linear`, whose bias is b) is applied inside
the loop, and the Gaussian draws are made per step.

PyTorch is an optional extra: this module imports it lazily, and `import_torch()` raises a
`ModuleNotFoundError` telling how to install it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from benchmarks.config import ECG, ECGConfig

TORCH_VERSION = "2.13.0"
INSTALL_HINT = (
    f"PyTorch is needed for the baseline: install torch=={TORCH_VERSION} "
    "(pip install -e .[bench]), or run the Keras side alone with `--only keras`."
)


def torch_available() -> bool:
    """True if `torch` can be imported.

    Example:

    >>> isinstance(torch_available(), bool)
    True
    """
    try:
        import_torch()
    except ModuleNotFoundError:
        return False
    return True


def import_torch() -> Any:
    """Import and return `torch`, or raise with an installation hint.

    Returns:
        The `torch` module.

    Raises:
        ModuleNotFoundError: torch is not installed (the message says how to install it).

    Example:

    >>> torch = import_torch()  # doctest: +SKIP
    """
    try:
        import torch
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(INSTALL_HINT) from err
    return torch


@functools.cache
def noisy_lipschitz_rnn_class() -> type:
    """Build (once) and return the `NoisyLipschitzRNN` `torch.nn.Module` class.

    The class is created on first use so that importing this module does not need torch.

    Returns:
        The class `NoisyLipschitzRNN(config=ECG, noisy=True)`.

    Example:

    >>> Model = noisy_lipschitz_rnn_class()  # doctest: +SKIP
    >>> Model()(torch.zeros(2, 140, 1)).shape  # doctest: +SKIP
    torch.Size([2, 2])
    """
    torch = import_torch()
    nn = torch.nn

    class NoisyLipschitzRNN(nn.Module):
        """Noisy Lipschitz RNN classifier (eq. 5 in training mode, deterministic in eval mode).

        Args:
            config: hyperparameters (units, dt, beta, gammas, noise levels, init_std).
            noisy: if False the training-mode update is the deterministic one too (the
                Lipschitz RNN), used to measure the cost of the noise.

        Call arguments:
            x: float32 tensor of shape (batch, T, input_dim).

        Returns:
            Logits of shape (batch, num_classes) read from the final state.
        """

        def __init__(self, config: ECGConfig = ECG, noisy: bool = True) -> None:
            super().__init__()
            self.config = config
            self.noisy = noisy
            n = config.units
            std = config.init_std / n
            self.M_A = nn.Parameter(torch.randn(n, n) * std)
            self.M_W = nn.Parameter(torch.randn(n, n) * std)
            self.U = nn.Linear(config.input_dim, n)  # its bias is b
            self.classifier = nn.Linear(n, config.num_classes)
            self.register_buffer("eye", torch.eye(n), persistent=False)
            self.sqrt_dt = math.sqrt(config.dt)

        def parametrize(self, M: Any, gamma: float) -> Any:
            """(1 - beta)(M + M^T) + beta (M - M^T) - gamma I."""
            beta = self.config.beta
            return (1.0 - beta) * (M + M.T) + beta * (M - M.T) - gamma * self.eye

        def matrices(self) -> tuple[Any, Any]:
            """The parametrized (A, W), formed once per forward."""
            return (
                self.parametrize(self.M_A, self.config.gamma_a),
                self.parametrize(self.M_W, self.config.gamma_w),
            )

        def drift(self, h: Any, x_t: Any, A: Any, W: Any) -> Any:
            """f(h, x_t) = h A^T + tanh(h W^T + U x_t + b)."""
            return h @ A.T + torch.tanh(h @ W.T + self.U(x_t))

        def step(self, h: Any, x_t: Any, A: Any, W: Any, xi: Any | None = None) -> Any:
            """One Euler(-Maruyama) step; `xi=None` gives the deterministic update."""
            f = self.drift(h, x_t, A, W)
            h = h + self.config.dt * f
            if xi is not None:
                sigma = self.config.additive_noise + self.config.multiplicative_noise * f
                h = h + sigma * self.sqrt_dt * xi
            return h

        def forward(self, x: Any) -> Any:
            A, W = self.matrices()
            h = x.new_zeros(x.shape[0], self.config.units)
            noisy = self.training and self.noisy
            for t in range(x.shape[1]):
                xi = torch.randn_like(h) if noisy else None
                h = self.step(h, x[:, t], A, W, xi)
            return self.classifier(h)

    return NoisyLipschitzRNN


def build_model(config: ECGConfig = ECG, noisy: bool = True, seed: int = 0) -> Any:
    """Create a seeded `NoisyLipschitzRNN`.

    Args:
        config: hyperparameters.
        noisy: False for the deterministic (Lipschitz RNN) training update.
        seed: `torch.manual_seed` value used for the initial weights.

    Returns:
        The module, in training mode.

    Example:

    >>> model = build_model(ECG)  # doctest: +SKIP
    """
    torch = import_torch()
    torch.manual_seed(seed)
    return noisy_lipschitz_rnn_class()(config, noisy=noisy).train()


def random_batch(batch: int, timesteps: int, config: ECGConfig = ECG, seed: int = 0) -> tuple:
    """Random inputs (batch, T, input_dim) ~ N(0, 1) and binary labels, as torch tensors.

    Example:

    >>> x, y = random_batch(4, 10)  # doctest: +SKIP
    """
    import numpy as np

    torch = import_torch()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, timesteps, config.input_dim)).astype("float32")
    y = rng.integers(0, config.num_classes, size=(batch,))
    return torch.from_numpy(x), torch.from_numpy(y).long()


def make_train_step(
    batch: int, timesteps: int, noisy: bool = True, config: ECGConfig = ECG, seed: int = 0
) -> Callable[[], float]:
    """A closure running one training step: forward, cross-entropy, backward, Adam.

    Args:
        batch: sequences per step.
        timesteps: sequence length T.
        noisy: eq. 5 noise on (True) or the deterministic update (False).
        config: hyperparameters.
        seed: seed of weights and data.

    Returns:
        A zero-argument callable returning the loss as a Python float (so it blocks).

    Example:

    >>> step = make_train_step(8, 20)  # doctest: +SKIP
    >>> loss = step()  # doctest: +SKIP
    """
    torch = import_torch()
    model = build_model(config, noisy=noisy, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = random_batch(batch, timesteps, config, seed)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def make_inference(
    batch: int, timesteps: int, config: ECGConfig = ECG, seed: int = 0
) -> Callable[[], Any]:
    """A closure running deterministic inference (eval mode, `torch.inference_mode`).

    Args:
        batch: sequences per call.
        timesteps: sequence length T.
        config: hyperparameters.
        seed: seed of weights and data.

    Returns:
        A zero-argument callable returning the logits as a numpy array.

    Example:

    >>> infer = make_inference(1, 140)  # doctest: +SKIP
    >>> infer().shape  # doctest: +SKIP
    (1, 2)
    """
    torch = import_torch()
    model = build_model(config, noisy=True, seed=seed).eval()
    x, _ = random_batch(batch, timesteps, config, seed)

    def infer() -> Any:
        with torch.inference_mode():
            return model(x).numpy()

    return infer


def create(name: str, options: Any) -> Any:
    """Contender factory for the registry (`torch-loop`, `torch-loop-1thread`).

    `torch-loop-1thread` is a reference, not the baseline: the same model with
    `torch.set_num_threads(1)` around each call. On a loaded 2-core machine PyTorch's OpenMP
    parallel regions stall whenever one of their two threads is descheduled, so one thread can
    be much faster there; the 2-thread `torch-loop` stays the baseline of the ratios.

    Args:
        name: registry name.
        options: `benchmarks.contenders.Options`.

    Returns:
        A `Contender` whose callables run this baseline.

    Raises:
        ContenderUnavailableError: torch is not installed (the message says how to install it).

    Example:

    >>> from benchmarks.contenders import create as create_contender, Options
    >>> c = create_contender("torch-loop", Options())  # doctest: +SKIP
    """
    from benchmarks.contenders import BASELINE, Contender, ContenderUnavailableError
    from benchmarks.threads import configure_torch

    if not torch_available():
        raise ContenderUnavailableError(INSTALL_HINT)
    configure_torch()
    torch = import_torch()
    threads = 1 if name == "torch-loop-1thread" else None

    def with_threads(fn: Callable[[], object]) -> Callable[[], object]:
        if threads is None:
            return fn

        def call() -> object:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                return fn()
            finally:
                torch.set_num_threads(previous)

        return call

    class TorchLoopContender(Contender):
        """The PyTorch baseline as a contender."""

        def make_train_step(
            self, batch: int, timesteps: int, noisy: bool = True
        ) -> Callable[[], object]:
            cfg, seed = self.options.config, self.options.seed
            return with_threads(make_train_step(batch, timesteps, noisy, cfg, seed))

        def make_inference(self, batch: int, timesteps: int) -> Callable[[], object]:
            cfg, seed = self.options.config, self.options.seed
            return with_threads(make_inference(batch, timesteps, cfg, seed))

    return TorchLoopContender(name, BASELINE, options)
