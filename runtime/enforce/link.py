"""Linking one verified artifact into a :class:`LinkedModule`: its rules as indexed tables.

Linking a module never looks at any other module, so a tenant's artifact
is linked once and reused by every snapshot until it changes.

What is equal between modules is one object (hash-consing by content, in
bounded process-wide memos): a :class:`~.index.Table` is a pure function of
its rules' source indices and arguments, its effect, its capability's
parameter types and whether it is ``_global``'s, and keeps nothing of its
module, so modules whose tables are equal share one (their plans take the
deciding rule's module, location and revision from the plan's tiers); so
are the ``caps`` dict of an equal capability table, the ``volatile`` set
and the packed line/column array.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from ..catalog import COMMAND, GLOBAL_MODULE, Capability
from ..format.header import FORMAT_MINOR, HEADER_SIZE
from ..format.opcodes import DENY
from ..format.payload import read_program
from ..memo import Memo
from .index import Table
from .matchers import SHARE_MAX, Instr, command_args

if TYPE_CHECKING:
    from ..format.reader import Artifact
    from .resident import Residency

__all__ = ["LinkedModule", "link", "types_of"]

_intern = sys.intern

_TYPES: Memo[Capability, tuple[str, ...]] = Memo("parameter types", SHARE_MAX)
_types_get = _TYPES.get


def types_of(cap: Capability) -> tuple[str, ...]:
    """The parameter types of a capability (memoised: one tuple per signature)."""
    t = _types_get(cap)
    if t is None:
        t = _TYPES.put(cap, tuple(p.type for p in cap.params))
    return t


_LINE_COL = itemgetter(3, 4)  # Rule.line, Rule.col
_chain = chain.from_iterable


def _line_cols(rules: Iterable[Any]) -> Iterable[int]:
    return _chain(map(_LINE_COL, rules))


# Shared between modules, keyed by content (each bounded, cleared whole when full: a cleared
# memo only means later modules get their own copies until it fills again). Small on purpose:
# a key holds its rules' argument tuples alive, which for tables no other module repeats costs
# more than the sharing saves (4,096 entries: +1.3 KB per module at 1,000 modules); a table
# many modules repeat is back in the memo right after a clearing.
_SHARE_TABLES_MAX = 1 << 9
_SHARE_RULES = 32  # larger tables are rarely equal to another module's: not worth the key
_TABLES: Memo[tuple[Any, ...], Table] = Memo("shared tables", _SHARE_TABLES_MAX)
_tables_get = _TABLES.get
_CAPS: Memo[tuple[Capability, ...], dict[str, Capability]] = Memo("shared capability dicts", SHARE_MAX)
_caps_get = _CAPS.get
_VOLATILE: Memo[frozenset[str], frozenset[str]] = Memo("shared volatile sets", SHARE_MAX)
_WHERE: Memo[tuple[str, bytes], array[int]] = Memo("shared line/column arrays", _SHARE_TABLES_MAX)
_where_get = _WHERE.get


def _where_of(rules: tuple[Any, ...]) -> array[int]:
    """The packed ``line, col`` of every rule (rule i at 2i, 2i+1), in the smallest item size
    that holds them; one object for equal arrays."""
    w: array[int]
    try:
        w = array("H", _line_cols(rules))
    except OverflowError:
        try:
            w = array("I", _line_cols(rules))
        except OverflowError:  # a line or column past 2**32 - 1 (the verifier allows 2**63 - 1)
            w = array("q", _line_cols(rules))
    key = (w.typecode, w.tobytes())
    shared = _where_get(key)
    return shared if shared is not None else _WHERE.put(key, w)


def _caps_of(caps: tuple[Capability, ...]) -> dict[str, Capability]:
    """name -> Capability of a capability table; one dict for equal tables (never written)."""
    d = _caps_get(caps)
    if d is None:
        d = _CAPS.put(caps, {c.name: c for c in caps})
    return d


def _table(glob: bool, effect: int, group: list[tuple[int, tuple[Instr, ...]]], types: tuple[str, ...]) -> Table:
    """The table of these rules: an equal one already linked (any module's), else a new one."""
    if len(group) > _SHARE_RULES:
        return Table(glob, effect, group, types)
    # flat, so that the key is one tuple: (glob, effect, types, index, args, index, args, ...);
    # arguments are verified, decoded tuples of exact str/int values, so equal means same rules
    key = (glob, effect, types, *_chain(group))
    t = _tables_get(key)
    if t is None:
        t = _TABLES.put(key, Table(glob, effect, group, types))
    return t


def _tables_of(
    name: str, rules: tuple[Any, ...], caps: dict[str, Capability]
) -> tuple[dict[str, Capability], dict[str, tuple[Table | None, Table | None]]]:
    """The module's ``caps`` (``caps`` itself unless a rule's capability is missing from it) and
    its tables: capability -> (deny table, entitle table)."""
    grouped: dict[tuple[str, int], list[tuple[int, tuple[Instr, ...]]]] = {}
    get = grouped.get
    for index, effect, cap, _line, _col, args in rules:
        key = (cap.name, effect)
        g = get(key)
        if g is None:
            g = grouped[key] = []
        g.append((index, args))
    glob = name == GLOBAL_MODULE
    tables: dict[str, list[Table | None]] = {}
    for (cap_name, effect), group in grouped.items():
        sig = caps.get(cap_name)
        if sig is None:  # rule of a capability missing from caps: the verifier forbids it
            sig = next(r.cap for r in rules if r.cap.name == cap_name)
            caps = dict(caps)  # never the shared dict
            caps[cap_name] = sig
        slot = tables.get(cap_name)
        if slot is None:
            slot = tables[cap_name] = [None, None]
        types = types_of(sig)
        if COMMAND in types:
            group = [(index, command_args(args, types, effect)) for index, args in group]
        slot[0 if effect == DENY else 1] = _table(glob, effect, group, types)
    return caps, {k: (v[0], v[1]) for k, v in tables.items()}


class LinkedModule:
    """One verified artifact, linked. Immutable (its decisions never change); independent of other modules.

    ``tables`` maps each capability its rules use to ``(deny table, entitle
    table)`` (either None when it has no rule of that effect); ``volatile``
    names the capabilities whose decisions depend on the file system (a
    ``command`` parameter); ``governs`` the Python package names its
    ``governs`` statement binds (besides its own name). The deciding rule's ``file:line:col`` is
    formatted only when a Decision is built, from one packed line/column
    array per module.

    Linked with a :class:`~.resident.Residency` (and the artifact's bytes), the
    module keeps its verified payload and its tables only while the residency
    keeps it among the modules linked: evicted, ``tables`` decodes the payload
    again on its next use and builds equal tables. Without one, the tables
    are built once and kept.
    """

    __slots__ = (
        "__weakref__",
        "_minor",
        "_packed",
        "_payload",
        "_residency",
        "_tables",
        "_where",
        "audit",
        "caps",
        "digest",
        "governs",
        "mode",
        "name",
        "revision",
        "rule_count",
        "source",
        "volatile",
    )

    def __init__(self, artifact: Artifact, data: bytes | None = None, residency: Residency | None = None) -> None:
        self.name: str = _intern(artifact.module)
        self.mode: str = artifact.mode
        self.audit: bool = artifact.mode == "audit"
        self.revision: str = artifact.revision
        self.digest: str = artifact.digest_hex
        self.source: str = artifact.source
        # the Python package names bound by `governs` (besides the module's own name), sorted
        self.governs: tuple[str, ...] = artifact.governs  # verified: sorted, unique, interned
        rules = artifact.rules
        self.rule_count: int = len(rules)
        # line, col of rule i at 2i, 2i+1: one object per module, not one string per rule
        self._where: array[int] = _where_of(rules)
        caps, tables = _tables_of(self.name, rules, _caps_of(artifact.caps))
        self.caps = caps
        # capabilities whose decisions depend on the file system (a command parameter): never cached
        self.volatile: frozenset[str] = _VOLATILE.intern(
            frozenset(n for n, c in caps.items() if COMMAND in types_of(c))
        )
        self._tables: dict[str, tuple[Table | None, Table | None]] | None = None
        # The verified payload (the bytes between the header and the trailer) and its format
        # minor, kept to link again after an eviction; only with a residency, never _global's.
        # Evicted, the payload is kept deflated instead (``_packed``, resident.py): set before
        # ``_payload`` is cleared, so a reader always finds one of them.
        self._minor = artifact.header.minor
        self._payload: bytes | None = None
        self._packed: bytes | None = None
        self._residency: Residency | None = None
        if residency is None or data is None or self.name == GLOBAL_MODULE:
            self._tables = tables
            return
        self._payload = payload = bytes(data[HEADER_SIZE : HEADER_SIZE + artifact.header.payload_len])
        self._residency = residency
        residency.sample(payload)
        residency.admit(self, tables, False)

    @property
    def tables(self) -> dict[str, tuple[Table | None, Table | None]]:
        """capability -> (deny table, entitle table); built again from the payload if evicted."""
        t = self._tables
        residency = self._residency
        if residency is None:
            assert t is not None  # only a module with a residency is ever evicted
            return t
        if t is None:
            return self._relink(residency)
        residency.touch(self)
        return t

    @property
    def linked(self) -> bool:
        """Does the module hold its tables now (False: held as its verified payload)?"""
        return self._tables is not None

    def _pack(self) -> None:
        """Evicted: keep the payload deflated (once; a module never packed keeps it raw)."""
        residency = self._residency
        payload = self._payload
        if residency is None or payload is None:
            return
        packed = residency.pack(payload)
        if packed is not None and len(packed) < len(payload):
            self._packed = packed
            self._payload = None

    def _relink(self, residency: Residency) -> dict[str, tuple[Table | None, Table | None]]:
        payload = self._payload
        if payload is None:
            packed = self._packed
            assert packed is not None  # set before _payload was cleared
            payload = residency.unpack(packed)
        # The very bytes verified when the module was linked first: decoded again, not
        # re-read; the same program, so equal tables (and the same decisions).
        program = read_program(payload, 0, len(payload), self._minor > FORMAT_MINOR, self._minor)
        _caps, tables = _tables_of(self.name, program.rules, self.caps)
        return residency.admit(self, tables, True)

    @property
    def compact(self) -> bool:
        """Can the module be evicted (it keeps its verified payload)?"""
        return self._residency is not None

    def location(self, index: int) -> str:
        """``file:line:col`` of rule ``index``."""
        w = self._where
        return f"{self.source}:{w[2 * index]}:{w[2 * index + 1]}"

    def __repr__(self) -> str:
        return f"<LinkedModule {self.name} rev {self.revision} ({self.rule_count} rules, {self.mode})>"


def link(artifact: Artifact, data: bytes | None = None, residency: Residency | None = None) -> LinkedModule:
    """Link one verified artifact (see runtime/format/reader.py) into indexed tables.

    ``data``, the artifact's bytes, and ``residency``: the module's tables are kept
    only while the residency keeps it linked (:class:`LinkedModule`)."""
    return LinkedModule(artifact, data, residency)
