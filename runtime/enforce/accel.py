"""The optional C accelerator of ``check`` (``_accel.c``) and its switch, ``POLC_ACCEL``.

When the extension is built (``pip install`` compiles it where a C compiler is
at hand; it is optional) the fused deciders and ``Snapshot.check``'s dispatch
run in C over the data the Python linker prepared; the pure-Python deciders
(:mod:`~polc.runtime.enforce.deciders`) stay the reference, and the two give the
same Decision objects for every request (tests/runtime/enforce/test_enforce_accel.py).

``POLC_ACCEL`` is read once, on first use: unset, the extension is used when
it imports and configures; ``0`` forces the pure-Python path; ``1`` requires the
extension (an error, with the reason, when it is not built or could not be wired
up). Anything else is an error that says so. Importing this package never fails
because of the extension: a failure to configure it leaves the pure-Python path.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .. import patterns
from ..catalog import COMMAND, HOST, INT, PATH, PORT, PORT_MAX, PORT_MIN, STRING
from ..errors import ConfigError
from ..format.opcodes import HOST_EXACT, HOST_WILD, PATH_GLOB
from .decision import Decision
from .index import BIG, segment_prefixes, segment_prefixes_get, suffixes, suffixes_get
from .matchers import _true, matcher, str_glob
from .normalize import (
    HOST_MEMO,
    PATH_MEMO,
    norm_command,
    norm_host,
    norm_int,
    norm_path,
    norm_port,
    norm_string,
)

__all__ = ["ENV", "TYPE_CODES", "available", "enabled", "module", "required"]

ENV = "POLC_ACCEL"
# The parameter type codes _accel.c knows.
TYPE_CODES = {HOST: 0, PORT: 1, PATH: 2, STRING: 3, INT: 4, COMMAND: 5}

_module: Any = None
_import_error: str | None = None
try:
    from ._accel import configure as _configure  # type: ignore[import-not-found]
except ImportError as exc:  # not built (no compiler at install time), or built for another Python
    _import_error = f"{type(exc).__name__}: {exc}"
else:

    def _dict_of(getter: object) -> dict[Any, Any]:
        """The dict whose bound ``get`` a memo's getter is (Memo.clear() empties it in place)."""
        d = getattr(getter, "__self__", None)
        if type(d) is not dict:
            raise RuntimeError(f"{getter!r} is not a dict's get")
        return d

    def _closure(fn: Any, *cells: str) -> tuple[Any, tuple[int, ...]]:
        """A matcher closure's code object and the indices of its named cells in ``__closure__``."""
        code = fn.__code__
        return code, tuple(code.co_freevars.index(c) for c in cells)

    # Anything that goes wrong while the extension is wired up (a matcher closure whose
    # cells changed, a memo that is not a dict, an error from configure itself) leaves it
    # unused: the pure-Python path decides, and POLC_ACCEL=1 reports why.
    try:
        # The closures _accel.c tests natively (each body is re-stated there): built once here to
        # find their code objects. A closure whose code is not one of these is called.
        _MATCHERS = {
            "eq": _closure(matcher((HOST_EXACT, "a.b")), "c"),
            "same": _closure(matcher((PATH_GLOB, "a/b")), "const"),
            "under": _closure(matcher((PATH_GLOB, "a/**")), "prefix", "slash"),
            "contains": _closure(str_glob("*ab*"), "core"),
            "starts": _closure(str_glob("ab*"), "core"),
            "ends": _closure(str_glob("*ab"), "core"),
            "one_label": _closure(matcher((HOST_WILD, "*.a.b")), "parent", "n"),
            "some_labels": _closure(matcher((HOST_WILD, "**.a.b")), "parent", "n"),
            "fullmatch": _closure(patterns.string_matcher("a?b"), "fullmatch"),
            "segments_in": _closure(matcher((PATH_GLOB, "**/a/**")), "lit", "head", "tail", "inner"),
            "segments_end": _closure(matcher((PATH_GLOB, "**/a")), "lit", "tail"),
        }

        _configure(
            {
                "host_memo": HOST_MEMO.data,
                "path_memo": PATH_MEMO.data,
                "suffixes_memo": _dict_of(suffixes_get),
                "segments_memo": _dict_of(segment_prefixes_get),
                "norm_host": norm_host,
                "norm_path": norm_path,
                "norm_port": norm_port,
                "norm_string": norm_string,
                "norm_int": norm_int,
                "norm_command": norm_command,
                "suffixes": suffixes,
                "segment_prefixes": segment_prefixes,
                "port_min": PORT_MIN,
                "port_max": PORT_MAX,
                "big": BIG,
                "matchers": _MATCHERS,
                "true": _true,
                "decision": Decision,
            }
        )
        _module = sys.modules[__name__.rpartition(".")[0] + "._accel"]
    except Exception as exc:
        _module = None
        _import_error = f"configuring the extension failed: {type(exc).__name__}: {exc}"

_enabled: bool | None = None


def available() -> bool:
    """Is the extension built and importable?"""
    return _module is not None


def _from_env() -> bool:
    raw = os.environ.get(ENV)
    if raw is None:
        return _module is not None
    if raw == "0":
        return False
    if raw == "1":
        if _module is None:
            raise ConfigError(f"{ENV}={raw!r}: the C accelerator is not available ({_import_error}); unset it or set 0")
        return True
    if not raw.strip():
        raise ConfigError(f"{ENV}={raw!r}: set but empty; give 0 or 1, or unset it")
    raise ConfigError(f"{ENV}={raw!r}: expected 0 (the pure-Python path) or 1 (the C accelerator), or unset it")


def enabled() -> bool:
    """Use the accelerator? ``POLC_ACCEL`` read on the first call (a ConfigError when it
    cannot be understood, and on every call after, until it is fixed)."""
    global _enabled
    if _enabled is None:
        _enabled = _from_env()
    return _enabled


def module() -> Any:
    """The extension module, or None when it is off or not built."""
    return _module if enabled() else None


def required() -> Any:
    """The extension module, asked for explicitly (``Snapshot(accel=True)``): an error when not built."""
    if _module is None:
        raise RuntimeError(f"the C accelerator is not available ({_import_error})")
    return _module
