"""labelreg.ops.checks: the argument checks name the argument, the bound and the value."""

from __future__ import annotations

import numpy as np
import pytest

from labelreg import ops


@pytest.mark.parametrize("value", [0, 3, np.int64(7), np.int32(2)])
def test_check_integer_accepts_python_and_numpy_integers(value):
    out = ops.check_integer(value, "n", 0)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (1, {"minimum": 2}, "bins must be an integer >= 2; received bins=1"),
        (True, {"minimum": 0}, "bins must be an integer >= 0; received bins=True"),
        (1.0, {"minimum": 0}, "received bins=1.0"),
        ("3", {"minimum": 0}, "received bins='3'"),
        (4, {"minimum": 1, "odd": True}, "bins must be an odd integer >= 1; received bins=4"),
        (0, {"minimum": 1, "description": "a positive integer"},
         "bins must be a positive integer; received bins=0"),
    ],
)
def test_check_integer_rejects_with_the_bound(value, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ops.check_integer(value, "bins", **kwargs)


def test_check_integer_odd_accepts_odd_values():
    assert ops.check_integer(5, "window", 1, odd=True) == 5


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (-1, {"minimum": 0.0}, "tau must be a finite number >= 0.0; received tau=-1"),
        (float("nan"), {}, "tau must be a finite number; received tau=nan"),
        (0, {"minimum": 0.0, "exclusive_minimum": True}, "tau must be a finite number > 0.0"),
        (2, {"minimum": 0, "maximum": 1.0, "exclusive_minimum": True}, r"tau must be in \(0, 1.0\]"),
        (True, {}, "received tau=True"),
    ],
)
def test_check_number_rejects_with_the_bound(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ops.check_number(value, "tau", **kwargs)
    assert ops.check_number(0.5, "tau", 0.0, 1.0) == 0.5
