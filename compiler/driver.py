"""Stage 4: from source files (or strings) to artifacts on disk (or in memory).

Two entry points:

- ``compile_source(text, path)`` / ``compile_sources([(path, text), ...])``:
  the in-memory API. Returns a :class:`CompileResult` with the artifact bytes
  of every module that compiled and every diagnostic. Nothing touches disk
  unless you call ``result.write_to(directory)``.
- ``compile_paths(srcs, out)``: what ``polc compile`` and ``polc check`` run.
  Walks the sources, skips modules whose artifact is up to date, compiles the
  rest (``jobs`` worker processes), writes each artifact atomically, and
  returns a :class:`Report` (counts, per-module outcome, diagnostics, exit code).

Up to date means: ``OUT/NAME.bin`` reads as a valid artifact recording the
same module, source path, source digest and compiler version, and every
capability signature it carries is still the current one (a declaration
elsewhere in the tree may have changed), and it is signed by the key given
with ``sign_key`` (by no key without one; runtime/signing.py). An unchanged source file whose
modules are all up to date is not even parsed: a cheap scan of its bytes for
``security module NAME`` headers is enough. Files that declare capabilities
are always parsed, since their declarations apply to the whole tree.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat as stat_mod
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from polc import __version__
from polc.runtime.artifact import (
    HEADER_SIZE,
    ArtifactError,
    artifact_digest,
    fsync_dir,
    process_umask,
    stage_file,
    read_artifact_bytes,
    read_header,
    unpack_payload,
    write_atomic,
)
from polc.runtime.signing import SigningKey, sign_artifact, signer_key_id

from .ast import SourceFile
from .checker import Declarations, check_module, collect_declarations
from .codegen import generate
from .diagnostics import ERROR, NOTE, WARNING, CompileError, Diagnostic, source_line, render, render_all
from .parser import parse

__all__ = [
    "CompileResult",
    "ModuleOutcome",
    "Report",
    "UsageError",
    "compile_source",
    "compile_sources",
    "compile_paths",
    "find_sources",
    "default_out_dir",
]

COMPILED = "compiled"
UP_TO_DATE = "up to date"
FAILED = "failed"
CHECKED = "ok"


class UsageError(Exception):
    """A problem with how polc was called, or with the file system (exit 2)."""


# --------------------------------------------------------------------------
# results


@dataclass(slots=True)
class ModuleOutcome:
    module: str
    source: str
    line: int
    col: int
    status: str
    """``compiled``, ``up to date``, ``failed`` (or ``ok`` when only checking)."""
    artifact: str | None = None
    """Where the artifact is (or would be) written, ``None`` in memory."""
    data: bytes | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {
            "module": self.module,
            "source": self.source,
            "line": self.line,
            "col": self.col,
            "status": self.status,
            "artifact": self.artifact,
        }


@dataclass(slots=True)
class _FileOutcome:
    """What compiling one file gave (picklable: it comes back from worker processes)."""

    path: str
    """As given (diagnostics name it so)."""
    source: str
    """What the file's artifacts record as their source."""
    digest: str
    modules: list[ModuleOutcome]
    diagnostics: list[Diagnostic]
    file_failed: bool


