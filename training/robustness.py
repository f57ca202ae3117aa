"""Robustness evaluation over a perturbation grid, and aggregation over seeds.

Every model and every seed sees exactly the same perturbed inputs for the random kinds: the
inputs are drawn by `training.perturbations` from a seed that depends only on
`(base seed, kind, strength index)`, and `PerturbedInputs` computes each array once and shares
it. FGSM depends on the model (it follows the model's own gradient), as in the paper. Models are
evaluated in inference mode (`training=False`), so noisy cells inject no noise.

Accuracies are fractions in [0, 1]; tables show percentages.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np

from training import perturbations

__all__ = [
    "DEFAULT_PERTURBATION_SEED",
    "PerturbedInputs",
    "accuracy",
    "aggregate",
    "aggregate_results",
    "evaluate_robustness",
    "grid_to_json",
    "perturbation_seed",
]

DEFAULT_PERTURBATION_SEED = 20211206  # NeurIPS 2021; any fixed integer >= 0 works.
_KIND_OFFSET = {kind: 1000 * (i + 1) for i, kind in enumerate(perturbations.KINDS)}


def perturbation_seed(base_seed: int, kind: str, index: int) -> int:
    """Seed of the `index`-th strength of `kind`: the same for every model and seed.

    Example:

    >>> perturbation_seed(0, "white_noise", 2)
    1002
    """
    return int(base_seed) + _KIND_OFFSET[kind] + int(index)


def grid_to_json(grid: Mapping[str, Iterable[float]]) -> dict[str, list[float]]:
    """A perturbation grid as plain JSON lists.

    Example:

    >>> grid_to_json({"white_noise": (0.4, 0.8)})
    {'white_noise': [0.4, 0.8]}
    """
    return {kind: [float(s) for s in strengths] for kind, strengths in grid.items()}


class PerturbedInputs:
    """Lazily computed, shared perturbed copies of one test set (random kinds only).

    Args:
        x: the clean test inputs.
        base_seed: base of the per-(kind, strength) seeds.

    Example:

    >>> x = np.zeros((4, 10, 1), "float32")
    >>> cache = PerturbedInputs(x, base_seed=0)
    >>> cache.get("white_noise", 0, 0.4) is cache.get("white_noise", 0, 0.4)
    True
    """

    def __init__(self, x: np.ndarray, base_seed: int = DEFAULT_PERTURBATION_SEED) -> None:
        self.x = np.asarray(x)
        self.base_seed = int(base_seed)
        # Salt and pepper uses the data range of the whole test set, not of a batch.
        self.x_min = float(np.min(self.x))
        self.x_max = float(np.max(self.x))
        self._cache: dict[tuple[str, float], np.ndarray] = {}

    def get(self, kind: str, index: int, strength: float) -> np.ndarray:
        """The test set perturbed by `kind` at `strength` (the `index`-th of its grid)."""
        key = (kind, float(strength))
        if key not in self._cache:
            seed = perturbation_seed(self.base_seed, kind, index)
            kwargs = {"x_min": self.x_min, "x_max": self.x_max} if kind == "salt_and_pepper" else {}
            self._cache[key] = perturbations.perturb(self.x, kind, strength, seed=seed, **kwargs)
        return self._cache[key]


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Fraction of `x` whose arg-max logit equals `y` (inference mode).

    Example:

    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
    >>> m.set_weights([np.array([[1.0, 0.0]] * 3, "float32")])
    >>> accuracy(m, np.ones((4, 3), "float32"), np.array([0, 0, 1, 0]))
    0.75
    """
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y)))


def _gradient_model(model: keras.Model, jit_compile: bool):
    """A compiled-graph callable of `model` for FGSM's input gradients (much faster than eager)."""
    import tensorflow as tf

    def forward(x):
        return model(x, training=False)

    fn = tf.function(forward, jit_compile=jit_compile, autograph=False)

    def call(x, training=False):
        del training  # always inference
        return fn(x)

    return call


