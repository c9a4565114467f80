"""Which audit hook the guard installs: the C one (runtime/guard/_hook.c) or the pure-Python one.

``POLC_GUARD_ACCEL`` decides: unset, the C hook when the extension was built
(``pip install`` builds it on CPython 3.11 where a compiler is found), else the Python hook;
``1``, the C hook, and an error when it was not built; ``0``, the Python hook.
Anything else is an error: a setting that cannot be read is not guessed at.
Both hooks decide alike; the C one skips calling the Python one for events
it can tell need nothing (docs/guard.md, "The C hook").
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["ENV", "AccelError", "choose"]

ENV = "POLC_GUARD_ACCEL"


class AccelError(ValueError):
    """POLC_GUARD_ACCEL holds something other than 0 or 1, or asks for a C hook that was not built."""


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("._hook", __package__)
    except ImportError:
        return None


def choose(environ: dict[str, str] | None = None) -> ModuleType | None:
    """The C hook's module to install, or None for the pure-Python hook."""
    value = (os.environ if environ is None else environ).get(ENV)
    if value is None:
        return _load()
    if value == "0":
        return None
    if value == "1":
        module = _load()
        if module is None:
            raise AccelError(f"{ENV}=1 asks for the guard's C hook, but polc.runtime.guard._hook was not "
                             "built (install polc where a C compiler and the Python headers are found)")  # fmt: skip
        return module
    raise AccelError(f"{ENV} must be 0 (the pure-Python hook), 1 (the C hook) or unset, not {value[:40]!r}")
