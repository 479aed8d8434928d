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


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mi": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "ti": 1 << 40, "tib": 1 << 40}
MAX_SIZE = 1 << 50


def parse_size(value: object) -> int:
    """Bytes from ``268435456``, ``"256m"``, ``"256MiB"`` or ``"1g"``: units are 1024-based whatever
    their case, as Docker and compose read them (Kubernetes' Mi and Gi mean the same)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a size like 256m, 512Mi or 1g")
    m = _SIZE.match(str(value).strip())
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size; use forms like 256m, 512Mi or 1g (1024-based)")
    size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if size <= 0 or size > MAX_SIZE:
        raise ValueError(f"{value!r} must be more than 0 and at most 1PiB")
    return size


def parse_cpus(value: object) -> float:
    """CPUs from ``0.5``, ``"1.5"`` or Kubernetes' millicores ``"500m"``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a number of CPUs like 0.5, 2 or 500m")
    text = str(value).strip()
    try:
        cpus = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of CPUs; use forms like 0.5, 2 or 500m") from None
    if not math.isfinite(cpus) or cpus <= 0 or cpus > 1024:
        raise ValueError(f"{value!r} must be more than 0 and at most 1024 CPUs")
    return round(cpus, 3)
