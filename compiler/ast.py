"""The syntax tree of a policy source: frozen dataclasses that carry positions.

Every node records the file it came from and the 1-based line and column of
its first character; ``end_col`` (exclusive, same line) lets diagnostics
underline the whole token. The parser builds these directly (no intermediate
lark tree), and nothing downstream mutates them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Node:
    file: str
    line: int
    col: int
    end_col: int


# --------------------------------------------------------------------------
# rule arguments


@dataclass(frozen=True, slots=True)
class StrArg(Node):
    value: str
    """The decoded string (escapes resolved)."""
    bad_escape: str | None = None
    """The first escape sequence the language does not know (e.g. ``\\q``), if any."""


@dataclass(frozen=True, slots=True)
class IntArg(Node):
    value: int


@dataclass(frozen=True, slots=True)
class RangeArg(Node):
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class AnyArg(Node):
    """``*``: matches any value of the parameter's type."""


Arg = StrArg | IntArg | RangeArg | AnyArg


# --------------------------------------------------------------------------
# statements


@dataclass(frozen=True, slots=True)
class Name(Node):
    """A (dotted) name as written, with its position."""

    text: str


@dataclass(frozen=True, slots=True)
class Rule(Node):
    """``entitle|deny module to CAP[(ARGS)];`` located at its first keyword."""

    effect: str
    """``"entitle"`` or ``"deny"``."""
    cap: Name
    args: tuple[Arg, ...] | None
    """``None`` when the capability is written without parentheses."""


@dataclass(frozen=True, slots=True)
class ModeStmt(Node):
    """``mode NAME;``; the name is checked by the semantic pass."""

    value: Name


@dataclass(frozen=True, slots=True)
class ParamDecl(Node):
    name: Name
    type: Name


@dataclass(frozen=True, slots=True)
class CapabilityDecl(Node):
    """``capability NAME(PARAM: TYPE, ...);``."""

    name: Name
    params: tuple[ParamDecl, ...]


Statement = Rule | ModeStmt | CapabilityDecl


@dataclass(frozen=True, slots=True)
class Module(Node):
    """``security module NAME { ... }`` located at ``security``."""

    name: Name
    body: tuple[Statement, ...]


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str
    """The path as given to the compiler, ``/``-separated."""
    modules: tuple[Module, ...]
