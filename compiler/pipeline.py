"""The one compile pipeline: source files -> checked modules and their artifact bytes, tree-wide.

Both entry points run it, in the same steps: the in-memory API
(compiler/memory.py: ``compile_sources``) and the build that ``polc compile``
and ``polc check`` run (compiler/build.py: ``compile_paths``)::

    pipe = Pipeline(units, strict=strict)
    decls = pipe.declare()           # parse the files that may declare; tree-wide declarations
    pipe.compile(skip, schedule)     # every other file: decode, parse, check, generate
    dups = pipe.duplicates(...)      # tree-wide: a module name defined more than once
    dups += pipe.claims(...)         # tree-wide: a package that two modules claim

Declarations apply to the whole tree, so the files that may hold one (their
bytes contain ``capability``) are parsed first, in order; the first
declaration of a name wins. So are the files that may claim a package (their
bytes contain ``governs``): each package is governed by one module of the
tree, checked against every module and every claim. The build may leave out files whose artifacts are
up to date (``skip``) and compile the rest in worker processes
(``schedule``); what comes out is the same either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from polc.runtime.errors import ArtifactError

from .ast import Module, SourceFile
from .checker import Declarations, check_module, collect_declarations, governed_names
from .codegen import generate
from .diagnostics import ERROR, NOTE, Diagnostic
from .ir import IRModule
from .parser import parse
from .report import COMPILED, FAILED, ModuleOutcome

__all__ = [
    "FileOutcome",
    "Pipeline",
    "Schedule",
    "Unit",
    "claim_conflicts",
    "compile_parsed",
    "compile_unit",
    "decode",
    "digest_of",
    "duplicate_modules",
    "in_process",
    "sorted_diagnostics",
]


@dataclass(slots=True)
class Unit:
    """One source file as the pipeline takes it (picklable: it goes to worker processes)."""

    path: str
    """As given; diagnostics name the file so."""
    source: str
    """What the file's artifacts record as their source."""
    data: bytes
    """The file's bytes; the source digest is theirs."""
    digest: str
    """SHA-256 of ``data`` (hex)."""
    may_declare: bool
    """Could the file hold a ``capability`` declaration? (Only then are its declarations looked for.)"""
    text: str | None = None
    """The text when the caller has it already (else ``data`` is decoded as UTF-8)."""
    may_govern: bool = False
    """Could the file hold a ``governs`` statement? (Then it is parsed first, and never skipped.)"""

    @classmethod
    def of(cls, path: str, source: str, data: bytes, text: str | None = None) -> Unit:
        return cls(path, source, data, hashlib.sha256(data).hexdigest(), b"capability" in data, text,
                   b"governs" in data)

    @property
    def parsed_first(self) -> bool:
        """Parsed before the others, for what it may declare or claim tree-wide."""
        return self.may_declare or self.may_govern


@dataclass(slots=True)
class FileOutcome:
    """What compiling one file gave (picklable: it comes back from worker processes)."""

    path: str
    """As given (diagnostics name it so)."""
    source: str
    """What the file's artifacts record as their source."""
    digest: str
    modules: list[ModuleOutcome]
    diagnostics: list[Diagnostic]
    file_failed: bool

    @classmethod
    def unreadable(cls, unit: Unit, problem: Diagnostic) -> FileOutcome:
        """A file that could not even be decoded: one error, no module."""
        return cls(unit.path, unit.source, unit.digest, [], [problem], True)


