"""Compiler: .pol sources to verified .bin artifacts. Depends on polc.runtime, never the reverse.

The in-memory API (see compiler/driver.py)::

    from polc.compiler import compile_source
    result = compile_source(text, "policies-src/tenant.acme.pol")
    result.check()                     # raises CompileError listing every error
    for module, data in result.artifacts:
        ...                            # artifact bytes, ready for read_artifact
    result.write_to("policies/")       # or write them atomically
"""

from __future__ import annotations

__all__ = ["compile_source", "compile_sources", "compile_paths", "CompileResult", "CompileError", "Diagnostic"]


def __getattr__(name: str):
    if name in ("compile_source", "compile_sources", "compile_paths", "CompileResult"):
        from . import driver

        return getattr(driver, name)
    if name in ("CompileError", "Diagnostic"):
        from . import diagnostics

        return getattr(diagnostics, name)
    raise AttributeError(f"module 'polc.compiler' has no attribute {name!r}")