def _sorted_diags(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    return sorted(diags, key=lambda d: (d.line, d.col))


def _decode(data: bytes, path: str) -> tuple[str | None, Diagnostic | None]:
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        return None, Diagnostic(ERROR, path, line, col, "the file is not valid UTF-8")


def _compile_parsed(
    sf: SourceFile,
    syntax: list[Diagnostic],
    source: str,
    digest: str,
    decls: Declarations,
    strict: bool,
    extra: Iterable[Diagnostic] = (),
) -> _FileOutcome:
    """Check and generate every module of one parsed file; its artifacts record ``source``."""
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
    diags = _sorted_diags(diags)
    bad_modules = {d.module for d in diags if d.severity == ERROR}
    file_failed = None in bad_modules
    modules = []
    for m, ir in results:
        name = m.name.text
        if file_failed or name in bad_modules:
            modules.append(ModuleOutcome(name, sf.path, m.name.line, m.name.col, FAILED))
            continue
        try:
            data = generate(ir)
        except Exception as exc:  # noqa: BLE001
            # The checks above are meant to reject everything the runtime's
            # verifier would; should one slip through, it is this module's error,
            # not a crash of the whole run.
            if isinstance(exc, ArtifactError):
                why = f"the runtime would reject its artifact ({exc})"
            else:
                why = f"internal error while generating its artifact ({type(exc).__name__}: {exc})"
            diags.append(
                Diagnostic(
                    ERROR, sf.path, m.name.line, m.name.col, f"module '{name}' cannot be compiled: {why}",
                    max(1, m.name.end_col - m.name.col), name,
                )
            )
            modules.append(ModuleOutcome(name, sf.path, m.name.line, m.name.col, FAILED))
            continue
        modules.append(ModuleOutcome(name, sf.path, m.name.line, m.name.col, COMPILED, data=data))
    return _FileOutcome(sf.path, source, digest, modules, diags, file_failed)


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


def _encode_text(text: str, path: str) -> tuple[bytes | None, Diagnostic | None]:
    """A source given as ``str``, as UTF-8; a lone surrogate is an error at its place."""
    try:
        return text.encode("utf-8"), None
    except UnicodeEncodeError as exc:
        before = text[: exc.start]
        line = before.count("\n") + 1
        col = exc.start - (before.rfind("\n") + 1) + 1
        return None, Diagnostic(ERROR, path, line, col, "the text is not valid Unicode (a lone surrogate)")


def _compile_one(path: str, source: str, data: bytes, decls: Declarations, strict: bool) -> _FileOutcome:
    digest = hashlib.sha256(data).hexdigest()
    text, bad = _decode(data, path)
    if text is None:
        return _FileOutcome(path, source, digest, [], [bad], True)
    sf, syntax = parse(text, path)
    return _compile_parsed(sf, syntax, source, digest, decls, strict)


def _duplicates(occurrences: dict[str, list[tuple[str, int, int]]]) -> list[Diagnostic]:
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


# --------------------------------------------------------------------------
# in memory


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


def compile_sources(
    sources: Sequence[tuple[str, str | bytes]], *, strict: bool = False
) -> CompileResult:
    """Compile several sources together (declarations and module names are tree-wide).

    ``sources`` are ``(path, text)`` pairs; ``path`` is what the artifacts
    record as their source and what diagnostics print. Text may be ``str``
    (encoded as UTF-8 for the source digest) or the file's ``bytes``.
    """
    parsed = []
    texts: dict[str, str] = {}
    early: list[_FileOutcome] = []
    for path, src in sources:
        if isinstance(src, str):
            data, bad = _encode_text(src, path)
            if data is None:
                texts[path] = src.encode("utf-8", "replace").decode("utf-8")
                early.append(
                    _FileOutcome(path, path, hashlib.sha256(texts[path].encode()).hexdigest(), [], [bad], True)
                )
                continue
        else:
            data = bytes(src)
        digest = hashlib.sha256(data).hexdigest()
        text, bad = (src, None) if isinstance(src, str) else _decode(data, path)
        if text is None:
            early.append(_FileOutcome(path, path, digest, [], [bad], True))
            continue
        texts[path] = text
        sf, syntax = parse(text, path)
        parsed.append((sf, syntax, digest))
    decls, decl_diags = collect_declarations(sf for sf, _, _ in parsed)
    outcomes = list(early)
    for sf, syntax, digest in parsed:
        mine = [d for d in decl_diags if d.file == sf.path]
        outcomes.append(_compile_parsed(sf, syntax, sf.path, digest, decls, strict, mine))
    occurrences: dict[str, list] = {}
    for o in outcomes:
        for m in o.modules:
            occurrences.setdefault(m.module, []).append((m.source, m.line, m.col))
    dups = _duplicates(occurrences)
    modules: list[ModuleOutcome] = []
    diags: list[Diagnostic] = []
    for o in outcomes:
        diags.extend(o.diagnostics)
        diags.extend(d for d in dups if d.file == o.path)
        modules.extend(o.modules)
    dup_names = {d.module for d in dups}
    for m in modules:
        if m.module in dup_names:
            m.status, m.data = FAILED, None
    return CompileResult(modules, diags, texts)


def compile_source(text: str | bytes, path: str = "<memory>", *, strict: bool = False) -> CompileResult:
    """Compile one source held in memory.

    >>> result = compile_source('security module t { entitle module to threads.create; }', "t.pol")
    >>> [name for name, data in result.artifacts]
    ['t']
    """
    return compile_sources([(path, text)], strict=strict)


# --------------------------------------------------------------------------
# the tree on disk


STDIN = "-"
"""The source argument that means "read one source from standard input" (``polc check -``)."""
STDIN_NAME = "<stdin>"


def find_sources(srcs: Sequence[str]) -> list[str]:
    """The ``.pol`` files named by ``srcs`` (files, or directories searched recursively).

    Paths are returned as given (joined with ``/`` under a directory),
    directories in sorted order, each file once. Raises :class:`UsageError`
    for a missing source.
    """
    return [p for p, _, _ in _walk_sources(srcs)]


def _walk_sources(srcs: Sequence[str], skip: Iterable[str] = ()) -> list[tuple[str, int, str | None]]:
    """``(path as given, index of the argument that named it, path below that directory)`` of every source.

    The last item is ``None`` for a file argument. ``-`` (standard input) is
    passed through as it is; files whose real path is in ``skip`` are left out.
    """
    out: list[tuple[str, int, str | None]] = []
    seen: set[str] = set(skip)

    def add(p: str, i: int, below: str | None) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append((p.replace(os.sep, "/"), i, below))

    for i, src in enumerate(srcs):
        if src == STDIN:
            out.append((STDIN, i, None))
        elif os.path.isdir(src):
            found = []
            top = src.replace(os.sep, "/")
            for root, dirs, files in os.walk(src):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                rel_root = os.path.relpath(root, src)
                for f in files:
                    if f.endswith(".pol") and not f.startswith("."):
                        rel = (f if rel_root == "." else os.path.join(rel_root, f)).replace(os.sep, "/")
                        found.append((posixpath.join(top, rel), rel))
            for p, rel in sorted(found):
                add(p, i, rel)
        elif os.path.exists(src):
            add(src, i, None)
        else:
            raise UsageError(f"no such file or directory: {src}")
    return out


def _recorded_names(walked, srcs: Sequence[str], source_root: str | None) -> dict[str, str]:
    """:func:`recorded_name` of every walked file; one path computation per directory argument."""
    names: dict[str, str] = {}
    prefixes: dict[int, str | None] = {}
    for f, i, below in walked:
        src = srcs[i]
        if src == STDIN:
            names[f] = f
            continue
        if below is not None:
            if i not in prefixes:
                # the directory's own name: what every file below it is recorded under
                if source_root is None:
                    prefix = os.path.basename(os.path.abspath(src))
                else:
                    prefix = os.path.relpath(os.path.abspath(src), os.path.abspath(source_root))
                    prefix = None if prefix.split(os.sep)[0] == os.pardir else prefix
                prefixes[i] = None if prefix is None else ("" if prefix in ("", ".") else
                                                           prefix.replace(os.sep, "/") + "/")
            prefix = prefixes[i]
            if prefix is not None:
                names[f] = prefix + below
                continue
        names[f] = recorded_name(f, src, source_root)
    return names


def _source_dir(src: str) -> str:
    """The source directory of an argument: the directory itself, or the one holding the file."""
    return src if os.path.isdir(src) else (os.path.dirname(src) or ".")


def recorded_name(path: str, src: str, source_root: str | None = None) -> str:
    """The source name an artifact records for ``path``, found under the argument ``src``.

    Relative to ``source_root`` when one is given (``path`` must be under it),
    else to the parent of the argument's source directory, so that
    ``polc compile policies-src`` records ``policies-src/tenant.acme.pol``
    however the directory is spelled (``./policies-src``, an absolute path, or
    ``.`` inside it) and from whatever working directory. ``/``-separated;
    ``.`` and ``..`` are resolved lexically against the working directory.
    Raises :class:`UsageError` for a path outside ``source_root``.
    """
    full = os.path.abspath(path)
    if source_root is not None:
        base = os.path.abspath(source_root)
        rel = os.path.relpath(full, base)
        if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
            raise UsageError(f"{path} is not under the source root {source_root}")
    else:
        base = os.path.dirname(os.path.abspath(_source_dir(src)))
        rel = os.path.relpath(full, base)
    return rel.replace(os.sep, "/")


def default_out_dir(srcs: Sequence[str]) -> str:
    """``policies/`` beside the first source directory (for a file: beside its directory)."""
    first = next((s for s in srcs if s != STDIN), ".")
    parent = os.path.dirname(os.path.abspath(_source_dir(first)))
    out = os.path.join(parent, "policies")
    rel = os.path.relpath(out)
    return out if rel.startswith("..") else rel


# A header may have comments between its words. Headers inside comments or
# strings are found too: a false hit only means the file is parsed (it never has
# an up-to-date artifact), while a missed header could hide a failing module.
_HEADER_SCAN = re.compile(
    rb"\bsecurity(?:\s|//[^\n]*\n|/\*.*?\*/)+module(?:\s|//[^\n]*\n|/\*.*?\*/)+"
    rb"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)",
    re.S,
)


def _scan_modules(data: bytes) -> list[tuple[str, int]]:
    """``(module name, byte offset)`` of every ``security module NAME`` header, cheaply."""
    return [(m.group(1).decode("ascii"), m.start(1)) for m in _HEADER_SCAN.finditer(data) if m.group(1)]


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    return line, offset - (data.rfind(b"\n", 0, offset) + 1) + 1


def _caps_current(caps, decls: Declarations) -> bool:
    """Is every ``[name, [[param, type], ...]]`` still the signature polc would write?"""
    try:
        for name, params in caps:
            current = decls.lookup(name)
            if current is None or [(p.name, p.type) for p in current.params] != [tuple(x) for x in params]:
                return False
    except (TypeError, ValueError):
        return False
    return True


def _up_to_date(
    path: str, module: str, source: str, digest: str, decls: Declarations, signer: str | None = None
) -> bool:
    """Does ``path`` hold the artifact this compiler would write for ``module`` now?

    Checks the header, the exact length and the payload digest, then compares
    the recorded module, compiler, source and source digest, the capability
    signatures and the signer. The bytecode is not verified again here (10,000
    artifacts must be checked in well under 2 s): the runtime verifies at load,
    and an artifact recording this source digest and compiler version came from
    this compiler. Any problem means "rebuild".
    """
    try:
        data = read_artifact_bytes(path)
        header = read_header(data)
        if len(data) != header.total_len:
            return False
        payload = data[HEADER_SIZE : HEADER_SIZE + header.payload_len]
        if artifact_digest(payload, header.major, header.minor) != header.digest:
            return False
        p = unpack_payload(payload)
    except ArtifactError:
        return False
    return (
        isinstance(p, dict)
        and p.get("module") == module
        and p.get("compiler") == __version__
        and p.get("source") == source
        and p.get("source_digest") == digest
        and _caps_current(p.get("caps", ()), decls)
        and signer_key_id(data) == signer
    )


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
            return 2
        return 1 if self.errors or self.failed else 0

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

    def as_dict(self) -> dict:
        summary = {
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
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "out_dir": self.out_dir,
            "summary": summary,
            "summary_line": self.summary(),
            "modules": [m.as_dict() for m in self.modules],
            "diagnostics": [_diag_dict(d) for d in self.diagnostics],
            "fatal": self.fatal,
            "removed_debris": self.removed_debris,
        }


def _diag_dict(d: Diagnostic) -> dict:
    return {
        "severity": d.severity,
        "file": d.file,
        "line": d.line,
        "col": d.col,
        "length": d.length,
        "module": d.module,
        "message": d.message,
        "location": d.location,
        "notes": [_diag_dict(n) for n in d.notes],
    }


# process-pool workers


_WORKER: tuple[Declarations, bool] | None = None


def _init_worker(decls: Declarations, strict: bool, lock_fd: int | None, parent: int) -> None:
    global _WORKER
    _WORKER = (decls, strict)
    _die_with_parent(parent)
    if lock_fd is not None:
        # the parent's lock stays the parent's: a worker outliving a killed parent holds nothing
        try:
            os.close(lock_fd)
        except OSError:
            pass


def _work(item: tuple[str, str, bytes]) -> _FileOutcome:
    decls, strict = _WORKER
    return _compile_one(item[0], item[1], item[2], decls, strict)


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when the compile that forked it dies (Linux).

    A parent killed with SIGKILL cannot stop its pool, and an orphaned worker
    would wait on its queue for ever, keeping the compile's stdout and stderr
    open (whoever reads them would hang).
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl here
            pass
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _jobs(n: int) -> int:
    if n > 0:
        return n
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _run_jobs(items: list[tuple[str, str, bytes]], decls: Declarations, strict: bool, jobs: int,
              lock_fd: int | None = None):
    """Compile ``items``, yielding each file's outcome in order as it is ready.

    With more than one worker, every worker process has been forked before the
    first outcome is yielded, so the caller may start threads from then on.
    """
    workers = min(_jobs(jobs), len(items))
    if workers <= 1:
        for p, src, d in items:
            yield _compile_one(p, src, d, decls, strict)
        return
    import concurrent.futures
    import multiprocessing

    from .parser import get_parser

    get_parser()  # build once in the parent; forked workers inherit it
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:  # pragma: no cover - platforms without fork
        ctx = None
    chunk = max(1, min(64, len(items) // (workers * 4)))
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker,
        initargs=(decls, strict, lock_fd, os.getpid())
    ) as pool:
        yield from pool.map(_work, items, chunksize=chunk)


def compile_paths(
    srcs: Sequence[str],
    out: str | None = None,
    *,
    jobs: int = 1,
    force: bool = False,
    strict: bool = False,
    write: bool = True,
    sign_key: SigningKey | None = None,
    source_root: str | None = None,
    stdin: bytes | None = None,
    stdin_name: str | None = None,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> Report:
    """Compile (``write=True``) or only check (``write=False``) a source tree.

    Never raises for policy problems or I/O errors: they are in the report
    (``report.fatal`` for usage and I/O problems, exit code 2). With
    ``sign_key`` every artifact written is signed with it. Artifacts record
    each source by :func:`recorded_name` (relative to ``source_root`` when it
    is given); diagnostics name it as it was given.

    A source ``-`` (only when checking) is one file read from ``stdin`` (bytes;
    standard input when ``None``), named ``stdin_name`` in diagnostics
    (default ``<stdin>``); a file of that name among the other sources is
    replaced by it, so an editor can check an unsaved buffer within its tree.

    Writing takes the output directory's lock (:class:`OutputLock`) first:
    when another compile holds it, ``on_wait(message)`` is called and the
    compile waits for it, or with ``wait=False`` fails at once (exit 2).
    Holding it, the compile removes what crashed compiles left (:func:`remove_debris`).
    """
    signer = sign_key.key_id if sign_key is not None else None
    report = Report(checking=not write)
    try:
        n_stdin = sum(1 for s in srcs if s == STDIN)
        if n_stdin and write:
            raise UsageError("a source read from standard input ('-') can only be checked (polc check -)")
        if n_stdin > 1:
            raise UsageError("standard input ('-') can be given only once")
        if stdin_name is not None and not n_stdin:
            raise UsageError("a name for standard input (--stdin-filename) needs '-' among the sources")
        skip = [os.path.realpath(stdin_name)] if n_stdin and stdin_name else []
        walked = _walk_sources(srcs, skip)
        if source_root is not None and not os.path.isdir(source_root):
            raise UsageError(f"source root {source_root} is not a directory")
        stdin_as = (stdin_name or STDIN_NAME).replace(os.sep, "/")
        walked = [(stdin_as if f == STDIN else f, i, below) for f, i, below in walked]
        recorded = _recorded_names(walked, srcs, source_root)
    except UsageError as exc:
        report.fatal = str(exc)
        return report
    files = [f for f, _, _ in walked]
    if not files:
        report.fatal = "no policy sources (*.pol) found in " + ", ".join(srcs)
        return report
    if write:
        clash = _name_clash(recorded)
        if clash:
            report.fatal = clash
            return report
    if write:
        out = out if out is not None else default_out_dir(srcs)
        report.out_dir = out
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            report.fatal = f"cannot create output directory {out}: {exc.strerror or exc}"
            return report
        if not os.access(out, os.W_OK | os.X_OK):
            report.fatal = f"output directory {out} is not writable"
            return report
        try:
            lock = OutputLock.acquire(out, wait=wait, on_wait=on_wait)
        except UsageError as exc:
            report.fatal = str(exc)
            return report
        try:
            report.removed_debris = remove_debris(out)
            return _compile_files(report, srcs, walked, recorded, out, jobs, force, strict, write, sign_key,
                                  signer, stdin, stdin_name, lock.fd)
        finally:
            lock.release()
    return _compile_files(report, srcs, walked, recorded, out, jobs, force, strict, write, sign_key, signer,
                          stdin, stdin_name, None)


def _compile_files(report, srcs, walked, recorded, out, jobs, force, strict, write, sign_key, signer, stdin,
                   stdin_name, lock_fd) -> Report:
    """The rest of :func:`compile_paths`, once the sources are known (and the output directory locked)."""
    files = [f for f, _, _ in walked]
    # read every source once
    datas: dict[str, bytes] = {}
    for f, i, below in walked:
        try:
            if srcs[i] == STDIN:
                datas[f] = stdin if stdin is not None else _read_stdin()
                continue
            if below is None:  # named on the command line: may be /dev/stdin or a pipe
                with open(f, "rb") as fh:
                    datas[f] = fh.read()
                continue
            # found in a directory: a FIFO or device there must not hang or flood the compile
            fd = os.open(f, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as fh:
                if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                    report.fatal = f"cannot read {f}: not a regular file"
                    return report
                datas[f] = fh.read()
        except OSError as exc:
            report.fatal = f"cannot read {f}: {exc.strerror or exc}"
            return report
    digests = {f: hashlib.sha256(d).hexdigest() for f, d in datas.items()}
    scans = {f: _scan_modules(d) for f, d in datas.items()}
    declares = {f for f, d in datas.items() if b"capability" in d}

    # declarations are tree-wide: parse the files that may hold some first
    parsed: dict[str, tuple] = {}
    early: dict[str, _FileOutcome] = {}
    for f in files:
        if f in declares:
            text, bad = _decode(datas[f], f)
            if text is None:
                early[f] = _FileOutcome(f, recorded[f], digests[f], [], [bad], True)
            else:
                parsed[f] = parse(text, f)
    decls, decl_diags = collect_declarations(sf for sf, _ in parsed.values())

    # which files can be skipped without parsing
    scan_count: dict[str, int] = {}
    for f in files:
        for name, _ in scans[f]:
            scan_count[name] = scan_count.get(name, 0) + 1
    skipped: set[str] = set()
    if write and not force and not strict:  # --strict must see every warning again
        for f in files:
            names = [n for n, _ in scans[f]]
            if f in declares or not names or any(scan_count[n] > 1 for n in names):
                continue
            if all(_up_to_date(os.path.join(out, n + ".bin"), n, recorded[f], digests[f], decls, signer)
                   for n in names):
                skipped.add(f)

    # compile the rest
    outcomes: dict[str, _FileOutcome] = dict(early)
    for f, (sf, syntax) in parsed.items():
        mine = [d for d in decl_diags if d.file == f]
        outcomes[f] = _compile_parsed(sf, syntax, recorded[f], digests[f], decls, strict, mine)
    todo = [(f, recorded[f], datas[f]) for f in files if f not in skipped and f not in outcomes]
    writer = _Writer(out) if write else None
    early: dict[int, str] = {}

    def decide(m: ModuleOutcome, o: _FileOutcome) -> str:
        """Up to date, or staged for writing (renamed over the artifact only if it is committed)."""
        m.artifact = os.path.join(out, m.module + ".bin")
        if not force and _up_to_date(m.artifact, m.module, o.source, o.digest, decls, signer):
            return UP_TO_DATE
        writer.stage(m, m.data if sign_key is None else sign_artifact(m.data, sign_key))
        return COMPILED

    # With worker processes the parent is idle while they compile, so it stages
    # each artifact (writes and fsyncs a temporary file) as soon as its file comes
    # back. In one process this only makes the writer threads fight the compiler
    # for the GIL, so there everything is staged at the end. Either way the rename
    # over NAME.bin waits for the tree-wide checks in _finish.
    stage_early = write and min(_jobs(jobs), len(todo)) > 1
    try:
        for o in _run_jobs(todo, decls, strict, jobs, lock_fd):
            outcomes[o.path] = o
            if stage_early:
                for m in o.modules:
                    if m.status == COMPILED:
                        early[id(m)] = decide(m, o)
        _finish(report, files, skipped, scans, datas, outcomes, write, writer, out, decide, early)
        _explain_unknown_caps(report, srcs, walked, stdin_name)
    finally:
        if writer is not None:
            writer.discard()  # temporary files of anything not renamed
    return report


def _read_stdin() -> bytes:
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        if sys.stdin is None:
            raise OSError("standard input is closed")
        return sys.stdin.read().encode("utf-8", "surrogateescape")
    return stream.read()


_UNKNOWN_CAP = "unknown capability '"


def _explain_unknown_caps(report: Report, srcs: Sequence[str], walked, stdin_name: str | None) -> None:
    """Say so when an unknown capability is declared in a file beside a file checked on its own.

    Declarations apply to the sources of one run only, so ``polc check a.pol``
    does not see ``capability tool.call(...)`` in ``b.pol`` beside it. Only on
    such an error, the other ``*.pol`` files in the directories of the file
    arguments (and of ``--stdin-filename``) are read for declarations, and the
    error then names the file that declares the capability.
    """
    unknown = [(k, d) for k, d in enumerate(report.diagnostics)
               if d.severity == ERROR and d.message.startswith(_UNKNOWN_CAP)]
    if not unknown:
        return
    dirs: dict[str, None] = {}
    for src in srcs:
        if src == STDIN:
            if stdin_name:
                dirs[os.path.dirname(stdin_name) or "."] = None
        elif not os.path.isdir(src):
            dirs[os.path.dirname(src) or "."] = None
    if not dirs:
        return
    taken = {os.path.realpath(f) for f, i, _ in walked if srcs[i] != STDIN}
    if stdin_name:
        taken.add(os.path.realpath(stdin_name))
    others: list[tuple[str, bytes]] = []
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
                others.append((path, data))
    parsed = {}
    for path, data in others:
        text, _ = _decode(data, path)
        if text is not None:
            parsed[path] = (parse(text, path)[0], data)
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
        report._sources.setdefault(decl.file, parsed[decl.file][1])
        report.diagnostics[k] = replace(
            d,
            message=(f"unknown capability '{name}': it is declared in {decl.file}, which is not part of "
                     f"this {run}; {run} the directory or pass both files"),
            notes=(*d.notes, note),
        )


def _name_clash(recorded: dict[str, str]) -> str | None:
    """A usage error if two source files would be recorded under one name."""
    seen: dict[str, str] = {}
    for f, name in recorded.items():
        other = seen.setdefault(name, f)
        if other != f:
            return (f"{other} and {f} would both be recorded as {name} in their artifacts: "
                    f"pass --source-root to name them apart")
    return None


def _finish(report, files, skipped, scans, datas, outcomes, write, writer, out, decide, early) -> None:
    """Tree-wide checks, then each module's outcome; artifacts are staged and renamed at the end."""
    # tree-wide: duplicate modules
    occurrences: dict[str, list] = {}
    for f in files:
        if f in skipped:
            for name, off in scans[f]:
                occurrences.setdefault(name, []).append((f, *_line_col(datas[f], off)))
        else:
            for m in outcomes[f].modules:
                occurrences.setdefault(m.module, []).append((f, m.line, m.col))
    dups = _duplicates(occurrences)
    dup_names = {d.module for d in dups}

    # decide, write, report
    for f in files:
        if f in skipped:
            for name, off in scans[f]:
                line, col = _line_col(datas[f], off)
                art = os.path.join(out, name + ".bin")
                report.modules.append(ModuleOutcome(name, f, line, col, UP_TO_DATE, art))
            continue
        o = outcomes[f]
        diags = o.diagnostics + [d for d in dups if d.file == f]
        report.diagnostics.extend(_sorted_diags(diags) if dups else diags)
        if diags:
            report._sources[f] = datas[f]
        if not o.modules and any(d.severity == ERROR for d in diags):
            report.failed_files += 1
        for m in o.modules:
            if m.module in dup_names:
                m.status, m.data = FAILED, None
            if not write:
                if m.status != FAILED:
                    m.status = CHECKED
                m.data = None
                report.modules.append(m)
                continue
            m.artifact = os.path.join(out, m.module + ".bin")
            if m.status == COMPILED:
                decided = early.get(id(m))
                m.status = decided if decided is not None else decide(m, o)
                if m.status == COMPILED:
                    writer.commit(m)
            m.data = None
            report.modules.append(m)
    if writer is not None:
        for m, exc in writer.finish():
            report.fatal = f"cannot write {m.artifact}: {exc.strerror or exc}"
            m.status = FAILED


class _Writer:
    """Atomic artifact writes: ``stage`` (write + fsync a temporary file, in a thread), ``commit``, ``finish``.

    Like ``polc.runtime.artifact.write_atomic`` for each file -- a temporary
    file in the same directory, written and fsynced, then renamed over the
    artifact; on failure removed and the artifact unchanged -- except that the
    writes and fsyncs run in a few threads (fsync releases the GIL), and the
    directory is fsynced once, after all the renames, instead of once per file.
    ``finish`` renames the committed files; ``discard`` removes any temporary
    file left. Threads start on the first ``stage``: with worker processes,
    only after they have all been forked.
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)  # absolute: mkstemp then never calls getcwd
        self.pool = None
        self.staged: dict[int, tuple[ModuleOutcome, object]] = {}
        self.committed: list[ModuleOutcome] = []

    def stage(self, m: ModuleOutcome, data: bytes) -> None:
        """Start writing ``data`` for ``m`` (whose artifact is in this writer's directory)."""
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            process_umask()  # read before any thread runs
            self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="polc-write")
        self.staged[id(m)] = (m, self.pool.submit(stage_file, self.directory, data, prefix=TEMP_PREFIX))

    def commit(self, m: ModuleOutcome) -> None:
        self.committed.append(m)

    def finish(self) -> list[tuple[ModuleOutcome, OSError]]:
        failures: list[tuple[ModuleOutcome, OSError]] = []
        renamed = False
        for m in self.committed:
            _, fut = self.staged.pop(id(m))
            try:
                tmp = fut.result()
            except OSError as exc:
                failures.append((m, exc))
                continue
            try:
                os.replace(tmp, m.artifact)
            except OSError as exc:
                _unlink(tmp)
                failures.append((m, exc))
                continue
            renamed = True
        self.committed = []
        self.discard()
        if renamed:
            fsync_dir(self.directory)
        return failures

    def discard(self) -> None:
        for _, fut in self.staged.values():
            try:
                _unlink(fut.result())
            except OSError:
                pass
        self.staged.clear()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------
# the output directory: one compile at a time, and no debris

LOCK_NAME = ".polc-compile.lock"
"""The lock file in the output directory (created once, never removed; the agent skips '.' names)."""
TEMP_PREFIX = ".polc-compile-"
"""The compiler's temporary files: ``.polc-compile-XXXXXXXX.tmp``, only ever written under the lock."""
_OWN_TEMP = re.compile(r"\.polc-compile-[a-z0-9_]{8}\.tmp")
_OTHER_TEMP = re.compile(r"\.[a-z0-9_]{8}\.tmp")
STALE_TEMP_AGE = 3600.0
"""Seconds after which a ``.XXXXXXXX.tmp`` of another writer counts as left by a crash."""


class OutputLock:
    """An exclusive ``flock`` on ``OUT/.polc-compile.lock``, held for a whole compile.

    The kernel drops the lock when its holder exits, however it exits, so a
    lock is never stale. The file is opened without following symlinks and
    must be a regular file; it may be read-only to us (another user's lock
    file in a shared directory): ``flock`` does not need write access.
    """

    def __init__(self, fd: int | None, path: str) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def acquire(cls, out: str, *, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> OutputLock:
        """Take the lock (waiting, or raising :class:`UsageError` with ``wait=False``)."""
        path = os.path.join(out, LOCK_NAME)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock on this platform: compiles are not serialised
            return cls(None, path)
        flags = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o666)
            except PermissionError:
                fd = os.open(path, os.O_RDONLY | flags)
        except OSError as exc:
            why = "it is a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
            raise UsageError(f"cannot open the lock file {path}: {why}") from None
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"the lock file {path} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise UsageError(
                        f"another polc compile is writing to {out} (it holds {path}); "
                        f"try again when it is done, or leave out --no-wait to wait for it"
                    ) from None
                if on_wait is not None:
                    on_wait(f"waiting for another polc compile writing to {out} to finish (it holds {path})")
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"cannot lock {path}: {exc.strerror or exc}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def remove_debris(out: str, *, now: float | None = None) -> int:
    """Remove the temporary files interrupted writers left in ``out``; call it holding the lock.

    ``.polc-compile-XXXXXXXX.tmp`` files are only written by a compile holding
    the lock, so while we hold it every one of them is a crashed compile's and
    goes. ``.XXXXXXXX.tmp`` files (``write_atomic`` of polc's runtime, and
    compilers before the lock) may belong to a writer that takes no lock: they
    go only once older than :data:`STALE_TEMP_AGE`. Only regular files are
    removed (symlinks and directories are left alone). Returns how many.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(out))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        own = _OWN_TEMP.fullmatch(name) is not None
        if not own and _OTHER_TEMP.fullmatch(name) is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat_mod.S_ISREG(st.st_mode) or (not own and now - st.st_mtime < STALE_TEMP_AGE):
                continue
            os.unlink(entry.path)
            removed += 1
        except OSError:
            continue
    return removed


def render_report_diagnostics(report: Report) -> str:
    return "\n".join(render(d, report.source_text) for d in report.diagnostics)
