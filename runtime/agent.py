"""PolicyAgent: load a directory of artifacts, answer checks, poll and reload.

The moving parts, in the manner of werkzeug's reloader:

* ``reload_now()`` is one poll step (``_poll``), callable from any thread;
  the poller thread runs ``while not stop.wait(interval): reload_now()``.
  Steps are serialised by a lock that checks never take.
* A step stats the directory, lists it again only when the directory's own
  stat changed (or changed too recently to be trusted) and publishes what
  the listing shows first (new names, renames over a name, symlink swaps,
  deletions); then it sweeps: stats every other ``*.bin`` (following
  symlinks) and compares ``(st_mtime_ns, st_size, st_ino, st_ctime_ns)``
  with the recorded stat — equality only, never "newer than" — looking at
  the directory again between chunks. A changed file is read; the same
  bytes as last time change nothing; an artifact whose payload digest
  equals the loaded one swaps nothing; anything else is verified, linked
  and swapped in.
* A file whose ctime is within the racy window (``RACY_FINE_NS`` for fine
  timestamps, ``RACY_NS`` for coarse ones) of the moment it was statted may
  still change within the same timestamp tick without its stat changing
  (git's "racily clean" problem): such a file is re-read on the next step
  until its stat is old enough to be trusted.
* Each phase of a step commits its changes together: the file states, the
  status table and one new :class:`~polc.runtime.enforcer.Snapshot`,
  published by a single attribute assignment. A phase that raises half-way
  commits nothing, and the next step starts from the state before it.
* While a step runs, the switch interval is lowered (``POLL_SWITCH_INTERVAL``)
  so its system calls do not wait 5 ms each for the GIL (docs/runtime.md).
* Events are queued under the step lock and delivered by one thread at a
  time, so subscribers see them in commit order whoever reloads.
* ``os.register_at_fork`` handlers make a forked child reload on its own:
  the step lock is held across the fork, and the child gets fresh locks and
  its own poller (the "fork" section at the end of this file).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import stat as stat_mod
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from . import _env
from . import artifact as _artifact
from .catalog import GLOBAL_MODULE
from .enforcer import EMPTY_SNAPSHOT, Decision, LinkedModule, Snapshot, link

__all__ = [
    "PolicyAgent",
    "PolicyLoadError",
    "ReloadEvent",
    "ReloadFailure",
    "ReloadResult",
    "DEFAULT_RELOAD_INTERVAL",
]

logger = logging.getLogger("polc")

DEFAULT_RELOAD_INTERVAL = 5.0
SUFFIX = ".bin"
# A file changed this recently when it was statted is re-read on the next
# step even if its stat key did not change (same-tick rewrites). RACY_NS
# covers filesystems with coarse (1-2 s) timestamps; RACY_FINE_NS is used
# when the ctime has sub-millisecond digits (ext4, xfs, btrfs, tmpfs: ns
# fields, but stamped from the kernel's coarse clock, one tick <= 10 ms).
RACY_NS = 2_000_000_000
RACY_FINE_NS = 50_000_000
# The per-file sweep looks at the directory's own stat between chunks of
# this many files, at most every SWEEP_DIR_CHECK_S, so an atomic drop that
# lands during a long sweep is published without waiting for the sweep.
SWEEP_CHUNK = 64
SWEEP_DIR_CHECK_S = 0.005
# While a poll step runs, the interpreter's switch interval is lowered to
# this (seconds; None: leave it alone). Every system call of the step
# releases the GIL, and getting it back from a thread that keeps it busy
# takes up to the switch interval (5 ms by default): the GIL convoy of
# docs/runtime.md. Process-global, so shared by every agent (see _FastSwitch).
POLL_SWITCH_INTERVAL: float | None = 0.0002
# How long a reload waits for another thread that is delivering events
# (its subscribers are slow, or wait for this thread) before returning.
NOTIFY_WAIT_S = 10.0
# How long os.fork() waits for a reload step running on another thread to
# finish, so that the child inherits no half-committed reloader state. Past
# it the child rebuilds that state from the policy in force (_resync).
FORK_STEP_WAIT_S = 10.0


# --------------------------------------------------------------------------
# Public result types


@dataclass(frozen=True, slots=True)
class ReloadFailure:
    """An artifact (or the directory itself, with ``module=None``) that could not be loaded."""

    file: str
    module: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "module": self.module, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one reload step did.

    ``changed``: modules loaded or reloaded (their new policy is active).
    ``removed``: modules whose file disappeared (their last policy stays
    active). ``failed``: files that failed in this step (the previous policy
    of each stays active).
    """

    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[ReloadFailure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": list(self.changed),
            "removed": list(self.removed),
            "failed": [f.to_dict() for f in self.failed],
        }


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    """Delivered to subscribers after each change is live.

    ``kind``: ``"loaded"`` (first policy of a module), ``"reloaded"``,
    ``"failed"`` (previous policy kept, ``reason`` says why), ``"removed"``
    (file gone, previous policy kept), ``"recovered"`` (the module had an
    error, from ``failed`` or ``removed``, and has none now: once per
    cleared error, after the ``loaded``/``reloaded`` that cleared it if a new
    policy did). ``revision``/``rules`` describe the policy active for the
    module after the event (None/0 when none). Events are delivered in the
    order they were committed (docs/runtime.md).
    """

    kind: str
    module: str | None
    file: str
    reason: str | None = None
    revision: str | None = None
    rules: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "module": self.module,
            "file": self.file,
            "reason": self.reason,
            "revision": self.revision,
            "rules": self.rules,
        }


