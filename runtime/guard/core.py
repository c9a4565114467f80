"""The guard: one audit hook, attribution by stack inspection, decisions with the agent's snapshot.

The hook (:meth:`Guard.hook`) looks the event up in a table of handlers
(runtime/guard/events.py); an event no handler wants costs that one lookup.
A handled event runs with a per-thread re-entrancy flag set, so events the
guard raises itself (``sys._getframe``, ``frame.f_code``, the ``open`` of a
path it resolves, a log line) are ignored and the guard never recurses. A
handler turns the event into a policy request, attributes it
(:meth:`Guard.attribute`) and decides it for every governed package
attributed (:meth:`Guard.decide`): the first deny raises
:class:`~polc.runtime.PolicyDenied` out of the hook, so the operation does
not happen.

Attribution walks ``f_back`` from the frame that called the operation to
the outermost one, every frame. Module classifications and remembered
file-system decisions belong to one policy snapshot and are dropped when
the agent swaps it. Where the C hook (runtime/guard/_hook.c) is installed it
calls :meth:`Guard.hook` only for events it cannot tell need nothing
(runtime/guard/accel.py); the classification it reads is this guard's.
"""

from __future__ import annotations

import _thread
import contextlib
import itertools
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from ..enforce.decision import Decision
from ..enforce.snapshot import Snapshot
from ..errors import PolcError, PolicyDenied
from .attribution import INHERITED, POLC, Classifier, Inherited, Owner, frame_site
from .effects import ALLOWED, DENIED, WOULD_DENY, Counters, Limiter, Observer, shown_request
from .paths import PathResolver, RootMap, Undecidable

__all__ = ["Guard", "GuardError"]

logger = logging.getLogger("polc.guard")

_MISS = object()
_dict_get = dict.get
_MAX_NAMES = 16384
_MAX_FS = 65536

# Found: security module -> (package, innermost frame of it, or the site of a hand-off)
Found = dict[str, tuple[str, "FrameType | str"]]


class GuardError(PolcError, RuntimeError):
    """The guard cannot be installed as asked (a second guard, an agent not started, bad settings)."""


class _Faults:
    """A guard fault of each kind is logged once per minute with its traceback."""

    def __init__(self) -> None:
        self.limiter = Limiter(60.0)


