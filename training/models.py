"""Model registry of the experiment runners: `--model NAME` -> a compiled-ready Keras model.

Every model is `Input((timesteps, features)) -> RNN(cell) -> Dense(classes)` (logits). The
model names come from the cell registry (`keras_nrnn.registry`): each registered drift gives a
noisy and a deterministic model. The cell class is looked up by name in `keras_nrnn` when a
model is built, so a missing class makes only that model fail, with a clear
`UnknownModelError`.

Hyperparameters are passed to a cell only when its constructor names them explicitly (for
example `beta` goes to the Lipschitz cells but not to a cell without a `beta` argument), so one
flat set of flags (`--units --dt --beta --gamma-a --gamma-w --additive-noise
--multiplicative-noise`, and `--gamma --epsilon` of the Antisymmetric RNN / coRNN) serves every
cell. Deterministic models never receive noise levels.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
from typing import Any

import keras

__all__ = [
    "MODELS",
    "ModelSpec",
    "UnknownModelError",
    "build_model",
    "cell_kwargs",
    "get_model_spec",
    "model_names",
    "resolve_cell_class",
]


class UnknownModelError(ValueError):
    """A model name is not registered, or its cell class is missing from `keras_nrnn`."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build one `--model`.

    Attributes:
        name: the CLI name (`"nrnn"`, `"lipschitz"`, ...).
        cell: name of the cell class in `keras_nrnn` (looked up when building).
        noisy: whether the noise levels (`additive_noise`, `multiplicative_noise`) and a
            `seed` are passed to the cell.
        label: how the model is called in tables and plots.
        fixed: cell arguments fixed by the model itself (e.g. a baseline's own setting).
    """

    name: str
    cell: str
    noisy: bool
    label: str
    fixed: tuple[tuple[str, Any], ...] = ()


def _registered_models() -> dict[str, ModelSpec]:
    """The `--model` names of `keras_nrnn.registry`: each registered drift with and without
    noise, so that a newly registered cell is a model here without editing this file."""
    from keras_nrnn import registry

    return {
        m.name: ModelSpec(m.name, m.cell.__name__, m.noisy, m.label, m.entry.fixed)
        for m in registry.models().values()
    }


class _RegisteredModels(collections.abc.MutableMapping):
    """`MODELS`: a view of the registry, current at every access (a cell registered after
    `import training.models` is a model too), with local entries layered on top."""

    def __init__(self) -> None:
        self._local: dict[str, ModelSpec] = {}

    def _all(self) -> dict[str, ModelSpec]:
        return {**_registered_models(), **self._local}

    def __getitem__(self, name: str) -> ModelSpec:
        return self._all()[name]

    def __setitem__(self, name: str, spec: ModelSpec) -> None:
        self._local[name] = spec

    def __delitem__(self, name: str) -> None:
        del self._local[name]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


MODELS: collections.abc.MutableMapping[str, ModelSpec] = _RegisteredModels()

# Hyperparameter names offered to every cell; each cell takes the ones its constructor names.
_SHARED = (
    "units",
    "dt",
    "beta",
    "gamma_a",
    "gamma_w",
    "gamma",
    "epsilon",
    "init_std",
    "scheme",
    "learnable_dt",
)
_NOISE = ("additive_noise", "multiplicative_noise")


def model_names() -> list[str]:
    """Names accepted by `--model`, in registry order.

    Example:

    >>> model_names()[:2]
    ['nrnn', 'lipschitz']
    """
    return list(MODELS)


def get_model_spec(name: str) -> ModelSpec:
    """Return the `ModelSpec` registered as `name`.

    Args:
        name: a model name, e.g. `"nrnn"`.

    Returns:
        The spec.

    Raises:
        UnknownModelError: `name` is not registered.

    Example:

    >>> get_model_spec("nrnn").cell
    'NoisyLipschitzCell'
    """
    if name not in MODELS:
        raise UnknownModelError(
            f"Argument `model` must be one of {model_names()}; received model={name!r}."
        )
    return MODELS[name]


def resolve_cell_class(name: str) -> type:
    """Look up the cell class of model `name` in `keras_nrnn` (imported here, lazily).

    Args:
        name: a model name, e.g. `"cornn"`.

    Returns:
        The cell class.

    Raises:
        UnknownModelError: the model is unknown, or `keras_nrnn` has no such cell (yet).

    Example:

    >>> resolve_cell_class("lipschitz").__name__
    'LipschitzCell'
    """
    spec = get_model_spec(name)
    import keras_nrnn
    from keras_nrnn import registry

    registered = {c.__name__: c for e in registry.cells() for c in (e.cls, e.noisy_cls)}
    cls = getattr(keras_nrnn, spec.cell, None) or registered.get(spec.cell)
    if cls is None:
        raise UnknownModelError(
            f"Model {name!r} needs the cell `keras_nrnn.{spec.cell}`, which this installation "
            f"of keras_nrnn (version {getattr(keras_nrnn, '__version__', '?')}) does not "
            "provide. Choose another `--model` or update keras_nrnn."
        )
    return cls


def cell_kwargs(name: str, hparams: dict[str, Any], seed: int) -> dict[str, Any]:
    """The constructor arguments model `name` gets from the flat hyperparameters.

    Args:
        name: a model name.
        hparams: flat dict with (some of) `units`, `dt`, `beta`, `gamma_a`, `gamma_w`,
            `additive_noise`, `multiplicative_noise`.
        seed: seed of the cell's training noise (noisy models only).

    Returns:
        Keyword arguments for the cell class, restricted to the names its constructor takes.

    Example:

    >>> sorted(cell_kwargs("lipschitz", {"units": 8, "dt": 0.1, "additive_noise": 0.1}, 0))
    ['dt', 'units']
    """
    spec = get_model_spec(name)
    cls = resolve_cell_class(name)
    accepted = _explicit_parameters(cls)
    offered = [*_SHARED, *_NOISE, "seed"] if spec.noisy else list(_SHARED)
    values = dict(hparams, seed=seed)
    kwargs = {k: values[k] for k in offered if k in accepted and k in values}
    kwargs.update(dict(spec.fixed))
    if kwargs.get("scheme") == "research":
        # The runners' name for the paper's research-code update: Euler steps with the
        # research code's noise model and, unless given, its learnable per-unit step.
        kwargs["scheme"] = "euler_maruyama"
        kwargs.setdefault("learnable_dt", "per_unit")
        if spec.noisy:
            kwargs["noise"] = "research"
    return kwargs


def _explicit_parameters(cls: type) -> set[str]:
    """Constructor parameters named explicitly by `cls` or its bases (not via **kwargs)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass in (keras.layers.Layer, object):
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names.update(
            p.name
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        )
    return names


def build_model(
    name: str,
    hparams: dict[str, Any],
    *,
    seed: int = 0,
    timesteps: int = 140,
    features: int = 1,
    classes: int = 2,
    layer: str = "auto",
) -> keras.Model:
    """Build `Input((timesteps, features)) -> RNN(cell) -> Dense(classes)` for model `name`.

    The logits layer is float32 under a mixed precision policy.

    Args:
        name: a model name (see `model_names()`).
        hparams: flat hyperparameters (see `cell_kwargs`).
        seed: seed of the training noise of a noisy cell.
        timesteps: sequence length.
        features: input channels.
        classes: number of logits.
        layer: `"auto"` (default: `keras_nrnn.SDERNN`, the fast path, for every cell),
            `"rnn"` (`keras.layers.RNN`) or `"sdernn"` (`keras_nrnn.SDERNN`).

    Returns:
        An uncompiled `keras.Model` named after the model.

    Raises:
        UnknownModelError: unknown model or missing cell class.

    Example:

    >>> m = build_model("nrnn", {"units": 8, "dt": 0.1, "additive_noise": 0.06})
    >>> m.output_shape
    (None, 2)
    """
    if layer not in ("auto", "rnn", "sdernn"):
        raise ValueError(
            f"Argument `layer` must be 'auto', 'rnn' or 'sdernn'; received layer={layer!r}."
        )
    cls = resolve_cell_class(name)
    cell = cls(**cell_kwargs(name, hparams, seed))
    if layer in ("auto", "sdernn"):
        import keras_nrnn

        rnn = keras_nrnn.SDERNN(cell, name="rnn")
    else:
        rnn = keras.layers.RNN(cell, name="rnn")
    inputs = keras.Input((timesteps, features), name="signal")
    logits = keras.layers.Dense(classes, dtype="float32", name="logits")(rnn(inputs))
    return keras.Model(inputs, logits, name=name)
