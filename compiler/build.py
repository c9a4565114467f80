"""The build: what ``polc compile`` and ``polc check`` run (``compile_paths``).

Walks the sources (compiler/sources.py), takes the output directory's lock
and clears crashed compiles' debris (compiler/output.py), reads every source
once, and runs the compile pipeline (compiler/pipeline.py) over them:
declarations first, then -- leaving out every file whose artifacts are all up
to date (compiler/uptodate.py) -- the other files, in ``-j`` worker processes
(compiler/workers.py). Each module's artifact is staged and renamed into
place once the tree-wide checks have passed; the outcome is a
:class:`~polc.compiler.report.Report` with its exit code.

An unchanged source file whose modules are all up to date is not even parsed:
a byte scan for ``security module NAME`` headers is enough. Files that may
declare capabilities are always parsed (their declarations apply to the whole
tree), and with ``strict`` every file is (its warnings must be seen again).
A file that the output directory's manifest (compiler/uptodate.py:
:class:`~polc.compiler.uptodate.Manifest`) records with the stat it still has,
and whose artifacts still have theirs, is not even read.
"""

from __future__ import annotations

import contextlib
import os
import stat as stat_mod
import time
from collections.abc import Callable, Iterator, Sequence

from polc.runtime.signing import SigningKey, sign_artifact

from .checker import Declarations
from .diagnostics import ERROR
from .errors import UsageError
from .neighbours import explain_unknown_capabilities
from .output import OutputLock, Writer, remove_debris
from .pipeline import FileOutcome, Pipeline, Unit
from .pipeline import sorted_diagnostics as _sorted
from .report import CHECKED, COMPILED, FAILED, UP_TO_DATE, ModuleOutcome, Report
from .sources import (
    STDIN,
    STDIN_NAME,
    Walked,
    default_out_dir,
    line_col,
    name_clash,
    read_sources,
    recorded_names,
    scan_modules,
    walk_sources,
)
from .uptodate import MANIFEST_VERSION, Manifest, Place, StatKey, declarations_key, settled, stat_key, up_to_date
from .workers import job_count, run_jobs

__all__ = ["compile_paths"]


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
    keep_artifacts: bool = False,
) -> Report:
    """Compile (``write=True``) or only check (``write=False``) a source tree.

    Never raises for policy problems or I/O errors: they are in the report
    (``report.fatal`` for usage and I/O problems, exit code 2). With
    ``sign_key`` every artifact written is signed with it. Artifacts record
    each source by :func:`~polc.compiler.sources.recorded_name` (relative to
    ``source_root`` when it is given); diagnostics name it as it was given.

    A source ``-`` (only when checking) is one file read from ``stdin`` (bytes;
    standard input when ``None``), named ``stdin_name`` in diagnostics
    (default ``<stdin>``); a file of that name among the other sources is
    replaced by it, so an editor can check an unsaved buffer within its tree.

    Writing takes the output directory's lock (:class:`~polc.compiler.output.OutputLock`)
    first: when another compile holds it, ``on_wait(message)`` is called and
    the compile waits for it, or with ``wait=False`` fails at once (exit 2).
    Holding it, the compile removes what crashed compiles left
    (:func:`~polc.compiler.output.remove_debris`).

    ``keep_artifacts`` (checking only) keeps each compiled module's artifact
    bytes in its outcome's ``data``, for tools that run the policy in memory
    (``polc test``).
    """
    build = _Build(srcs, jobs=jobs, force=force, strict=strict, write=write, sign_key=sign_key,
                   stdin=stdin, stdin_name=stdin_name)
    build.keep_artifacts = keep_artifacts and not write
    try:
        build.plan(source_root)
        if not write:
            build.run()
            return build.report
        build.prepare_output(out)
        lock = OutputLock.acquire(build.out, wait=wait, on_wait=on_wait)
        try:
            build.report.removed_debris = remove_debris(build.out)
            build.run(lock.fd)
        finally:
            lock.release()
    except UsageError as exc:
        build.report.fatal = str(exc)
    return build.report


