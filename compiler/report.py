"""What ``polc compile`` / ``polc check`` did: counts, per-module outcomes, diagnostics, exit code.

The exit code follows from the report: 2 (:data:`~polc.compiler.errors.EXIT_USAGE`)
for a usage or I/O problem (``fatal``), else 1 for any error or failed module,
else 0. ``as_dict()`` is the ``--format json`` document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .diagnostics import ERROR, WARNING, Diagnostic, render_all
from .errors import EXIT_ERRORS, EXIT_OK, UsageError

__all__ = [
    "CHECKED",
    "COMPILED",
    "FAILED",
    "JSON_VERSION",
    "UP_TO_DATE",
    "ModuleOutcome",
    "Report",
    "diagnostic_dict",
]

JSON_VERSION = 1
"""``version`` of the ``--format json`` document (docs/check-output.schema.json); raised on an incompatible change."""

# A module's status, as ``-v`` prints it and ``--format json`` carries it.
COMPILED = "compiled"
UP_TO_DATE = "up to date"
FAILED = "failed"
CHECKED = "ok"
"""Checked without errors (``polc check``, which writes nothing)."""


@dataclass(slots=True)
class ModuleOutcome:
    """What became of one module: where it is defined, its status, its artifact."""

    module: str
    source: str
    line: int
    col: int
    status: str
    """``compiled``, ``up to date``, ``failed`` (or ``ok`` when only checking)."""
    artifact: str | None = None
    """Where the artifact is (or would be) written, ``None`` in memory."""
    data: bytes | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "source": self.source,
            "line": self.line,
            "col": self.col,
            "status": self.status,
            "artifact": self.artifact,
        }


@dataclass(slots=True)
class Report:
    """What ``polc compile`` / ``polc check`` did; ``exit_code`` follows from it."""

    modules: list[ModuleOutcome] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    failed_files: int = 0
    """Files with errors that yielded no module at all."""
    out_dir: str | None = None
    checking: bool = False
    fatal: str | None = None
    """A usage or I/O problem (exit 2)."""
    removed_debris: int = 0
    """Temporary files of interrupted compiles removed from the output directory."""
    _sources: dict[str, bytes] = field(default_factory=dict, repr=False)

    def count(self, status: str) -> int:
        return sum(1 for m in self.modules if m.status == status)

    @property
    def errors(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity == WARNING)

    @property
    def failed(self) -> int:
        return self.count(FAILED) + self.failed_files

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return UsageError.exit_code
        return EXIT_ERRORS if self.errors or self.failed else EXIT_OK

    def keep_source(self, path: str, data: bytes) -> None:
        """Keep a source's bytes, so its diagnostics can show its lines."""
        self._sources.setdefault(path, data)

    def summary(self) -> str:
        if self.checking:
            return f"checked {self.count(CHECKED) + self.count(FAILED)}, failed {self.failed}"
        return (
            f"compiled {self.count(COMPILED)}, up to date {self.count(UP_TO_DATE)}, "
            f"failed {self.failed}"
        )

    def source_text(self, path: str) -> str | None:
        data = self._sources.get(path)
        if data is None:
            return None
        return data.decode("utf-8-sig", errors="replace")

    def render_diagnostics(self) -> str:
        return render_all(self.diagnostics, self.source_text)

    def as_dict(self) -> dict[str, Any]:
        summary: dict[str, int] = {
            "compiled": self.count(COMPILED),
            "up_to_date": self.count(UP_TO_DATE),
            "failed": self.failed,
            "errors": self.errors,
            "warnings": self.warnings,
        }
        if self.checking:
            summary = {"checked": self.count(CHECKED) + self.count(FAILED), "failed": self.failed,
                       "errors": self.errors, "warnings": self.warnings}
        return {
            "version": JSON_VERSION,
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "out_dir": self.out_dir,
            "summary": summary,
            "summary_line": self.summary(),
            "modules": [m.as_dict() for m in self.modules],
            "diagnostics": [diagnostic_dict(d) for d in self.diagnostics],
            "fatal": self.fatal,
            "removed_debris": self.removed_debris,
        }


def diagnostic_dict(d: Diagnostic) -> dict[str, Any]:
    """One diagnostic in the ``--format json`` document (``location`` included, notes nested)."""
    return {
        "severity": d.severity,
        "file": d.file,
        "line": d.line,
        "col": d.col,
        "length": d.length,
        "module": d.module,
        "message": d.message,
        "location": d.location,
        "notes": [diagnostic_dict(n) for n in d.notes],
    }
