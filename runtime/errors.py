"""Every exception the runtime raises on purpose, under one root.

Catch :class:`PolcError` to catch them all. Each class keeps the built-in
base it had before it moved here (``ValueError``, ``RuntimeError``, ...), so
code that catches the built-in keeps working.
"""

from __future__ import annotations

__all__ = ["PolcError"]


class PolcError(Exception):
    """The root of every exception polc raises on purpose."""
