"""Every exception the runtime raises on purpose, under one root.

Catch :class:`PolcError` to catch them all. Each class keeps the built-in
base it had before it moved here (``ValueError``, ``RuntimeError``, ...), so
code that catches the built-in keeps working.
"""

from __future__ import annotations

__all__ = ["PolcError"]


class PolcError(Exception):
    """The root of every exception polc raises on purpose."""


# --------------------------------------------------------------------------
# Configuration and loading of the agent (runtime/config.py, runtime/agent.py)

import typing  # noqa: E402 - kept in this section, so each section of the file stays self-contained

if typing.TYPE_CHECKING:
    from .events import ReloadFailure

__all__ += ["ConfigError", "PolicyLoadError"]


class ConfigError(PolcError, ValueError):
    """A setting that is given but cannot be used: an argument, or a ``POLC_*`` variable that
    is set but blank or malformed. The message names the setting and the value."""


class PolicyLoadError(PolcError):
    """A strict start-up met bad artifacts (or no directory); ``failures`` lists each."""

    def __init__(self, failures: list[ReloadFailure]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  {f.file}: {f.reason}" for f in self.failures)
        super().__init__(f"{len(self.failures)} policy artifact(s) failed to load:\n{lines}")