class PolicyLoadError(Exception):
    """A strict start-up met bad artifacts (or no directory); ``failures`` lists each."""

    def __init__(self, failures: list[ReloadFailure]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  {f.file}: {f.reason}" for f in self.failures)
        super().__init__(f"{len(self.failures)} policy artifact(s) failed to load:\n{lines}")


# --------------------------------------------------------------------------
# Configuration


def _interval(value: object, origin: str) -> float:
    return _env.parse_seconds(value, origin)


def _resolve_trust(trust: Any) -> Any:
    """The trust configuration an agent verifies with (None: signatures not required).

    ``None`` consults ``POLC_TRUST_FILE``: unset means no trust; set, it must
    name a readable trust file (blank is an error, never "no trust"). A path
    is loaded; anything else must be a trust object with a ``verify`` method.
    cryptography is imported only when trust is configured.
    """
    if trust is None:
        if "POLC_TRUST_FILE" not in os.environ:
            return None
        from .signing import TrustConfig

        return TrustConfig.from_env()
    if isinstance(trust, (str, os.PathLike)):
        path = os.fspath(trust)
        if not path.strip():
            raise ValueError(f"trust={path!r}: empty path of a trust file")
        from .signing import TrustConfig

        return TrustConfig.from_file(path)
    if not callable(getattr(trust, "verify", None)):
        raise TypeError(
            f"trust={trust!r}: expected a TrustConfig, a trust file's path, or None (POLC_TRUST_FILE)"
        )
    return trust


# --------------------------------------------------------------------------
# Internal state


class _FileState:
    """What the last step saw of one ``*.bin`` file (mutated only under the lock)."""

    __slots__ = ("key", "ino", "racy", "content", "error")

    def __init__(self, key: tuple, racy: bool, content: bytes | None, error: str | None) -> None:
        self.key = key  # (mtime_ns, size, ino, ctime_ns), or ("error", errno)
        self.ino = key[2] if len(key) == 4 else None
        self.racy = racy  # changed too recently for its stat to be trusted
        self.content = content  # SHA-256 of the bytes last read
        self.error = error  # reason the current file state failed, or None


class _Loaded:
    __slots__ = ("linked", "file", "loaded_at")

    def __init__(self, linked: LinkedModule, file: str, loaded_at: float) -> None:
        self.linked = linked
        self.file = file
        self.loaded_at = loaded_at


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def _is_racy(st: os.stat_result, now_ns: int) -> bool:
    """True when ``st`` changed too recently for an unchanged stat to prove an unchanged file.

    ``now_ns`` is taken before the stat, so the test errs on the racy side.
    The window is RACY_FINE_NS when the ctime has sub-millisecond digits
    (the filesystem keeps fine timestamps), else RACY_NS (coarse clocks,
    FAT's 2 s, NFS servers rounding to seconds or milliseconds).
    """
    ctime = st.st_ctime_ns
    return ctime >= now_ns - (RACY_FINE_NS if ctime % 1_000_000 else RACY_NS)


_first = itemgetter(0)


class _FastSwitch:
    """Lower ``sys.setswitchinterval`` while at least one poll step runs.

    The interval is process-global: the first step to enter saves it and
    lowers it, the last to leave restores it — unless someone else changed
    it meanwhile (then theirs stays). Steps of several agents, on several
    threads, nest freely.
    """

    _lock = threading.Lock()
    _users = 0
    _saved: float | None = None
    _set: float | None = None

    def __enter__(self) -> None:
        target = POLL_SWITCH_INTERVAL
        cls = _FastSwitch
        with cls._lock:
            cls._users += 1
            if cls._users == 1 and target is not None:
                current = sys.getswitchinterval()
                if current > target:
                    cls._saved = current
                    sys.setswitchinterval(target)
                    cls._set = sys.getswitchinterval()

    def __exit__(self, *exc: object) -> None:
        cls = _FastSwitch
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._saved is not None:
                if sys.getswitchinterval() == cls._set:
                    sys.setswitchinterval(cls._saved)
                cls._saved = cls._set = None

    @classmethod
    def after_fork_in_child(cls, steps: int) -> None:
        """The child of a fork runs ``steps`` poll steps (0, or 1 when the
        forking thread was inside one): new lock, count fixed, and the
        interval restored when a step of a thread that is gone lowered it."""
        cls._lock = threading.Lock()
        cls._users = steps
        if steps == 0 and cls._saved is not None:
            if sys.getswitchinterval() == cls._set:
                sys.setswitchinterval(cls._saved)
            cls._saved = cls._set = None


_fast_switch = _FastSwitch()


# --------------------------------------------------------------------------
# The agent


class PolicyAgent:
    """Load, enforce and hot-reload the compiled policies in one directory.

    ``PolicyAgent(policy_dir, reload_interval=5.0)``: arguments win, then the
    environment (``POLC_POLICY_DIR``, ``POLC_RELOAD``, ``POLC_RELOAD_INTERVAL``),
    then the defaults (5 s, reloading on, not strict). An interval of 0 or
    ``reload=False`` loads once at start and starts no thread. ``trust`` (a
    :class:`polc.runtime.signing.TrustConfig` or a trust file's path; default:
    the file named by ``POLC_TRUST_FILE``, if set) makes every artifact need a
    trusted signature. A variable that is set but blank or malformed raises
    ValueError naming it; only an unset one means the default.
    :meth:`start` warns when others can change the policy directory
    (``strict`` refuses to start then; docs/security.md).

    Use as a context manager, or call :meth:`start` and :meth:`stop` (and
    :meth:`start` again). A child of ``os.fork()`` gets its own poller.
    :meth:`check` is lock-free and never raises.
    """

    def __init__(
        self,
        policy_dir: str | os.PathLike[str] | None = None,
        *,
        reload_interval: float | None = None,
        reload: bool | None = None,
        strict: bool | None = None,
        trust: Any = None,
        cache_size: int = 65536,
    ) -> None:
        # Arguments win; a POLC_* variable is read only when its argument is
        # None, and a variable that is set but blank or unparsable is an
        # error naming it, never the default (polc.runtime._env).
        if policy_dir is None:
            policy_dir = _env.env_path("POLC_POLICY_DIR", what="the policy directory, or unset it")
            if policy_dir is None:
                raise ValueError("no policy directory: pass policy_dir or set POLC_POLICY_DIR")
        self.policy_dir = os.fspath(policy_dir)
        if not self.policy_dir.strip():
            raise ValueError(f"policy_dir={self.policy_dir!r}: empty path")
        if reload_interval is None:
            env_interval = _env.env_seconds("POLC_RELOAD_INTERVAL")
            reload_interval = DEFAULT_RELOAD_INTERVAL if env_interval is None else env_interval
        else:
            reload_interval = _interval(reload_interval, "reload_interval")
        if reload is None:
            env_reload = _env.env_bool("POLC_RELOAD")
            reload = True if env_reload is None else env_reload
        if cache_size < 0:
            raise ValueError(f"cache_size={cache_size!r}: expected a number >= 0")
        self.reload_interval: float = reload_interval
        self.reload: bool = bool(reload) and reload_interval > 0
        self.strict: bool = bool(strict)
        self.trust = _resolve_trust(trust)
        self._cache_size = int(cache_size)

        self._snapshot: Snapshot = EMPTY_SNAPSHOT
        self._publish(EMPTY_SNAPSHOT)
        self._lock = threading.Lock()  # serialises reload steps; checks never take it
        self._lock_owner: int | None = None  # ident of the thread running a step
        self._stop = threading.Event()  # the running poller's own stop flag
        self._thread: threading.Thread | None = None
        self._subscribers: tuple[Callable[[ReloadEvent], None], ...] = ()
        # Event delivery, in commit order (see _deliver): events committed
        # but not yet delivered, how many were ever queued and delivered,
        # and the thread delivering now.
        self._notify = threading.Condition(threading.Lock())
        self._events: deque[ReloadEvent] = deque()
        self._queued = 0
        self._delivered = 0
        self._notifier: int | None = None
        self._ready = False
        self._started = False

        # Reloader state: only touched with self._lock held.
        self._files: dict[str, _FileState] = {}
        self._loaded: dict[str, _Loaded] = {}
        self._dir_key: tuple | None = None
        self._dir_racy = True
        self._names: list[str] = []
        self._dir_error: str | None = None
        self._global_error: str | None = None
        self._pending_dir: tuple | None = None
        self._paths: dict[str, str] = {}
        # What the sweep stats: (name, path, mtime_ns, size, ino, ctime_ns)
        # of every file whose recorded stat can be trusted, in name order;
        # every other file (racy or unreadable) is examined on every step.
        self._sweep: list[tuple[str, str, int, int, int, int]] = []
        self._recheck: list[str] = []
        # Published for status(): replaced whole on every commit.
        self._status_modules: dict[str, dict[str, Any]] = {}
        self._last_reload: float | None = None
        self._reloads_ok = 0
        self._reloads_failed = 0
        _agents.add(self)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "PolicyAgent":
        """Load every artifact, then start the poller (if reloading). Returns self.

        Bad artifacts are reported and their modules get ``_global`` rules
        only; with ``strict=True`` they raise :class:`PolicyLoadError`
        instead (nothing is started then). On an agent already started this
        only (re)starts the poller when it is not running: ``start()`` after
        :meth:`stop` resumes reloading with the policies already loaded.
        """
        if not self._started:
            self._check_permissions()
            result = self._poll(initial=True)
            if self.strict and result.failed:
                with self._lock:  # forget what this attempt saw, so a retry sees it all again
                    self._publish(EMPTY_SNAPSHOT)
                    self._files.clear()
                    self._loaded.clear()
                    self._dir_key = None
                    self._names = []
                    self._sweep = []
                    self._recheck = []
                    self._status_modules = {}
                raise PolicyLoadError(result.failed)
            self._ready = True
            self._started = True
        if self.reload and not self._poller_running():
            self._start_poller()
            logger.info(
                "watching %s for policy changes every %gs", self.policy_dir, self.reload_interval
            )
        return self

    def _poller_running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop.is_set()

    def _start_poller(self) -> None:
        # Each poller has its own stop flag: a previous poller that is still
        # finishing a step after stop() sees its flag set and ends, whatever
        # the new one does.
        stop = threading.Event()
        thread = threading.Thread(target=self._run, args=(stop,), name="polc-reloader", daemon=True)
        self._stop = stop
        self._thread = thread
        thread.start()

    def _check_permissions(self) -> None:
        """Warn when others than root and this process can change the policies
        (docs/security.md); ``strict`` refuses to start instead."""
        from .signing import check_directory_permissions, check_file_permissions

        problems = check_directory_permissions(self.policy_dir)
        source = getattr(self.trust, "source", None)
        if source:
            problems += [f"trust file {p}" for p in check_file_permissions(source)]
        for problem in problems:
            logger.warning("unsafe permissions: %s", problem)
        if self.strict and problems:
            raise PolicyLoadError(
                [ReloadFailure(self.policy_dir, None, f"unsafe permissions: {p}") for p in problems]
            )

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the poller and wait for it (up to ``timeout``); idempotent.

        Checks keep working, and :meth:`start` starts a new poller.
        """
        self._stop.set()
        thread = self._thread
        self._thread = None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> "PolicyAgent":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.reload_interval):
            try:
                self._poll()
            except Exception:  # the poller must survive anything
                logger.exception("policy reload step failed; retrying in %gs", self.reload_interval)

    @property
    def ready(self) -> bool:
        """True once the first load completed."""
        return self._ready

    # -- checks ------------------------------------------------------------

    def check(self, module: str, capability: str, *args: object) -> Decision:
        """Decide whether ``module`` may use ``capability(*args)``. Never raises.

        Lock-free: the decision comes from one immutable snapshot. (After
        construction this method is shadowed by the current snapshot's own
        bound ``check``; see ``_publish``.)
        """
        return self._snapshot.check(module, capability, *args)

    @property
    def snapshot(self) -> Snapshot:
        """The policy set in force now (immutable)."""
        return self._snapshot

    # -- reloading ---------------------------------------------------------

    def reload_now(self) -> ReloadResult:
        """Run one poll step now (thread-safe with the poller)."""
        return self._poll()

    def subscribe(self, callback: Callable[[ReloadEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` after every reload event; returns an unsubscribe function.

        Callbacks run on the thread that reloads (the poller, or the caller
        of ``reload_now``/``start``); one that raises is logged and ignored.
        """
        with self._lock:
            self._subscribers = self._subscribers + (callback,)

        def unsubscribe() -> None:
            with self._lock:
                subs = list(self._subscribers)
                if callback in subs:
                    subs.remove(callback)
                self._subscribers = tuple(subs)

        return unsubscribe

    def status(self) -> dict[str, Any]:
        """A JSON-serialisable view of the agent and every module it knows."""
        modules = self._status_modules
        snap = self._snapshot
        return {
            "policy_dir": self.policy_dir,
            "reload": self.reload,
            "reload_interval": self.reload_interval,
            "strict": self.strict,
            "ready": self._ready,
            "last_reload": self._last_reload,
            "reloads": {"ok": self._reloads_ok, "failed": self._reloads_failed},
            "directory_error": self._dir_error,
            "unavailable": snap.unavailable if self._ready else None,
            "modules": {name: dict(info) for name, info in sorted(modules.items())},
        }

    # -- the poll step -------------------------------------------------------

    def _poll(self, initial: bool = False) -> ReloadResult:
        with self._lock:
            self._lock_owner = threading.get_ident()
            try:
                with _fast_switch:
                    events, result = self._step(initial)
                if events:
                    with self._notify:  # queued in commit order, under the step lock
                        self._events.extend(events)
                        self._queued += len(events)
                        upto = self._queued
            finally:
                self._lock_owner = None
        if events:
            self._deliver(upto)
        return result

    def _deliver(self, upto: int) -> None:
        """Deliver queued events to the subscribers, in commit order; return once
        the first ``upto`` events ever queued have been delivered.

        One thread delivers at a time and drains the queue, so two threads
        reloading at once (the poller and ``reload_now``) can never deliver a
        module's ``recovered`` before its ``failed``. A thread that finds
        another delivering waits for it (at most NOTIFY_WAIT_S, so a
        subscriber waiting for that thread cannot deadlock them); a
        subscriber that reloads has its events delivered right after its own
        callback returns.
        """
        me = threading.get_ident()
        # self._notify is read afresh each time: a fork replaces it.
        with self._notify:
            deadline = None
            while self._delivered < upto:
                if self._notifier is None:
                    self._notifier = me
                    break
                if self._notifier == me:
                    return  # called from a subscriber: the loop below delivers these next
                if deadline is None:
                    deadline = time.monotonic() + NOTIFY_WAIT_S
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("reload events still being delivered by another thread; not waiting longer")
                    return
                self._notify.wait(left)
            else:
                return
        try:
            while True:
                with self._notify:
                    if not self._events:
                        break
                    event = self._events.popleft()
                try:
                    for callback in self._subscribers:
                        try:
                            callback(event)
                        except Exception:
                            logger.exception("reload event subscriber %r raised", callback)
                finally:
                    with self._notify:
                        self._delivered += 1
                        self._notify.notify_all()
        finally:
            with self._notify:
                if self._notifier == me:
                    self._notifier = None
                self._notify.notify_all()

    def _list(self, now_ns: int, changed_only: bool = False) -> tuple[list[str], list[str], int] | None:
        """List the directory if its stat changed (or, unless ``changed_only``,
        changed too recently to be trusted); None when it was not listed.

        Returns the candidate names; the names that can have changed
        at the directory level — new, symlinks, or whose directory entry's
        inode differs from the recorded one (renamed over: atomic drops) —
        in listing order; and how many names were already known (fewer than
        the recorded files: some are gone). The directory entries give all
        that without a system call per name.
        """
        st = os.stat(self.policy_dir)
        if not stat_mod.S_ISDIR(st.st_mode):
            raise NotADirectoryError(20, "not a directory", self.policy_dir)
        key = (st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev)
        if key == self._dir_key and (changed_only or not self._dir_racy):
            return None
        names = []
        first = []
        known = 0
        get = self._files.get
        suffix = SUFFIX
        with os.scandir(self.policy_dir) as it:
            for entry in it:
                name = entry.name
                if name.endswith(suffix) and name[0] != ".":  # also refuses a bare ".bin"
                    names.append(name)
                    state = get(name)
                    if state is None:
                        first.append(name)
                        continue
                    known += 1
                    try:
                        if state.ino != entry.inode() or entry.is_symlink():
                            first.append(name)
                    except OSError:
                        first.append(name)
        # Recorded (and sorted, after publishing) by the directory phase that uses this listing.
        self._pending_dir = (key, _is_racy(st, now_ns), names)
        return names, first, known

    def _step(self, initial: bool) -> tuple[list[ReloadEvent], ReloadResult]:
        now_ns = time.time_ns()
        events: list[ReloadEvent] = []
        result = ReloadResult()
        # The sweep list and the files to re-examine as they were before this
        # step: a directory phase below replaces both when it commits.
        sweep = self._sweep
        recheck = self._recheck
        done: set[str] = set()  # names examined by a directory phase of this step
        self._pending_dir = None
        try:
            listing = self._list(now_ns)
        except OSError as exc:
            return self._dir_unavailable(exc, initial)
        if self._dir_error is not None:
            logger.info("policy directory available again: %s", self.policy_dir)
            self._dir_error = None
        if listing is not None:
            # The directory changed: a file was created, deleted or renamed
            # over (atomic drops, ``..data`` swaps). Examine the names that
            # can have changed that way and publish them first, before the
            # sweep that costs one stat per file (slow under a GIL convoy).
            self._dir_phase(listing, now_ns, initial, done, events, result)
            if initial:
                return events, result

        # The sweep: one stat per file, compared field by field with the
        # recorded key. Between chunks, the directory's own stat: a drop that
        # lands meanwhile is published at once, not after the sweep.
        changed: list[str] = []
        stat = os.stat
        clock = time.monotonic
        last_dir_check = clock()
        n = len(sweep)
        chunk = SWEEP_CHUNK
        for lo in range(0, n, chunk):
            if lo and clock() - last_dir_check >= SWEEP_DIR_CHECK_S:
                try:
                    listing = self._list(now_ns, changed_only=True)
                except OSError as exc:
                    return self._dir_unavailable(exc, initial, events, result)
                if listing is not None:
                    self._dir_phase(listing, now_ns, False, done, events, result)
                last_dir_check = clock()
            for name, path, mtime, size, ino, ctime in sweep[lo : lo + chunk] if n > chunk else sweep:
                try:
                    st = stat(path)  # follows symlinks: ..data swaps show up here
                except OSError:
                    changed.append(name)
                    continue
                if st.st_mtime_ns != mtime or st.st_size != size or st.st_ino != ino or st.st_ctime_ns != ctime:
                    changed.append(name)
        changed += recheck  # racy or unreadable files: examined every step

        # Decide, read, verify and link without touching any state, then
        # commit everything at once.
        outcomes = []
        files = self._files
        for name in changed:
            if name in done or name not in files:  # already examined, or gone
                continue
            done.add(name)
            outcome = self._examine(name, now_ns)
            if outcome is not None:
                outcomes.append(outcome)
        if not outcomes:
            self._last_reload = time.time()
            return events, result
        ev, res = self._commit(outcomes, [], False)
        events += ev
        result.changed.extend(res.changed)
        result.failed.extend(res.failed)
        return events, result

    def _dir_unavailable(
        self,
        exc: OSError,
        initial: bool,
        events: list[ReloadEvent] | None = None,
        result: ReloadResult | None = None,
    ) -> tuple[list[ReloadEvent], ReloadResult]:
        reason = f"{exc.strerror or exc}"
        if self._dir_error != reason:
            logger.warning(
                "policy directory unavailable, keeping %d loaded module(s): %s: %s",
                len(self._loaded),
                self.policy_dir,
                reason,
            )
        self._dir_error = reason
        if initial:
            self._publish(self._snapshot_with([], initial=True))
        failure = ReloadFailure(self.policy_dir, None, f"policy directory unavailable: {reason}")
        if result is None:
            result = ReloadResult()
        result.failed.append(failure)
        return events or [], result

    def _dir_phase(
        self,
        listing: tuple[list[str], list[str], int],
        now_ns: int,
        initial: bool,
        done: set[str],
        events: list[ReloadEvent],
        result: ReloadResult,
    ) -> None:
        """Examine and commit what a new listing shows: new names, names whose
        directory entry points elsewhere (renames, symlinks) and names gone."""
        names, first, known = listing
        files = self._files
        outcomes = []
        for name in first:
            done.add(name)
            outcome = self._examine(name, now_ns)
            if outcome is not None:
                outcomes.append(outcome)
        gone: list[str] = []
        if known < len(files):
            seen = set(names)
            gone = [name for name in files if name not in seen]
        if not outcomes and not gone and not initial:
            # The same names, nothing changed (a dot-file came or went, or
            # the directory's stat was racy): record the listing only.
            self._record_listing()
            return
        ev, res = self._commit(outcomes, gone, initial)  # also records the listing
        events += ev
        result.changed.extend(res.changed)
        result.removed.extend(res.removed)
        result.failed.extend(res.failed)

    def _examine(self, name: str, now_ns: int) -> tuple | None:
        """One file: None when unchanged, else an outcome tuple for _commit."""
        path = self._paths.get(name)
        if path is None:
            path = self._paths[name] = os.path.join(self.policy_dir, name)
        module = name[: -len(SUFFIX)]
        state = self._files.get(name)
        try:
            st = os.stat(path)  # follows symlinks: ..data swaps show up here
        except OSError as exc:
            key = ("error", exc.errno)
            if state is not None and state.key == key:
                return None
            return ("fail", name, module, key, False, None, f"cannot read: {exc.strerror or exc}")
        key = _stat_key(st)
        if state is not None and state.key == key and not state.racy:
            return None
        racy = _is_racy(st, now_ns)
        try:
            data = _artifact.read_artifact_bytes(path)
        except _artifact.ArtifactError as exc:
            reason = str(exc)
            if state is not None and state.key == key and state.error == reason:
                return ("touch", name, module, key, racy, state.content, None)  # re-read, same failure
            return ("fail", name, module, key, racy, None, reason)
        content = hashlib.sha256(data).digest()
        if state is not None and state.content == content:
            return ("touch", name, module, key, racy, content, None)
        try:
            art = _artifact.read_artifact(data, expected_module=module, trust=self.trust)
        except _artifact.ArtifactError as exc:
            return ("fail", name, module, key, racy, content, str(exc))
        loaded = self._loaded.get(module)
        if loaded is not None and loaded.linked.digest == art.digest_hex:
            return ("same", name, module, key, racy, content, None)
        return ("load", name, module, key, racy, content, link(art))

    def _commit(
        self, outcomes: list[tuple], gone: list[str], initial: bool
    ) -> tuple[list[ReloadEvent], ReloadResult]:
        now = time.time()
        events: list[ReloadEvent] = []
        changed: list[LinkedModule] = []
        result = ReloadResult()
        files = self._files
        loaded_map = self._loaded
        old_status = self._status_modules
        status = dict(old_status)
        logs: list[tuple] = []

        def recovered(module: str, name: str, entry: _Loaded | None) -> None:
            # The module had an error (failed or removed) and has none now.
            prev = old_status.get(module)
            if prev is None or not prev.get("last_error"):
                return
            if entry is None:  # the file of a module that never loaded is gone
                logs.append((logging.INFO, "%s recovered: %s is gone and was never in force", module, name))
                events.append(ReloadEvent("recovered", module, name))
                return
            linked_ = entry.linked
            logs.append((logging.INFO, "%s recovered: %s is in force (revision %s)", module, name, linked_.revision))
            events.append(ReloadEvent("recovered", module, name, None, linked_.revision, linked_.rule_count))

        for kind, name, module, key, racy, content, extra in outcomes:
            prev = files.get(name)
            if kind == "touch":  # the very bytes read last time: only the stat moved
                files[name] = _FileState(key, racy, content, prev.error if prev else None)
                continue
            if kind == "same":  # a valid artifact identical to the loaded policy
                files[name] = _FileState(key, racy, content, None)
                if module in loaded_map:
                    status[module] = self._module_status(module, loaded_map[module], None)
                    recovered(module, name, loaded_map[module])
                continue
            if kind == "load":
                linked: LinkedModule = extra
                first = module not in loaded_map
                entry = _Loaded(linked, name, now)
                loaded_map[module] = entry
                files[name] = _FileState(key, racy, content, None)
                changed.append(linked)
                status[module] = self._module_status(module, entry, None)
                self._reloads_ok += 1
                result.changed.append(module)
                verb = "loaded" if (first or initial) else "reloaded"
                logs.append((logging.INFO, "%s %s (%d rules)", verb, module, linked.rule_count))
                events.append(
                    ReloadEvent(verb, module, name, None, linked.revision, linked.rule_count)
                )
                recovered(module, name, entry)
                continue
            # kind == "fail"
            reason: str = extra
            files[name] = _FileState(key, racy, content, reason)
            self._reloads_failed += 1
            result.failed.append(ReloadFailure(name, module, reason))
            prev_loaded = loaded_map.get(module)
            status[module] = self._module_status(module, prev_loaded, reason, name)
            if prev_loaded is not None:
                logs.append((logging.WARNING, "reload failed, keeping previous: %s: %s", name, reason))
            elif module == GLOBAL_MODULE:
                logs.append(
                    (
                        logging.WARNING,
                        "load failed, denying every request until %s loads: %s: %s",
                        GLOBAL_MODULE,
                        name,
                        reason,
                    )
                )
            else:
                logs.append(
                    (
                        logging.WARNING,
                        "load failed, %s gets %s rules only: %s: %s",
                        module,
                        GLOBAL_MODULE,
                        name,
                        reason,
                    )
                )
            events.append(
                ReloadEvent(
                    "failed",
                    module,
                    name,
                    reason,
                    prev_loaded.linked.revision if prev_loaded else None,
                    prev_loaded.linked.rule_count if prev_loaded else 0,
                )
            )

        for name in gone:
            module = name[: -len(SUFFIX)]
            del files[name]
            self._paths.pop(name, None)
            prev_loaded = loaded_map.get(module)
            if prev_loaded is None:
                status.pop(module, None)
                recovered(module, name, None)
                continue
            reason = "file removed; keeping the last policy loaded"
            status[module] = self._module_status(module, prev_loaded, reason, name)
            result.removed.append(module)
            logs.append((logging.WARNING, "%s removed, keeping previous policy of %s", name, module))
            events.append(
                ReloadEvent(
                    "removed", module, name, reason, prev_loaded.linked.revision, prev_loaded.linked.rule_count
                )
            )

        # _global that never loaded but failed: deny everything (fail closed)
        gstate = files.get(GLOBAL_MODULE + SUFFIX)
        if GLOBAL_MODULE not in loaded_map and gstate is not None and gstate.error is not None:
            self._global_error = f"{GLOBAL_MODULE}{SUFFIX} failed to load: {gstate.error}"
        else:
            self._global_error = None

        if changed or initial or self._snapshot.unavailable != self._global_error:
            self._publish(self._snapshot_with(changed, initial=initial))
        self._record_listing()
        self._refile([o[1] for o in outcomes] + gone)
        self._status_modules = status
        self._last_reload = now
        for level, msg, *args in logs:
            logger.log(level, msg, *args)
        return events, result

    def _rebuild_sweep(self) -> None:
        """Rebuild the sweep list and the re-check list from the recorded file states.

        The sweep's strings and ints are fresh copies, allocated together:
        the idle sweep then reads memory that sits close together instead of
        objects scattered over the heap by loading (about 0.35 us per file at
        10,000 files, a third of the sweep's cost beyond the stat calls).
        """
        files = self._files
        prefix = os.path.join(self.policy_dir, "")
        sweep = []
        recheck = []
        for name in self._names:
            state = files.get(name)
            if state is None:
                continue
            key = state.key
            if state.racy or len(key) != 4:
                recheck.append(name)
            else:
                mtime, size, ino, ctime = key
                sweep.append((name, prefix + name, mtime + 0, size + 0, ino + 0, ctime + 0))
        self._sweep = sweep
        self._recheck = recheck

    def _record_listing(self) -> None:
        if self._pending_dir is not None:
            self._dir_key, self._dir_racy, names = self._pending_dir
            names.sort()
            self._names = names
            self._pending_dir = None

    def _refile(self, names: list[str]) -> None:
        """Put the named files (changed, new or gone) back in the sweep or re-check list.

        The lists are replaced, never changed in place: a sweep in progress
        iterates the list it started with.
        """
        if len(names) > SWEEP_CHUNK:
            self._rebuild_sweep()
            return
        files = self._files
        todo = set(names)
        sweep = self._sweep.copy()
        recheck = [name for name in self._recheck if name not in todo]
        prefix = os.path.join(self.policy_dir, "")
        for name in sorted(todo):
            i = bisect.bisect_left(sweep, name, key=_first)
            if i < len(sweep) and sweep[i][0] == name:
                del sweep[i]
            state = files.get(name)
            if state is None:  # gone
                continue
            key = state.key
            if state.racy or len(key) != 4:
                recheck.append(name)
            else:
                sweep.insert(i, (name, prefix + name, *key))
        self._sweep = sweep
        self._recheck = recheck

    def _snapshot_with(self, changed: list[LinkedModule], *, initial: bool) -> Snapshot:
        if initial or self._snapshot is EMPTY_SNAPSHOT:
            mods = {m: e.linked for m, e in self._loaded.items() if m != GLOBAL_MODULE}
            glob = self._loaded.get(GLOBAL_MODULE)
            return Snapshot(
                mods,
                glob.linked if glob else None,
                unavailable=self._global_error,
                cache_size=self._cache_size,
            )
        return self._snapshot.replace(changed, unavailable=self._global_error)

    def _publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        # The one assignment readers see: ``agent.check`` is the new snapshot's
        # bound method (an instance attribute shadowing the method below), so
        # a check reads the snapshot exactly once and pays no extra frame.
        self.check = snapshot.check  # type: ignore[method-assign]

    def _module_status(
        self, module: str, entry: _Loaded | None, error: str | None, file: str | None = None
    ) -> dict[str, Any]:
        if entry is None:
            return {
                "revision": None,
                "rules": 0,
                "mode": None,
                "loaded_at": None,
                "source": None,
                "file": file or module + SUFFIX,
                "last_error": error,
            }
        linked = entry.linked
        return {
            "revision": linked.revision,
            "rules": linked.rule_count,
            "mode": linked.mode,
            "loaded_at": entry.loaded_at,
            "source": linked.source,
            "file": entry.file,
            "last_error": error,
        }

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else ("loaded" if self._ready else "new")
        return f"<PolicyAgent {self.policy_dir!r} {state}, {len(self._loaded)} modules>"

    # -- fork ----------------------------------------------------------------

    def _fork_prepare(self) -> bool:
        """Before os.fork(): hold the step lock, so the child inherits no half-done step.

        Returns whether it is held for the fork. Not when this thread runs a
        step itself (a log handler that forks: the step goes on in the child),
        nor after FORK_STEP_WAIT_S (a step stuck on a hung filesystem).
        """
        if self._lock_owner == threading.get_ident():
            return False
        return self._lock.acquire(timeout=FORK_STEP_WAIT_S)

    def _fork_child(self, held: bool) -> None:
        """In the child of os.fork(): new locks, a new poller, nothing of the parent's threads.

        Only the forking thread exists in the child. Every lock another thread
        could have held is replaced; a step that was running on another thread
        (``held`` false, not ours) left its state torn, so it is rebuilt from
        the policy in force. Events committed but not delivered in the parent
        are delivered by the child's next step.
        """
        me = threading.get_ident()
        if held or self._lock_owner != me:
            self._lock = threading.Lock()
            if not held:
                self._resync()
            self._lock_owner = None
        self._notify = threading.Condition(threading.Lock())
        if self._notifier != me:
            self._notifier = None
        # An event another thread was delivering is lost here (counted as
        # delivered, so no reload waits for it); one this thread is
        # delivering is counted when its callbacks return.
        in_flight = 1 if self._notifier == me else 0
        self._delivered = self._queued - len(self._events) - in_flight
        thread = self._thread
        if thread is not None and thread is threading.current_thread():
            return  # a subscriber on the poller thread forked: it goes on polling here
        running = thread is not None and not self._stop.is_set()
        self._thread = None
        self._stop = threading.Event()
        if running and self.reload:
            self._start_poller()

    def _resync(self) -> None:
        """Rebuild the reloader's state from the published snapshot, which is
        always whole (one assignment); the next step re-reads every file."""
        snap = self._snapshot
        old = self._loaded
        loaded: dict[str, _Loaded] = {}
        linked_all = list(snap.modules.items())
        if snap.glob is not None:
            linked_all.append((GLOBAL_MODULE, snap.glob))
        for module, linked in linked_all:
            prev = old.get(module)
            if prev is not None and prev.linked is linked:
                loaded[module] = prev
            else:
                loaded[module] = _Loaded(linked, module + SUFFIX, time.time())
        self._loaded = loaded
        self._files = {}
        self._paths = {}
        self._dir_key = None
        self._dir_racy = True
        self._names = []
        self._pending_dir = None
        self._sweep = []
        self._recheck = []
        self._status_modules = {m: self._module_status(m, e, None) for m, e in loaded.items()}


# --------------------------------------------------------------------------
# os.fork(): gunicorn --preload, multiprocessing's fork start method. A child
# inherits every agent but none of its threads: without these handlers it
# would keep its first policy for ever (no poller), and a lock held by one
# of the parent's threads at the fork would stay held in it.

_agents: weakref.WeakSet[PolicyAgent] = weakref.WeakSet()  # every agent alive in this process
# What each forking thread holds between its before and after handlers (two
# threads may fork at once; the child has the same thread ident).
_fork_held: dict[int, list[tuple[PolicyAgent, bool]]] = {}


def _before_fork() -> None:
    held = [(agent, agent._fork_prepare()) for agent in list(_agents)]
    _FastSwitch._lock.acquire()
    _fork_held[threading.get_ident()] = held


def _after_fork_in_parent() -> None:
    held = _fork_held.pop(threading.get_ident(), [])
    _FastSwitch._lock.release()
    for agent, locked in held:
        if locked:
            agent._lock.release()


def _after_fork_in_child() -> None:
    me = threading.get_ident()
    held = _fork_held.pop(me, [])
    _fork_held.clear()  # other threads' entries: those threads do not exist here
    _FastSwitch.after_fork_in_child(sum(1 for agent, _ in held if agent._lock_owner == me))
    for agent, locked in held:
        try:
            agent._fork_child(locked)
        except Exception:  # one agent must not stop the others from restarting
            logger.exception("restarting the policy reloader after fork failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
