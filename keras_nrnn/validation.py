"""Argument checks shared by the cells: each error names the argument, the value and the rule."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = [
    "check_choice",
    "check_in_range",
    "check_non_negative",
    "check_positive",
    "check_positive_int",
]


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
        raise ValueError(
            f"Argument `{name}` must be one of {choices}; received {name}={value!r}."
        )
    return value
