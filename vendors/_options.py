"""Checks for a driver's ``[parent.options]``: a bad value is a ValueError naming the option."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def whole(options: Mapping[str, Any], key: str, default: int, minimum: int = 0,
          maximum: int | None = None) -> int:
    """The whole-number option ``key`` within [minimum, maximum]."""
    value = options.get(key, default)
    if (not isinstance(value, int) or isinstance(value, bool) or value < minimum
            or (maximum is not None and value > maximum)):
        upper = f" and ≤ {maximum:#x}" if maximum is not None else ""
        raise ValueError(f"option {key!r} must be a whole number ≥ {minimum}{upper}, "
                         f"not {value!r}")
    return value


def text(options: Mapping[str, Any], key: str, default: str,
         allowed: Sequence[str] | None = None) -> str:
    """The string option ``key``, one of ``allowed`` when given."""
    value = options.get(key, default)
    if not isinstance(value, str) or not value or (allowed and value not in allowed):
        among = f" among {', '.join(map(repr, allowed))}" if allowed else ""
        raise ValueError(f"option {key!r} must be a non-empty string{among}, not {value!r}")
    return value


def known(options: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Refuse options the driver does not know (a typo would otherwise pass unseen)."""
    unknown = sorted(set(options) - set(keys))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(keys)})")


def flag(options: Mapping[str, Any], key: str, default: bool) -> bool:
    """The true-or-false option ``key``."""
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"option {key!r} must be true or false, not {value!r}")
    return value
