"""An unknown capability declared in a file beside the one checked: say where.

Declarations apply to the sources of one run only, so ``polc check a.pol``
does not see ``capability tool.call(...)`` in ``b.pol`` beside it. Only on
such an error, the other ``*.pol`` files in the directories of the file
arguments (and of ``--stdin-filename``) are read for declarations, and the
error then names the file that declares the capability, with a note there.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import replace

from .ast import SourceFile
from .checker import collect_declarations
from .diagnostics import ERROR, NOTE, Diagnostic, source_line
from .parser import parse
from .pipeline import decode
from .report import Report
from .sources import STDIN, Walked

__all__ = ["explain_unknown_capabilities"]

_UNKNOWN_CAP = "unknown capability '"


def explain_unknown_capabilities(report: Report, srcs: Sequence[str], walked: Sequence[Walked],
                                 stdin_name: str | None) -> None:
    """Rewrite each "unknown capability" error of ``report`` whose capability a neighbouring file declares."""
    unknown = [(k, d) for k, d in enumerate(report.diagnostics)
               if d.severity == ERROR and d.message.startswith(_UNKNOWN_CAP)]
    if not unknown:
        return
    parsed = _neighbours(srcs, walked, stdin_name)
    if not parsed:
        return
    elsewhere, _ = collect_declarations(sf for sf, _ in parsed.values())
    run = "check" if report.checking else "compile"
    for k, d in unknown:
        text = report.source_text(d.file)
        line = source_line(text, d.line) if text is not None else None
        if line is None:
            continue
        name = line[d.col - 1 : d.col - 1 + d.length]
        decl = elsewhere.caps.get(name)
        if decl is None:
            continue
        note = Diagnostic(NOTE, decl.file, decl.line, decl.col, f"'{name}' is declared here", len(name))
        report.keep_source(decl.file, parsed[decl.file][1])
        report.diagnostics[k] = replace(
            d,
            message=(f"unknown capability '{name}': it is declared in {decl.file}, which is not part of "
                     f"this {run}; {run} the directory or pass both files"),
            notes=(*d.notes, note),
        )


def _neighbours(srcs: Sequence[str], walked: Sequence[Walked],
                stdin_name: str | None) -> dict[str, tuple[SourceFile, bytes]]:
    """The other ``*.pol`` files beside the file arguments that may declare something, parsed."""
    dirs = _directories(srcs, stdin_name)
    if not dirs:
        return {}
    taken = {os.path.realpath(f) for f, i, _ in walked if srcs[i] != STDIN}
    if stdin_name:
        taken.add(os.path.realpath(stdin_name))
    parsed = {}
    for path, data in _declaring_files(dirs, taken):
        text, _ = decode(data, path)
        if text is not None:
            parsed[path] = (parse(text, path)[0], data)
    return parsed


def _directories(srcs: Sequence[str], stdin_name: str | None) -> list[str]:
    """The directories of the file arguments (and of ``--stdin-filename``), each once, in order."""
    dirs: dict[str, None] = {}
    for src in srcs:
        if src == STDIN:
            if stdin_name:
                dirs[os.path.dirname(stdin_name) or "."] = None
        elif not os.path.isdir(src):
            dirs[os.path.dirname(src) or "."] = None
    return list(dirs)


def _declaring_files(dirs: Sequence[str], taken: set[str]) -> list[tuple[str, bytes]]:
    """``(path, bytes)`` of every ``*.pol`` file in ``dirs`` not in ``taken`` that may declare (adds them)."""
    found: list[tuple[str, bytes]] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            path = name if d == "." else posixpath.join(d.replace(os.sep, "/"), name)
            if not name.endswith(".pol") or name.startswith(".") or os.path.realpath(path) in taken:
                continue
            taken.add(os.path.realpath(path))
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            if b"capability" in data:
                found.append((path, data))
    return found
