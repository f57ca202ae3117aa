"""Argument checks shared by the cells: each error names the argument, the value and the rule."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

__all__ = [
    "check_bool",
    "check_choice",
    "check_in_range",
    "check_non_negative",
    "check_positive",
    "check_positive_int",
    "get_activation",
    "get_keras_object",
    "serialize_keras_object",
]

_KERAS_OBJECT_KINDS = {
    "initializer": (keras.initializers.get, keras.initializers.serialize),
    "regularizer": (keras.regularizers.get, keras.regularizers.serialize),
    "constraint": (keras.constraints.get, keras.constraints.serialize),
}


def _is_number(value: Any) -> bool:
    # numbers.Real admits numpy scalars (np.float32(0.1) from a hyperparameter grid).
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any) -> int:
    """Return `value` if it is an integer > 0, else raise a `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(
            f"Argument `{name}` must be a positive integer; received {name}={value!r}."
        )
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """Return `value` as a float if it is a finite number > 0."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Argument `{name}` must be a finite number > 0; received {name}={value!r}."
        )
    return float(value)


def check_non_negative(name: str, value: Any) -> float:
    """Return `value` as a float if it is a finite number >= 0."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"Argument `{name}` must be a finite number >= 0; received {name}={value!r}."
        )
    return float(value)


def check_in_range(name: str, value: Any, low: float, high: float) -> float:
    """Return `value` as a float if `low <= value <= high`."""
    if not _is_number(value) or not (low <= value <= high):
        raise ValueError(
            f"Argument `{name}` must be a number in [{low}, {high}]; received {name}={value!r}."
        )
    return float(value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return `value` if it is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"Argument `{name}` must be one of {choices}; received {name}={value!r}.")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return `value` as a bool if it is one (Python or numpy), else raise a `ValueError`."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"Argument `{name}` must be a bool; received {name}={value!r}.")
    return bool(value)


def _kind(name: str) -> str:
    kind = name.rsplit("_", 1)[-1]
    if kind not in _KERAS_OBJECT_KINDS:
        raise KeyError(f"{name!r} does not end in one of {tuple(_KERAS_OBJECT_KINDS)}")
    return kind


def get_keras_object(name: str, value: Any) -> Any:
    """Resolve the argument `name` (`*_initializer`, `*_regularizer` or `*_constraint`).

    Uses `keras.initializers.get` (etc.), with a `ValueError` naming the argument.

    Example:

    >>> type(get_keras_object("kernel_initializer", "zeros")).__name__
    'Zeros'
    """
    kind = _kind(name)
    try:
        return _KERAS_OBJECT_KINDS[kind][0](value)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"Argument `{name}` must be a Keras {kind} (a name, a config dict, an instance or "
            f"None); received {name}={value!r}."
        ) from err


def serialize_keras_object(name: str, obj: Any) -> Any:
    """The config of the object held by the argument `name` (inverse of `get_keras_object`)."""
    return _KERAS_OBJECT_KINDS[_kind(name)][1](obj)


def get_activation(activation: Any):
    """`keras.activations.get(activation)` with a `ValueError` naming the argument.

    `None` gives the identity, as everywhere in Keras.

    Example:

    >>> get_activation("tanh").__name__
    'tanh'
    """
    try:
        return keras.activations.get(activation)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "Argument `activation` must be the name of a Keras activation (e.g. 'tanh') or a "
            f"callable; received activation={activation!r}."
        ) from err
