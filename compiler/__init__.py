"""Compiler: .pol sources to verified .bin artifacts. Depends on polc.runtime, never the reverse.

The in-memory API (see compiler/memory.py)::

    from polc.compiler import compile_source
    result = compile_source(text, "policies-src/tenant.acme.pol")
    result.check()                     # raises CompileError listing every error
    for module, data in result.artifacts:
        ...                            # artifact bytes, ready for read_artifact
    result.write_to("policies/")       # or write them atomically

What ``polc compile`` runs is ``compile_paths`` (compiler/build.py), which
returns a ``Report``. Names are loaded on first use, so importing the package
does not load lark.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .build import compile_paths
    from .diagnostics import CompileError, Diagnostic
    from .errors import UsageError
    from .memory import CompileResult, compile_source, compile_sources
    from .report import ModuleOutcome, Report
    from .sources import default_out_dir, find_sources

__all__ = [
    "CompileError",
    "CompileResult",
    "Diagnostic",
    "ModuleOutcome",
    "Report",
    "UsageError",
    "compile_paths",
    "compile_source",
    "compile_sources",
    "default_out_dir",
    "find_sources",
]

_HOMES = {
    "compile_source": "memory",
    "compile_sources": "memory",
    "CompileResult": "memory",
    "compile_paths": "build",
    "Report": "report",
    "ModuleOutcome": "report",
    "find_sources": "sources",
    "default_out_dir": "sources",
    "CompileError": "diagnostics",
    "Diagnostic": "diagnostics",
    "UsageError": "errors",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'polc.compiler' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
