"""``-j N``: compiling files in forked worker processes.

The parent reads, scans, checks tree-wide declarations and duplicates, and
writes; workers only compile (decode, parse, check, generate) and inherit the
already-loaded parser. A worker dies with the compile that forked it (Linux
``PR_SET_PDEATHSIG``), so a killed compile leaves no orphan holding its output
pipes, and it closes the parent's output lock, so it never holds that.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from .checker import Declarations
from .parser import get_parser
from .pipeline import FileOutcome, Unit, compile_unit, in_process

__all__ = ["job_count", "run_jobs"]

_WORKER: tuple[Declarations, bool] | None = None


def _init_worker(decls: Declarations, strict: bool, lock_fd: int | None, parent: int) -> None:
    global _WORKER
    _WORKER = (decls, strict)
    _die_with_parent(parent)
    if lock_fd is not None:
        # the parent's lock stays the parent's: a worker outliving a killed parent holds nothing
        with contextlib.suppress(OSError):
            os.close(lock_fd)


def _work(unit: Unit) -> FileOutcome:
    assert _WORKER is not None
    decls, strict = _WORKER
    return compile_unit(unit, decls, strict)


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


def job_count(n: int) -> int:
    """Worker processes for ``-j n``: ``n``, or with 0 one per usable core."""
    if n > 0:
        return n
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_jobs(units: list[Unit], decls: Declarations, strict: bool, jobs: int,
             lock_fd: int | None = None) -> Iterator[FileOutcome]:
    """Compile ``units``, yielding each file's outcome in order as it is ready.

    With more than one worker, every worker process has been forked before the
    first outcome is yielded, so the caller may start threads from then on.
    """
    workers = min(job_count(jobs), len(units))
    if workers <= 1:
        yield from in_process(units, decls, strict)
        return
    import concurrent.futures
    import multiprocessing
    from multiprocessing.context import BaseContext

    get_parser()  # build once in the parent; forked workers inherit it
    ctx: BaseContext | None
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:  # pragma: no cover - platforms without fork
        ctx = None
    chunk = max(1, min(64, len(units) // (workers * 4)))
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker,
        initargs=(decls, strict, lock_fd, os.getpid())
    ) as pool:
        yield from pool.map(_work, units, chunksize=chunk)
