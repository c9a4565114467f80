"""The snapshot: an immutable set of linked modules, its plans and its decision cache.

The agent publishes a :class:`Snapshot` with one attribute assignment.
It owns the decision cache and the per-(module, capability) plans, so a
swap invalidates both by construction. Readers never lock: they read the
agent's snapshot once per check and only ever see one complete policy set.

Semantics (docs/design.md): denies of ``_global`` then of the module (first
matching rule in source order decides), then entitles of the module then of
``_global``, else ``no entitlement``; a deny decided by an artifact in
``mode audit`` is returned allowed, flagged ``audit`` and logged as "would
deny". ``check`` never raises.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol

from .. import patterns
from ..catalog import BUILTINS, COMMAND, GLOBAL_MODULE, ROOTED_AT_SLASH
from .accel import module as _accel_module
from .accel import required as _accel_required
from .deciders import Decider
from .decision import Decision
from .link import LinkedModule
from .normalize import int_text
from .plan import Plan
from .resident import Residency

__all__ = ["CACHE_BYTES", "CONFLICT_PREFIX", "EMPTY_SNAPSHOT", "FAULTS", "FaultLog", "Pending", "Snapshot"]

logger = logging.getLogger("polc")


def _shown_arg(a: object) -> str:
    """A request argument for a log line: short, and no method of the value runs."""
    if type(a) is str:
        return patterns.shown(a, 100)
    if type(a) is int:
        return int_text(a)
    if a is None or type(a) is bool or type(a) is float:
        return repr(a)
    return f"<{patterns.type_name(a)}>"


def _log_audit(d: Decision, capability: str, args: tuple[object, ...]) -> None:
    if logger.isEnabledFor(logging.INFO):
        shown = ", ".join(map(_shown_arg, args[:8])) + (", ..." if len(args) > 8 else "")
        where = f" at {d.rule}" if d.rule else ""
        logger.info("would deny %s %s(%s): %s%s (audit mode)", d.module, capability, shown, d.reason, where)


class FaultLog:
    """Rate-limited reports of faults met while checking: each kind (a fixed, small set)
    is logged at most once per ``interval`` seconds; the next report says how many
    were not logged in between. Bad input must not be able to flood the log."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def report(self, kind: str, level: int, message: str, exc: BaseException | None = None) -> bool:
        """Log ``message`` unless ``kind`` was logged less than ``interval`` ago; True if logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._last[kind] = now
            skipped = self._suppressed.pop(kind, 0)
        if skipped and last is not None:  # only counted while a report of the kind was recent
            message += f" ({skipped} more like this in the last {now - last:.0f} s were not logged)"
        else:
            message += f" (logged at most once every {self.interval:g} s)"
        with contextlib.suppress(Exception):  # a broken handler must not reach the caller
            logger.log(level, "%s", message, exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)
        return True

    def reset(self) -> None:
        with self._lock:
            self._last.clear()
            self._suppressed.clear()


FAULTS = FaultLog()
_MAX_PLANS = 65536
_NAME_MAX = 255  # no module or capability name is longer (runtime/format/opcodes.py)

# The decision cache is bounded by entries and by an estimate of the bytes its
# keys and decisions hold: one entry costs _CACHE_ENTRY_BASE (two tuples, a dict
# slot, the str and Decision objects' headers; measured with tracemalloc in
# tests/runtime/enforce/test_enforcer_hardening.py) plus the characters of its strings. An entry
# that would cost more than _CACHE_ENTRY_MAX is not cached at all.
CACHE_BYTES = 32 << 20
_CACHE_ENTRY_BASE = 300
_CACHE_ENTRY_MAX = 8192


_VOLATILE_BUILTINS = frozenset(n for n, c in BUILTINS.items() if COMMAND in (p.type for p in c.params))

_Key = tuple[object, object, tuple[object, ...]]  # (module, capability, args)

# What Snapshot.governor returns for a package that two modules claim: a name no
# module can have (runtime/format/opcodes.py's MODULE_NAME has no '!'), whose every
# check is denied with the reason (fail closed: neither claimant's rules apply).
CONFLICT_PREFIX = "!conflict:"


def _claims(modules: Mapping[str, LinkedModule]) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Package name -> governing module, and the conflicts: package -> the modules claiming it.

    Each module claims its own name and every ``governs`` name; a name claimed
    by two different modules maps to ``CONFLICT_PREFIX + name``.
    """
    claims = {name: name for name in modules}  # own names: unique, as the keys of ``modules`` are
    multiple: dict[str, set[str]] = {}
    get = claims.get
    for name, mod in modules.items():
        for claim in mod.governs:
            owner = get(claim)
            if owner is None:
                claims[claim] = name
            elif owner != name:
                found = multiple.get(claim)
                if found is None:
                    multiple[claim] = {owner, name}
                    claims[claim] = CONFLICT_PREFIX + claim
                else:
                    found.add(name)
    return claims, {claim: tuple(sorted(names)) for claim, names in multiple.items()}