def evaluate_robustness(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    grid: Mapping[str, Iterable[float]],
    inputs: PerturbedInputs | None = None,
    *,
    batch_size: int = 1000,
    jit_compile: bool = False,
) -> dict[str, Any]:
    """Accuracy on clean and perturbed test inputs.

    Args:
        model: a model mapping inputs to logits.
        x: clean test inputs.
        y: integer labels.
        grid: `kind -> strengths`, kinds from `training.perturbations.KINDS`.
        inputs: shared `PerturbedInputs` of `x` (built here if None).
        batch_size: prediction / FGSM batch size.
        jit_compile: compile FGSM's gradient function with XLA.

    Returns:
        `{"clean": acc, kind: {str(strength): acc, ...}, ...}` with accuracies in [0, 1].

    Example:

    >>> m = keras.Sequential([keras.Input((5, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> x = np.zeros((8, 5, 1), "float32"); y = np.zeros(8, "int32")
    >>> res = evaluate_robustness(m, x, y, {"white_noise": (0.4,)})
    >>> sorted(res)
    ['clean', 'white_noise']
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if inputs is None:
        inputs = PerturbedInputs(x)
    elif inputs.x.shape != x.shape:
        raise ValueError(
            f"Argument `inputs` perturbs arrays of shape {inputs.x.shape}; received x of shape "
            f"{x.shape}."
        )
    results: dict[str, Any] = {"clean": accuracy(model, x, y, batch_size)}
    grad_model = None
    for kind, strengths in grid.items():
        if kind not in perturbations.KINDS:
            raise ValueError(
                f"Argument `grid` has unknown kind {kind!r}; expected kinds from "
                f"{list(perturbations.KINDS)}."
            )
        results[kind] = {}
        for index, strength in enumerate(strengths):
            if kind == "fgsm":
                if grad_model is None:
                    grad_model = _gradient_model(model, jit_compile)
                x_adv = perturbations.fgsm(
                    x,
                    y,
                    grad_model,
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    strength,
                    batch_size=batch_size,
                )
            else:
                x_adv = inputs.get(kind, index, strength)
            results[kind][_key(strength)] = accuracy(model, x_adv, y, batch_size)
    return results


def _key(strength: float) -> str:
    return f"{float(strength):g}"


def aggregate(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value).

    Args:
        values: numbers (e.g. one accuracy per seed).

    Returns:
        `(mean, std)`.

    Example:

    >>> aggregate([0.9, 0.8, 1.0])
    (0.9, 0.1)
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("Argument `values` must hold at least one number; received none.")
    mean = float(np.mean(arr))
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
    return round(mean, 12), round(std, 12)


def aggregate_results(per_seed: Mapping[Any, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of `evaluate_robustness` results (same structure, two trees).

    Args:
        per_seed: `seed -> evaluate_robustness(...)` result.

    Returns:
        `{"n": number of seeds, "mean": tree, "std": tree}`.

    Example:

    >>> agg = aggregate_results({0: {"clean": 0.9}, 1: {"clean": 1.0}})
    >>> agg["n"], agg["mean"]["clean"]
    (2, 0.95)
    """
    seeds = list(per_seed.values())
    if not seeds:
        raise ValueError("Argument `per_seed` must hold at least one seed's results.")

    def walk(nodes: list[Any]) -> tuple[Any, Any]:
        first = nodes[0]
        if isinstance(first, Mapping):
            mean, std = {}, {}
            for key in first:
                if not all(key in n for n in nodes):
                    raise ValueError(f"Seed results disagree: key {key!r} missing in some seeds.")
                mean[key], std[key] = walk([n[key] for n in nodes])
            return mean, std
        values = [float(n) for n in nodes]
        if any(math.isnan(v) for v in values):
            return math.nan, math.nan
        return aggregate(values)

    mean, std = walk(seeds)
    return {"n": len(seeds), "mean": mean, "std": std}
