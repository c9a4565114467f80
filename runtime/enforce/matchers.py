"""Argument matchers: the test of one rule argument against one normalised request value.

A matcher is built once per distinct argument instruction, process-wide
(10,000 tenants share most patterns; a regex is compiled once per distinct
constant), and the common shapes are tested without a regex: ``*.x`` and
``**.x`` hosts by suffix, ``P*``/``*S``/``*X*`` string globs with
``startswith``/``endswith``/``in``, ``dir/**`` paths by prefix.

A rule keeps, besides the argument its table indexes, a tuple of checks
``((position, matcher), ...)`` (:func:`checks_of`), shared between rules
and modules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from .. import patterns
from ..catalog import COMMAND
from ..format.opcodes import ANY, DENY, HOST_CIDR, HOST_EXACT, HOST_WILD, INT_RANGE, PATH_GLOB, STR_EXACT, STR_GLOB
from ..memo import Memo
from .normalize import HostValue

__all__ = [
    "CMD",
    "SHARE_MAX",
    "Check",
    "Checks",
    "Instr",
    "IntRange",
    "Matcher",
    "checks_of",
    "command_args",
    "command_rule",
    "matcher",
    "str_glob",
]

# An argument instruction of a verified rule: ``(opcode, operand, ...)``; the
# operands' types depend on the opcode (a constant string, or lo and hi).
Instr = tuple[Any, ...]
# A matcher takes the normalised value of its parameter, whose type depends on
# the parameter's type (a host, a path, a Command, ...), which the position
# of the check decides: hence Any.
Matcher = Callable[[Any], bool]
Check = tuple[int, Matcher]
Checks = tuple[Check, ...]

SHARE_MAX = 1 << 13  # entries of each process-wide memo of linking


def _true(value: object) -> bool:
    return True


@lru_cache(maxsize=8192)
def _host_wild(const: str) -> Matcher:
    labels = const.split(".")
    # The common forms "*.x" and "**.x" with a literal parent domain x.
    if len(labels) > 1 and labels[0] in ("*", "**") and not any(lab in ("*", "**") for lab in labels[1:]):
        parent = "." + ".".join(labels[1:])
        n = len(parent)
        if labels[0] == "*":

            def one_label(v: HostValue) -> bool:
                return type(v) is str and v.endswith(parent) and len(v) > n and v.find(".", 0, len(v) - n) < 0

            return one_label

        def some_labels(v: HostValue) -> bool:
            return type(v) is str and len(v) > n and v.endswith(parent)

        return some_labels
    m = patterns.host_wild_matcher(const)

    def general(v: HostValue) -> bool:
        return type(v) is str and m(v)

    return general


@lru_cache(maxsize=8192)
def _host_cidr(const: str) -> Matcher:
    net = patterns.cidr_network(const)  # an IPv4-mapped block as the IPv4 block
    v4 = ipaddress.IPv4Address
    v6 = ipaddress.IPv6Address
    many = patterns.HostAddresses

    def in_net(v: HostValue) -> bool:
        c = type(v)
        if c is v4 or c is v6:
            return v in net
        if c is many:  # an address that also reaches others (NAT64, 0.0.0.0, ...)
            return any(a in net for a in v)  # type: ignore[union-attr]  # type(v) is HostAddresses
        return False

    return in_net


# Command arguments match through the request's spellings, and a bare name
# matches differently in a deny and an entitle (patterns.command_matcher), so
# a command rule's argument is linked as its own instruction: (CMD, effect,
# opcode, constant). CMD is no opcode of the artifact format.
CMD = -1


def command_args(args: tuple[Instr, ...], types: tuple[str, ...], effect: int) -> tuple[Instr, ...]:
    """A rule's arguments with each command argument turned into a CMD instruction."""
    return tuple(
        (CMD, effect, a[0], a[1]) if t == COMMAND and a[0] != ANY else a for a, t in zip(args, types, strict=False)
    )


_GLOB_CHARS = frozenset("*?")


