"""The in-memory API: sources as strings or bytes in, artifact bytes and diagnostics out.

``compile_source(text, path)`` / ``compile_sources([(path, text), ...])``
return a :class:`CompileResult` with the artifact bytes of every module that
compiled and every diagnostic. Nothing touches disk unless you call
``result.write_to(directory)``. They run the same pipeline as ``polc compile``
(compiler/pipeline.py); each artifact records the ``path`` given, as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from polc.runtime.format.writer import write_atomic

from .diagnostics import ERROR, WARNING, CompileError, Diagnostic, render_all
from .pipeline import FileOutcome, Pipeline, Unit, decode, digest_of
from .report import ModuleOutcome

__all__ = ["CompileResult", "compile_source", "compile_sources"]


@dataclass(slots=True)
class CompileResult:
    """The outcome of an in-memory compile."""

    modules: list[ModuleOutcome]
    diagnostics: list[Diagnostic]
    sources: dict[str, str]

    @property
    def artifacts(self) -> list[tuple[str, bytes]]:
        """``(module name, artifact bytes)`` for every module that compiled."""
        return [(m.module, m.data) for m in self.modules if m.data is not None]

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def __getitem__(self, module: str) -> bytes:
        """The artifact bytes of ``module`` (KeyError if it did not compile)."""
        for m in self.modules:
            if m.module == module and m.data is not None:
                return m.data
        raise KeyError(module)

    def render(self) -> str:
        return render_all(self.diagnostics, self.sources)

    def check(self) -> CompileResult:
        """Raise :class:`CompileError` (message = rendered diagnostics) if there is any error."""
        if not self.ok:
            raise CompileError(self.errors, self.render())
        return self

    def write_to(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write each compiled module to ``directory/NAME.bin`` atomically; return the paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in self.artifacts:
            p = d / f"{name}.bin"
            write_atomic(p, data)
            paths.append(p)
        return paths


def _encode_text(text: str, path: str) -> tuple[bytes | None, Diagnostic | None]:
    """A source given as ``str``, as UTF-8; a lone surrogate is an error at its place."""
    try:
        return text.encode("utf-8"), None
    except UnicodeEncodeError as exc:
        before = text[: exc.start]
        line = before.count("\n") + 1
        col = exc.start - (before.rfind("\n") + 1) + 1
        return None, Diagnostic(ERROR, path, line, col, "the text is not valid Unicode (a lone surrogate)")


def compile_sources(sources: Sequence[tuple[str, str | bytes]], *, strict: bool = False) -> CompileResult:
    """Compile several sources together (declarations and module names are tree-wide).

    ``sources`` are ``(path, text)`` pairs; ``path`` is what the artifacts
    record as their source and what diagnostics print. Text may be ``str``
    (encoded as UTF-8 for the source digest) or the file's ``bytes``.
    """
    units: list[Unit] = []
    texts: dict[str, str] = {}
    # Sources that cannot be read as text: their one error comes first.
    unreadable: list[FileOutcome] = []
    for path, src in sources:
        if isinstance(src, str):
            data, bad = _encode_text(src, path)
            if data is None:
                assert bad is not None
                texts[path] = src.encode("utf-8", "replace").decode("utf-8")
                unit = Unit(path, path, b"", digest_of(texts[path].encode()), False)
                unreadable.append(FileOutcome.unreadable(unit, bad))
                continue
            text = src
        else:
            data = bytes(src)
            decoded, bad = decode(data, path)
            if decoded is None:
                assert bad is not None
                unreadable.append(FileOutcome.unreadable(Unit.of(path, path, data), bad))
                continue
            text = decoded
        texts[path] = text
        units.append(Unit.of(path, path, data, text))
    pipe = Pipeline(units, strict=strict)
    pipe.declare()
    pipe.compile()
    dups = pipe.duplicates() + pipe.claims()
    modules: list[ModuleOutcome] = []
    diags: list[Diagnostic] = []
    for o in [*unreadable, *(o for o in pipe.outcomes if o is not None)]:
        diags.extend(o.diagnostics)
        diags.extend(d for d in dups if d.file == o.path)
        modules.extend(o.modules)
    return CompileResult(modules, diags, texts)


def compile_source(text: str | bytes, path: str = "<memory>", *, strict: bool = False) -> CompileResult:
    """Compile one source held in memory.

    >>> result = compile_source('security module t { entitle module to threads.create; }', "t.pol")
    >>> [name for name, data in result.artifacts]
    ['t']
    """
    return compile_sources([(path, text)], strict=strict)
