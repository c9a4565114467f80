"""PolicyAgent: load a directory of artifacts, answer checks, poll and reload.

The facade over the parts, in the manner of werkzeug's reloader:

* configuration is resolved once (:class:`~polc.runtime.config.AgentConfig`);
* ``check`` is the bound ``check`` of the snapshot in force
  (:mod:`polc.runtime.enforce`), replaced by one assignment per swap;
* ``reload_now()`` is one poll step (:meth:`Poller.run_step
  <polc.runtime.reload.poller.Poller.run_step>`), callable from any thread;
  the poller thread runs ``while not stop.wait(interval): reload_now()``.
  Steps are serialised by a lock that checks never take, and run with the
  switch interval lowered (:mod:`polc.runtime.reload.switch`);
* events are queued under the step lock and delivered by one thread at a
  time, so subscribers see them in commit order whoever reloads
  (:mod:`polc.runtime.reload.delivery`);
* a child of ``os.fork()`` gets fresh locks and its own poller
  (:mod:`polc.runtime.reload.fork`).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .config import DEFAULT_RELOAD_INTERVAL, AgentConfig
from .enforce import EMPTY_SNAPSHOT, Decision, Snapshot, accel
from .enforce.resident import Residency
from .errors import PolicyDenied, PolicyLoadError
from .events import WATCH, ReloadEvent, ReloadFailure, ReloadResult
from .reload import fork
from .reload.delivery import EventDelivery
from .reload.loading import BACKGROUND_MIN, gc_paused, load_order
from .reload.poller import Poller
from .reload.switch import fast_switch

if TYPE_CHECKING:
    from .reload.inotify import Watcher
    from .reload.loading import LazyModules

__all__ = [
    "DEFAULT_RELOAD_INTERVAL",
    "PolicyAgent",
    "PolicyLoadError",
    "ReloadEvent",
    "ReloadFailure",
    "ReloadResult",
]

if TYPE_CHECKING:
    from .fleet.puller import CycleResult, Puller, PullLoop

logger = logging.getLogger("polc")

_F = TypeVar("_F", bound=Callable[..., Any])

# Change detection (status()["watch"]["mode"]).
WATCH_INOTIFY = "inotify"  # woken by inotify; the stat sweep is the safety net
WATCH_POLL = "poll"  # the stat sweep every reload_interval
WATCH_OFF = "off"  # reloading off: nothing watches the directory
# A file whose stat was racy is re-examined this soon when inotify wakes the
# poller (polling re-examines it on every step anyway).
RECHECK_RACY_S = 0.06
# The loader commits what it linked at least this often (status and events
# follow), and at most LOAD_BATCH_MAX artifacts at a time.
LOAD_COMMIT_S = 0.25
LOAD_BATCH_MAX = 4096


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

    ``source`` (default: ``POLC_SOURCE``) makes the directory the mirror of
    a published set (``s3://bucket/prefix``, ``http(s)://host/prefix``,
    ``file:///dir``; docs/fleet.md): the agent enforces what the directory
    holds at start, before contacting the origin, then pulls every
    ``pull_interval`` seconds (``POLC_PULL_INTERVAL``, default 5, with
    jitter), verifies the signed manifest and every artifact, switches the
    whole set and reloads at once. ``endpoint`` (``POLC_SOURCE_ENDPOINT``)
    is the S3 endpoint of an ``s3://`` source.

    ``linked_budget`` (``POLC_LINKED_BUDGET``, default 8,192): how many
    modules stay linked at once, the most recently used; the others keep
    their verified bytes in memory and are linked again on their next
    check, with the same decisions (docs/runtime.md, "Linked modules and
    the budget"). 0 keeps every module linked. A source needs ``trust`` with
    a key marked ``manifest = true``. ``status()["source"]`` says how the
    pulls go.

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
        inotify: bool | None = None,
        sweep_interval: float | None = None,
        background_load: bool | None = None,
        source: str | None = None,
        pull_interval: float | None = None,
        endpoint: str | None = None,
        linked_budget: int | None = None,
    ) -> None:
        config = AgentConfig.resolve(
            policy_dir,
            reload_interval=reload_interval,
            reload=reload,
            strict=strict,
            trust=trust,
            cache_size=cache_size,
            inotify=inotify,
            sweep_interval=sweep_interval,
            background_load=background_load,
            source=source,
            pull_interval=pull_interval,
            endpoint=endpoint,
            linked_budget=linked_budget,
        )
        accel.enabled()  # POLC_ACCEL read (and refused when it cannot be understood) here, not at the first load
        self.policy_dir: str = config.policy_dir
        self.reload_interval: float = config.reload_interval
        self.reload: bool = config.reload
        self.strict: bool = config.strict
        self.trust = config.trust
        self.inotify: bool = config.inotify
        self.sweep_interval: float = config.sweep_interval
        self.background_load: bool | None = config.background_load
        self._watch_mode = WATCH_POLL if self.reload else WATCH_OFF
        self._watch_reason: str | None = None if self.reload else "reloading off"
        self._watcher: Watcher | None = None  # the running poller's, while it runs
        self._loader: threading.Thread | None = None  # the background loader, while it runs
        self.source: str | None = config.source
        self.pull_interval: float = config.pull_interval
        self._puller: Puller | None = None
        self._pull_loop: PullLoop | None = None
        if config.source is not None:
            from .fleet.puller import Puller

            # reads the directory only: nothing is fetched before start()
            self._puller = Puller(config.source, self.policy_dir, trust=config.trust, endpoint=config.endpoint)

        self._publish(EMPTY_SNAPSHOT)
        self.linked_budget: int = config.linked_budget
        self._poller = Poller(
            self.policy_dir,
            trust=self.trust,
            cache_size=config.cache_size,
            publish=self._publish,
            residency=Residency(config.linked_budget) if config.linked_budget else None,
        )
        self._lock = threading.Lock()  # serialises reload steps; checks never take it
        self._lock_owner: int | None = None  # ident of the thread running a step
        self._stop = threading.Event()  # the running poller's own stop flag
        self._thread: threading.Thread | None = None
        self._delivery = EventDelivery()
        self._ready = False
        self._guard: Any = None  # the guard installed for this agent (runtime/guard/), if any
        self._started = False
        fork.register(self)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> PolicyAgent:
        """Load every artifact, then start the poller (if reloading). Returns self.

        Bad artifacts are reported and their modules get ``_global`` rules
        only; with ``strict=True`` they raise :class:`PolicyLoadError`
        instead (nothing is started then). On an agent already started this
        only (re)starts the poller when it is not running: ``start()`` after
        :meth:`stop` resumes reloading with the policies already loaded.
        """
        watcher: Watcher | None = None
        catch_up = True  # the watcher was armed after the policies in force were read
        if not self._started:
            # Loading whole (strict, or asked to): every check before the first
            # answer, as strict refuses to start on any. Otherwise the artifacts'
            # own permissions are checked after the first load (in the loader
            # thread when there is one): a stat per file is start-up time.
            whole = self.strict or self.background_load is False
            self._check_permissions(files=whole)
            # Armed before the first load, so nothing that changes during it is missed.
            if self.reload and not self._poller_running():
                watcher = self._open_watcher()
                catch_up = False
            try:
                puller = self._puller
                if puller is not None and puller.mirror.in_force is None:
                    # nothing verified on disk yet: one pull first, so the first load has a set
                    puller.cycle()
                with gc_paused:  # linking in bulk: no full collections of the growing heap
                    result = self._poll(initial=True, lazily=not self.strict and self.background_load is not False)
                if self.strict and result.failed:
                    with self._lock:  # forget what this attempt saw, so a retry sees it all again
                        self._poller.forget()
                    raise PolicyLoadError(result.failed)
            except BaseException:
                if watcher is not None:
                    watcher.close()
                raise
            self._ready = True
            self._started = True
            if self._poller.loading is not None:
                self._start_loader()
            elif not whole:
                self._check_artifact_permissions()
        if self.reload and not self._poller_running():
            if catch_up:  # not tried above
                watcher = self._open_watcher()
            self._start_poller(watcher, catch_up)
            if watcher is not None:
                logger.info(
                    "watching %s for policy changes (inotify; safety-net sweep every %gs)",
                    self.policy_dir,
                    self.sweep_interval,
                )
            else:
                logger.info("watching %s for policy changes every %gs", self.policy_dir, self.reload_interval)
        if self._puller is not None:
            self._start_puller()
        return self

    # -- background loading ----------------------------------------------

    def _start_loader(self) -> None:
        thread = threading.Thread(target=self._load_rest, name="polc-loader", daemon=True)
        self._loader = thread
        thread.start()

    def _load_rest(self) -> None:
        """The loader thread: verify and link every pending artifact, in batches.

        Each artifact is examined outside the step lock (the pending table
        keeps the first outcome, whether a check or this thread got there
        first); each batch is committed under it, like a reload step.
        """
        poller = self._poller
        loading = poller.loading
        if loading is None:
            return
        try:
            with gc_paused:
                self._load_batches(poller, loading)
        except Exception:  # pragma: no cover - checks still link what they need on the spot
            logger.exception("background loading failed; modules not linked yet are linked when first checked")
        finally:
            if self._loader is threading.current_thread():
                self._loader = None

    def _load_batches(self, poller: Poller, loading: LazyModules) -> None:
        """The batches of :meth:`_load_rest`, with automatic collection paused."""
        self._check_artifact_permissions()
        order = load_order(self.policy_dir, sorted(poller.pending))
        at = 0
        count = 64  # sized from the rate measured, so that a batch takes about LOAD_COMMIT_S
        clock = time.monotonic
        while poller.loading is loading:
            with self._lock:
                if poller.loading is not loading:
                    return
                batch, at = poller.next_to_load(order, at, count)
            t0 = clock()
            found = [loading.resolve(name[: -len(".bin")]) for name in batch]
            took = clock() - t0
            if batch:
                count = max(16, min(LOAD_BATCH_MAX, int(len(batch) * LOAD_COMMIT_S / max(took, 1e-3))))
            upto = 0
            with self._lock:
                if poller.loading is not loading:
                    return
                events, _result = poller.commit_loaded(found)
                if events:
                    upto = self._delivery.queue(events)
            if upto:
                self._delivery.deliver(upto)
            gc.collect(1)  # the young generations, as the paused collector would have

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Wait until no module is pending (background loading done); True if so."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._poller.loading is not None:
            thread = self._loader
            if thread is None:
                return self._poller.loading is None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            thread.join(left if left is None else min(left, 0.05))
        return True

    def _open_watcher(self) -> Watcher | None:
        """An inotify watcher on the policy directory, or None (then the poller polls).

        Why not is recorded in ``status()["watch"]``; an inotify that should
        work and does not is also warned about and sent as a ``watch`` event.
        """
        if not self.inotify:
            self._set_watch(WATCH_POLL, "inotify turned off (inotify=False or POLC_INOTIFY)", warn=False)
            return None
        if not sys.platform.startswith("linux"):
            self._set_watch(WATCH_POLL, f"inotify is Linux only (this is {sys.platform})", warn=False)
            return None
        from .reload.inotify import Watcher

        try:
            watcher = Watcher(self.policy_dir)
        except OSError as exc:
            self._set_watch(WATCH_POLL, f"inotify unavailable: {exc.strerror or exc}", warn=True)
            return None
        self._set_watch(WATCH_INOTIFY, None, warn=False)
        return watcher

    def _set_watch(self, mode: str, reason: str | None, *, warn: bool) -> None:
        self._watch_mode = mode
        self._watch_reason = reason
        if not warn or reason is None:
            return
        text = f"{reason}; polling every {self.reload_interval:g}s"
        self._watch_reason = text
        logger.warning("change detection: %s: %s", self.policy_dir, text)
        event = ReloadEvent(WATCH, None, self.policy_dir, text)
        with self._lock:
            upto = self._delivery.queue([event])
        self._delivery.deliver(upto)


    def _start_puller(self) -> None:
        from .fleet.puller import PullLoop

        if self._pull_loop is None:
            self._pull_loop = PullLoop(self._pull_cycle, self.pull_interval, name="polc-puller")
        self._pull_loop.start()

    def _pull_cycle(self) -> CycleResult:
        """One pull; a switch commits under the step lock and reloads in the same step."""
        assert self._puller is not None
        return self._puller.cycle(around=self._commit_and_reload)

    def _commit_and_reload(self, commit: Callable[[], None]) -> None:
        self._poll(before=commit)

    def pull_now(self) -> CycleResult:
        """One pull cycle now (thread-safe with the pull thread); needs a ``source``."""
        if self._puller is None:
            raise RuntimeError("this agent has no source to pull from")
        return self._pull_cycle()

    def _poller_running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop.is_set()

    def _start_poller(
        self, watcher: Watcher | None = None, catch_up: bool = True, *, open_watcher: bool = False
    ) -> None:
        # Each poller has its own stop flag: a previous poller that is still
        # finishing a step after stop() sees its flag set and ends, whatever
        # the new one does. ``catch_up``: the watcher was armed after the
        # policies in force were read, so the first thing is a full step.
        stop = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(stop, watcher, catch_up, open_watcher), name="polc-reloader", daemon=True
        )
        self._stop = stop
        self._thread = thread
        self._watcher = watcher
        thread.start()

    def _check_permissions(self, files: bool = True) -> None:
        """Warn when others than root and this process can change the policies
        (docs/security.md); ``strict`` refuses to start instead. ``files=False``:
        the directory, its parents and the trust file only (the artifacts are
        checked by :meth:`_check_artifact_permissions`, later)."""
        from .signing.permissions import check_directory_permissions, check_file_permissions

        problems = check_directory_permissions(self.policy_dir, files=files)
        source = getattr(self.trust, "source", None)
        if source:
            problems += [f"trust file {p}" for p in check_file_permissions(source)]
        for problem in problems:
            logger.warning("unsafe permissions: %s", problem)
        if self.strict and problems:
            raise PolicyLoadError([ReloadFailure(self.policy_dir, None, f"unsafe permissions: {p}") for p in problems])

    def _check_artifact_permissions(self) -> None:
        """Warn about artifacts others can rewrite (one stat each: off the start-up
        path of a large directory, which the loader thread checks first)."""
        from .signing.permissions import check_artifact_permissions

        for problem in check_artifact_permissions(self.policy_dir):
            logger.warning("unsafe permissions: %s", problem)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the poller and wait for it (up to ``timeout``); idempotent.

        Checks keep working, and :meth:`start` starts a new poller.
        """
        self._stop.set()
        watcher = self._watcher
        if watcher is not None:
            watcher.wake()
        if self._pull_loop is not None:
            self._pull_loop.stop(timeout)
        if self._puller is not None:
            self._puller.close()
        thread = self._thread
        self._thread = None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> PolicyAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(
        self, stop: threading.Event, watcher: Watcher | None, catch_up: bool, open_watcher: bool = False
    ) -> None:
        if watcher is None and open_watcher and not stop.is_set():
            watcher = self._watcher = self._open_watcher()
        if watcher is not None:
            try:
                if self._watch(stop, watcher, catch_up):
                    return
            finally:
                watcher.close()
                if self._watcher is watcher:
                    self._watcher = None
        while not stop.wait(self.reload_interval):
            try:
                self._poll(tick=True)
            except Exception:  # the poller must survive anything
                logger.exception("policy reload step failed; retrying in %gs", self.reload_interval)

    def _watch(self, stop: threading.Event, watcher: Watcher, catch_up: bool) -> bool:
        """The poller woken by inotify; the full step (the safety net) every sweep_interval.

        Returns True when stopped, False when the watch was lost for good (the
        caller then polls).
        """
        from .reload.inotify import WatchUnavailable

        clock = time.monotonic
        poller = self._poller
        next_sweep = clock() + self.sweep_interval
        if catch_up:
            self._poll_quietly()
        while not stop.is_set():
            wait = next_sweep - clock()
            recheck = poller.recheck
            if recheck:  # racy or unreadable files: sooner than the safety net
                racy = any(st is not None and st.racy for st in map(poller.files.get, recheck))
                wait = min(wait, RECHECK_RACY_S if racy else self.reload_interval)
            try:
                ready = watcher.ready(max(0.0, wait))
                if stop.is_set():
                    return True
                with fast_switch:  # from here every system call gets the GIL back quickly
                    changes = watcher.read() if ready else None
                    if changes is None or not changes:
                        if clock() >= next_sweep:
                            if not watcher.still_armed():
                                watcher.arm_dir()
                            self._poll()
                            next_sweep = clock() + self.sweep_interval
                        elif poller.recheck:
                            self._poll(names=list(poller.recheck))
                        continue
                    if changes.full:
                        self._poll()
                        next_sweep = clock() + self.sweep_interval
                        continue
                    if changes.relist:
                        self._poll(sweep=False)
                    if changes.names:
                        self._poll(names=changes.names)
            except WatchUnavailable as exc:
                self._set_watch(WATCH_POLL, f"inotify watch lost: {exc.strerror or exc}", warn=True)
                return False
            except Exception:  # the poller must survive anything
                logger.exception("policy reload step failed; retrying in %gs", self.reload_interval)
                if stop.wait(self.reload_interval):
                    return True
        return True

    def _poll_quietly(self) -> None:
        try:
            self._poll()
        except Exception:
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

    def require(self, module: str, capability: str, *args: object) -> Decision:
        """:meth:`check`, raising :class:`~polc.runtime.PolicyDenied` on a deny.

        Returns the Decision when the request is allowed, including a deny
        of a module in audit mode (allowed, ``audit=True``, logged as "would
        deny"): audit mode never raises. The exception's ``package`` and
        ``site`` are None (an explicit check names no Python package).
        """
        d = self.check(module, capability, *args)
        if d.allowed:
            return d
        raise PolicyDenied(d, module, capability, args)

    def requires(self, module: str | Callable[..., str], capability: str, *args: object) -> Callable[[_F], _F]:
        """Decorator: :meth:`require` before every call of the decorated function.

        ``module`` and each of ``args`` is either a value or a callable that
        computes it from the call: it is called with the function's
        arguments bound by name (defaults applied), so it can take what it
        needs and ignore the rest::

            @agent.requires("tenant.acme", "fs.read", "config", lambda path, **_: path)
            def load(path, *, encoding="utf-8"): ...

            @agent.requires(lambda tenant, **_: tenant, "network.outbound", lambda url, **_: host(url), 443)
            async def fetch(tenant, url): ...

        Capability arguments are strings and integers, so a callable is
        never a value. A coroutine function stays one; it is checked when
        its coroutine starts, before its body (the awaiting code gets the
        PolicyDenied). A
        callable that raises propagates its exception and the function does
        not run.
        """
        if not isinstance(capability, str):
            raise TypeError(f"requires(): the capability must be a string, not {type(capability).__name__}")
        computed = callable(module) or any(callable(a) for a in args)
        import inspect  # only decorating needs it; `import polc.runtime.agent` stays light

        def decorate(fn: _F) -> _F:
            signature = inspect.signature(fn) if computed else None

            def request(call_args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> None:
                if signature is None:
                    self.require(cast(str, module), capability, *args)
                    return
                bound = signature.bind(*call_args, **call_kwargs)
                bound.apply_defaults()
                named = bound.arguments
                mod = module(**named) if callable(module) else module
                values = tuple(a(**named) if callable(a) else a for a in args)
                self.require(mod, capability, *values)

            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def checked_async(*a: Any, **kw: Any) -> Any:
                    request(a, kw)
                    return await fn(*a, **kw)

                return cast(_F, checked_async)

            @functools.wraps(fn)
            def checked(*a: Any, **kw: Any) -> Any:
                request(a, kw)
                return fn(*a, **kw)

            return cast(_F, checked)

        return decorate

    @property
    def snapshot(self) -> Snapshot:
        """The policy set in force now (immutable)."""
        return self._snapshot

    def _publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        # The one assignment readers see: ``agent.check`` is the new snapshot's
        # check (an instance attribute shadowing the method above: its bound
        # method, or the C accelerator's equivalent, Snapshot.fast_check), so a
        # check reads the snapshot exactly once and pays no extra frame.
        self.check = snapshot.fast_check  # type: ignore[method-assign]  # the documented swap

    # -- reloading ---------------------------------------------------------

    def reload_now(self) -> ReloadResult:
        """Run one poll step now (thread-safe with the poller)."""
        return self._poll()

    def subscribe(self, callback: Callable[[ReloadEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` after every reload event; returns an unsubscribe function.

        Callbacks run on the thread that reloads (the poller, or the caller
        of ``reload_now``/``start``); one that raises is logged and ignored.
        """
        delivery = self._delivery
        with self._lock:
            delivery.subscribers = (*delivery.subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                subs = list(delivery.subscribers)
                if callback in subs:
                    subs.remove(callback)
                delivery.subscribers = tuple(subs)

        return unsubscribe

    def status(self) -> dict[str, Any]:
        """A JSON-serialisable view of the agent and every module it knows."""
        poller = self._poller
        modules = poller.status_modules
        snap = self._snapshot
        return {
            "policy_dir": self.policy_dir,
            "reload": self.reload,
            "reload_interval": self.reload_interval,
            "strict": self.strict,
            "ready": self._ready,
            "last_reload": poller.last_reload,
            "reloads": {"ok": poller.reloads_ok, "failed": poller.reloads_failed},
            "watch": {
                "mode": self._watch_mode,
                "reason": self._watch_reason,
                "sweep_interval": self.sweep_interval if self._watch_mode == WATCH_INOTIFY else None,
            },
            "directory_error": poller.dir_error,
            "unavailable": snap.unavailable if self._ready else None,
            "loading": poller.loading_status(),
            "linked": poller.linked_status(),
            # packages two modules in force claim: everything they do is denied (docs/runtime.md)
            # while modules are pending, {}: the claims of the whole set would link them all here
            "claim_conflicts": {p: list(names) for p, names in snap.conflicts.items()} if snap.pending is None else {},
            "modules": {name: dict(info) for name, info in sorted(modules.items())},
            "source": self._puller.status() if self._puller is not None else None,
            **({"guard": self._guard.status()} if self._guard is not None else {}),
        }

    # -- the guard -----------------------------------------------------------

    def guard(
        self,
        *,
        roots: Mapping[str, str] | None = None,
        mode: str = "enforce",
        observe: str | os.PathLike[str] | None = None,
        unlisted: str = "allow",
        base: str | os.PathLike[str] | None = None,
        log_interval: float = 60.0,
    ) -> Any:
        """Enforce this agent's policies on the operations of governed Python packages (docs/guard.md).

        Installs the process's one guard (a second call, or a call on
        another agent, raises ``GuardError``); the agent must be started.
        ``roots`` names directories for ``fs.*`` rules (``{"config":
        "/etc/myapp"}``); other roots are directories relative to ``base``
        (default: the working directory now). ``mode="audit"`` logs "would
        deny" instead of denying; ``observe`` appends every distinct
        operation to a JSONL file; ``unlisted="global"`` governs third-party
        packages no module names by ``_global`` alone. Returns the
        :class:`polc.runtime.guard.Guard`.
        """
        from .guard import install

        return install(
            self, roots=roots, mode=mode, observe=observe, unlisted=unlisted, base=base, log_interval=log_interval
        )

    def _poll(
        self,
        initial: bool = False,
        before: Callable[[], None] | None = None,
        *,
        sweep: bool = True,
        names: Iterable[str] | None = None,
        lazily: bool = False,
        tick: bool = False,
    ) -> ReloadResult:
        """One step under the step lock, then the delivery of its events.

        ``before`` runs first under the same lock (a pulled set's switch), so
        the step sees the whole new set and no step sees half of it.
        ``names``: examine only those entries (what inotify reported);
        ``sweep=False``: list the directory, no sweep (a ``..data`` swap);
        ``tick``: one tick of the polling loop (the sweep only when due).
        """
        upto = 0
        with self._lock:
            self._lock_owner = threading.get_ident()
            try:
                if before is not None:
                    before()
                with fast_switch:
                    if tick:
                        events, result = self._poller.run_tick(self.sweep_interval)
                    elif names is not None:
                        events, result = self._poller.run_names(names)
                    elif initial and lazily:
                        threshold = BACKGROUND_MIN if self.background_load is None else 0
                        events, result = self._poller.run_initial_lazily(threshold)
                    elif sweep:
                        events, result = self._poller.run_step(initial)
                    else:
                        events, result = self._poller.run_step(initial, sweep=False)
                if events:
                    upto = self._delivery.queue(events)  # in commit order, under the step lock
            finally:
                self._lock_owner = None
        if events:
            self._delivery.deliver(upto)
        return result

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else ("loaded" if self._ready else "new")
        return f"<PolicyAgent {self.policy_dir!r} {state}, {len(self._poller.in_force)} modules>"

    # -- fork (reload/fork.py calls these) ----------------------------------

    def _fork_prepare(self) -> bool:
        """Before os.fork(): hold the step lock, so the child inherits no half-done step.

        Returns whether it is held for the fork. Not when this thread runs a
        step itself (a log handler that forks: the step goes on in the child),
        nor after FORK_STEP_WAIT_S (a step stuck on a hung filesystem).
        """
        if self._lock_owner == threading.get_ident():
            return False
        return self._lock.acquire(timeout=fork.FORK_STEP_WAIT_S)

    def _fork_parent(self, held: bool) -> None:
        if held:
            self._lock.release()

    def _stepping_on(self, ident: int) -> bool:
        return self._lock_owner == ident

    def _fork_child(self, held: bool) -> None:
        """In the child of os.fork(): new locks, a new poller, nothing of the parent's threads.

        Only the forking thread exists in the child. Every lock another thread
        could have held is replaced; a step that was running on another thread
        (``held`` false, not ours) left its state torn, so it is rebuilt from
        the policy in force. Events committed but not delivered in the parent
        are delivered by the child's next step.
        """
        me = threading.get_ident()
        watcher = self._watcher
        thread = self._thread
        if watcher is not None and not (thread is not None and thread is threading.current_thread()):
            watcher.close()  # the parent's poller thread is not here: its inotify instance goes
            self._watcher = None
        if held or self._lock_owner != me:
            self._lock = threading.Lock()
            if not held:
                self._poller.resync()
            self._lock_owner = None
        self._delivery.after_fork_in_child()
        if self._poller.residency is not None:
            self._poller.residency.after_fork_in_child()  # a check thread of the parent may have held its lock
        if self._puller is not None:
            # one process pulls into a directory: the child enforces what the parent's pulls switch
            self._puller._lock = threading.Lock()
            self._pull_loop = None
        thread = self._thread
        if thread is not None and thread is threading.current_thread():
            return  # a subscriber on the poller thread forked: it goes on polling here
        running = thread is not None and not self._stop.is_set()
        self._thread = None
        self._stop = threading.Event()
        if self._poller.loading is not None:
            self._start_loader()  # the parent's loader is not here
        else:
            self._loader = None
        if running and self.reload:
            # The watcher is opened on the new thread, not in this at-fork hook.
            self._start_poller(None, True, open_watcher=self.inotify)
