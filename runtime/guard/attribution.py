"""Who is on the stack: Python module names -> the governed packages they belong to.

An operation is attributed to every governed package with a frame on the
calling stack, plus the packages it inherited through a hand-off (a thread,
an asyncio task or an executor's work item started by a governed package;
:data:`INHERITED`). Frames are walked with ``f_back`` and classified by
``f_globals["__name__"]``: neither raises an audit event (``frame.f_code``
does), and a module name is classified once per policy snapshot, so each
frame costs one attribute read, one identity test and, when its module
differs from the previous frame's, one dict probe.

This module holds the classification; the walk itself lives in
:meth:`polc.runtime.guard.core.Guard.attribute`, where its locals are bound.
"""

from __future__ import annotations

import contextvars
import os
import sys
import sysconfig
from collections.abc import Callable
from types import FrameType

from ..catalog import GLOBAL_MODULE

__all__ = [
    "INHERITED",
    "POLC",
    "Classifier",
    "Inherited",
    "Owner",
    "frame_site",
    "top_package",
]

# (security module, Python package): who an attributed frame belongs to.
Owner = tuple[str, str]
# What a hand-off carries: each owner with the call site of the hand-off.
Inherited = tuple[tuple[Owner, str], ...]

# Frames of polc itself: never governed (stack inspection goes on past them).
POLC: Owner = ("", "polc")

# The packages a hand-off started by governed code carries (threads,
# asyncio tasks, executor work items; runtime/guard/wrappers.py sets it).
INHERITED: contextvars.ContextVar[Inherited | None] = contextvars.ContextVar("polc_guard_inherited", default=None)

_STDLIB_TOP = frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names) | {"__main__"}
_THIRD_PARTY_DIRS = ("/site-packages/", "/dist-packages/")


def _stdlib_dirs() -> tuple[str, ...]:
    dirs = []
    for key in ("stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.append(os.path.realpath(path).rstrip("/") + "/")
    return tuple(dict.fromkeys(dirs))


def top_package(name: str) -> str:
    return name.partition(".")[0]


class Classifier:
    """Classifies one module name against one snapshot's ``governor`` and the guard's settings.

    ``unlisted_global``: a third-party module no security module governs is
    governed by ``_global`` alone. Third-party means: its file is below a
    ``site-packages`` or ``dist-packages`` directory, or outside both the
    base directory and the standard library's directories; and its top-level
    name is not a standard-library name or polc's. Everything else (the
    service's own code below the base directory, the standard library,
    ``__main__``, modules without a file) is ungoverned.
    """

    def __init__(self, governor: Callable[[str], str | None], *, unlisted_global: bool, base: str) -> None:
        self.governor = governor
        self.unlisted_global = unlisted_global
        self.base = base.rstrip("/") + "/"
        self.stdlib = _stdlib_dirs()

    def package_of(self, name: str, module: str) -> str:
        """The Python package an operation is attributed to: the shortest dotted prefix of
        ``name`` that the same security module governs (``vendorlib`` for ``vendorlib.http``)."""
        parts = name.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if self.governor(prefix) == module:
                return prefix
        return name

    def classify(self, name: str, file: object) -> Owner | None:
        top = top_package(name)
        if top == "polc":
            return POLC
        module = self.governor(name)
        if module is not None:
            return (module, self.package_of(name, module))
        if not self.unlisted_global or top in _STDLIB_TOP:
            return None
        if type(file) is not str or not file.startswith("/"):
            return None  # no file (built-in, frozen without a path, exec'd code): not a package
        if any(d in file for d in _THIRD_PARTY_DIRS):
            return (GLOBAL_MODULE, top)
        if file.startswith(self.base) or file.startswith(self.stdlib):
            return None
        return (GLOBAL_MODULE, top)


def frame_site(frame: FrameType, package: str) -> str:
    """``vendorlib/client.py:42``: the frame's file, from its package's directory, and line.

    Reads ``frame.f_code`` (an audited attribute): call it only from inside
    the guard's hook, whose re-entrancy guard ignores the event.
    """
    try:
        filename = frame.f_code.co_filename
        line = frame.f_lineno
    except Exception:  # a frame being torn down
        return "<unknown>"
    if type(filename) is not str:
        return "<unknown>"
    top = top_package(package)
    marker = "/" + top + "/"
    i = filename.rfind(marker)
    if i >= 0:
        filename = filename[i + 1 :]
    elif filename.endswith("/" + top + ".py"):
        filename = filename[filename.rfind("/") + 1 :]
    return f"{filename}:{line}"