Schedule = Callable[[list[Unit], Declarations, bool], Iterable[FileOutcome]]
"""Compiles ``units`` (with the tree's declarations, ``strict``), yielding one outcome per unit in order."""


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes, path: str) -> tuple[str | None, Diagnostic | None]:
    """A source's text (UTF-8, a BOM dropped), or the error at its first invalid byte."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        return None, Diagnostic(ERROR, path, line, col, "the file is not valid UTF-8")


def sorted_diagnostics(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    return sorted(diags, key=lambda d: (d.line, d.col))


def _path_problem(path: str, source: str) -> Diagnostic | None:
    """An error (at ``path``) if ``source`` cannot be recorded in an artifact (msgpack strings are UTF-8)."""
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        return Diagnostic(
            ERROR, path, 1, 1,
            "the file name is not valid UTF-8, and every artifact records its source's name: rename the file",
        )
    return None


def _generate(m: Module, ir: IRModule, path: str, diags: list[Diagnostic]) -> bytes | None:
    """The artifact bytes of one checked module, or ``None`` with an error added to ``diags``."""
    name = m.name.text
    try:
        return generate(ir)
    except Exception as exc:
        # The checks are meant to reject everything the runtime's verifier
        # would; should one slip through, it is this module's error, not a
        # crash of the whole run.
        if isinstance(exc, ArtifactError):
            why = f"the runtime would reject its artifact ({exc})"
        else:
            why = f"internal error while generating its artifact ({type(exc).__name__}: {exc})"
        diags.append(
            Diagnostic(
                ERROR, path, m.name.line, m.name.col, f"module '{name}' cannot be compiled: {why}",
                max(1, m.name.end_col - m.name.col), name,
            )
        )
        return None


def compile_parsed(
    sf: SourceFile,
    syntax: list[Diagnostic],
    unit: Unit,
    decls: Declarations,
    strict: bool,
    extra: Iterable[Diagnostic] = (),
) -> FileOutcome:
    """Check and generate every module of one parsed file; its artifacts record ``unit.source``."""
    source, digest = unit.source, unit.digest
    diags = list(syntax)
    diags.extend(extra)
    bad_path = _path_problem(sf.path, source)
    if bad_path is not None:
        diags.append(bad_path)
    results = []
    for m in sf.modules:
        ir, mdiags = check_module(m, decls, source=source, source_digest=digest)
        diags.extend(mdiags)
        results.append((m, ir))
    if strict:
        diags = [d.promoted() for d in diags]
    diags = sorted_diagnostics(diags)
    bad_modules = {d.module for d in diags if d.severity == ERROR}
    file_failed = None in bad_modules
    modules = []
    for m, ir in results:
        name = m.name.text
        data = None if file_failed or name in bad_modules else _generate(m, ir, sf.path, diags)
        status = FAILED if data is None else COMPILED
        modules.append(ModuleOutcome(name, sf.path, m.name.line, m.name.col, status, data=data))
    return FileOutcome(sf.path, source, digest, modules, diags, file_failed)


def compile_unit(unit: Unit, decls: Declarations, strict: bool) -> FileOutcome:
    """Decode, parse, check and generate one file (what a worker process runs)."""
    text = unit.text
    if text is None:
        text, bad = decode(unit.data, unit.path)
        if text is None:
            assert bad is not None
            return FileOutcome.unreadable(unit, bad)
    sf, syntax = parse(text, unit.path)
    return compile_parsed(sf, syntax, unit, decls, strict)


def in_process(units: list[Unit], decls: Declarations, strict: bool) -> Iterator[FileOutcome]:
    """The default :data:`Schedule`: one file after the other, here."""
    for unit in units:
        yield compile_unit(unit, decls, strict)


def duplicate_modules(occurrences: Mapping[str, Sequence[tuple[str, int, int]]]) -> list[Diagnostic]:
    """An error at every place a module name is defined more than once in the tree."""
    diags = []
    for name, places in occurrences.items():
        if len(places) < 2:
            continue
        for i, (file, line, col) in enumerate(places):
            others = ", ".join(f"{f}:{ln}:{c}" for j, (f, ln, c) in enumerate(places) if j != i)
            diags.append(
                Diagnostic(
                    ERROR, file, line, col,
                    f"duplicate module '{name}': also defined at {others}",
                    len(name), name,
                )
            )
    return diags


def _count(n: int) -> str:
    return {2: "two", 3: "three"}.get(n, str(n))


Place = tuple[str, int, int]
"""``(file, line, col)``."""
Claim = tuple[str, str, int, int, int]
"""``(module, file, line, col, length)`` of a package name in a ``governs`` statement."""


def claim_conflicts(
    claims: Mapping[str, Sequence[Claim]], modules: Mapping[str, Sequence[Place]]
) -> list[Diagnostic]:
    """Errors for packages claimed by two modules of the tree (``claims``: package -> its claims), and for
    claims of a package that is another module's name (``modules``: module name -> where it is defined)."""
    diags: list[Diagnostic] = []
    for package, found in claims.items():
        owners = {module for module, *_ in found}
        named = modules.get(package)
        for module, file, line, col, length in found:
            if named is not None and module != package:
                nf, nl, nc = named[0]
                diags.append(
                    Diagnostic(
                        ERROR, file, line, col,
                        f"package '{package}' is the name of module '{package}' (defined at {nf}:{nl}:{nc}), "
                        f"which governs it; module '{module}' cannot claim it too: a package is governed by "
                        "one module",
                        length, module,
                        (Diagnostic(NOTE, nf, nl, nc, f"module '{package}' is defined here", len(package)),),
                    )
                )
            elif len(owners) > 1:
                others = [c for c in found if c[0] != module]
                where = ", ".join(f"'{m}' at {f}:{ln}:{c}" for m, f, ln, c, _ in others)
                notes = tuple(
                    Diagnostic(NOTE, f, ln, c, f"module '{m}' claims '{package}' here", n) for m, f, ln, c, n in others
                )
                diags.append(
                    Diagnostic(
                        ERROR, file, line, col,
                        f"package '{package}' is claimed by {_count(len(owners))} modules: '{module}' here and "
                        f"{where}; "
                        "a package is governed by one module",
                        length, module, notes,
                    )
                )
    return diags


