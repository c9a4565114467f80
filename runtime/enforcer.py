"""The decision engine now lives in :mod:`polc.runtime.enforce`; this module re-exports its public names.

TEMPORARY re-export, removed when the restructure lands.
"""

from __future__ import annotations

from .catalog import BUILTINS
from .enforce import CACHE_BYTES, EMPTY_SNAPSHOT, FAULTS, Decision, LinkedModule, Snapshot, link

__all__ = ["BUILTINS", "CACHE_BYTES", "EMPTY_SNAPSHOT", "FAULTS", "Decision", "LinkedModule", "Snapshot", "link"]
