"""Why a request is decided as it is: every rule that could decide it, matched or not, and why.

``explain(programs, snapshot, module, capability, *args)`` lists the rules of
the request's capability in evaluation order -- ``_global``'s denies, the
module's denies, the module's entitles, ``_global``'s entitles -- each with
its place, a text rebuilt from the verified artifact (arguments in their
compiled, normal form), and whether it matches, naming the first argument
that does not (``host 'evil.com' does not match '*.acme.com'``). Matching
uses the enforcer's own pieces: the request is typed and normalised by the
signature the plan would choose (``normalize.NORMALIZERS``), each argument is
tested by the matcher the linker builds for it (``matchers.matcher_of``,
command arguments as ``matchers.command_args`` turns them). The decision
shown is ``snapshot.check``'s; ``agrees`` says whether the explanation's
first matching rule (or its refusal) is the one the enforcer reported, which
tests/tooling/ checks over generated requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import patterns
from ..catalog import BUILTINS, COMMAND, GLOBAL_MODULE, Capability
from ..format.opcodes import ANY, DENY, ENTITLE, HOST_CIDR, INT_RANGE
from ..format.program import Program, Rule
from .decision import Decision
from .matchers import command_args, matcher_of
from .normalize import NORMALIZERS
from .snapshot import Snapshot

__all__ = ["TIER_NAMES", "Explanation", "RuleCheck", "explain", "format_pattern", "rule_text"]

TIER_NAMES = ("_global deny", "module deny", "module entitle", "_global entitle")
"""The four tiers of evaluation, in order."""


def format_pattern(instr: tuple[Any, ...]) -> str:
    """One argument instruction as the language writes it: ``*``, ``443``, ``8000..8999``, ``"*.acme.com"``."""
    op = instr[0]
    if op == ANY:
        return "*"
    if op == INT_RANGE:
        lo, hi = instr[1], instr[2]
        return str(lo) if lo == hi else f"{lo}..{hi}"
    return _quote(str(instr[1]))


def _quote(text: str) -> str:
    out = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return out if out.isprintable() else "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in out)


def rule_text(rule: Rule) -> str:
    """The rule rebuilt from its instructions: ``deny module to network.outbound("169.254.0.0/16");``.

    Trailing ``*`` arguments are left out, as a source may leave them out;
    patterns are in their compiled form (an address is written as its /32 or
    /128 block, a command path normalised).
    """
    args = list(rule.args)
    while args and args[-1][0] == ANY:
        args.pop()
    effect = "deny" if rule.effect == DENY else "entitle"
    call = rule.cap.name + (f"({', '.join(format_pattern(a) for a in args)})" if args else "")
    return f"{effect} module to {call};"


def _shown_value(value: object) -> str:
    if type(value) is str:
        return repr(value) if len(value) <= 80 else repr(value[:80]) + "..."
    if type(value) is int:
        return str(value) if value.bit_length() <= 64 else f"<int of {value.bit_length()} bits>"
    return f"<{patterns.type_name(value)}>"


def _pattern_words(instr: tuple[Any, ...]) -> str:
    op = instr[0]
    if op == INT_RANGE:
        return format_pattern(instr)
    if op == HOST_CIDR:
        return f"'{instr[1]}'"
    return "'" + str(instr[1]) + "'"


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """One candidate rule and whether the request matches it."""

    tier: str
    """One of :data:`TIER_NAMES`."""
    module: str
    """The module whose artifact holds the rule (``_global`` or the request's module)."""
    location: str
    text: str
    effect: str
    """``deny`` or ``entitle``."""
    matched: bool
    why: str | None
    """For a rule that does not match: the first argument that does not, in words."""
    decides: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier, "module": self.module, "location": self.location, "text": self.text,
            "effect": self.effect, "matched": self.matched, "why": self.why, "decides": self.decides,
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    module: str
    capability: str
    args: tuple[object, ...]
    decision: Decision
    """What ``snapshot.check`` decided."""
    signature: str | None
    rules: tuple[RuleCheck, ...]
    refused: str | None
    """Why the request was refused before any rule was looked at (unknown capability, arity, a bad value)."""
    expected_rule: str | None
    """The rule the explanation finds deciding (None: no rule decides)."""
    warnings: tuple[str, ...] = field(default=())

    @property
    def agrees(self) -> bool:
        """Does the explanation reach the enforcer's decision (the same deciding rule, or none)?"""
        if self.refused is not None:
            return self.decision.rule is None and not self.decision.allowed
        return self.decision.rule == self.expected_rule

    def as_dict(self) -> dict[str, Any]:
        return {
            "request": {"module": self.module, "capability": self.capability, "args": list(self.args)},
            "signature": self.signature,
            "warnings": list(self.warnings),
            "refused": self.refused,
            "rules": [r.as_dict() for r in self.rules],
            "decision": self.decision.to_dict(),
            "agrees": self.agrees,
        }


def _signature(mod: Program | None, glob: Program | None, capability: str) -> Capability | None:
    for prog in (mod, glob):
        if prog is not None:
            for cap in prog.caps:
                if cap.name == capability:
                    return cap
    return BUILTINS.get(capability)


def _types(cap: Capability) -> tuple[str, ...]:
    return tuple(p.type for p in cap.params)


def _check_rule(rule: Rule, sig: Capability, values: tuple[object, ...], raw: tuple[object, ...]) -> str | None:
    """None when the rule matches the normalised request, else the first failing argument in words."""
    types = _types(sig)
    args = command_args(rule.args, types, rule.effect) if COMMAND in types else rule.args
    for i, instr in enumerate(args):
        if instr[0] == ANY:
            continue
        m = matcher_of(instr)
        if m is not None and not m(values[i]):
            return f"{sig.params[i].name} {_shown_value(raw[i])} does not match {_pattern_words(rule.args[i])}"
    return None


def explain(
    programs: Mapping[str, Program | None], snapshot: Snapshot, module: str, capability: str, *args: object
) -> Explanation:
    """Explain ``snapshot.check(module, capability, *args)`` with the verified programs it was linked from.

    ``programs`` maps ``_global`` and ``module`` to their programs (None or
    absent when there is no artifact).
    """
    decision = snapshot.check(module, capability, *args)
    warnings: list[str] = []
    glob = programs.get(GLOBAL_MODULE)
    mod = programs.get(module) if module != GLOBAL_MODULE else None
    if module != GLOBAL_MODULE and mod is None:
        warnings.append(f"module {module!r} has no artifact: only {GLOBAL_MODULE}'s rules apply to it")

    def refused(reason: str, sig: Capability | None = None) -> Explanation:
        return Explanation(module, capability, args, decision, sig.signature() if sig else None, (), reason, None,
                           tuple(warnings))

    if snapshot.unavailable:
        return refused(snapshot.unavailable)
    sig = _signature(mod, glob, capability)
    if sig is None:
        return refused(f"unknown capability {patterns.shown(capability)}")
    gsig = _signature(None, glob, capability) if glob is not None else None
    if gsig is not None and _types(gsig) != _types(sig) and any(
        r.cap.name == capability for r in glob.rules  # type: ignore[union-attr]  # gsig implies glob
    ):
        return refused(f"capability {capability!r} is declared as {sig.signature()} by {module} but as "
                       f"{gsig.signature()} by {GLOBAL_MODULE}", sig)
    if len(args) != sig.arity:
        return refused(f"wrong arity: {capability} takes {sig.arity} argument{'s' if sig.arity != 1 else ''}, "
                       f"got {len(args)}", sig)
    values: list[object] = []
    for p, value in zip(sig.params, args, strict=True):
        try:
            values.append(NORMALIZERS[p.type](value))
        except ValueError as exc:
            return refused(f"invalid argument {p.name!r} of {capability}: {exc}", sig)
        except Exception as exc:  # a value whose own methods raise
            return refused(f"invalid argument {p.name!r} of {capability}: unusable {patterns.type_name(value)} "
                           f"({patterns.type_name(exc)})", sig)
    vals = tuple(values)
    tiers: list[tuple[str, Program | None, int]] = [
        (TIER_NAMES[0], glob, DENY), (TIER_NAMES[1], mod, DENY),
        (TIER_NAMES[2], mod, ENTITLE), (TIER_NAMES[3], glob, ENTITLE),
    ]
    checks: list[RuleCheck] = []
    deciding: str | None = None
    for tier, prog, effect in tiers:
        if prog is None:
            continue
        for rule in prog.rules:
            if rule.effect != effect or rule.cap.name != capability:
                continue
            why = _check_rule(rule, sig, vals, args)
            where = prog.location(rule)
            decides = why is None and deciding is None
            if decides:
                deciding = where
            checks.append(RuleCheck(tier, prog.module, where, rule_text(rule),
                                    "deny" if effect == DENY else "entitle", why is None, why, decides))
    return Explanation(module, capability, args, decision, sig.signature(), tuple(checks), None, deciding,
                       tuple(warnings))
