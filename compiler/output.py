"""The output directory: one compile at a time, atomic artifact writes, and no debris.

- :class:`OutputLock`: an exclusive ``flock`` on ``OUT/.polc-compile.lock``,
  held for a whole compile, so two compiles into one directory run one after
  the other.
- :func:`remove_debris`: the temporary files crashed compiles left, removed
  by the next compile while it holds the lock.
- :class:`Writer`: each artifact written like ``write_atomic`` (a temporary
  file in the directory, written and fsynced, renamed over ``NAME.bin``), the
  writes and fsyncs in threads, the directory fsynced once per compile.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat as stat_mod
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from polc.runtime.format.writer import fsync_dir, process_umask, stage_file

from .errors import UsageError
from .report import ModuleOutcome

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["LOCK_NAME", "STALE_TEMP_AGE", "TEMP_PREFIX", "OutputLock", "Writer", "remove_debris"]

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


STAGE_BATCH = 8
"""Artifacts staged per task of the writer threads: one task (a future, a thread woken) per
artifact cost the parent more than the writes it hands over."""


def _stage_batch(directory: str, datas: list[bytes]) -> list[str | OSError]:
    """Stage each of ``datas`` (:func:`stage_file`): its temporary file's path, or why not."""
    out: list[str | OSError] = []
    for data in datas:
        try:
            out.append(stage_file(directory, data, prefix=TEMP_PREFIX))
        except OSError as exc:
            out.append(exc)
    return out


class Writer:
    """Atomic artifact writes: ``stage`` (write + fsync a temporary file, in a thread), ``commit``, ``finish``.

    Like ``polc.runtime.format.writer.write_atomic`` for each file -- a temporary
    file in the same directory, written and fsynced, then renamed over the
    artifact; on failure removed and the artifact unchanged -- except that the
    writes and fsyncs run in a few threads (fsync releases the GIL), STAGE_BATCH
    files per task, and the directory is fsynced once, after all the renames,
    instead of once per file. ``finish`` renames the committed files;
    ``discard`` removes any temporary file left. Threads start on the first
    batch: with worker processes, only after they have all been forked.
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)  # absolute: mkstemp then never calls getcwd
        self.pool: ThreadPoolExecutor | None = None
        # id(module outcome) -> (it, the future of its batch, its place in the batch)
        self.staged: dict[int, tuple[ModuleOutcome, Future[list[str | OSError]], int]] = {}
        self.batches: list[Future[list[str | OSError]]] = []
        self.pending: list[tuple[ModuleOutcome, bytes]] = []
        self.committed: list[ModuleOutcome] = []

    def stage(self, m: ModuleOutcome, data: bytes) -> None:
        """Have ``data`` written for ``m`` (whose artifact is in this writer's directory)."""
        self.pending.append((m, data))
        if len(self.pending) >= STAGE_BATCH:
            self.flush()

    def flush(self) -> None:
        """Start writing what :meth:`stage` has collected."""
        pending = self.pending
        if not pending:
            return
        self.pending = []
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            process_umask()  # read before any thread runs
            self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="polc-write")
        fut = self.pool.submit(_stage_batch, self.directory, [data for _, data in pending])
        self.batches.append(fut)
        for k, (m, _) in enumerate(pending):
            self.staged[id(m)] = (m, fut, k)

    def commit(self, m: ModuleOutcome) -> None:
        """Have ``finish`` rename ``m``'s staged file over its artifact."""
        self.committed.append(m)

    def finish(self) -> list[tuple[ModuleOutcome, OSError]]:
        """Rename every committed file, remove the rest; the modules that failed, with why."""
        failures: list[tuple[ModuleOutcome, OSError]] = []
        renamed = False
        self.flush()
        for m in self.committed:
            _, fut, k = self.staged.pop(id(m))
            tmp = fut.result()[k]
            if isinstance(tmp, OSError):
                failures.append((m, tmp))
                continue
            assert m.artifact is not None
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
        """Remove every staged file not renamed; stop the threads."""
        self.pending = []  # never written
        for _, fut, k in self.staged.values():
            with contextlib.suppress(OSError):  # its batch failed: no file
                tmp = fut.result()[k]
                if not isinstance(tmp, OSError):  # its write failed: no file
                    _unlink(tmp)
        self.staged.clear()
        self.batches = []
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
