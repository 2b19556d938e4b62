"""One check for every numeric parameter: finite, within its range, named in the error.

``number(name, value, low=0, high=1)`` returns ``value`` as a float or raises ValueError
saying which parameter, what value and what range is valid, so NaN, infinities and
out-of-range values never reach a computation whose result would look like a number.
"""

from __future__ import annotations

import math

__all__ = ["number", "integer"]


def _range(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "finite"


def number(name: str, value, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, meaning: str = "") -> float:
    """``value`` as a finite float in the given range, else a ValueError naming ``name``."""
    valid = "a finite number" + ("" if low is None and high is None else " " + _range(low, high, low_open, high_open))
    hint = f" ({meaning})" if meaning else ""
    try:
        if isinstance(value, bool):
            raise TypeError
        number_ = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: must be {valid}{hint}") from None
    if (not math.isfinite(number_) or (low is not None and (number_ <= low if low_open else number_ < low))
            or (high is not None and (number_ >= high if high_open else number_ > high))):
        raise ValueError(f"{name}={number_:g}: must be {valid}{hint}")
    return number_


def integer(name: str, value, *, low: int | None = None, high: int | None = None, meaning: str = "") -> int:
    """``value`` as an int in ``[low, high]``, else a ValueError naming ``name``."""
    hint = f" ({meaning})" if meaning else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r}: must be an integer {_range(low, high, False, False)}{hint}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}={value}: must be an integer {_range(low, high, False, False)}{hint}")
    return value
