"""``polc test``: checking test files against a policy set, running them, and rule coverage.

A policy set is the verified programs of its modules (:class:`PolicySet`) and
the snapshot the runtime decides with. The checks give a test file the same
diagnostics as a source (unknown module, capability, arity, types, the
deciding rule named by ``by``, each with "did you mean"); every expectation
is then decided by ``Snapshot.check`` -- the enforcer the agent runs -- and
compared with what it expects. A rule is *covered* when it decided at least
one expectation that ran.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from polc.runtime.catalog import BUILTINS, COMMAND, GLOBAL_MODULE, HOST, INT, PATH, PORT, STRING, Capability
from polc.runtime.enforce.decision import Decision
from polc.runtime.format.opcodes import DENY, ENTITLE
from polc.runtime.format.program import Program

from .ast import AnyArg, Arg, IntArg, Node, RangeArg, StrArg
from .diagnostics import ERROR, WARNING, Diagnostic, did_you_mean, suggest
from .testfile import Expect, TestFile

__all__ = [
    "VERDICTS",
    "CheckedExpect",
    "CheckedTest",
    "Coverage",
    "ExpectResult",
    "ModuleCoverage",
    "PolicySet",
    "TestResult",
    "check_tests",
    "coverage",
    "outcome_of",
    "run_tests",
]

VERDICTS = ("allow", "deny", "audit")
_VERDICT_SYNONYMS = {
    "entitle": "allow",
    "entitled": "allow",
    "allowed": "allow",
    "permit": "allow",
    "grant": "allow",
    "accept": "allow",
    "denied": "deny",
    "block": "deny",
    "forbid": "deny",
    "reject": "deny",
    "refuse": "deny",
    "disallow": "deny",
    "audited": "audit",
    "warn": "audit",
    "would_deny": "audit",
}
_STRING_TYPES = (HOST, PATH, STRING, COMMAND)
_INT_TYPES = (PORT, INT)


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The modules a test runs against: each module's verified program (``_global`` included)."""

    programs: Mapping[str, Program]
    declared: Mapping[str, Capability] = field(default_factory=dict)
    """Capabilities declared anywhere in the tree (their signatures type a request in any module)."""

    def signature(self, module: str, capability: str) -> Capability | None:
        """The signature the runtime types the request with, else any the tree declares."""
        for name in (module, GLOBAL_MODULE):
            prog = self.programs.get(name)
            if prog is not None:
                for cap in prog.caps:
                    if cap.name == capability:
                        return cap
        builtin = BUILTINS.get(capability)
        if builtin is not None:
            return builtin
        if capability in self.declared:
            return self.declared[capability]
        for prog in self.programs.values():
            for cap in prog.caps:
                if cap.name == capability:
                    return cap
        return None

    def capability_names(self) -> list[str]:
        names = set(BUILTINS) | set(self.declared)
        for prog in self.programs.values():
            names.update(c.name for c in prog.caps)
        return sorted(names)

    def rule_locations(self) -> dict[str, list[tuple[int, int, int, str]]]:
        """source -> ``(line, col, effect, module)`` of each of its rules."""
        out: dict[str, list[tuple[int, int, int, str]]] = {}
        for name, prog in self.programs.items():
            for r in prog.rules:
                out.setdefault(prog.source, []).append((r.line, r.col, r.effect, name))
        return out


@dataclass(frozen=True, slots=True)
class CheckedExpect:
    """One expectation, checked: the request it makes and what it expects."""

    file: str
    line: int
    col: int
    verdict: str
    module: str
    capability: str
    args: tuple[object, ...]
    by: str | None
    """As written (``FILE:LINE[:COL]``)."""
    by_rules: frozenset[str]
    """The ``source:line:col`` of the rules ``by`` names (empty without ``by``)."""

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def request(self) -> str:
        shown = ", ".join(_literal(a) for a in self.args)
        return f"{self.module} to {self.capability}({shown})"


