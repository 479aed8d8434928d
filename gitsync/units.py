"""Parsing of human units: durations ("1m30s", "250ms", 10) and sizes."""

from __future__ import annotations

import math
import re

MAX_DURATION = 365 * 24 * 3600.0  # a year: anything longer is a mistake, and overflows Docker's nanoseconds soon after
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds from ``10``, ``2.5``, ``"10s"``, ``"1m30s"`` or ``"250ms"``.

    Raises ValueError with a message fit for a person.
    """
    if isinstance(value, bool):
        raise ValueError("must be a duration like 10s, 1m30s or 250ms, not a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite duration, not {value}")
        if value < 0:
            raise ValueError("must not be negative")
        return _bounded(float(value), value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a duration like 10s, 1m30s or 250ms")
    text = value.strip()
    pos = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"{value!r} is not a duration; use forms like 10s, 1m30s or 250ms")
    return _bounded(total, value)


def _bounded(seconds: float, value: object) -> float:
    if seconds > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than a year (8760h), the longest duration gitsync accepts")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
