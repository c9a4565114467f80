"""Strict reading of the ``POLC_*`` environment variables.

An unset variable means "not configured": the documented default applies.
A variable that is set is configuration, and configuration that cannot be
understood is an error naming the variable — never the default. Empty or
whitespace-only values are the common case: a template that expands to
nothing (``POLC_TRUST_FILE=${TRUST}``) must not turn signature checking off.

Each reader returns None when the variable is unset, the parsed value
otherwise, and raises :class:`ValueError` (``NAME='value': why``) for
anything else. Standard library only: the CLI and the agent both use it.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping

__all__ = ["env_bool", "env_path", "env_seconds", "env_text", "parse_seconds"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    return (os.environ if environ is None else environ).get(name)


def _empty(name: str, raw: str, what: str) -> ValueError:
    return ValueError(f"{name}={raw!r}: set but empty; give {what}")


def env_text(name: str, environ: Mapping[str, str] | None = None, *, what: str = "a value, or unset it") -> str | None:
    """The stripped value of ``name``; an error when it is set but blank."""
    raw = _raw(name, environ)
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        raise _empty(name, raw, what)
    return value


def env_path(name: str, environ: Mapping[str, str] | None = None, *, what: str = "a path, or unset it") -> str | None:
    """The value of ``name`` as a path, exactly as given.

    Blank is an error, and so is leading or trailing whitespace: ``"/srv/p "``
    names another directory than ``"/srv/p"``, and guessing which was meant
    could load the wrong policies.
    """
    raw = _raw(name, environ)
    if raw is None:
        return None
    if not raw.strip():
        raise _empty(name, raw, what)
    if raw != raw.strip():
        raise ValueError(f"{name}={raw!r}: leading or trailing whitespace in a path; remove it")
    return raw


def env_bool(name: str, environ: Mapping[str, str] | None = None) -> bool | None:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case)."""
    raw = _raw(name, environ)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if not value:
        raise _empty(name, raw, "true or false, or unset it")
    raise ValueError(f"{name}={raw!r}: expected true or false (or 1/0, yes/no, on/off)")


def parse_seconds(value: object, origin: str) -> float:
    """A finite number of seconds >= 0 that a thread can wait for; ``origin`` names the setting."""
    try:
        if isinstance(value, bool):
            raise TypeError
        seconds = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{origin}={value!r}: expected a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{origin}={value!r}: expected a number of seconds >= 0")
    if seconds > threading.TIMEOUT_MAX:
        # Event.wait() would raise OverflowError in the poller thread, which
        # would then die and never reload again.
        raise ValueError(f"{origin}={value!r}: at most {threading.TIMEOUT_MAX:g} seconds")
    return seconds


def env_seconds(name: str, environ: Mapping[str, str] | None = None) -> float | None:
    raw = _raw(name, environ)
    if raw is None:
        return None
    if not raw.strip():
        raise _empty(name, raw, "a number of seconds, or unset it")
    return parse_seconds(raw, name)
