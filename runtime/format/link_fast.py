"""The fast path of linking: an optimistic, unrolled linker the reader tries first.

:func:`link_fast_part` only answers "valid, here are the rules" or "not
sure" (None); ``verify.Linker`` then runs the reference check
(``verify.link_reference_part``), which decides and words the error. Tests
(tests/runtime/format/test_artifact.py, tests/runtime/format/test_fuzz_artifact.py) assert that this path
accepts every valid payload and never accepts what the reference rejects.

Why it exists: linking the 1,000 rules of the load benchmark's artifact
(benchmarks/test_load.py, bar 5 ms for read + verify + link) takes 1.0 ms
here against 4.8 ms with the reference check alone (linking the unpacked
``code`` of tests/artifact_fixtures.big_rules(1000), best of 15), which would
use up the whole budget by itself.

What keeps it fast, and must stay: attributes and globals read into locals
once, rules built with ``tuple.__new__`` (no ``NamedTuple.__new__`` call),
one dict lookup per argument (each distinct argument instruction is decoded
once per artifact and parameter type), and the one- and two-parameter rules
(every built-in capability) written out by hand instead of looping.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..catalog import INT_MAX, Capability
from .arguments import Arg, decode_arg
from .opcodes import RULE
from .program import Rule

__all__ = ["CapInfo", "FastLinkState", "cap_table", "link_fast_part"]

ArgCache = dict[Arg, Arg]
"""Argument instruction as unpacked -> its decoded form, for one parameter type."""

CapInfo = tuple[Capability, int, ArgCache, str, ArgCache, str, tuple[tuple[str, ArgCache], ...]]
"""What the fast path reads of one entry of ``caps``: the capability, its arity,
the cache and type of its first and second parameters (an unused empty cache
and ``""`` when it has fewer), and ``(type, cache)`` of every parameter."""


class FastLinkState(Protocol):
    """What :func:`link_fast_part` reads and appends to (``verify.Linker``)."""

    info: list[CapInfo]
    consts: tuple[str, ...]
    rules: list[Rule]


def cap_table(caps: tuple[Capability, ...]) -> tuple[list[CapInfo], int]:
    """The :data:`CapInfo` of each capability, in order, and the longest parameter list."""
    arity = 0
    # One cache per parameter type: argument instruction -> decoded argument.
    caches: dict[str, ArgCache] = {}
    info: list[CapInfo] = []
    for cap in caps:
        params = cap.params
        if len(params) > arity:
            arity = len(params)
        sig = tuple((p.type, caches.setdefault(p.type, {})) for p in params)
        c0, t0 = (sig[0][1], sig[0][0]) if params else ({}, "")
        c1, t1 = (sig[1][1], sig[1][0]) if len(params) > 1 else ({}, "")
        info.append((cap, len(params), c0, t0, c1, t1, sig))
    return info, arity


def link_fast_part(linker: FastLinkState, code: tuple[Any, ...], limit: int) -> int | None:
    """Append the rules of ``code`` that start before ``limit``; where it stopped, or None when
    anything at all looks wrong (the rules appended are then the caller's to drop).

    Per-instruction work is a few type checks and one dict lookup: each
    distinct argument instruction is validated once per artifact (per
    parameter type) and decoded to one shared tuple. Rules of one or two
    parameters (every built-in capability) take an unrolled path.
    """
    info = linker.info
    consts = linker.consts
    ncaps = len(info)
    append = linker.rules.append
    new = tuple.__new__
    decode = decode_arg
    imax = INT_MAX
    i = 0
    index = len(linker.rules)
    # A cache hit is an instruction equal to one that was validated; equal is not
    # enough (True == 1 and 1.0 == 1 hash alike), so every element of a hit is
    # type-checked too: a[0] and a[-1] cover lengths 1 and 2, a[1] length 3.
    try:
        while i < limit:
            # unpacking first is safe: msgpack gives tuples, str, bytes or dicts,
            # and anything that is not a 5-tuple fails the type check below
            op, effect, c, line, col = ins = code[i]
            if (
                ins.__class__ is not tuple
                or op.__class__ is not int
                or effect.__class__ is not int
                or c.__class__ is not int
                or line.__class__ is not int
                or col.__class__ is not int
                or op != RULE
                or not 0 <= effect <= 1
                or not 0 <= c < ncaps
                or not 0 < line <= imax
                or not 0 < col <= imax
            ):
                return None
            cap, arity, c0, t0, c1, t1, sig = info[c]
            i += 1
            if arity == 2:
                a = code[i]  # IndexError past the end: caught below
                d0 = c0.get(a)
                if d0 is None:
                    if a.__class__ is not tuple or not a:
                        return None
                    d0 = decode(t0, a, consts)
                    if d0 is None:
                        return None
                    c0[a] = d0
                elif (
                    a.__class__ is not tuple
                    or a[0].__class__ is not int
                    or a[-1].__class__ is not int
                    or (len(a) > 2 and a[1].__class__ is not int)
                ):
                    return None
                a = code[i + 1]
                d1 = c1.get(a)
                if d1 is None:
                    if a.__class__ is not tuple or not a:
                        return None
                    d1 = decode(t1, a, consts)
                    if d1 is None:
                        return None
                    c1[a] = d1
                elif (
                    a.__class__ is not tuple
                    or a[0].__class__ is not int
                    or a[-1].__class__ is not int
                    or (len(a) > 2 and a[1].__class__ is not int)
                ):
                    return None
                i += 2
                append(new(Rule, (index, effect, cap, line, col, (d0, d1))))
            elif arity == 1:
                a = code[i]
                d0 = c0.get(a)
                if d0 is None:
                    if a.__class__ is not tuple or not a:
                        return None
                    d0 = decode(t0, a, consts)
                    if d0 is None:
                        return None
                    c0[a] = d0
                elif (
                    a.__class__ is not tuple
                    or a[0].__class__ is not int
                    or a[-1].__class__ is not int
                    or (len(a) > 2 and a[1].__class__ is not int)
                ):
                    return None
                i += 1
                append(new(Rule, (index, effect, cap, line, col, (d0,))))
            elif arity == 0:
                append(new(Rule, (index, effect, cap, line, col, ())))
            else:
                args = []
                for ptype, cache in sig:
                    a = code[i]
                    i += 1
                    dec = cache.get(a)
                    if dec is None:
                        if a.__class__ is not tuple or not a:
                            return None
                        dec = decode(ptype, a, consts)
                        if dec is None:
                            return None
                        cache[a] = dec
                    elif (
                        a.__class__ is not tuple
                        or a[0].__class__ is not int
                        or a[-1].__class__ is not int
                        or (len(a) > 2 and a[1].__class__ is not int)
                    ):
                        return None
                    args.append(dec)
                append(new(Rule, (index, effect, cap, line, col, tuple(args))))
            index += 1
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        return None
    return i
