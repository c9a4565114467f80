"""The intermediate form between the semantic checks and code generation.

A checked module, with every argument already validated and normalised by
``polc.runtime.patterns`` and lowered to its instruction: what is left for
code generation is only numbering (constant pool, capability table) and
encoding. Argument instructions are plain tuples, cheap to build, compare and
hash (duplicate and shadow detection compare them):

    (ANY,)                    matches anything
    (HOST_EXACT, "a.com")     and HOST_WILD, HOST_CIDR, PATH_GLOB, STR_EXACT, STR_GLOB
    (INT_RANGE, lo, hi)       inclusive
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from polc.runtime.catalog import Capability

IRArg = tuple[Any, ...]  # (opcode,) | (opcode, const: str) | (INT_RANGE, lo: int, hi: int)


@dataclass(frozen=True, slots=True)
class IRRule:
    effect: int
    """``opcodes.DENY`` or ``opcodes.ENTITLE`` (polc.runtime.format.opcodes)."""
    cap: Capability
    line: int
    col: int
    args: tuple[IRArg, ...]
    """Exactly ``cap.arity`` argument instructions; omitted trailing ones are ``(ANY,)``."""


@dataclass(frozen=True, slots=True)
class IRModule:
    name: str
    mode: str
    """``"enforce"`` or ``"audit"``."""
    source: str
    source_digest: str
    rules: tuple[IRRule, ...]
    governs: tuple[str, ...] = ()
    """The package names of its ``governs`` statements: checked, sorted, each once, never its own name."""
