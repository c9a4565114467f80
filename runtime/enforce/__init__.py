"""The decision engine: verified artifacts linked into indexed tables, and the snapshot that decides.

Three layers, each immutable once built:

* :class:`LinkedModule` (:mod:`.link`) — one verified artifact, linked on its
  own: its rules grouped by capability and effect into tables
  (:mod:`.index`) that index the rules by one argument, so a check looks at
  a handful of candidate rules instead of all of them.
* :class:`Snapshot` (:mod:`.snapshot`) — the set of linked modules plus
  ``_global`` that the agent publishes with one attribute assignment; it
  owns the decision cache and the per-(module, capability) plans
  (:mod:`.plan`), whose deciders are generated code (:mod:`.deciders`).
* :class:`Decision` (:mod:`.decision`) — the immutable answer; decisions are
  cached and shared.

Around them: request normalisers (:mod:`.normalize`), argument matchers
(:mod:`.matchers`), and the bounded memos every process-wide cache of the
engine is made of (:mod:`polc.runtime.memo`, shared with the verifier).
"""

from __future__ import annotations

from .decision import Decision
from .link import LinkedModule, link
from .snapshot import CACHE_BYTES, EMPTY_SNAPSHOT, FAULTS, FaultLog, Snapshot

__all__ = ["CACHE_BYTES", "EMPTY_SNAPSHOT", "FAULTS", "Decision", "FaultLog", "LinkedModule", "Snapshot", "link"]