class Pipeline:
    """The stages of one compile over ``units``; ``outcomes[i]`` is ``units[i]``'s (``None`` if skipped)."""

    def __init__(self, units: Sequence[Unit], *, strict: bool) -> None:
        self.units = list(units)
        self.strict = strict
        self.decls = Declarations()
        self.outcomes: list[FileOutcome | None] = [None] * len(self.units)
        self._parsed: dict[int, tuple[SourceFile, list[Diagnostic]]] = {}
        self._decl_diags: list[Diagnostic] = []

    def declare(self) -> Declarations:
        """Parse every file that may declare a capability, and collect the tree's declarations."""
        for i, unit in enumerate(self.units):
            if not unit.parsed_first:
                continue
            text = unit.text
            if text is None:
                text, bad = decode(unit.data, unit.path)
                if text is None:
                    assert bad is not None
                    self.outcomes[i] = FileOutcome.unreadable(unit, bad)
                    continue
            self._parsed[i] = parse(text, unit.path)
        self.decls, self._decl_diags = collect_declarations(sf for sf, _ in self._parsed.values())
        return self.decls

    def compile(self, skip: Collection[int] = (), schedule: Schedule = in_process) -> None:
        """Compile every unit not in ``skip`` (indices): the parsed ones here, the rest by ``schedule``."""
        for i, (sf, syntax) in self._parsed.items():
            unit = self.units[i]
            mine = [d for d in self._decl_diags if d.file == unit.path]
            self.outcomes[i] = compile_parsed(sf, syntax, unit, self.decls, self.strict, mine)
        todo = [i for i in range(len(self.units)) if i not in skip and self.outcomes[i] is None]
        results = schedule([self.units[i] for i in todo], self.decls, self.strict)
        for i, outcome in zip(todo, results, strict=True):
            self.outcomes[i] = outcome

    def duplicates(self, skipped: Mapping[int, Sequence[tuple[str, int, int]]] | None = None) -> list[Diagnostic]:
        """Errors for module names defined more than once; those modules become ``failed``.

        ``skipped[i]`` lists ``(module, line, col)`` of a unit that was not compiled.
        """
        occurrences: dict[str, list[tuple[str, int, int]]] = {}
        for i, unit in enumerate(self.units):
            outcome = self.outcomes[i]
            if outcome is None:
                for name, line, col in (skipped or {}).get(i, ()):
                    occurrences.setdefault(name, []).append((unit.path, line, col))
                continue
            for m in outcome.modules:
                occurrences.setdefault(m.module, []).append((unit.path, m.line, m.col))
        dups = duplicate_modules(occurrences)
        self._fail({d.module for d in dups})
        return dups

    def claims(self, skipped: Mapping[int, Sequence[tuple[str, int, int]]] | None = None) -> list[Diagnostic]:
        """Errors for packages two modules claim, or that a module claims by another module's name; the
        claiming modules become ``failed``. (Every file that may hold a claim was parsed by :meth:`declare`.)

        ``skipped`` as for :meth:`duplicates`.
        """
        claims: dict[str, list[Claim]] = {}
        for sf, _ in (self._parsed[i] for i in sorted(self._parsed)):
            for m in sf.modules:
                for arg in governed_names(m):
                    claims.setdefault(arg.value, []).append(
                        (m.name.text, sf.path, arg.line, arg.col, max(1, arg.end_col - arg.col))
                    )
        if not claims:
            return []
        modules: dict[str, list[Place]] = {}
        for i, unit in enumerate(self.units):
            outcome = self.outcomes[i]
            if outcome is None:
                for name, line, col in (skipped or {}).get(i, ()):
                    modules.setdefault(name, []).append((unit.path, line, col))
                continue
            for mo in outcome.modules:
                modules.setdefault(mo.module, []).append((unit.path, mo.line, mo.col))
        diags = claim_conflicts(claims, modules)
        self._fail({d.module for d in diags})
        return diags

    def _fail(self, names: set[str | None]) -> None:
        for outcome in self.outcomes:
            for m in outcome.modules if outcome is not None else ():
                if m.module in names:
                    m.status, m.data = FAILED, None
