"""How many modules stay linked: a budget of linked modules, the rest held as verified bytes.

A linked module's tables (its rules indexed, their constants, matchers and
bucket dicts) take about 4 KB per 20-rule module; the verified payload they
are built from is under 1 KB. A :class:`Residency` with a budget of ``B``
keeps the tables of at most ``B`` modules, the ones whose tables were asked
for most recently (a plan built, or re-linked); every other module keeps its
:class:`~.link.LinkedModule` (name, revision, mode, source, ``governs``,
signatures, locations: everything but the tables) and its payload, the very
bytes that were verified, in memory and immutable. Its next plan decodes
that payload again and builds equal tables (:meth:`LinkedModule.tables`):
the file is never read again, so a file changed on disk is seen only by the
reloader, verified, like every change.

Evicting a module also drops its plans and Decision memo from every
snapshot registered here (``register``), since a plan holds its tables; a
check of that module builds them again. Decisions are those of a module
never evicted: tables are a pure function of the payload.

Thread-safety: eviction and re-linking change a module's ``_tables`` under
the residency's lock; readers read the attribute once, lock-free (a reader
that got the tables keeps using them). Two threads re-linking one module at
once both decode; the first to take the lock keeps its tables.

The order is by use of the tables, not by check: a check answered by an
existing plan (or the decision cache, or the C accelerator) costs nothing
more, so a module in constant use is re-linked once per ``B`` other modules
linked or re-linked (docs/runtime.md, "Linked modules and the budget").
"""

from __future__ import annotations

import threading
import weakref
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .index import Table
    from .link import LinkedModule

    Tables = dict[str, tuple[Table | None, Table | None]]

__all__ = ["DEFAULT_LINKED_BUDGET", "Forgets", "Residency"]

# Modules whose tables stay linked, by default (PolicyAgent(linked_budget=...),
# POLC_LINKED_BUDGET): about 35-65 MB of tables and plans at most, and a
# directory of up to this many modules is never re-linked at all (a service
# whose active set is below it never pays a re-link; one that needs less
# memory at 100,000 modules sets a smaller budget: docs/runtime.md).
DEFAULT_LINKED_BUDGET = 8192

# An evicted module's payload is kept deflated with a preset dictionary: the
# first payloads this residency saw, up to ZDICT_BYTES (modules of one tree
# share most of their strings and structure). 20-rule modules of the scale
# trees: 927 bytes raw, ~150 deflated (~540 without the dictionary).
ZDICT_BYTES = 8192
_WBITS = -15  # raw deflate: the payload's own digest was checked when it was verified


class Forgets(Protocol):
    """A snapshot, as the residency sees it: it can drop what it built from a module's tables."""

    def forget_plans(self, module: LinkedModule) -> None: ...


class Residency:
    """At most ``budget`` modules linked (tables built) at once, the most recently used.

    Modules join when their tables are built (:meth:`admit`, from the linker)
    and move to the back when asked for again (:meth:`touch`); the front one
    is evicted when more than ``budget`` are linked. ``budget`` >= 1.
    """

    __slots__ = ("_linked", "_lock", "_samples", "_snapshots", "_zdict", "budget", "evictions", "relinks")

    def __init__(self, budget: int) -> None:
        if type(budget) is not int or budget < 1:
            raise ValueError(f"budget={budget!r}: expected an int >= 1")
        self.budget = budget
        self._lock = threading.Lock()
        self._linked: OrderedDict[LinkedModule, None] = OrderedDict()
        self._snapshots: weakref.WeakSet[Forgets] = weakref.WeakSet()
        self.evictions = 0  # modules whose tables were dropped
        self.relinks = 0  # tables built again from a held payload
        self._samples: list[bytes] = []  # the first payloads seen, until the dictionary is made
        self._zdict: bytes | None = None  # fixed once made: every packed payload needs it

    def sample(self, payload: bytes) -> None:
        """A payload linked for the first time: part of the preset dictionary while it is not made."""
        if self._zdict is not None:
            return
        with self._lock:
            samples = self._samples
            if self._zdict is None:
                samples.append(payload)
                if sum(map(len, samples)) >= ZDICT_BYTES:
                    self._zdict = b"".join(samples)[-ZDICT_BYTES:]
                    self._samples = []

    def pack(self, payload: bytes) -> bytes | None:
        """``payload`` deflated (None while there is no dictionary yet: kept as it is)."""
        zdict = self._zdict
        if zdict is None:
            return None
        c = zlib.compressobj(6, zlib.DEFLATED, _WBITS, zdict=zdict)
        return c.compress(payload) + c.flush()

    def unpack(self, packed: bytes) -> bytes:
        """What :meth:`pack` was given."""
        zdict = self._zdict
        assert zdict is not None  # packed only once it is made, never changed after
        d = zlib.decompressobj(_WBITS, zdict=zdict)
        return d.decompress(packed) + d.flush()

    def register(self, snapshot: Forgets) -> None:
        """Have ``snapshot`` drop its plans of every module evicted from now on."""
        with self._lock:
            self._snapshots.add(snapshot)

    def admit(self, module: LinkedModule, tables: Tables, relinked: bool) -> Tables:
        """Install ``tables`` as the module's (unless another thread did first) and evict the
        oldest beyond the budget. Returns the tables the module holds now."""
        victims: list[LinkedModule] = []
        with self._lock:
            current = module._tables
            if current is None:
                module._tables = current = tables
                if relinked:
                    self.relinks += 1
            linked = self._linked
            linked[module] = None
            linked.move_to_end(module)
            while len(linked) > self.budget:
                victim, _ = linked.popitem(last=False)
                victim._tables = None
                self.evictions += 1
                victims.append(victim)
            snapshots = list(self._snapshots) if victims else []
        for victim in victims:
            victim._pack()
        for snap in snapshots:
            for victim in victims:
                snap.forget_plans(victim)
        return current

    def touch(self, module: LinkedModule) -> None:
        """``module``'s tables were used: it is the most recently used."""
        with self._lock:
            if module in self._linked:
                self._linked.move_to_end(module)

    def after_fork_in_child(self) -> None:
        """A new lock: a thread of the parent may have held the old one at the fork (each
        change under it leaves the state whole between bytecodes that matter here: a module
        is in the order exactly when it was admitted and not evicted)."""
        self._lock = threading.Lock()

    @property
    def linked(self) -> int:
        """How many modules hold their tables now."""
        return len(self._linked)

    def __repr__(self) -> str:
        return f"<Residency {len(self._linked)} of {self.budget} linked, {self.evictions} evictions>"
