"""The verified form of a payload: :class:`Rule`, :class:`Program`, and :func:`location`.

What the verifier returns and every later stage reads: a :class:`Program` is
a payload's fields with its ``code`` linked into rules; the reader's
``Artifact`` is a Program plus where it came from (header, trailer, size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from ..catalog import Capability
from .opcodes import EFFECT_NAMES

__all__ = ["Program", "Rule", "location"]


def location(source: str, line: int, col: int) -> str:
    """``source:line:col``: how every part of polc shows a place in a policy source."""
    return f"{source}:{line}:{col}"


class Rule(NamedTuple):
    """One verified rule. Immutable.

    ``args`` holds one decoded argument instruction per capability parameter:
    ``(ANY,)``, ``(HOST_EXACT | HOST_WILD | HOST_CIDR | PATH_GLOB | STR_EXACT
    | STR_GLOB, const_string)`` or ``(INT_RANGE, lo, hi)``. Equal arguments
    are the same tuple object, within an artifact and across artifacts.

    A named tuple rather than a frozen dataclass: linking makes one per rule
    of every artifact loaded, and a frozen dataclass costs ~0.6 us to build
    (six ``object.__setattr__`` calls) against ~0.1 us for a tuple; 0.5 ms of
    the 5 ms budget for loading a 1,000-rule artifact.
    """

    index: int  # type: ignore[assignment]  # the field shadows tuple.index(), on purpose: Rule is read by name
    effect: int
    cap: Capability
    line: int
    col: int
    args: tuple[tuple[Any, ...], ...]

    @property
    def effect_name(self) -> str:
        return EFFECT_NAMES[self.effect]

    def location(self, source: str) -> str:
        """``source:line:col`` of this rule."""
        return location(source, self.line, self.col)


@dataclass(frozen=True, slots=True)
class Program:
    """A verified payload: its five string fields, its capability table and
    constant pool, its code linked into rules, and the package names it
    governs (empty before format 1.2). Immutable.

    One is made per artifact read (unlike rules), so a frozen dataclass: the
    reader's ``Artifact`` extends it instead of repeating its fields.
    """

    module: str
    mode: str
    compiler: str
    source: str
    source_digest: str
    caps: tuple[Capability, ...]
    consts: tuple[str, ...]
    rules: tuple[Rule, ...]
    governs: tuple[str, ...] = ()
    """The Python package names the module's ``governs`` statement binds (format 1.2), sorted."""

    @property
    def audit(self) -> bool:
        return self.mode == "audit"

    def location(self, rule: Rule) -> str:
        """``source:line:col`` of one of this program's rules."""
        return location(self.source, rule.line, rule.col)