class Pending(Protocol):
    """Modules of a snapshot not linked yet (``reload/loading.py``): linked on first use.

    ``linked(module)`` returns the module's policy, linking it now if need be,
    or None (not pending, or its artifact failed); it never raises, and
    answers the same for a module every time.
    """

    def linked(self, module: str) -> LinkedModule | None: ...

    def linked_all(self) -> dict[str, LinkedModule]:
        """Every pending module that links, linked now if need be (their claims: governor())."""
        ...


def _text_cost(s: str) -> int:
    return len(s) if s.isascii() else 4 * len(s)


def _module_text(module: object) -> str:
    """``Decision.module`` for a request whose module may not be a usable string."""
    if issubclass(type(module), str):  # the real type: a (hostile) __class__ is never consulted
        text = str.__str__(module)
        return text if len(text) <= patterns.SHOWN_MAX else text[: patterns.SHOWN_MAX] + "..."
    return f"<{patterns.type_name(module)}>"


def _rooted(decide: Decider) -> Decider:
    """``decide`` for a built-in whose path is rooted at '/' (catalog.ROOTED_AT_SLASH): an absolute
    path argument is taken as the path below '/' it names (``patterns.root_relative``), so
    ``native.load("/usr/lib/libssl.so.3")`` and ``native.load("usr/lib/libssl.so.3")`` are one request.
    (Built-in names cannot be redeclared, so the signature is always the built-in's: one path.)"""

    def rooted(args: tuple[object, ...]) -> Decision:
        if len(args) == 1:
            a = args[0]
            if type(a) is str and a.startswith("/"):
                with contextlib.suppress(ValueError):  # (a NUL byte) the path normaliser refuses it, saying why
                    args = (patterns.root_relative(a),)
        return decide(args)

    return rooted


