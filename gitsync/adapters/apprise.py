"""Apprise, the library that speaks to the notification services (Slack, Matrix, ntfy, e-mail, ...),
loaded once and quietly."""

from __future__ import annotations

import threading
from typing import Any

_APPRISE_LOCK = threading.Lock()
_APPRISE_LOADED: list[bool] = []


def apprise_module() -> Any:
    """Apprise, with its plugins loaded once without their deprecation noise (one imports imghdr,
    deprecated in Python 3.11): later uses import nothing more."""
    import warnings

    with _APPRISE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import apprise

        if not _APPRISE_LOADED:
            apprise.Apprise().add("json://localhost/")  # loads the plugins (and what they import)
            _APPRISE_LOADED.append(True)
    return apprise
