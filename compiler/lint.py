"""Warnings about a checked module's rules: duplicates, and entitles a deny surely shadows.

Runs on the lowered rules (compiler/ir.py), so two rules are duplicates when
they are equal after normalisation (``fs.read("a")`` and ``fs.read("a", *)``).
"Surely shadowed" is conservative: the deny must cover every argument -- ``*``,
an equal pattern, a port/int range containing the entitle's, the string glob
``"*"``, the path glob ``"**"``, or the host pattern ``"**"`` (which covers DNS
names but no IP address).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence

from polc.runtime.format.opcodes import ANY, DENY, ENTITLE, HOST_EXACT, HOST_WILD, INT_RANGE, PATH_GLOB, STR_GLOB

from .ast import Rule
from .diagnostics import NOTE, WARNING, Diagnostic
from .ir import IRArg, IRRule

__all__ = ["lint_rules"]


def _universal(arg: IRArg) -> bool:
    """An argument instruction that surely matches every value its parameter accepts."""
    op = arg[0]
    return bool(op == ANY or (op == STR_GLOB and arg[1] == "*") or (op == PATH_GLOB and arg[1] == "**"))


def _covers(d: IRArg, e: IRArg) -> bool:
    """Does the deny's argument ``d`` surely match every value the entitle's ``e`` matches?"""
    if d == e or _universal(d):
        return True
    op = d[0]
    if op == INT_RANGE and e[0] == INT_RANGE:
        return bool(d[1] <= e[1] and e[2] <= d[2])
    if op == HOST_WILD and d[1] == "**":
        return e[0] in (HOST_EXACT, HOST_WILD)  # every DNS name, but no IP address
    return False


_RANGE = ("range",)
_ANY_DNS = ("any dns name",)
_ALL = ("all",)


def _deny_key(arg: IRArg) -> Hashable:
    """The bucket a deny's argument goes in for the shadow index."""
    if _universal(arg):
        return _ALL
    if arg[0] == INT_RANGE:
        return _RANGE
    if arg == (HOST_WILD, "**"):
        return _ANY_DNS
    return arg


def _entitle_keys(arg: IRArg) -> list[Hashable]:
    """The deny buckets that may hold a deny argument covering ``arg``."""
    keys: list[Hashable] = [_ALL]
    if arg[0] == INT_RANGE:
        keys.append(_RANGE)
    else:
        keys.append(arg)
    if arg[0] in (HOST_EXACT, HOST_WILD):
        keys.append(_ANY_DNS)
    return keys


def lint_rules(rules: Sequence[IRRule], nodes: Sequence[Rule], mod: str, diags: list[Diagnostic]) -> None:
    """Warn about duplicate rules and entitles that a deny of the module surely shadows.

    ``nodes[i]`` is the statement ``rules[i]`` was lowered from. Denies are
    indexed by (capability, per-argument bucket), so each entitle looks at a
    few buckets instead of every deny.
    """
    seen: dict[tuple[object, ...], IRRule] = {}
    index: dict[tuple[object, ...], list[IRRule]] = {}
    for r in rules:
        if r.effect == DENY:
            key = (r.cap.name, tuple(_deny_key(a) for a in r.args))
            index.setdefault(key, []).append(r)
    for r, node in zip(rules, nodes, strict=True):
        dup_key = (r.effect, r.cap.name, r.args)
        first = seen.get(dup_key)
        if first is not None:
            diags.append(Diagnostic(WARNING, node.file, node.line, node.col,
                                    f"duplicate rule: the same as line {first.line}",
                                    max(1, node.end_col - node.col), mod))
            continue
        seen[dup_key] = r
        if r.effect != ENTITLE or not index:
            continue
        shadow = _shadowing_deny(r, index)
        if shadow is not None:
            note = Diagnostic(NOTE, node.file, shadow.line, shadow.col, "the deny is here", 4, mod)
            diags.append(
                Diagnostic(
                    WARNING, node.file, node.line, node.col,
                    f"this entitle is shadowed by the deny at line {shadow.line} "
                    f"and can never allow anything",
                    7, mod, (note,),
                )
            )


def _shadowing_deny(r: IRRule, index: dict[tuple[object, ...], list[IRRule]]) -> IRRule | None:
    """The first deny (by position) that surely covers the entitle ``r``, if any."""
    shadow: IRRule | None = None
    for combo in itertools.product(*(_entitle_keys(a) for a in r.args)):
        for d in index.get((r.cap.name, combo), ()):
            if (shadow is None or (d.line, d.col) < (shadow.line, shadow.col)) and all(
                _covers(da, ea) for da, ea in zip(d.args, r.args, strict=True)
            ):
                shadow = d
                break
    return shadow
