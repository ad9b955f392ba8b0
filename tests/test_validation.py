"""The shared argument checks: accepted values come back typed, every rejection names the argument,
the allowed values and what it got, with the project's error class."""
from __future__ import annotations

import numpy as np
import pytest

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.validation import check_choice, check_int, check_number


def test_check_choice() -> None:
    assert check_choice("optimizer", "sgd", ("sgd", "adamw")) == "sgd"
    assert check_choice("scheduler", "cosine", {"cosine": 1, "step": 2}) == "cosine"  # a mapping's keys
    with pytest.raises(ConfigError, match=r"^optimizer must be one of \['sgd', 'adamw'\], got 'adam'$"):
        check_choice("optimizer", "adam", ("sgd", "adamw"))
    with pytest.raises(DataError, match=r"^SAT mod must be one of"):
        check_choice("mod", ["x"], ("none",), where="SAT", error=DataError)  # unhashable: refused, not a TypeError


@pytest.mark.parametrize("value, minimum, maximum, ok", [
    (3, 1, None, True), (np.int64(3), 1, None, True), (1, 1, 1, True), (0, 1, None, False), (5, 0, 4, False),
    (True, 0, None, False), (2.0, 0, None, False), ("2", 0, None, False), (None, 0, None, False),
])
def test_check_int(value, minimum, maximum, ok) -> None:
    if ok:
        out = check_int("n", value, minimum, maximum)
        assert out == value and type(out) is int
    else:
        with pytest.raises(ConfigError, match=r"^n must be an integer"):
            check_int("n", value, minimum, maximum)


def test_check_int_messages_state_the_bounds() -> None:
    with pytest.raises(ConfigError, match=r"must be an integer >= 1, got 0$"):
        check_int("epochs", 0, 1)
    with pytest.raises(ValueError, match=r"must be an integer in \[0, 9\], got 10$"):
        check_int("index", 10, 0, 9, error=ValueError)
    with pytest.raises(ConfigError, match=r"^profile 'quick': epochs must"):
        check_int("epochs", -1, 1, where="profile 'quick':")


@pytest.mark.parametrize("value, kw, ok", [
    (0.5, dict(low=0, high=1), True), (0, dict(low=0, high=1), True), (0, dict(low=0, include_low=False), False),
    (1.0, dict(low=0, high=1, include_high=False), False), (np.float32(0.25), dict(low=0, high=1), True),
    (float("nan"), {}, False), (float("inf"), dict(low=0), False), (True, {}, False), ("0.5", {}, False),
    (-1e-9, dict(low=0), False),
])
def test_check_number(value, kw, ok) -> None:
    if ok:
        out = check_number("x", value, **kw)
        assert out == pytest.approx(float(value)) and type(out) is float
    else:
        with pytest.raises(ConfigError, match=r"^x must be a number"):
            check_number("x", value, **kw)


def test_check_number_messages_state_the_interval() -> None:
    with pytest.raises(ConfigError, match=r"must be a number in \[0, 1\), got 1$"):
        check_number("alpha", 1, 0, 1, include_high=False)
    with pytest.raises(ConfigError, match=r"must be a number > 0, got 0$"):
        check_number("lr", 0, 0, include_low=False)
    with pytest.raises(ConfigError, match=r"must be a number <= 2, got 3$"):
        check_number("m", 3, high=2)
