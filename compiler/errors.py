"""The compiler's exceptions, under polc's one root ``polc.runtime.errors.PolcError``.

Each carries the exit status of ``polc`` for it as the class attribute
``exit_code`` (0 success, 1 policy errors, 2 usage or I/O problems), so a
command that catches one needs no number of its own. ``CompileError`` (the
in-memory API's ``check()``) lives with the diagnostics it carries
(compiler/diagnostics.py).
"""

from __future__ import annotations

from typing import ClassVar

from polc.runtime.errors import PolcError

__all__ = ["EXIT_ERRORS", "EXIT_OK", "EXIT_USAGE", "UsageError"]

EXIT_OK = 0
"""Every source compiled (or checked) without error."""
EXIT_ERRORS = 1
"""A policy error (or, under ``--strict``, a warning)."""
EXIT_USAGE = 2
"""A problem with how polc was called, or with the file system."""


class UsageError(PolcError):
    """A problem with how polc was called, or with the file system (exit 2)."""

    exit_code: ClassVar[int] = EXIT_USAGE
