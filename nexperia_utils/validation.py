"""Argument checks shared by the package, in scikit-learn's spirit (``check_scalar``): each returns the
checked value and raises one clear error that names the argument, the allowed values and what it got.

    check_choice("optimizer", "adam", ("sgd", "adamw"))
    -> ConfigError: optimizer must be one of ['sgd', 'adamw'], got 'adam'
    check_number("alpha", 1.0, low=0, high=1, include_high=False)
    -> ConfigError: alpha must be a number in [0, 1), got 1.0

``error`` picks the project's error class (:class:`ConfigError` for settings, the default, or
:class:`DataError` for data); ``where`` prefixes the message (e.g. ``"SAT"`` or ``"profile 'quick':"``).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, TypeVar

from nexperia_utils.errors import ConfigError

T = TypeVar("T")

__all__ = ["check_choice", "check_int", "check_number"]


def _prefix(where: str) -> str:
    return f"{where} " if where else ""


def check_choice(name: str, value: T, choices: Iterable[Any], *, where: str = "",
                 error: type[ValueError] = ConfigError) -> T:
    """``value`` if it is one of ``choices``; otherwise ``error`` listing them."""
    options = list(choices)  # a mapping gives its keys; membership in a list compares with ==
    if value not in options:
        raise error(f"{_prefix(where)}{name} must be one of {options}, got {value!r}")
    return value


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None, *, where: str = "",
              error: type[ValueError] = ConfigError) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) in ``[minimum, maximum]``."""
    bounds = _interval(minimum, maximum, True, True)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not _inside(value, minimum, maximum,
                                                                                         True, True):
        raise error(f"{_prefix(where)}{name} must be an integer{bounds}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                 include_low: bool = True, include_high: bool = True, where: str = "",
                 error: type[ValueError] = ConfigError) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool) inside the interval."""
    bounds = _interval(low, high, include_low, include_high)
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value))
            or not _inside(float(value), low, high, include_low, include_high)):
        raise error(f"{_prefix(where)}{name} must be a number{bounds}, got {value!r}")
    return float(value)


def _inside(value: float, low: float | None, high: float | None, include_low: bool, include_high: bool) -> bool:
    if low is not None and (value < low or (value == low and not include_low)):
        return False
    if high is not None and (value > high or (value == high and not include_high)):
        return False
    return True


def _interval(low: float | None, high: float | None, include_low: bool, include_high: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>=' if include_low else '>'} {low:g}"
    if low is None:
        return f" {'<=' if include_high else '<'} {high:g}"
    return f" in {'[' if include_low else '('}{low:g}, {high:g}{']' if include_high else ')'}"