class Guard:
    """The installed guard of one process (``PolicyAgent.guard(...)`` makes it)."""

    def __init__(
        self,
        agent: Any,
        *,
        roots: Mapping[str, str] | None = None,
        mode: str = "enforce",
        observe: str | os.PathLike[str] | None = None,
        unlisted: str = "allow",
        base: str | os.PathLike[str] | None = None,
        log_interval: float = 60.0,
    ) -> None:
        if mode not in ("enforce", "audit"):
            raise GuardError(f"guard mode must be 'enforce' or 'audit', not {mode!r}")
        if unlisted not in ("allow", "global"):
            raise GuardError(f"unlisted must be 'allow' or 'global', not {unlisted!r}")
        root_map: dict[str, str] = {}
        for name, directory in dict(roots or {}).items():
            if type(name) is not str or not name or not isinstance(directory, (str, os.PathLike)):
                raise GuardError(f"root {name!r}: give a name and a directory")
            path = os.fspath(directory)
            if not isinstance(path, str) or not os.path.isabs(path):
                raise GuardError(f"root {name}: {path!r} is not an absolute directory")
            if name in (".", "/"):
                raise GuardError(f"root name {name!r} is reserved (the base directory and the file-system root)")
            root_map[name] = path
        if not (isinstance(log_interval, (int, float)) and log_interval >= 0):
            raise GuardError("log_interval must be a number of seconds >= 0")
        base_dir = os.path.abspath(os.fspath(base)) if base is not None else os.getcwd()
        self.agent = agent
        self.mode = mode
        self.unlisted = unlisted
        self.base = base_dir
        self.roots = RootMap(root_map, base_dir)
        self.policy_dir = os.path.realpath(agent.policy_dir).rstrip("/") + "/"
        self.observer = Observer(os.fspath(observe)) if observe is not None else None
        self.counters = Counters()
        self.limiter = Limiter(float(log_interval))
        self.faults = _Faults()
        self.paths = PathResolver()
        self._audit = mode == "audit"
        self._busy: set[int] = set()
        self._no_inherit: set[int] = set()  # threads inside an executor's submit (workers inherit nothing)
        # a name lookup decided in the hook, waiting for its answer in the wrapper: thread -> (host, name, modules)
        self.pending_lookups: dict[int, tuple[object, str, tuple[str, ...]]] = {}
        self.resolved: dict[str, dict[str, set[str]]] = {}  # security module -> address -> names
        self._resolved_lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._names: dict[str, Owner | None] = {}
        self._fs: dict[tuple[str, str, str], tuple[Decision, tuple[str, str]]] = {}
        self._fs_of: tuple[Snapshot | None, dict[tuple[str, str, str], tuple[Decision, tuple[str, str]]]] = (
            None,
            self._fs,
        )  # as _memo_of below: the snapshot whose decisions alone go in _fs
        # requests the current snapshot allowed by itself (no audit rule, no observer), keyed as
        # (capability, module, package, what, detail): the counter to advance and until when the
        # allow holds (time.monotonic()); the C hook answers a repeat from here (Guard.remember)
        self.memo: dict[tuple[object, ...], tuple[itertools.count[int], float]] = {}
        # the memo with the snapshot whose decisions alone go in it (one attribute: a remember
        # racing a switch in another thread sees both old or both new, never a mix)
        self._memo_of: tuple[Snapshot | None, dict[tuple[object, ...], tuple[itertools.count[int], float]]] = (
            None,
            self.memo,
        )
        self._classifier: Classifier | None = None
        # the classifier with the names table it fills (as _memo_of: one attribute)
        self._classes_of: tuple[Classifier | None, dict[str, Owner | None]] = (None, self._names)
        # thread -> the frame walks stop at (not classified): a detached call's (wrappers.detached)
        self.stops: dict[int, FrameType] = {}
        self.accel: Any = None  # the C hook's module (runtime/guard/accel.py), once installed with it
        self._walk: Callable[[FrameType, dict[str, Owner | None], FrameType | None], Any] | None = None
        self.handlers: dict[str, Callable[[Guard, tuple[Any, ...], FrameType, int], None]] = {}
        self.hook = self._make_hook()

    # -- the hook -----------------------------------------------------------

    def _make_hook(self) -> Callable[[str, tuple[Any, ...]], None]:
        getframe = sys._getframe

        def polc_guard_hook(event: str, args: tuple[Any, ...]) -> None:
            if event in handlers:
                try:
                    frame = getframe(1)
                except ValueError:  # no Python caller: the interpreter itself (running the main script)
                    frame = None
                run(event, args, frame)

        handlers = self.handlers
        run = self.from_c = self._make_run()
        return polc_guard_hook

    def _make_run(self) -> Callable[[str, tuple[Any, ...], FrameType | None], None]:
        """What the hook does for a handled event raised from ``frame``; the C hook
        (runtime/guard/_hook.c) calls it directly, with the frame."""
        handlers_get = self.handlers.get
        busy = self._busy
        get_ident = _thread.get_ident
        guard = self

        def polc_guard_run(event: str, args: tuple[Any, ...], frame: FrameType | None) -> None:
            handler = handlers_get(event)
            if handler is None:
                return
            tid = get_ident()
            if tid in busy:
                return
            busy.add(tid)
            try:
                handler(guard, args, frame, tid)  # type: ignore[arg-type]  # handlers accept None
            except PolicyDenied:
                raise
            except Undecidable as exc:  # a request the guard cannot put to the policy: denied, saying why
                guard.undecided(event, exc)
            except Exception as exc:  # a fault in the guard: denied (enforce), never a crash
                guard.fault(event, exc)
            finally:
                busy.discard(tid)

        return polc_guard_run

    def busy(self, tid: int) -> bool:
        return tid in self._busy

    def run_guarded(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` (a Python-level wrapper's check) as the hook runs a handler."""
        tid = _thread.get_ident()
        busy = self._busy
        if tid in busy:
            return
        busy.add(tid)
        try:
            fn(*args, tid)
        except PolicyDenied:
            raise
        except Undecidable as exc:
            self.undecided(getattr(fn, "__name__", "wrapper"), exc)
        except Exception as exc:
            self.fault(getattr(fn, "__name__", "wrapper"), exc)
        finally:
            busy.discard(tid)

    def fault(self, what: str, exc: Exception) -> None:
        self.counters.fault()
        with contextlib.suppress(Exception):
            self.faults.limiter.log(
                ("fault", what, type(exc).__name__),
                logging.ERROR,
                f"guard fault while checking {what} ({type(exc).__name__}: {exc}); "
                + ("denied" if not self._audit else "would deny (audit mode)"),
            )
        if not self._audit:
            d = Decision(False, "deny", f"guard fault: {type(exc).__name__}: {exc}", None, "<guard>")
            raise PolicyDenied(d, "<guard>", what, ()) from exc

    def undecided(self, what: str, exc: Undecidable) -> None:
        """A governed package's request that cannot be put to the policy (a path of an unknown
        type, a malformed address): denied with the reason (audit mode: would deny)."""
        self.limiter.log(("undecided", what, str(exc)), logging.WARNING if not self._audit else logging.INFO,
                         f"{'would deny' if self._audit else 'denied'} {what}: cannot decide: {exc}")  # fmt: skip
        if not self._audit:
            d = Decision(False, "deny", f"cannot decide: {exc}", None, "<guard>")
            raise PolicyDenied(d, "<guard>", what, ()) from None

    # -- attribution --------------------------------------------------------

    def _switch(self, snap: Snapshot) -> None:
        """A new snapshot: what was classified and decided for the old one goes."""
        names: dict[str, Owner | None] = {}
        self._names = names
        fs: dict[tuple[str, str, str], tuple[Decision, tuple[str, str]]] = {}
        self._fs = fs
        self._fs_of = (snap, fs)
        memo: dict[tuple[object, ...], tuple[itertools.count[int], float]] = {}
        self.memo = memo
        self._memo_of = (snap, memo)
        classifier = Classifier(snap.governor, unlisted_global=self.unlisted == "global", base=self.base)
        self._classifier = classifier
        self._classes_of = (classifier, names)
        self._snap = snap
        if self.accel is not None:
            self.accel.set_names(names, snap, memo)  # this switch's own (another thread may switch meanwhile)

    def snapshot(self) -> Snapshot:
        snap: Snapshot = self.agent._snapshot
        if snap is not self._snap:
            self._switch(snap)
        return snap

    def _classify(self, name: object, g: dict[str, Any]) -> Owner | None:
        if type(name) is not str:
            return None
        # the classifier and the table of one snapshot (another thread may switch meanwhile: a
        # name classified under the old snapshot must not go in the new one's table)
        classifier, names = self._classes_of
        assert classifier is not None
        owner = classifier.classify(name, _dict_get(g, "__file__"))
        if len(names) >= _MAX_NAMES:
            names.clear()
        names[name] = owner
        if self.accel is not None:
            # the table changed in place (an entry the C hook remembered a verdict by may be gone,
            # or back with another owner after the clear): its verdicts must be looked up again
            self.accel.bump()
        return owner

    def attribute(self, f: FrameType | None, tid: int) -> tuple[Found | None, bool]:
        """The governed packages of the stack from ``f`` outwards, and the inherited ones.

        Returns ``(found, polc_inner)``: ``found`` maps each security module
        to its package and innermost frame (or the hand-off's site), None
        when nothing governed is attributed; ``polc_inner`` is whether a
        frame of polc itself is inner to every governed frame.
        """
        if self.agent._snapshot is not self._snap:
            self._switch(self.agent._snapshot)
        stop = self.stops.get(tid) if self.stops else None
        walk = self._walk
        walked = walk(f, self._names, stop) if walk is not None and f is not None else None
        if walked is not None:  # the C walk (runtime/guard/_hook.c): the same result, without frame objects
            found, polc_inner = walked
            f = None
        else:
            found = None
            polc_inner = False
        names_get = self._names.get
        last = None
        while f is not None:
            if f is stop:
                break
            g = f.f_globals
            if g is not last:
                last = g
                name = _dict_get(g, "__name__")
                o = names_get(name, _MISS) if type(name) is str else None
                if o is _MISS:
                    o = self._classify(name, g)
                if o is not None:
                    if o is POLC:
                        if found is None:
                            polc_inner = True
                    else:
                        module = o[0]  # type: ignore[index]
                        if found is None:
                            found = {module: (o[1], f)}  # type: ignore[index]
                        elif module not in found:
                            found[module] = (o[1], f)  # type: ignore[index]
                        # the rest of this run of the module's frames: the innermost one counts
                        f = f.f_back
                        while f is not None and f is not stop and f.f_globals is g:
                            f = f.f_back
                        continue
            f = f.f_back
        inherited = INHERITED.get()
        if inherited:
            if found is None:
                found = {}
            for (module, package), site in inherited:
                if module not in found:
                    found[module] = (package, site)
        return found, polc_inner

    def inherit(self, f: FrameType | None, tid: int) -> Inherited | None:
        """What a hand-off started from ``f`` carries: the attributed packages and their sites."""
        found, _ = self.attribute(f, tid)
        if not found:
            return None
        return tuple(((m, p), self.site(p, where)) for m, (p, where) in found.items())

    @staticmethod
    def site(package: str, where: FrameType | str) -> str:
        return where if isinstance(where, str) else frame_site(where, package)

    # -- deciding -----------------------------------------------------------

    def decide(self, found: Found, capability: str, args: tuple[object, ...]) -> None:
        """Decide ``capability(*args)`` for every attributed module; raise on the first deny."""
        snap = self.snapshot()
        for module, (package, where) in found.items():
            self.apply(module, package, where, capability, args, snap.check(module, capability, *args))

    def apply(
        self,
        module: str,
        package: str,
        where: FrameType | str,
        capability: str,
        args: tuple[object, ...],
        d: Decision,
        shown: tuple[object, ...] | None = None,
    ) -> None:
        """The effect of one decision: counted, observed, logged; raises PolicyDenied on an enforced deny.

        ``shown``: the request as the observation log records it (default ``args``).
        """
        observer = self.observer
        if d.effect == "allow":
            self.counters.add(package, capability, ALLOWED)
            if observer is not None:
                self._observe(package, module, capability, args if shown is None else shown, "allow", where)
            return
        site = self.site(package, where)
        request = shown_request(capability, args)
        why = f"denied by {d.rule}" if d.rule else d.reason
        if d.audit or self._audit:
            self.counters.add(package, capability, WOULD_DENY)
            if observer is not None:
                self._observe(package, module, capability, args if shown is None else shown, "audit", site)
            message = f"would deny: {package} may not {request}: {why} ({site}) (audit mode)"
            self.limiter.log(("audit", package, capability, args), logging.INFO, message)
            return
        self.counters.add(package, capability, DENIED)
        if observer is not None:
            self._observe(package, module, capability, args if shown is None else shown, "deny", site)
        message = f"{package} may not {request}: {why} ({site})"
        self.limiter.log(("deny", package, capability, args), logging.WARNING, message)
        if d.allowed:  # an audit decision that reaches here cannot happen; fail closed anyway
            d = Decision(False, "deny", d.reason, d.rule, d.module, d.revision)
        raise PolicyDenied(d, module, capability, args, package=package, site=site)

    def _observe(
        self,
        package: str,
        module: str,
        capability: str,
        args: tuple[object, ...],
        decision: str,
        where: FrameType | str,
    ) -> None:
        observer = self.observer
        assert observer is not None
        key = (package, capability, args)
        if observer.seen(key):
            return
        observer.record(key, module, decision, self.site(package, where))

    def deny_always(self, found: Found, capability: str, args: tuple[object, ...], reason: str) -> None:
        """A request no policy can allow (self-protection): denied for every attributed package."""
        for module, (package, where) in found.items():
            self.apply(module, package, where, capability, args, Decision(False, "deny", reason, None, module))

    # -- file-system requests ----------------------------------------------

    def fs_decision(self, snap: Snapshot, module: str, capability: str, real: str) -> tuple[Decision, tuple[str, str]]:
        """The decision on a resolved path over every (root, path) spelling of it, remembered per snapshot.

        A deny rule matching any spelling decides; else an entitle matching
        any spelling allows; else the first spelling's "no entitlement".
        """
        key = (module, capability, real)
        hit = self._fs.get(key)
        if hit is not None:
            return hit
        check = snap.check
        allowed: tuple[Decision, tuple[str, str]] | None = None
        first: tuple[Decision, tuple[str, str]] | None = None
        result: tuple[Decision, tuple[str, str]] | None = None
        for root, rel in self.roots.candidates(real):
            d = check(module, capability, root, rel)
            if first is None:
                first = (d, (root, rel))
            if d.effect == "deny" and d.rule is not None:
                result = (d, (root, rel))
                break
            if allowed is None and d.effect == "allow":
                allowed = (d, (root, rel))
        if result is None:
            result = allowed or first
        assert result is not None
        owner, fs = self._fs_of
        if owner is not snap:
            return result  # the guard switched from snap meanwhile (another thread saw a reload)
        if len(fs) >= _MAX_FS:
            fs.clear()
        fs[key] = result
        return result

    def fs(self, found: Found, capability: str, real: str, remember: tuple[str, int, float, int] | None = None) -> None:
        """Decide ``capability`` on the resolved path ``real`` for every attributed module.

        ``remember``: ``(path, flags, until, generation)`` of an ``open`` whose allows may be
        remembered (the path as the event gave it, absolute; until when its resolution holds,
        and the resolver's generation it was made in)."""
        snap = self.snapshot()
        remembered = self._fs.get
        for module, (package, where) in found.items():
            hit = remembered((module, capability, real))
            d, spelled = hit if hit is not None else self.fs_decision(snap, module, capability, real)
            if d.effect == "allow" and self.observer is None:  # the common case, without a call
                if remember is not None and not d.audit:
                    self.remember(snap, capability, module, package, remember[0], remember[1], remember[2])
                    if self.paths.generation != remember[3]:
                        # a rename, removal, link, symlink or chdir in another thread since the
                        # path was resolved: not reused (written first, then checked: a change
                        # after the check clears the memo after the write)
                        self._memo_of[1].pop((capability, module, package, remember[0], remember[1]), None)
                self.counters.add(package, capability, ALLOWED)
                continue
            self.apply(module, package, where, capability, spelled, d)

    def paths_changed(self) -> None:
        """Something in this process renamed, removed or linked a file: every path is resolved
        again, and nothing remembered is reused (opens were remembered by the path as given)."""
        self.paths.changed()  # the generation first, then the memo (Guard.fs checks in that order's reverse)
        self._memo_of[1].clear()

    def remember(
        self, snap: Snapshot, capability: str, module: str, package: str, what: str, detail: object, until: float
    ) -> None:
        """Remember that ``snap`` allowed ``capability`` for ``module`` (``package``'s frame
        innermost) by itself, for the request keyed by ``what`` and ``detail`` as the event
        gave them (exact str, and an int, bytes or None), until ``until`` (monotonic). Only for
        a quiet guard (no observer): every request is logged otherwise. Nothing is remembered
        when the guard has switched from ``snap`` since (another thread saw a reload while this
        was decided): the new snapshot's memo holds its own decisions only."""
        owner, memo = self._memo_of
        if owner is not snap:
            return
        if len(memo) >= _MAX_FS:
            memo.clear()
        memo[(capability, module, package, what, detail)] = (self.counters.counter(package, capability, ALLOWED), until)

    def in_policy_dir(self, real: str) -> bool:
        return (real + "/").startswith(self.policy_dir)

    # -- status and lifecycle ------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "hook": "C" if self.accel is not None else "Python",
            "unlisted": self.unlisted,
            "base": self.base,
            "roots": {name: directory for name, directory in self.roots.roots},
            "observe": self.observer.path if self.observer is not None else None,
            "observed": self.observer.written if self.observer is not None else 0,
            "faults": self.counters.faults,
            "packages": self.counters.snapshot(),
        }

    def after_fork_in_child(self) -> None:
        """Only the forking thread exists in a child: forget the others' flags and locks."""
        me = _thread.get_ident()
        self._busy.intersection_update({me})
        self._no_inherit.intersection_update({me})
        self.pending_lookups.clear()
        for tid in [t for t in self.stops if t != me]:
            self.stops.pop(tid, None)
        self._resolved_lock = threading.Lock()
        self.counters.reset_after_fork()
        self.limiter.reset_after_fork()
        self.faults.limiter.reset_after_fork()
        if self.observer is not None:
            self.observer.reset_after_fork()

    # -- names the handlers and wrappers share ------------------------------

    no_inherit = property(lambda self: self._no_inherit)

    def remember_addresses(self, modules: tuple[str, ...], host: str, addresses: list[str]) -> None:
        """Addresses an entitled name resolved to, per security module (connects to them are allowed)."""
        with self._resolved_lock:
            for module in modules:
                table = self.resolved.get(module)
                if table is None:
                    table = self.resolved[module] = {}
                if len(table) >= 4096:
                    table.clear()
                for addr in addresses:
                    names = table.get(addr)
                    if names is None:
                        names = table[addr] = set()
                    if len(names) < 64:
                        names.add(host)

    def names_for(self, module: str, address: str) -> tuple[str, ...]:
        with self._resolved_lock:
            names = self.resolved.get(module, {}).get(address)
            return tuple(sorted(names)) if names else ()

