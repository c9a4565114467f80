"""TEMPORARY re-export, removed when the restructure lands: the names compiler/driver.py used to define.

The in-memory API is compiler/memory.py, the build compiler/build.py, the
report compiler/report.py (see docs/compiler.md for the module map).
"""

from __future__ import annotations

from .build import compile_paths
from .errors import UsageError
from .memory import CompileResult, compile_source, compile_sources
from .output import LOCK_NAME, STALE_TEMP_AGE, TEMP_PREFIX, OutputLock, remove_debris
from .report import CHECKED, COMPILED, FAILED, UP_TO_DATE, ModuleOutcome, Report
from .sources import STDIN, STDIN_NAME, default_out_dir, find_sources, recorded_name
from .sources import recorded_names as _recorded_names
from .sources import walk_sources as _walk_sources

__all__ = [
    "CHECKED",
    "COMPILED",
    "FAILED",
    "LOCK_NAME",
    "STALE_TEMP_AGE",
    "STDIN",
    "STDIN_NAME",
    "TEMP_PREFIX",
    "UP_TO_DATE",
    "CompileResult",
    "ModuleOutcome",
    "OutputLock",
    "Report",
    "UsageError",
    "_recorded_names",
    "_walk_sources",
    "compile_paths",
    "compile_source",
    "compile_sources",
    "default_out_dir",
    "find_sources",
    "recorded_name",
    "remove_debris",
]
