"""Loading in the background: the artifacts listed at start-up, verified and linked on first use.

A large directory is not loaded before the agent answers. The first step
lists it, loads ``_global`` and publishes a snapshot whose other modules are
*pending*: a :class:`LazyModules` table of their files. The first check of
a pending module reads, verifies and links that one artifact on the spot
(:meth:`LazyModules.linked`); the agent's loader thread does the same for
the rest, most recently used first. Each artifact is examined exactly once
(:func:`~.outcomes.examine`, the same function every reload uses), whoever
comes first: the outcome is kept and every snapshot of the load uses it, so
a module's decisions never change while it loads, and equal those of a
snapshot linked whole from the same files. A payload that fails
verification is never linked: its module gets ``_global`` rules only, and
the poller commits the failure (status, the ``failed`` event) with the
rest of its batch.

Order without a history of use: modules asked for first (checks put them in
:attr:`LazyModules.used`), then by the file's mtime, newest first (a policy
changed recently is the likeliest to be in use), then by name.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import TYPE_CHECKING, ClassVar

from . import outcomes
from .outcomes import Failed, NewPolicy, Outcome

if TYPE_CHECKING:
    from ..enforce import LinkedModule
    from ..enforce.resident import Residency
    from ..format.reader import Trust

__all__ = ["BACKGROUND_MIN", "LOAD_PAUSES_GC", "GcPause", "LazyModules", "gc_paused", "load_order"]

# With background loading left to the agent (background_load=None), a
# directory of at most this many artifacts is loaded whole before start()
# returns, as before (about 0.5 s of verify-and-link on this machine).
BACKGROUND_MIN = 1000

SUFFIX = ".bin"

# While artifacts are linked in bulk (the first load, whole or in the
# background), the cyclic garbage collector's automatic runs are paused and
# the loader collects the young generations itself between batches: every
# full collection walks the whole growing heap of linked modules, which
# cost half the load (10,000 artifacts: 5.9 s of CPU with, 3.1 s without;
# docs/runtime.md). False leaves the collector alone.
LOAD_PAUSES_GC = True


class GcPause:
    """Pause automatic garbage collection while at least one bulk load runs.

    Process-global and counted, like the switch interval (reload/switch.py):
    the first load in disables the collector if it was enabled, the last out
    enables it again — only if it was this that disabled it and no one
    enabled it meanwhile. A child of ``os.fork()`` starts with no load running
    (its loaders pause again themselves).
    """

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _users: ClassVar[int] = 0
    _ours: ClassVar[bool] = False

    def __enter__(self) -> None:
        cls = GcPause
        with cls._lock:
            cls._users += 1
            if cls._users == 1 and LOAD_PAUSES_GC and gc.isenabled():
                gc.disable()
                cls._ours = True

    def __exit__(self, *exc: object) -> None:
        cls = GcPause
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._ours:
                cls._ours = False
                if not gc.isenabled():
                    gc.enable()

    @classmethod
    def _after_fork_in_child(cls) -> None:
        cls._lock = threading.Lock()
        cls._users = 0
        if cls._ours:
            cls._ours = False
            if not gc.isenabled():
                gc.enable()


gc_paused = GcPause()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=GcPause._after_fork_in_child)


class LazyModules:
    """The modules listed but not yet linked: verified and linked once, on first use.

    ``linked(module)`` is what a snapshot calls for a module it does not
    hold: the linked policy of a pending module (examined now, if no one did
    yet), None for a module that is not pending or whose artifact failed.
    Thread-safe without a lock: two threads that examine the same file at
    once both finish, and ``dict.setdefault`` keeps the first outcome, which
    both then use.
    """

    __slots__ = ("_names", "_prefix", "_results", "policy_dir", "residency", "total", "trust", "used")

    def __init__(
        self, policy_dir: str, names: list[str], trust: Trust | None, residency: Residency | None = None
    ) -> None:
        self.policy_dir = policy_dir
        self.trust = trust
        self.residency = residency
        self._prefix = os.path.join(policy_dir, "")
        self._names = frozenset(names)  # the file names pending when the load began
        self._results: dict[str, Outcome] = {}  # module -> its outcome, the first one kept
        self.total = len(self._names)
        self.used: list[str] = []  # modules a check asked for, in that order (the loader commits them first)

    def __contains__(self, module: object) -> bool:
        return isinstance(module, str) and module + SUFFIX in self._names

    def linked(self, module: str) -> LinkedModule | None:
        """The policy of a pending module (None: not pending, or it failed); never raises."""
        r = self._results.get(module)
        if r is None:
            if module + SUFFIX not in self._names:
                return None
            r = self.resolve(module, used=True)
        return r.linked if type(r) is NewPolicy else None

    def linked_all(self) -> dict[str, LinkedModule]:
        """Every pending module's policy (each examined now if no one did yet); failed ones left out."""
        out: dict[str, LinkedModule] = {}
        for name in sorted(self._names):
            r = self.resolve(name[: -len(SUFFIX)])
            if type(r) is NewPolicy:
                out[r.module] = r.linked
        return out

    def resolve(self, module: str, *, used: bool = False) -> Outcome:
        """The outcome of the module's artifact: examined now unless someone did already."""
        r = self._results.get(module)
        if r is not None:
            return r
        name = module + SUFFIX
        path = self._prefix + name
        try:
            o = outcomes.examine(name, path, None, None, self.trust, time.time_ns(), self.residency)
        except Exception as exc:  # a fault, not the file: fail closed, keep the reason
            o = Failed(name, module, ("error", None), False, None, f"internal error: {type(exc).__name__}: {exc}")
        if o is None:  # pragma: no cover - examine always answers for a file never seen
            o = Failed(name, module, ("error", None), False, None, "internal error: no outcome")
        kept = self._results.setdefault(module, o)
        if used and kept is o:
            self.used.append(module)
        return kept

    def resolved(self, module: str) -> Outcome | None:
        return self._results.get(module)

    @property
    def examined(self) -> int:
        """How many artifacts were examined so far (by checks or by the loader)."""
        return len(self._results)


def load_order(policy_dir: str, names: list[str], stop: threading.Event | None = None) -> list[str]:
    """The file names in the order the loader takes them: newest mtime first, then by name.

    One ``stat`` per name (a few us each); a name that cannot be statted
    goes last (the loader then records why it cannot be read).
    """
    prefix = os.path.join(policy_dir, "")
    stat = os.stat
    keyed: list[tuple[int, str]] = []
    for i, name in enumerate(names):
        if stop is not None and not i % 4096 and stop.is_set():
            break
        try:
            keyed.append((-stat(prefix + name).st_mtime_ns, name))
        except OSError:
            keyed.append((1, name))
    keyed.sort()
    return [name for _, name in keyed]
