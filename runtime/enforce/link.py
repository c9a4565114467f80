"""Linking one verified artifact into a :class:`LinkedModule`: its rules as indexed tables.

Linking a module never looks at any other module, so a tenant's artifact
is linked once and reused by every snapshot until it changes.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from ..catalog import COMMAND, Capability
from ..format.opcodes import DENY
from ..memo import Memo
from .index import Table
from .matchers import SHARE_MAX, Instr, command_args

if TYPE_CHECKING:
    from ..format.reader import Artifact

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


class LinkedModule:
    """One verified artifact, linked. Immutable; independent of other modules.

    ``tables`` maps each capability its rules use to ``(deny table, entitle
    table)`` (either None when it has no rule of that effect); ``volatile``
    names the capabilities whose decisions depend on the file system (a
    ``command`` parameter); ``governs`` the Python package names its
    ``governs`` statement binds (besides its own name). The deciding rule's ``file:line:col`` is
    formatted only when a Decision is built, from one packed line/column
    array per module.
    """

    __slots__ = (
        "__weakref__",
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
        "tables",
        "volatile",
    )

    def __init__(self, artifact: Artifact) -> None:
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
        caps: dict[str, Capability] = {c.name: c for c in artifact.caps}
        # line, col of rule i at 2i, 2i+1: one object per module, not one string per rule
        self._where: array[int]
        try:
            self._where = array("I", _line_cols(rules))
        except OverflowError:  # a line or column past 2**32 - 1 (the verifier allows 2**63 - 1)
            self._where = array("q", _line_cols(rules))
        grouped: dict[tuple[str, int], list[tuple[int, tuple[Instr, ...]]]] = {}
        get = grouped.get
        for index, effect, cap, _line, _col, args in rules:
            key = (cap.name, effect)
            g = get(key)
            if g is None:
                g = grouped[key] = []
            g.append((index, args))
        tables: dict[str, list[Table | None]] = {}
        for (cap_name, effect), group in grouped.items():
            sig = caps.get(cap_name)
            if sig is None:  # rule of a capability missing from caps: the verifier forbids it
                sig = next(r.cap for r in rules if r.cap.name == cap_name)
                caps[cap_name] = sig
            slot = tables.get(cap_name)
            if slot is None:
                slot = tables[cap_name] = [None, None]
            types = types_of(sig)
            if COMMAND in types:
                group = [(index, command_args(args, types, effect)) for index, args in group]
            slot[0 if effect == DENY else 1] = Table(self, effect, group, types)
        self.caps = caps
        # capabilities whose decisions depend on the file system (a command parameter): never cached
        self.volatile: frozenset[str] = frozenset(n for n, c in caps.items() if COMMAND in types_of(c))
        self.tables: dict[str, tuple[Table | None, Table | None]] = {k: (v[0], v[1]) for k, v in tables.items()}

    def location(self, index: int) -> str:
        """``file:line:col`` of rule ``index``."""
        w = self._where
        return f"{self.source}:{w[2 * index]}:{w[2 * index + 1]}"

    def __repr__(self) -> str:
        return f"<LinkedModule {self.name} rev {self.revision} ({self.rule_count} rules, {self.mode})>"


def link(artifact: Artifact) -> LinkedModule:
    """Link one verified artifact (see runtime/format/reader.py) into indexed tables."""
    return LinkedModule(artifact)
