"""Listings of verified artifacts for people: rules, arguments, instructions (``polc inspect``).

Everything that reaches a terminal goes through :func:`quote` or
:func:`printable`, so an artifact cannot send escape sequences to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..catalog import Capability
from .opcodes import ANY, CONST_OPS, EFFECT_NAMES, INT_RANGE, OPCODE_NAMES, RULE
from .program import Rule

__all__ = ["disassemble", "format_arg", "format_rule", "printable", "quote"]


def quote(text: str) -> str:
    """A double-quoted, single-line, terminal-safe rendering of a constant."""
    import json  # only listings need it

    out = json.dumps(text, ensure_ascii=False)
    if out.isprintable():
        return out
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in out)


def printable(text: str) -> str:
    """``text`` with non-printable characters escaped (file names, sources)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)


def format_arg(arg: tuple[Any, ...]) -> str:
    op = arg[0]
    name = OPCODE_NAMES.get(op, str(op))
    if op == ANY:
        return name
    if op == INT_RANGE:
        return f"{name} {arg[1]}..{arg[2]}"
    return f"{name} {quote(arg[1])}"


def format_rule(rule: Rule, source: str) -> str:
    """``tenant.acme.pol:3:5  ENTITLE network.outbound HOST_WILD "*.acme.com" INT_RANGE 443..443``"""
    parts = [printable(rule.location(source)), "", rule.effect_name.upper(), rule.cap.name]
    parts.extend(format_arg(a) for a in rule.args)
    return " ".join(parts)


def disassemble(code: tuple[Any, ...], caps: Sequence[Capability], consts: Sequence[str]) -> list[dict[str, Any]]:
    """An instruction-level listing of verified ``code``.

    One dict per instruction: ``offset``, ``op`` (name), ``operands`` (the raw
    ints) and ``comment`` (what the operands refer to).
    """
    out: list[dict[str, Any]] = []
    rule = -1
    for offset, ins in enumerate(code):
        op, *operands = ins
        name = OPCODE_NAMES.get(op, f"{op:#04x}")
        if op == RULE:
            rule += 1
            effect, c, line, col = operands
            cap = caps[c]
            comment = f"rule {rule}: {EFFECT_NAMES.get(effect, effect)} {cap.name} at {line}:{col}"
        elif op in CONST_OPS:
            comment = quote(consts[operands[0]])
        elif op == INT_RANGE:
            comment = f"{operands[0]}..{operands[1]}"
        else:
            comment = ""
        out.append({"offset": offset, "op": name, "operands": list(operands), "comment": comment})
    return out