@lru_cache(maxsize=8192)
def _path_glob(const: str) -> Matcher:
    if const == "**":
        return _true
    segs = const.split("/")
    if segs[-1] == "**" and not any(_GLOB_CHARS & set(s) for s in segs[:-1]):
        prefix = "/".join(segs[:-1])
        slash = prefix + "/"

        def under(v: str) -> bool:
            return v == prefix or v.startswith(slash)

        return under
    if not _GLOB_CHARS & set(const):

        def same(v: str) -> bool:
            return v == const

        return same
    # "**/L/**" and "**/L" with literal segments L (a deny of "**/.ssh/**"): the segments L
    # anywhere in the path / at its end, without a regex. Normalised paths have no empty
    # segment and no leading or trailing "/", so "/L/" in v covers every inner position.
    if len(segs) >= 2 and segs[0] == "**" and not any(_GLOB_CHARS & set(s) for s in segs[1:-1]):
        if segs[-1] == "**" and len(segs) >= 3:
            lit = "/".join(segs[1:-1])
            head, tail, inner = lit + "/", "/" + lit, "/" + lit + "/"

            def segments_in(v: str) -> bool:
                return v == lit or v.startswith(head) or v.endswith(tail) or inner in v

            return segments_in
        if not _GLOB_CHARS & set(segs[-1]):
            lit = "/".join(segs[1:])
            tail = "/" + lit

            def segments_end(v: str) -> bool:
                return v == lit or v.endswith(tail)

            return segments_end
    return patterns.path_matcher(const)


@lru_cache(maxsize=8192)
def str_glob(const: str) -> Callable[[str], bool]:
    """The test of a STR_GLOB constant (``patterns.string_matcher`` semantics)."""
    # the common shapes "P*", "*S" and "*X*" (no other "*" or "?") without a regex
    core = const.strip("*")
    if core and not _GLOB_CHARS & set(core) and len(const) - len(core) <= 2:
        lead, trail = const[0] == "*", const[-1] == "*"
        if lead and trail:

            def contains(v: str) -> bool:
                return core in v

            return contains
        if trail:

            def starts(v: str) -> bool:
                return v.startswith(core)

            return starts
        if lead:

            def ends(v: str) -> bool:
                return v.endswith(core)

            return ends
    return patterns.string_matcher(const)


class IntRange:
    """The test of an INT_RANGE argument, ``lo <= v <= hi``.

    A class rather than a closure so that ``lo`` and ``hi`` can be read back:
    a fused decider takes the range check of one port/int parameter out of a
    rule's checks and compares inline (``index.split``).
    """

    __slots__ = ("hi", "lo")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi

    def __call__(self, v: int) -> bool:
        return self.lo <= v <= self.hi

    def __repr__(self) -> str:
        return f"IntRange({self.lo}, {self.hi})"


_COMMAND_RULE = "polc_command_rule"


def command_rule(fn: Matcher) -> tuple[bool, int, str] | None:
    """``(deny, opcode, constant)`` of a command matcher built by :func:`matcher`, else None."""
    rule: tuple[bool, int, str] | None = getattr(fn, _COMMAND_RULE, None)
    return rule


def matcher(instr: Instr) -> Matcher | None:
    """The matcher of one argument instruction (None for ANY)."""
    op = instr[0]
    if op == ANY:
        return None
    if op in (HOST_EXACT, STR_EXACT):
        c: object = instr[1]

        def eq(v: object) -> bool:
            return v == c

        return eq
    if op == HOST_WILD:
        return _host_wild(instr[1])
    if op == HOST_CIDR:
        return _host_cidr(instr[1])
    if op == INT_RANGE:
        return IntRange(instr[1], instr[2])
    if op == PATH_GLOB:
        return _path_glob(instr[1])
    if op == STR_GLOB:
        return str_glob(instr[1])
    if op == CMD:
        deny = instr[1] == DENY
        m = patterns.command_matcher(instr[2], instr[3], deny=deny, glob_matcher=str_glob)
        # what the rule is, for a plan that matches its command rules together (command_rule)
        setattr(m, _COMMAND_RULE, (deny, instr[2], instr[3]))
        return m
    raise ValueError(f"unknown argument opcode {op:#x}")  # the verifier rules this out


_MATCHERS: Memo[Instr, Matcher | None] = Memo("argument matchers", SHARE_MAX)
_CHECKS: Memo[tuple[int, tuple[Instr, ...]], Checks] = Memo("rule checks", SHARE_MAX)
_UNSEEN: Any = object()
# Linking reads the checks memo inline (index.Table); a miss calls checks_of.
checks_get = _CHECKS.get


def matcher_of(arg: Instr) -> Matcher | None:
    """:func:`matcher`, memoised process-wide."""
    m: Matcher | None = _MATCHERS.get(arg, _UNSEEN)
    if m is _UNSEEN:
        m = _MATCHERS.put(arg, matcher(arg))
    return m


def checks_of(args: tuple[Instr, ...], skip: int) -> Checks:
    """``((position, matcher), ...)`` for the non-ANY arguments other than ``skip``; shared."""
    key = (skip, args)
    c = _CHECKS.get(key)
    if c is None:
        c = _CHECKS.put(
            key,
            tuple(
                (i, m)
                for i, m in ((i, matcher_of(a)) for i, a in enumerate(args) if i != skip and a[0] != ANY)
                if m is not None
            ),
        )
    return c
