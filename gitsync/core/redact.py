"""Values that are never shown: those of the agent's environment that compose files may use (and
whatever else the agent must hold but never tell). Every place gitsync writes text for people (the
command line, logs, HTTP answers, commit statuses, pull request comments, the sync history) passes
it through a `Redactor`, which puts the variable's name where its value was: ``web:${TAG}``.

Masking is by value, so it holds whatever route a value took (a plan line, a validation message,
a live container's image); a value is masked in each spelling output may give it (verbatim, JSON-,
HTML- or URL-escaped, and as a number in JSON). A value shorter than `MIN_LENGTH` cannot be told
from other text, so the configuration refuses it (`config`)."""

from __future__ import annotations

import html
import json
import logging
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any, TextIO

MIN_LENGTH = 4


def spellings(value: str) -> set[str]:
    """The ways output may spell `value`."""
    return {value, json.dumps(value)[1:-1], html.escape(value), html.escape(value, quote=False), urllib.parse.quote(value, safe=""), urllib.parse.quote(value)}


class Redactor:
    """Masks the values it was given by their names; immutable, cheap to pass around."""

    def __init__(self, values: Mapping[str, str] | None = None, *, named: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.named = named | frozenset((values or {}).items())  # (name, value)
        pairs = {(sp, f"${{{name}}}") for name, value in self.named if value for sp in spellings(value)}
        self._pairs = sorted(pairs, key=lambda p: (-len(p[0]), p))  # longer first: a value holding another
        self._numbers = {value: f"${{{name}}}" for name, value in sorted(self.named)}

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def __or__(self, other: Redactor) -> Redactor:
        return self if other.named <= self.named else Redactor(named=self.named | other.named)

    def text(self, text: str) -> str:
        for spelled, name in self._pairs:
            if spelled in text:
                text = text.replace(spelled, name)
        return text

    def data(self, obj: Any) -> Any:
        """A JSON-like structure with every string (keys too) masked, and a number equal to a value
        replaced by the value's name (so a port from the environment is not shown as 8080)."""
        if not self._pairs:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, bool) or obj is None:
            return obj
        if isinstance(obj, (int, float)):
            return self._numbers.get(str(obj), obj)
        if isinstance(obj, Mapping):
            return {self.text(k) if isinstance(k, str) else k: self.data(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.data(v) for v in obj]
        return obj


class Masking:
    """The process's current redactor, for what is set up before the configuration is read (the
    command line's streams, the log handler). It only grows: a value masked once stays masked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.redactor = Redactor()

    def use(self, redactor: Redactor) -> None:
        with self._lock:
            self.redactor = self.redactor | redactor

    def text(self, text: str) -> str:
        return self.redactor.text(text)


class MaskedStream:
    """A text stream that masks what is written to it (print writes a line in one call)."""

    def __init__(self, stream: TextIO, masking: Masking) -> None:
        self._stream = stream
        self._masking = masking

    def write(self, text: str) -> int:
        self._stream.write(self._masking.text(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class MaskingFilter(logging.Filter):
    """Masks a log record's message (and its traceback) before any handler formats it."""

    def __init__(self, masking: Masking) -> None:
        super().__init__()
        self._masking = masking

    def filter(self, record: logging.LogRecord) -> bool:
        if self._masking.redactor:
            record.msg, record.args = self._masking.text(record.getMessage()), None
            if record.exc_info:
                import traceback

                record.exc_text = self._masking.text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
                record.exc_info = None
        return True
