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


class LongLiteral(int):
    """An integer literal with more digits than any parameter accepts.

    Its value is a stand-in of the right sign far outside every range
    (``±10**LONG_LITERAL_DIGITS``), so the range checks reject it as they would
    the real number, without the quadratic (and, past 4,300 digits, refused)
    conversion of the digits; it prints as its first digits and its length.
    """

    args: tuple[bool, str, int]
    text: str

    def __new__(cls, negative: bool, head: str, ndigits: int) -> LongLiteral:
        self = super().__new__(cls, -(10**LONG_LITERAL_DIGITS) if negative else 10**LONG_LITERAL_DIGITS)
        self.args = (negative, head, ndigits)
        self.text = f"{'-' if negative else ''}{head}... ({ndigits} digits)"
        return self

    def __reduce__(self) -> tuple[type[LongLiteral], tuple[bool, str, int]]:
        return (LongLiteral, self.args)

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(self.text, spec)


LONG_LITERAL_DIGITS = 40
"""Literals with more significant digits than this are :class:`LongLiteral` (64-bit needs 19)."""


def int_literal(text: str) -> int:
    """The value of an INT token (``-?[0-9]+``); bounded work for any length."""
    negative = text.startswith("-")
    digits = text.lstrip("-").lstrip("0")
    if len(digits) > LONG_LITERAL_DIGITS:
        return LongLiteral(negative, digits[:20], len(digits))
    value = int(digits or "0", 10)  # leading zeros count towards the interpreter's digit limit
    return -value if negative else value


@dataclass(frozen=True, slots=True)
class IntArg(Node):
    value: int
    """The literal's value; a :class:`LongLiteral` when it has absurdly many digits."""


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


@dataclass(frozen=True, slots=True)
class GovernsStmt(Node):
    """``governs "PKG", ...;``: Python package names the module governs besides its own name."""

    names: tuple[StrArg, ...]


Statement = Rule | ModeStmt | CapabilityDecl | GovernsStmt


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