@dataclass(frozen=True, slots=True)
class CheckedTest:
    name: str
    file: str
    line: int
    col: int
    expects: tuple[CheckedExpect, ...]


def _literal(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _diag(sev: str, node: Node, msg: str) -> Diagnostic:
    return Diagnostic(sev, node.file, node.line, node.col, msg, max(1, node.end_col - node.col))


# --------------------------------------------------------------------------
# checks


def check_tests(
    files: Iterable[TestFile], policies: PolicySet, broken: Collection[str] = ()
) -> tuple[list[CheckedTest], list[Diagnostic]]:
    """Check every test of ``files`` against ``policies``; the tests are meaningful only without errors.

    ``broken``: the paths of files with syntax errors (a test there may have
    lost its expectations to them: it is not also warned about as empty).
    """
    tests: list[CheckedTest] = []
    diags: list[Diagnostic] = []
    sources = policies.rule_locations()
    modules = sorted(policies.programs)
    for tf in files:
        seen: dict[str, int] = {}
        for t in tf.tests:
            name = t.name.value
            if t.name.bad_escape is not None:
                diags.append(_diag(ERROR, t.name, f"unknown escape '{t.name.bad_escape}' in a string; "
                                                  "the escapes are \\\" and \\\\"))
            if not name.strip():
                diags.append(_diag(ERROR, t.name, "a test's name must not be empty"))
            if name in seen:
                diags.append(_diag(ERROR, t.name, f"duplicate test name {t.name.value!r} in this file "
                                                  f"(first at line {seen[name]})"))
            else:
                seen[name] = t.line
            if not t.expects and tf.path not in broken:
                diags.append(_diag(WARNING, t, f"test {name!r} has no expectations"))
            checked = [c for c in (_check_expect(e, policies, modules, sources, diags) for e in t.expects) if c]
            tests.append(CheckedTest(name, tf.path, t.line, t.col, tuple(checked)))
    return tests, diags


def _check_expect(
    e: Expect,
    policies: PolicySet,
    modules: list[str],
    sources: Mapping[str, list[tuple[int, int, int, str]]],
    diags: list[Diagnostic],
) -> CheckedExpect | None:
    ok = True
    verdict = e.verdict.text
    if verdict not in VERDICTS:
        hint = did_you_mean(verdict, VERDICTS, synonyms=_VERDICT_SYNONYMS) or "; a verdict is allow, deny or audit"
        diags.append(_diag(ERROR, e.verdict, f"unknown verdict '{verdict}'{hint}"))
        ok = False
    module = e.module.text
    if module not in policies.programs:
        hint = did_you_mean(module, modules)
        if not hint:
            hint = "; the modules are " + ", ".join(modules) if len(modules) <= 12 else ""
        diags.append(_diag(ERROR, e.module, f"unknown module '{module}'{hint}"))
        ok = False
    args = _check_request(e, policies, diags)
    by_rules: frozenset[str] = frozenset()
    if e.by is not None:
        found = _check_by(e.by, verdict, sources, diags)
        if found is None:
            ok = False
        else:
            by_rules = found
    if not ok or args is None:
        return None
    return CheckedExpect(e.file, e.line, e.col, verdict, module, e.cap.text, args,
                         e.by.value if e.by is not None else None, by_rules)


def _check_request(e: Expect, policies: PolicySet, diags: list[Diagnostic]) -> tuple[object, ...] | None:
    name = e.cap.text
    sig = policies.signature(e.module.text, name)
    if sig is None:
        hint = did_you_mean(name, policies.capability_names())
        diags.append(_diag(ERROR, e.cap, f"unknown capability '{name}'{hint}"))
        return None
    given: tuple[Arg, ...] = e.args or ()
    if len(given) != sig.arity:
        takes = {0: "no arguments", 1: "1 argument"}.get(sig.arity, f"{sig.arity} arguments")
        where: Node = given[sig.arity] if len(given) > sig.arity else e.cap
        diags.append(_diag(
            ERROR, where,
            f"wrong number of arguments: {sig.signature()} takes {takes}, got {len(given)} "
            "(a request names a value for every parameter)",
        ))
        return None
    out: list[object] = []
    ok = True
    for param, arg in zip(sig.params, given, strict=True):
        value = _request_value(sig, param.name, param.type, arg, diags)
        if value is None:
            ok = False
        else:
            out.append(value)
    return tuple(out) if ok else None


def _request_value(sig: Capability, pname: str, ptype: str, arg: Arg, diags: list[Diagnostic]) -> object | None:
    if isinstance(arg, (AnyArg, RangeArg)):
        what = "'*'" if isinstance(arg, AnyArg) else "a range"
        diags.append(_diag(
            ERROR, arg,
            f"{what} is a pattern, and a request names one value: parameter '{pname}' of {sig.signature()} "
            f"needs {'a number' if ptype in _INT_TYPES else 'a string'}",
        ))
        return None
    if isinstance(arg, StrArg):
        if arg.bad_escape is not None:
            diags.append(_diag(ERROR, arg, f"unknown escape '{arg.bad_escape}' in a string; "
                                           "the escapes are \\\" and \\\\"))
            return None
        if ptype in _STRING_TYPES:
            return arg.value
    elif isinstance(arg, IntArg) and ptype in _INT_TYPES:
        return int(arg.value)
    got = "a string" if isinstance(arg, StrArg) else "a number"
    want = "a number" if ptype in _INT_TYPES else "a string"
    diags.append(_diag(
        ERROR, arg,
        f"wrong argument type: parameter '{pname}' of {sig.signature()} is {ptype}, expecting {want}; got {got}",
    ))
    return None


_BY = re.compile(r"(?P<file>.+?):(?P<line>[0-9]+)(?::(?P<col>[0-9]+))?")


def _check_by(
    by: StrArg, verdict: str, sources: Mapping[str, list[tuple[int, int, int, str]]], diags: list[Diagnostic]
) -> frozenset[str] | None:
    """The rules ``by "FILE:LINE[:COL]"`` names (``source:line:col``), or None with an error."""
    m = _BY.fullmatch(by.value)
    if m is None or int(m["line"]) < 1 or (m["col"] is not None and int(m["col"]) < 1):
        diags.append(_diag(ERROR, by, f"'by' names the deciding rule as \"FILE:LINE\" or \"FILE:LINE:COL\", "
                                      f"got {by.value!r}"))
        return None
    file = m["file"]
    matches = [s for s in sources if s == file or s.endswith("/" + file)]
    if not matches:
        shortened = {s.split("/", 1)[1] if "/" in s else s: s for s in sources}
        hit = suggest(file, [*sources, *shortened])
        hint = f"; did you mean '{hit}'?" if hit else ""
        diags.append(_diag(ERROR, by, f"no compiled module comes from a source '{file}'{hint} "
                                      "(FILE is relative to the source root)"))
        return None
    if len(matches) > 1:
        diags.append(_diag(ERROR, by, f"'{file}' could be any of {', '.join(sorted(matches))}: "
                                      "name the file with more of its path"))
        return None
    source = matches[0]
    line = int(m["line"])
    col = int(m["col"]) if m["col"] is not None else None
    rules = sources[source]
    hits = [r for r in rules if r[0] == line and (col is None or r[1] == col)]
    if not hits:
        starts = sorted({(r[0], r[1]) for r in rules})
        near = min(starts, key=lambda lc: (abs(lc[0] - line), abs(lc[1] - (col or lc[1]))))
        diags.append(_diag(
            ERROR, by,
            f"no rule starts at {source}:{line}{'' if col is None else f':{col}'}; "
            f"did you mean '{file}:{near[0]}:{near[1]}'? (its rules start at "
            + ", ".join(f"{ln}:{c}" for ln, c in starts[:12]) + (", ..." if len(starts) > 12 else "") + ")",
        ))
        return None
    effects = {r[2] for r in hits}
    if verdict == "allow" and ENTITLE not in effects:
        diags.append(_diag(ERROR, by, f"the rule at {by.value} is a deny: it cannot allow"))
        return None
    if verdict in ("deny", "audit") and DENY not in effects:
        diags.append(_diag(ERROR, by, f"the rule at {by.value} is an entitle: it cannot deny"))
        return None
    return frozenset(f"{source}:{r[0]}:{r[1]}" for r in hits)


# --------------------------------------------------------------------------
# running


def outcome_of(d: Decision) -> str:
    """``allow``, ``deny`` or ``audit`` (an audited would-be deny, allowed)."""
    if d.audit:
        return "audit"
    return "allow" if d.allowed else "deny"


def _why(d: Decision) -> str:
    if d.rule is None:
        return d.reason
    verb = "entitled" if d.effect == "allow" else "denied"
    return f"{verb} by {d.rule}" + (", audit mode" if d.audit else "")


@dataclass(frozen=True, slots=True)
class ExpectResult:
    expect: CheckedExpect
    decision: Decision
    passed: bool
    message: str | None
    """Why it failed: ``expected deny, got allow (entitled by FILE:LINE:COL)``."""


@dataclass(frozen=True, slots=True)
class TestResult:
    test: CheckedTest
    results: tuple[ExpectResult, ...]
    seconds: float = 0.0
    """How long deciding its expectations took (JUnit's ``time``)."""

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


def _judge(e: CheckedExpect, d: Decision) -> ExpectResult:
    got = outcome_of(d)
    if got != e.verdict:
        return ExpectResult(e, d, False, f"expected {e.verdict}, got {got} ({_why(d)})")
    if e.by_rules and d.rule not in e.by_rules:
        wanted = " or ".join(sorted(e.by_rules))
        return ExpectResult(e, d, False, f"expected {e.verdict} by {wanted}, got {got} ({_why(d)})")
    return ExpectResult(e, d, True, None)


def run_tests(
    tests: Sequence[CheckedTest], check: Callable[..., Decision], select: Callable[[str], bool] | None = None
) -> list[TestResult]:
    """Decide every expectation of the selected tests with ``check`` (``Snapshot.check``)."""
    out = []
    for t in tests:
        if select is not None and not select(t.name):
            continue
        start = time.perf_counter()
        results = tuple(_judge(e, check(e.module, e.capability, *e.args)) for e in t.expects)
        out.append(TestResult(t, results, time.perf_counter() - start))
    return out


# --------------------------------------------------------------------------
# coverage


@dataclass(frozen=True, slots=True)
class ModuleCoverage:
    module: str
    source: str
    rules: int
    missed: tuple[str, ...]
    """``source:line:col`` of every rule no expectation reached, in source order."""

    @property
    def covered(self) -> int:
        return self.rules - len(self.missed)

    @property
    def percent(self) -> float:
        return 100.0 if not self.rules else 100.0 * self.covered / self.rules


@dataclass(frozen=True, slots=True)
class Coverage:
    modules: tuple[ModuleCoverage, ...]

    @property
    def rules(self) -> int:
        return sum(m.rules for m in self.modules)

    @property
    def covered(self) -> int:
        return sum(m.covered for m in self.modules)

    @property
    def percent(self) -> float:
        return 100.0 if not self.rules else 100.0 * self.covered / self.rules


def coverage(policies: PolicySet, results: Iterable[TestResult]) -> Coverage:
    """Per module, the rules that decided no expectation of ``results``."""
    reached = {r.decision.rule for t in results for r in t.results if r.decision.rule is not None}
    mods = []
    for name in sorted(policies.programs):
        prog = policies.programs[name]
        locs = [prog.location(r) for r in prog.rules]
        mods.append(ModuleCoverage(name, prog.source, len(locs), tuple(x for x in locs if x not in reached)))
    return Coverage(tuple(mods))
