"""The cell registry: every drift of the package, with the names tools and tests use for it.

Each cell file registers its drift with one call, `register_cell(...)`, and the rest of the
project enumerates the registry instead of keeping name lists: the training runners' `--model`
names (`training.models`), the export tests, and the conformance tests that run Keras's own
layer-test harness over every registered cell. Adding a cell is one file, its tests and that
one line (`docs/adding-a-cell.md`).

Example:

>>> import keras_nrnn
>>> [entry.model for entry in cells()][:2]
['lipschitz', 'antisymmetric']
>>> get("nrnn").cell.__name__
'NoisyLipschitzCell'
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["CellEntry", "ModelEntry", "cells", "get", "models", "register_cell"]


@dataclasses.dataclass(frozen=True)
class CellEntry:
    """One registered drift.

    Attributes:
        cls: the cell class (one class per drift; it takes `noise=`).
        noisy_cls: its `Noisy*` name (a thin subclass kept for 0.1 code and files).
        model: the `--model` name of the deterministic model (e.g. `"lipschitz"`).
        noisy_model: the `--model` name of the noisy model (e.g. `"nrnn"`).
        label: how the deterministic model is called in tables and plots.
        noisy_label: the same for the noisy model.
        example: small constructor arguments for tests (units 8 or less).
        fixed: cell arguments fixed by the models themselves.
    """

    cls: type
    noisy_cls: type
    model: str
    noisy_model: str
    label: str
    noisy_label: str
    example: tuple[tuple[str, Any], ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()

    def make(self, noisy: bool = False, **overrides: Any):
        """A small instance for tests: `example` arguments, noise when `noisy`, `overrides`.

        Example:

        >>> get("nrnn").entry.make(noisy=True).noise
        DiagonalNoise(additive=0.1, multiplicative=0.05)
        """
        kwargs = dict(self.example)
        if noisy:
            kwargs.update(additive_noise=0.1, multiplicative_noise=0.05, seed=0)
        kwargs.update(overrides)
        return (self.noisy_cls if noisy else self.cls)(**kwargs)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A `--model` name: a registered cell with or without noise."""

    name: str
    cell: type
    noisy: bool
    label: str
    entry: CellEntry


_CELLS: dict[str, CellEntry] = {}


def register_cell(
    cls: type,
    noisy_cls: type,
    *,
    model: str,
    noisy_model: str,
    label: str,
    noisy_label: str,
    example: dict[str, Any] | None = None,
    fixed: dict[str, Any] | None = None,
) -> CellEntry:
    """Register a drift (called once at the bottom of its cell file).

    Args:
        cls: the cell class.
        noisy_cls: its `Noisy*` subclass.
        model: `--model` name without noise.
        noisy_model: `--model` name with noise.
        label: table label without noise.
        noisy_label: table label with noise.
        example: small constructor arguments for tests.
        fixed: cell arguments the models fix.

    Returns:
        The registered entry.

    Example:

    >>> from keras_nrnn import LipschitzCell, NoisyLipschitzCell
    >>> register_cell(LipschitzCell, NoisyLipschitzCell, model="lipschitz", noisy_model="nrnn",
    ...               label="Lipschitz RNN", noisy_label="NRNN", example={"units": 8, "dt": 0.2,
    ...               "beta": 0.8}).model  # registering again replaces the entry
    'lipschitz'
    """
    entry = CellEntry(
        cls,
        noisy_cls,
        model,
        noisy_model,
        label,
        noisy_label,
        tuple((example or {}).items()),
        tuple((fixed or {}).items()),
    )
    taken = {e.model for e in _CELLS.values()} | {e.noisy_model for e in _CELLS.values()}
    if cls.__name__ not in _CELLS and ({model, noisy_model} & taken):
        raise ValueError(f"Model names {model!r}/{noisy_model!r} are registered already.")
    _CELLS[cls.__name__] = entry
    return entry


def cells() -> list[CellEntry]:
    """Every registered drift, in registration order.

    Example:

    >>> [entry.cls.__name__ for entry in cells()][:2]
    ['LipschitzCell', 'AntisymmetricCell']
    """
    import keras_nrnn  # noqa: F401  (imports every cell file, which registers it)

    return list(_CELLS.values())


def models() -> dict[str, ModelEntry]:
    """Every `--model` name: the noisy model of each drift, then the deterministic one.

    Example:

    >>> list(models())[:2]
    ['nrnn', 'lipschitz']
    """
    out: dict[str, ModelEntry] = {}
    for entry in cells():
        out[entry.noisy_model] = ModelEntry(
            entry.noisy_model, entry.noisy_cls, True, entry.noisy_label, entry
        )
        out[entry.model] = ModelEntry(entry.model, entry.cls, False, entry.label, entry)
    return out


def get(model: str) -> ModelEntry:
    """The `ModelEntry` of `--model` name `model`, or a `ValueError` naming the choices.

    Example:

    >>> get("noisy_cornn").noisy
    True
    """
    registered = models()
    if model not in registered:
        raise ValueError(
            f"Argument `model` must be one of {list(registered)}; received model={model!r}."
        )
    return registered[model]