def _listed(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class Snapshot:
    """An immutable set of linked modules, the unit that the agent swaps.

    ``check`` is safe to call from any number of threads without a lock: the
    snapshot's own state never changes after construction except for its memo
    dicts (decision cache, plans), whose entries are pure functions of the
    snapshot and are only ever added or cleared whole.

    ``cache_size`` bounds the decision cache by entries, ``cache_bytes`` by
    the (estimated) memory its entries hold; either 0 turns it off. Decisions
    about a capability with a ``command`` parameter depend on the file system:
    they are kept apart and for ``patterns.RESOLVE_TTL`` seconds at most.
    """

    # The cache, the timed cache and the plans are bounded by hand rather than
    # through memo.Memo: the cache by a byte budget as well as a count (and
    # cleared together with the timed cache), the plans together with the
    # Decision memos they share.
    __slots__ = (
        "__weakref__",
        "_accel",
        "_cache",
        "_cache_budget",
        "_cache_bytes",
        "_cache_size",
        "_checker",
        "_claims",
        "_conflicts",
        "_decisions",
        "_plans",
        "_residency",
        "_timed",
        "glob",
        "modules",
        "pending",
        "unavailable",
    )

    def __init__(
        self,
        modules: Mapping[str, LinkedModule],
        glob: LinkedModule | None = None,
        *,
        unavailable: str | None = None,
        cache_size: int = 65536,
        cache_bytes: int = CACHE_BYTES,
        pending: Pending | None = None,
        accel: bool | None = None,
        residency: Residency | None = None,
        _owned: bool = False,
    ) -> None:
        # ``_owned``: ``modules`` is a fresh dict this snapshot may keep (replace()),
        # not copied again (a copy of 100,000 entries is milliseconds per swap)
        self.modules: dict[str, LinkedModule] = modules if _owned and type(modules) is dict else dict(modules)
        self.modules.pop(GLOBAL_MODULE, None)
        self.glob = glob
        # Modules listed but not linked yet (background loading): a module not
        # in ``modules`` is looked up there, and linked on first use.
        self.pending = pending
        # A reason to deny every request (a _global that failed to load, no
        # load yet): without the global restrictions, nothing is decided.
        self.unavailable = unavailable
        self._cache: dict[_Key, Decision] = {}
        # decisions that depend on the file system: key -> (Decision, expiry)
        self._timed: dict[_Key, tuple[Decision, float]] = {}
        self._cache_budget = max(0, int(cache_bytes))
        self._cache_size = int(cache_size) if self._cache_budget else 0
        self._cache_bytes = 0
        self._plans: dict[tuple[str, str], Decider] = {}
        self._decisions: dict[str, dict[int, Decision]] = {}  # module -> its plans' shared Decision memo
        # package name -> governing module, built on the first governor() call (see there)
        self._claims: dict[str, str] | None = None
        self._conflicts: dict[str, tuple[str, ...]] = {}
        # The C accelerator (accel.py; None: the pure-Python path). ``accel`` None: POLC_ACCEL decides.
        self._accel: Any = _accel_module() if accel is None else (_accel_required() if accel else None)
        self._checker: Any = None
        # The budget of linked modules (resident.py): its evictions drop this snapshot's plans
        # of the module evicted, which hold its tables.
        self._residency = residency
        if residency is not None:
            residency.register(self)

    def forget_plans(self, module: LinkedModule) -> None:
        """Drop the plans and Decision memo built from ``module``'s tables (it was evicted:
        its next check builds them again, the same)."""
        name = module.name
        held = self.modules.get(name)
        if held is not None and held is not module:
            return  # another policy of the module (an older one evicted late)
        plans = self._plans
        for cap in module.caps:
            plans.pop((name, cap), None)
        self._decisions.pop(name, None)

    @property
    def fast_check(self) -> Callable[..., Decision]:
        """:meth:`check`, in C when the accelerator is on (the same decisions; what the agent
        publishes as ``agent.check``); the bound method itself when it is off."""
        checker = self._checker
        if checker is None:
            accel = self._accel
            if accel is None:
                return self.check
            cache = self._cache if self._cache_size else None
            checker = self._checker = accel.Checker(cache, self._plans, self._miss, _log_audit)
        fn: Callable[..., Decision] = checker
        return fn

    @property
    def accelerated(self) -> bool:
        """Are this snapshot's deciders and :attr:`fast_check` the C accelerator's?"""
        return self._accel is not None

    def replace(
        self,
        changed: Iterable[LinkedModule] = (),
        removed: Iterable[str] = (),
        *,
        glob: LinkedModule | Literal[False] | None = False,
        unavailable: str | Literal[False] | None = False,
        pending: Pending | Literal[False] | None = False,
    ) -> Snapshot:
        """A new snapshot with some modules replaced; this one is untouched (False: keep)."""
        modules = dict(self.modules)
        for name in removed:
            modules.pop(name, None)
        new_glob = self.glob if glob is False else glob
        for m in changed:
            if m.name == GLOBAL_MODULE:
                new_glob = m
            else:
                modules[m.name] = m
        return Snapshot(
            modules,
            new_glob,
            unavailable=self.unavailable if unavailable is False else unavailable,
            cache_size=self._cache_size,
            cache_bytes=self._cache_budget,
            pending=self.pending if pending is False else pending,
            accel=self._accel is not None,
            residency=self._residency,
            _owned=True,
        )

    def module(self, module: str) -> LinkedModule | None:
        """The linked policy of ``module`` in this snapshot (linking a pending one now), or None."""
        mod = self.modules.get(module)
        if mod is None and self.pending is not None:
            mod = self.pending.linked(module)
        return mod

    def check(self, module: str, capability: str, *args: object) -> Decision:
        # Only an exact str module and capability reach the cache and the plans: a str
        # subclass's own __eq__/__hash__ could match another module's key there. _miss
        # decides the rest (a subclass as the plain string it holds, anything else denied).
        if type(module) is not str or type(capability) is not str:
            return self._miss(module, capability, args, False)
        try:
            if self._cache_size:
                d = self._cache.get((module, capability, args))
                if d is not None:
                    # bool/float/Decimal values equal to an int share its hash and
                    # key: a hit counts only when every argument is a plain str/int.
                    for a in args:
                        if type(a) is not str and type(a) is not int:
                            break
                    else:
                        if d.audit:
                            _log_audit(d, capability, args)
                        return d
                return self._miss(module, capability, args, True)
            fn = self._plans.get((module, capability))
            if fn is not None:
                d = fn(args)
                if d.audit:
                    _log_audit(d, capability, args)
                return d
        except Exception:  # unhashable or misbehaving input, or a fault: decided (and reported) below
            pass
        return self._miss(module, capability, args, False)

    def governor(self, name: str) -> str | None:
        """The security module that governs the Python module whose ``__name__`` is ``name``.

        A module governs the Python modules whose dotted name equals its own
        name or a name its ``governs`` statement binds, or starts with one
        of them and a dot (``vendorlib`` governs ``vendorlib.http``, not
        ``vendorlibx``); the longest such name wins. ``_global`` governs
        nothing by name. None when no module governs ``name`` (or ``name``
        is not a string). A package two modules claim (two artifacts with
        the same ``governs`` name, or one whose ``governs`` name is another
        module's name) is governed by neither: the answer is
        ``CONFLICT_PREFIX + package``, a name for which :meth:`check`
        denies every request, saying which modules claim it.

        One dict lookup per dotted prefix of ``name``, longest first. The
        table is built once per snapshot, on the first call (snapshots that
        are never asked pay nothing); a race between two first calls builds
        it twice, identically.
        """
        claims = self._claims
        if claims is None:
            claims = self._build_claims()
        if type(name) is not str:
            given: object = name  # typed str, but the guard passes what a frame's globals hold
            if not isinstance(given, str):
                return None
            name = str.__str__(given)  # a str subclass's own __hash__/__eq__ never run
        get = claims.get
        while True:
            owner = get(name)
            if owner is not None:
                return owner
            dot = name.rfind(".")
            if dot < 0:
                return None
            name = name[:dot]

    def _build_claims(self) -> dict[str, str]:
        modules: Mapping[str, LinkedModule] = self.modules
        if self.pending is not None:
            # Claims are the whole set's: a module not linked yet may claim a package
            # (or another module's name). Link the rest now, in this thread, rather
            # than answer "no one governs it" (fail closed: slower, never wrong).
            modules = {**self.pending.linked_all(), **self.modules}
        claims, conflicts = _claims(modules)
        self._conflicts = conflicts
        self._claims = claims  # after _conflicts: a reader that sees the table sees its conflicts
        for package, names in conflicts.items():
            FAULTS.report(
                "claim:" + package,
                logging.WARNING,
                f"package {package} is claimed by {_listed(names)}; "
                f"every operation governed by it is denied until one claim is removed",
            )
        return claims

    @property
    def conflicts(self) -> dict[str, tuple[str, ...]]:
        """Packages claimed by more than one module: package -> the claiming modules (sorted)."""
        if self._claims is None:
            self._build_claims()
        return dict(self._conflicts)

    def _miss(self, module: object, capability: object, args: tuple[object, ...], cacheable: bool) -> Decision:
        """Decide without the cache (filling it when ``cacheable``). Never raises."""
        try:
            if type(module) is not str or type(capability) is not str:
                return self._refuse(module, capability, args)
            if len(module) > _NAME_MAX or len(capability) > _NAME_MAX:
                what = "module" if len(module) > _NAME_MAX else "capability"
                return Decision(
                    False, "deny", f"{what} name longer than {_NAME_MAX} characters", None, _module_text(module)
                )
            timed = cacheable and self._volatile(module, capability)
            if timed:
                try:
                    hit = self._timed.get((module, capability, args))
                except Exception:  # an argument's own __eq__/__hash__ raised: decided uncached, as in check()
                    hit = None
                    timed = cacheable = False
                if hit is not None and hit[1] > time.monotonic():
                    for a in args:
                        if type(a) is not str and type(a) is not int:
                            break
                    else:
                        d = hit[0]
                        if d.audit:
                            _log_audit(d, capability, args)
                        return d
            fn = self._plans.get((module, capability))
            if fn is None:
                fn = self._plan(module, capability)
                if fn is None:
                    return self._refuse(module, capability, args)
            d = fn(args)
            if cacheable:
                self._remember(module, capability, args, d, timed)
            if d.audit:
                _log_audit(d, capability, args)
            return d
        except Exception as exc:  # never raise into the application
            return self._internal_error(module, exc)

    def _volatile(self, module: str, capability: str) -> bool:
        """May the decision depend on the file system (a command parameter in any signature
        the request could be typed with)? Such decisions are kept for RESOLVE_TTL seconds only."""
        if capability in _VOLATILE_BUILTINS:
            return True
        mod = self.module(module)
        if mod is not None and capability in mod.volatile:
            return True
        glob = self.glob
        return glob is not None and capability in glob.volatile

    def _remember(
        self, module: str, capability: str, args: tuple[object, ...], d: Decision, timed: bool = False
    ) -> None:
        cost = _CACHE_ENTRY_BASE + len(module) + len(capability) + len(d.reason)
        for a in args:
            if type(a) is str:
                cost += 56 + _text_cost(a)
            elif type(a) is int:
                cost += 32 + (a.bit_length() >> 3)
            else:
                return  # equal-but-different values must never share an entry
        if cost > _CACHE_ENTRY_MAX or cost > self._cache_budget:
            return  # huge requests are decided every time, never kept
        cache = self._cache
        timed_cache = self._timed
        if len(timed_cache if timed else cache) >= self._cache_size or self._cache_bytes + cost > self._cache_budget:
            cache.clear()
            timed_cache.clear()
            self._cache_bytes = 0
        if timed:
            timed_cache[(module, capability, args)] = (d, time.monotonic() + patterns.RESOLVE_TTL)
        else:
            cache[(module, capability, args)] = d
        self._cache_bytes += cost

    def _plan(self, module: str, capability: str) -> Decider | None:
        """The decider of a (module, capability) pair; None when the request is refused whole."""
        if self.unavailable:
            return None
        plans = self._plans
        if len(plans) >= _MAX_PLANS:
            plans.clear()
            self._decisions.clear()
        if module.startswith(CONFLICT_PREFIX):
            fn = plans[(module, capability)] = self._conflict_plan(module)
            return fn
        memo = self._decisions.get(module)
        if memo is None:
            memo = self._decisions[module] = {}
        plan = Plan(module, capability, self.module(module), self.glob, memo, self._accel)
        fn = plan.fn
        if capability in ROOTED_AT_SLASH:
            fn = _rooted(fn)
        plans[(module, capability)] = fn
        return fn

    def _conflict_plan(self, module: str) -> Decider:
        package = module[len(CONFLICT_PREFIX) :]
        names = self.conflicts.get(package)
        claimed = _listed(names) if names else "more than one module"
        d = Decision(False, "deny", f"package {package} is claimed by {claimed}", None, module)
        return lambda args: d

    def _refuse(self, module: object, capability: object, args: tuple[object, ...]) -> Decision:
        if not issubclass(type(module), str) or not issubclass(type(capability), str):
            FAULTS.report(
                "request",
                logging.WARNING,
                f"check() called with a module of type {patterns.type_name(module)} and a capability of "
                f"type {patterns.type_name(capability)}; both must be strings; denied",
            )
            return Decision(False, "deny", "module and capability must be strings", None, _module_text(module))
        if type(module) is not str or type(capability) is not str:
            # str subclasses (checked above): decided as the plain strings they are, never cached
            return self._miss(str.__str__(module), str.__str__(capability), args, False)
        mod = self.module(module)
        return Decision(
            False, "deny", self.unavailable or "policy unavailable", None, module, mod.revision if mod else None
        )

    def _internal_error(self, module: object, exc: Exception) -> Decision:
        with contextlib.suppress(Exception):
            FAULTS.report(
                "internal", logging.ERROR, f"internal error deciding a check ({patterns.type_name(exc)}); denied", exc
            )
        return Decision(False, "deny", f"internal error: {patterns.type_name(exc)}", None, _module_text(module))

    def decide_uncached(self, module: str, capability: str, *args: object) -> Decision:
        """Decide without reading or filling the decision cache (for tests and tools)."""
        return self._miss(module, capability, args, False)

    def __repr__(self) -> str:
        g = " +_global" if self.glob is not None else ""
        p = " +pending" if self.pending is not None else ""
        return f"<Snapshot {len(self.modules)} modules{g}{p}>"


EMPTY_SNAPSHOT = Snapshot(
    {}, None, unavailable="policy not loaded yet (PolicyAgent.start() not called)", accel=False
)