class _Build:
    """One run of :func:`compile_paths`: its options, the walked sources, and the report it fills."""

    def __init__(self, srcs: Sequence[str], *, jobs: int, force: bool, strict: bool, write: bool,
                 sign_key: SigningKey | None, stdin: bytes | None, stdin_name: str | None) -> None:
        self.srcs = list(srcs)
        self.jobs = jobs
        self.force = force
        self.strict = strict
        self.write = write
        self.sign_key = sign_key
        self.signer = sign_key.key_id if sign_key is not None else None
        self.stdin = stdin
        self.stdin_name = stdin_name
        self.keep_artifacts = False
        self.report = Report(checking=not write)
        self.out = ""
        self.walked: list[Walked] = []
        self.recorded: dict[str, str] = {}
        self.writer: Writer | None = None
        self.staged: dict[int, str] = {}
        """``id(module outcome)`` -> its status, for modules decided as their file came back from a worker."""
        self._out_prefix: str | None = None
        self.manifest: Manifest | None = None
        self.source_keys: dict[int, tuple[StatKey, int]] = {}
        """unit index -> the source's stat key, taken before it was read, and when."""
        self.hits: dict[int, list[Place]] = {}
        """unit index -> its modules' places, for the files the manifest found unchanged (not read)."""
        self.present: frozenset[str] | None = None
        """The output directory's names, listed once holding the lock (None: not listed): an
        artifact absent from it is not up to date, without a ``stat`` or ``open`` to say so."""

    # -- before anything is read ---------------------------------------------

    def plan(self, source_root: str | None) -> None:
        """Walk the sources and name them; raises :class:`UsageError`."""
        srcs, stdin_name = self.srcs, self.stdin_name
        n_stdin = sum(1 for s in srcs if s == STDIN)
        if n_stdin and self.write:
            raise UsageError("a source read from standard input ('-') can only be checked (polc check -)")
        if n_stdin > 1:
            raise UsageError("standard input ('-') can be given only once")
        if stdin_name is not None and not n_stdin:
            raise UsageError("a name for standard input (--stdin-filename) needs '-' among the sources")
        skip = [os.path.realpath(stdin_name)] if n_stdin and stdin_name else []
        walked = walk_sources(srcs, skip)
        if source_root is not None and not os.path.isdir(source_root):
            raise UsageError(f"source root {source_root} is not a directory")
        stdin_as = (stdin_name or STDIN_NAME).replace(os.sep, "/")
        self.walked = [(stdin_as if f == STDIN else f, i, below) for f, i, below in walked]
        self.recorded = recorded_names(self.walked, srcs, source_root)
        if not self.walked:
            raise UsageError("no policy sources (*.pol) found in " + ", ".join(srcs))
        if self.write:
            clash = name_clash(self.recorded)
            if clash:
                raise UsageError(clash)

    def prepare_output(self, out: str | None) -> None:
        """Create the output directory if need be; raises :class:`UsageError` if it is not usable."""
        self.out = out if out is not None else default_out_dir(self.srcs)
        self.report.out_dir = self.out
        try:
            os.makedirs(self.out, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create output directory {self.out}: {exc.strerror or exc}") from None
        if not os.access(self.out, os.W_OK | os.X_OK):
            raise UsageError(f"output directory {self.out} is not writable")

    # -- the compile ---------------------------------------------------------

    def run(self, lock_fd: int | None = None) -> None:
        """Read, compile, write and report (holding the output lock when writing)."""
        if self.write and not self.force:
            try:
                self.present = frozenset(os.listdir(self.out))
            except OSError:
                self.present = None  # each artifact is looked at on its own
        hits = self._unchanged()
        datas = read_sources([w for i, w in enumerate(self.walked) if i not in hits], self.srcs, self.stdin)
        units = [
            Unit(f, self.recorded[f], b"", hits[i][0], False) if i in hits else Unit.of(f, self.recorded[f], datas[f])
            for i, (f, _, _) in enumerate(self.walked)
        ]
        pipe = Pipeline(units, strict=self.strict)
        decls = pipe.declare()
        self.hits = {i: places for i, (_digest, places) in hits.items()}
        scans = [[(n, -1) for n, _, _ in self.hits[i]] if i in self.hits else scan_modules(u.data)
                 for i, u in enumerate(units)]
        if self.manifest is not None and not self.manifest.declared(declarations_key(decls)):
            self._read_late(list(self.hits), pipe, scans)  # recorded under other declarations
        else:
            counts: dict[str, int] = {}
            for scan in scans:
                for name, _ in scan:
                    counts[name] = counts.get(name, 0) + 1
            # a module name now defined twice: its files are compiled (and the error reported)
            self._read_late([i for i, places in self.hits.items() if any(counts[n] > 1 for n, _, _ in places)],
                            pipe, scans)
        skipped = self._skippable(pipe.units, scans, decls)
        self.writer = Writer(self.out) if self.write else None
        try:
            pipe.compile(skipped, lambda todo, decls, strict: self._schedule(todo, decls, strict, lock_fd))
            self._collect(pipe, skipped, scans)
            explain_unknown_capabilities(self.report, self.srcs, self.walked, self.stdin_name)
            if self.manifest is not None and self.report.fatal is None:
                with contextlib.suppress(OSError):  # a cache: the next compile checks in full
                    self.manifest.save(self.out)
        finally:
            if self.writer is not None:
                self.writer.discard()  # temporary files of anything not renamed

    def _read_late(self, indices: list[int], pipe: Pipeline, scans: list[list[tuple[str, int]]]) -> None:
        """Read the files the manifest found unchanged at ``indices`` after all (to check them in full)."""
        if not indices:
            return
        late = read_sources([self.walked[i] for i in indices], self.srcs, self.stdin)
        for i in indices:
            u = pipe.units[i]
            pipe.units[i] = Unit.of(u.path, u.source, late[u.path])
            scans[i] = scan_modules(pipe.units[i].data)
            del self.hits[i]

    def _unchanged(self) -> dict[int, tuple[str, list[Place]]]:
        """The files the manifest records as they still are: index -> (digest, places).

        Only when writing, without ``--force`` or ``--strict``, and only for files found
        in a directory (a file named on the command line may be a pipe). The stat of every
        such file is kept (taken before it is read) for recording it afterwards."""
        if not self.write or self.force or self.strict:
            return {}
        from polc import __version__

        self.manifest = manifest = Manifest.load(self.out, [MANIFEST_VERSION, __version__, self.signer])
        hits: dict[int, tuple[str, list[Place]]] = {}
        stat = os.stat
        for i, (f, _, below) in enumerate(self.walked):
            if below is None:
                continue
            try:
                st = stat(f)
            except OSError:
                continue
            key = stat_key(st)
            self.source_keys[i] = (key, time.time_ns())
            hit = manifest.lookup(self.recorded[f], key, self.out)
            if hit is not None:
                hits[i] = hit
        return hits

    def _skippable(self, units: list[Unit], scans: list[list[tuple[str, int]]], decls: Declarations) -> set[int]:
        """The files whose modules all have up-to-date artifacts: they are not even parsed."""
        if not self.write or self.force or self.strict:  # --strict must see every warning again
            return set()
        scan_count: dict[str, int] = {}
        for scan in scans:
            for name, _ in scan:
                scan_count[name] = scan_count.get(name, 0) + 1
        skipped: set[int] = set()
        manifest = self.manifest
        for i, unit in enumerate(units):
            names = [n for n, _ in scans[i]]
            if unit.parsed_first or not names or any(scan_count[n] > 1 for n in names):
                continue
            if i in self.hits:
                skipped.add(i)
                continue
            akeys: list[StatKey | None] = []
            for n in names:
                if not self._may_exist(n):
                    break
                akey = None
                if manifest is not None:
                    try:
                        ast = os.stat(self._artifact(n), follow_symlinks=False)  # before it is read
                        if stat_mod.S_ISREG(ast.st_mode):
                            akey = stat_key(ast)
                    except OSError:
                        pass
                if not up_to_date(self._artifact(n), n, unit.source, unit.digest, decls, self.signer):
                    break
                akeys.append(akey)
            else:
                skipped.add(i)
                if manifest is not None and i in self.source_keys:
                    self._record(manifest, i, unit, scans[i], akeys)
        return skipped

    def _record(self, manifest: Manifest, i: int, unit: Unit, scan: list[tuple[str, int]],
                akeys: list[StatKey | None]) -> None:
        """Record a file found up to date, when it and its artifacts are settled."""
        skey, when = self.source_keys[i]
        if not settled(skey, when):
            return
        now = time.time_ns()
        mods = []
        for (name, off), akey in zip(scan, akeys, strict=True):
            if akey is None or not settled(akey, now):
                return
            mods.append((name, *line_col(unit.data, off), akey))
        manifest.record(unit.source, skey, unit.digest, mods)

    def _schedule(self, todo: list[Unit], decls: Declarations, strict: bool,
                  lock_fd: int | None) -> Iterator[FileOutcome]:
        """Compile ``todo`` (in worker processes with ``-j``), staging artifacts as files come back.

        With worker processes the parent is idle while they compile, so it
        stages each artifact (writes and fsyncs a temporary file) as soon as
        its file comes back. In one process this only makes the writer threads
        fight the compiler for the GIL, so there everything is staged at the
        end. Either way the rename over NAME.bin waits for the tree-wide checks.
        """
        stage_early = self.write and min(job_count(self.jobs), len(todo)) > 1
        for o in run_jobs(todo, decls, strict, self.jobs, lock_fd):
            if stage_early:
                for m in o.modules:
                    if m.status == COMPILED:
                        self.staged[id(m)] = self._decide(m, o, decls)
            yield o

    def _artifact(self, module: str) -> str:
        # os.path.join(self.out, module + ".bin"), the directory's part joined once per compile
        if self._out_prefix is None:
            self._out_prefix = os.path.join(self.out, "")
        return self._out_prefix + module + ".bin"

    def _may_exist(self, module: str) -> bool:
        """False when the output directory's listing has no artifact for ``module``."""
        present = self.present
        return present is None or module + ".bin" in present

    def _decide(self, m: ModuleOutcome, o: FileOutcome, decls: Declarations) -> str:
        """Up to date, or staged for writing (renamed over the artifact only if it is committed)."""
        m.artifact = self._artifact(m.module)
        if (
            not self.force
            and self._may_exist(m.module)
            and up_to_date(m.artifact, m.module, o.source, o.digest, decls, self.signer)
        ):
            return UP_TO_DATE
        assert self.writer is not None and m.data is not None
        self.writer.stage(m, m.data if self.sign_key is None else sign_artifact(m.data, self.sign_key))
        return COMPILED

    # -- after the compile ---------------------------------------------------

    def _collect(self, pipe: Pipeline, skipped: set[int], scans: list[list[tuple[str, int]]]) -> None:
        """Tree-wide checks, then each module's outcome into the report; committed artifacts are renamed."""
        report = self.report
        units = pipe.units
        places = {
            i: self.hits[i] if i in self.hits else [(name, *line_col(units[i].data, off)) for name, off in scans[i]]
            for i in skipped
        }
        dups = pipe.duplicates(places) + pipe.claims(places)
        for i, unit in enumerate(units):
            o = pipe.outcomes[i]
            if o is None:  # skipped: up to date
                for name, line, col in places[i]:
                    report.modules.append(ModuleOutcome(name, unit.path, line, col, UP_TO_DATE,
                                                        self._artifact(name)))
                continue
            diags = o.diagnostics + [d for d in dups if d.file == unit.path]
            report.diagnostics.extend(_sorted(diags) if dups else diags)
            if diags:
                report.keep_source(unit.path, unit.data)
            if not o.modules and any(d.severity == ERROR for d in diags):
                report.failed_files += 1
            for m in o.modules:
                self._conclude(m, o, pipe.decls)
                if not self.keep_artifacts or m.status == FAILED:
                    m.data = None
                report.modules.append(m)
        if self.writer is not None:
            for m, exc in self.writer.finish():
                report.fatal = f"cannot write {m.artifact}: {exc.strerror or exc}"
                m.status = FAILED

    def _conclude(self, m: ModuleOutcome, o: FileOutcome, decls: Declarations) -> None:
        """A module's final status: checked, failed, up to date, or compiled (committed for renaming)."""
        if not self.write:
            if m.status != FAILED:
                m.status = CHECKED
            return
        m.artifact = self._artifact(m.module)
        if m.status == COMPILED:
            decided = self.staged.get(id(m))
            m.status = decided if decided is not None else self._decide(m, o, decls)
            if m.status == COMPILED:
                assert self.writer is not None
                self.writer.commit(m)

