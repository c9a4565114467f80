"""``polc diff OLD NEW``: what a policy change does, by meaning, with requests whose decision flips.

Each side is an artifact directory (``*.bin``, verified with the runtime's
reader) or a source tree (compiled in memory through the compiler's one
pipeline, nothing written). Per module:

- the rules added, removed and changed, compared by meaning -- effect,
  capability and normalised arguments -- never by position, so a reformatted
  or reordered tree has none;
- witness requests: concrete requests built from the patterns of the rules
  that could decide them (the module's rules and ``_global``'s, on both
  sides: an exact value, a name under a wildcard, an address inside a block,
  both ends of a range and just outside them, a file under a path glob, and a
  value no rule names), each decided by both sides' :class:`Snapshot` -- the
  runtime's own enforcer -- and kept when the decision differs. One witness
  is kept per changed region: per capability and pair of deciding rules
  (``old rule -> new rule``), the first request in a fixed order.

A module only one side has is compared with the other side's ``_global``
alone, which is what the runtime does with a module that has no artifact.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from polc.runtime.catalog import BUILTINS, COMMAND, GLOBAL_MODULE, HOST, INT, PATH, PORT, Capability
from polc.runtime.enforce.decision import Decision
from polc.runtime.enforce.link import link
from polc.runtime.enforce.snapshot import Snapshot
from polc.runtime.errors import ArtifactError, PolcError
from polc.runtime.format.opcodes import (
    ANY,
    DENY,
    HOST_CIDR,
    HOST_EXACT,
    HOST_WILD,
    INT_RANGE,
    PATH_GLOB,
    STR_EXACT,
    STR_GLOB,
)
from polc.runtime.format.program import Program
from polc.runtime.format.reader import read_artifact

__all__ = [
    "DiffInputError",
    "GovernanceChange",
    "ModuleDiff",
    "PolicySet",
    "RuleChange",
    "TreeDiff",
    "Witness",
    "diff_sets",
    "load_set",
    "rule_text",
    "set_from_sources",
]

MAX_CANDIDATES = 4096
"""Requests tried per module and capability signature (a deterministic subset beyond it)."""
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_DEFAULTS: dict[str, tuple[Any, ...]] = {
    HOST: ("witness.polc.example", "192.0.2.1", "2001:db8::1"),
    PORT: (1,),
    INT: (0,),
    PATH: ("polc-witness",),
    COMMAND: ("polc-witness",),
}
"""Values no rule is likely to name, per parameter type (``string`` and others: ``"polc-witness"``)."""


class DiffInputError(PolcError):
    """OLD or NEW cannot be read: not a directory of artifacts or sources, a bad artifact, a source with errors."""

    exit_code = 2


# --------------------------------------------------------------------------
# loading one side


@dataclass(slots=True)
class PolicySet:
    """One side of a diff: its verified programs by module name, and the snapshot the runtime would build."""

    label: str
    kind: str
    """``"artifacts"`` or ``"sources"``."""
    programs: dict[str, Program]
    snapshot: Snapshot


def _programs_snapshot(programs: dict[str, Any]) -> Snapshot:
    linked = {name: link(a) for name, a in programs.items()}
    glob = linked.pop(GLOBAL_MODULE, None)
    return Snapshot(linked, glob, cache_size=0)


def load_set(path: str) -> PolicySet:
    """An artifact directory or a source tree (a directory of ``*.pol``, or one ``.pol`` file)."""
    if not os.path.exists(path):
        raise DiffInputError(f"no such file or directory: {path}")
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        bins = [n for n in names if n.endswith(".bin") and not n.startswith(".")]
        pols = [n for n in names if n.endswith(".pol") and not n.startswith(".")]
        if bins and pols:
            raise DiffInputError(f"{path}: holds both artifacts (*.bin) and sources (*.pol); name one or the other")
        if bins:
            return _load_artifacts(path, bins)
    return _load_sources(path)


def _load_artifacts(path: str, bins: list[str]) -> PolicySet:
    from polc.runtime.format.reader import read_artifact_bytes

    programs: dict[str, Any] = {}
    for name in bins:
        module = name[: -len(".bin")]
        full = os.path.join(path, name)
        try:
            programs[module] = read_artifact(read_artifact_bytes(full), expected_module=module, file_name=name)
        except (ArtifactError, OSError, ValueError) as exc:
            raise DiffInputError(f"{full}: {exc}") from None
    return PolicySet(path, "artifacts", programs, _programs_snapshot(programs))


def _load_sources(path: str) -> PolicySet:
    from .errors import UsageError
    from .sources import recorded_names, walk_sources

    try:
        walked = [w for w in walk_sources([path]) if not w[0].endswith(".test.pol")]
    except UsageError as exc:
        raise DiffInputError(str(exc)) from None
    if not walked:
        raise DiffInputError(f"{path}: no policy sources (*.pol) or artifacts (*.bin) found")
    names = recorded_names(walked, [path], None)
    sources: list[tuple[str, str | bytes]] = []
    for f, _, _ in walked:
        try:
            with open(f, "rb") as fh:
                sources.append((names[f], fh.read()))
        except OSError as exc:
            raise DiffInputError(f"{f}: cannot read: {exc.strerror or exc}") from None
    return set_from_sources(path, sources)


def set_from_sources(label: str, sources: Sequence[tuple[str, str | bytes]]) -> PolicySet:
    """A policy set compiled in memory from ``(recorded path, text)`` pairs."""
    from .memory import compile_sources

    result = compile_sources(sources)
    if not result.ok:
        raise DiffInputError(f"{label}: the sources have errors, so there is nothing to compare:\n{result.render()}")
    programs: dict[str, Any] = {name: read_artifact(data, expected_module=name) for name, data in result.artifacts}
    return PolicySet(label, "sources", programs, _programs_snapshot(programs))


# --------------------------------------------------------------------------
# rules by meaning

Meaning = tuple[int, str, tuple[tuple[str, str], ...], tuple[tuple[Any, ...], ...]]


def _meaning(rule: Any) -> Meaning:
    return (rule.effect, rule.cap.name, tuple((p.name, p.type) for p in rule.cap.params), tuple(rule.args))


def _quote(text: str) -> str:
    from polc.runtime.format.disasm import quote

    return quote(text)


def _arg_text(arg: tuple[Any, ...]) -> str:
    op = arg[0]
    if op == ANY:
        return "*"
    if op == INT_RANGE:
        return str(arg[1]) if arg[1] == arg[2] else f"{arg[1]}..{arg[2]}"
    return _quote(str(arg[1]))


def rule_text(rule: Any) -> str:
    """A rule as its source would say it: ``entitle network.outbound("*.acme.com", 443)``."""
    args = [_arg_text(a) for a in rule.args]
    while args and args[-1] == "*":
        args.pop()
    effect = "deny" if rule.effect == DENY else "entitle"
    return f"{effect} {rule.cap.name}" + (f"({', '.join(args)})" if args else "")


def request_text(capability: str, args: Sequence[Any]) -> str:
    shown = [str(a) if isinstance(a, int) else _quote(str(a)) for a in args]
    return f"{capability}({', '.join(shown)})"


@dataclass(slots=True)
class RuleRef:
    text: str
    location: str

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.text, "location": self.location}


@dataclass(slots=True)
class RuleChange:
    old: RuleRef
    new: RuleRef


@dataclass(slots=True)
class Witness:
    module: str
    capability: str
    args: tuple[Any, ...]
    old: Decision
    new: Decision

    @property
    def old_label(self) -> str:
        return label(self.old)

    @property
    def new_label(self) -> str:
        return label(self.new)

    @property
    def widening(self) -> bool:
        return not self.old.allowed and self.new.allowed

    def text(self) -> str:
        return f"{self.module} {request_text(self.capability, self.args)}: {self.old_label} \u2192 {self.new_label}"

    def as_dict(self) -> dict[str, Any]:
        def side(d: Decision) -> dict[str, Any]:
            return {"decision": label(d), "reason": d.reason, "rule": d.rule}

        return {
            "module": self.module,
            "capability": self.capability,
            "args": list(self.args),
            "request": request_text(self.capability, self.args),
            "old": side(self.old),
            "new": side(self.new),
            "widening": self.widening,
        }


def label(d: Decision) -> str:
    """``allow``, ``deny``, or ``audit`` (a deny in audit mode: the request proceeds)."""
    if d.audit:
        return "audit"
    return "allow" if d.allowed else "deny"


@dataclass(slots=True)
class GovernanceChange:
    """A Python package whose governing module differs (``None``: no module governs it, the guard checks nothing)."""

    package: str
    old: str | None
    new: str | None

    @property
    def widening(self) -> bool:
        return self.new is None

    def text(self) -> str:
        def name(m: str | None) -> str:
            return "(ungoverned: not checked)" if m is None else m

        return f"package {self.package}: governed by {name(self.old)} \u2192 {name(self.new)}"

    def as_dict(self) -> dict[str, Any]:
        return {"package": self.package, "old": self.old, "new": self.new, "widening": self.widening}


@dataclass(slots=True)
class ModuleDiff:
    module: str
    status: str
    """``added``, ``removed``, ``changed`` or ``unchanged``."""
    old_source: str | None = None
    new_source: str | None = None
    mode: tuple[str | None, str | None] | None = None
    """``(old, new)`` when the mode changed (``None``: no artifact on that side)."""
    governs: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    """``(old, new)`` package names of its ``governs`` statement, when they changed."""
    added: list[RuleRef] = field(default_factory=list)
    removed: list[RuleRef] = field(default_factory=list)
    changed: list[RuleChange] = field(default_factory=list)
    witnesses: list[Witness] = field(default_factory=list)
    tried: int = 0
    """How many requests were decided on both sides."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "status": self.status,
            "old_source": self.old_source,
            "new_source": self.new_source,
            "mode": None if self.mode is None else {"old": self.mode[0], "new": self.mode[1]},
            "governs": None if self.governs is None else {"old": list(self.governs[0]), "new": list(self.governs[1])},
            "rules": {
                "added": [r.as_dict() for r in self.added],
                "removed": [r.as_dict() for r in self.removed],
                "changed": [{"old": c.old.as_dict(), "new": c.new.as_dict()} for c in self.changed],
            },
            "witnesses": [w.as_dict() for w in self.witnesses],
            "requests_tried": self.tried,
        }


@dataclass(slots=True)
class TreeDiff:
    old: PolicySet
    new: PolicySet
    modules: list[ModuleDiff]
    governance: list[GovernanceChange] = field(default_factory=list)
    """Packages whose governing module changes (what the guard decides their code by)."""

    @property
    def witnesses(self) -> list[Witness]:
        return [w for m in self.modules for w in m.witnesses]

    @property
    def changes(self) -> list[Witness | GovernanceChange]:
        """Everything that changes a decision: the witnesses and the governance changes."""
        return [*self.witnesses, *self.governance]

    def as_dict(self) -> dict[str, Any]:
        s = summary(self.modules, self.governance)
        return {
            "version": 1,
            "old": {"path": self.old.label, "kind": self.old.kind},
            "new": {"path": self.new.label, "kind": self.new.kind},
            "modules": [m.as_dict() for m in self.modules],
            "governance": [g.as_dict() for g in self.governance],
            "summary": s,
            "decision_changes": s["decision_changes"],
            "widening": s["widening"],
        }


def summary(modules: Iterable[ModuleDiff], governance: Iterable[GovernanceChange] = ()) -> dict[str, int]:
    mods = list(modules)
    changes: list[Witness | GovernanceChange] = [w for m in mods for w in m.witnesses]
    changes.extend(governance)
    counts = Counter(m.status for m in mods)
    return {
        "added": counts["added"],
        "removed": counts["removed"],
        "changed": counts["changed"],
        "unchanged": counts["unchanged"],
        "decision_changes": len(changes),
        "widening": sum(1 for c in changes if c.widening),
        "narrowing": sum(1 for c in changes if not c.widening),
    }


def _refs(program: Program, meanings: Counter[Meaning]) -> list[tuple[Meaning, RuleRef]]:
    """The rules of ``program`` whose meaning is in ``meanings`` (as many of each as counted), in source order."""
    left = Counter(meanings)
    out = []
    for r in program.rules:
        m = _meaning(r)
        if left[m] > 0:
            left[m] -= 1
            out.append((m, RuleRef(rule_text(r), program.location(r))))
    return out


def _pair(removed: list[tuple[Meaning, RuleRef]], added: list[tuple[Meaning, RuleRef]]) -> list[RuleChange]:
    """Pairs of a removed and an added rule of one effect and capability differing in at most one argument."""
    changes = []
    for rm in list(removed):
        (effect, cap, sig, args) = rm[0]
        best = None
        best_same = -1
        for ad in added:
            e2, c2, s2, a2 = ad[0]
            if (e2, c2, s2) != (effect, cap, sig) or len(a2) != len(args):
                continue
            same = sum(1 for x, y in zip(args, a2, strict=True) if x == y)
            if same >= len(args) - 1 and same > best_same:
                best, best_same = ad, same
        if best is not None:
            added.remove(best)
            removed.remove(rm)
            changes.append(RuleChange(rm[1], best[1]))
    return changes


# --------------------------------------------------------------------------
# witness requests from the rules' own patterns


def _host_samples(op: int, value: str) -> list[Any]:
    if op == HOST_EXACT:
        return [value]
    if op == HOST_WILD:
        one = [("x" if lab == "*" else "x" if lab == "**" else lab) for lab in value.split(".")]
        two = [("x" if lab == "*" else "x.y" if lab == "**" else lab) for lab in value.split(".")]
        return list(dict.fromkeys([".".join(one), ".".join(two)]))
    if op == HOST_CIDR:
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return []
        if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96")):
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        first = net.network_address + (1 if net.num_addresses > 2 else 0)
        last = net.broadcast_address - (1 if net.num_addresses > 2 else 0)
        return list(dict.fromkeys([str(first), str(last)]))
    return []


def _path_samples(value: str) -> list[Any]:
    def seg(s: str, deep: bool) -> str:
        if s == "**":
            return "x/y" if deep else "x"
        return s.replace("*", "x").replace("?", "x")

    parts = value.split("/")
    return list(dict.fromkeys("/".join(seg(p, deep) for p in parts) for deep in (False, True)))


def _samples(ptype: str, arg: tuple[Any, ...]) -> list[Any]:
    op = arg[0]
    if op == ANY:
        return []
    if op == INT_RANGE:
        lo, hi = arg[1], arg[2]
        bottom, top = (0, 65535) if ptype == PORT else (_INT_MIN, _INT_MAX)
        return [v for v in dict.fromkeys([lo, hi, lo - 1, hi + 1]) if bottom <= v <= top]
    if op in (HOST_EXACT, HOST_WILD, HOST_CIDR):
        return _host_samples(op, arg[1])
    if op == PATH_GLOB:
        return _path_samples(arg[1])
    if op == STR_EXACT:
        return [arg[1]]
    if op == STR_GLOB:
        return [arg[1].replace("*", "x").replace("?", "x")]
    return []


def _candidates(sig: Capability, rules: Iterable[Any]) -> list[tuple[Any, ...]]:
    per_param: list[list[Any]] = []
    rules = [r for r in rules if len(r.args) == sig.arity]
    for i, p in enumerate(sig.params):
        values: dict[tuple[type, Any], Any] = {}
        for r in rules:
            for v in _samples(p.type, r.args[i]):
                values.setdefault((type(v), v), v)
        for v in _DEFAULTS.get(p.type, ("polc-witness",)):
            values.setdefault((type(v), v), v)
        per_param.append(list(values.values()))
    return list(itertools.islice(itertools.product(*per_param), MAX_CANDIDATES))


def _signatures(name: str, programs: Iterable[Program | None]) -> list[Capability]:
    sigs: dict[tuple[tuple[str, str], ...], Capability] = {}
    for prog in programs:
        if prog is None:
            continue
        for c in prog.caps:
            if c.name == name:
                sigs.setdefault(tuple((p.name, p.type) for p in c.params), c)
    if not sigs and name in BUILTINS:
        return [BUILTINS[name]]
    return list(sigs.values())


def _witnesses(module: str, old: PolicySet, new: PolicySet) -> tuple[list[Witness], int]:
    progs = [old.programs.get(module), new.programs.get(module),
             old.programs.get(GLOBAL_MODULE), new.programs.get(GLOBAL_MODULE)]
    rules = [r for p in progs if p is not None for r in p.rules]
    found: dict[tuple[Any, ...], Witness] = {}
    tried = 0
    # every capability a rule names, and every other one too: a mode switched, or a module added or
    # removed, changes the decisions of capabilities no rule names (the "no entitlement" default)
    cap_names = {r.cap.name for r in rules} | set(BUILTINS)
    cap_names.update(c.name for p in progs if p is not None for c in p.caps)
    for cap_name in sorted(cap_names):
        cap_rules = [r for r in rules if r.cap.name == cap_name]
        for sig in _signatures(cap_name, progs):
            for args in _candidates(sig, cap_rules):
                tried += 1
                a = old.snapshot.check(module, cap_name, *args)
                b = new.snapshot.check(module, cap_name, *args)
                if label(a) == label(b):
                    continue
                region = (cap_name, label(a), a.rule, label(b), b.rule)
                if region not in found:
                    found[region] = Witness(module, cap_name, tuple(args), a, b)
    return list(found.values()), tried


# --------------------------------------------------------------------------
# the diff


def _governs(p: Program | None) -> tuple[str, ...]:
    """The package names of a program's ``governs`` statement (none in artifacts before format 1.2)."""
    return tuple(getattr(p, "governs", ())) if p is not None else ()


def _same(a: Program | None, b: Program | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.mode == b.mode and _governs(a) == _governs(b)
            and Counter(map(_meaning, a.rules)) == Counter(map(_meaning, b.rules)))


def _governance(old: PolicySet, new: PolicySet) -> list[GovernanceChange]:
    """Packages named by a module or a ``governs`` statement on either side whose governor differs."""
    ask_old = getattr(old.snapshot, "governor", None)
    ask_new = getattr(new.snapshot, "governor", None)
    if ask_old is None or ask_new is None:
        return []  # a runtime without governed packages
    names: set[str] = set()
    for side in (old, new):
        for name, prog in side.programs.items():
            if name != GLOBAL_MODULE:
                names.add(name)
            names.update(_governs(prog))
    out = []
    for pkg in sorted(names):
        a, b = ask_old(pkg), ask_new(pkg)
        if a != b:
            out.append(GovernanceChange(pkg, a, b))
    return out


def diff_sets(old: PolicySet, new: PolicySet) -> TreeDiff:
    """Compare two policy sets module by module; every witness is decided by both snapshots."""
    names = sorted(set(old.programs) | set(new.programs), key=lambda n: (n != GLOBAL_MODULE, n))
    global_same = _same(old.programs.get(GLOBAL_MODULE), new.programs.get(GLOBAL_MODULE))
    out = []
    for name in names:
        a, b = old.programs.get(name), new.programs.get(name)
        status = "added" if a is None else "removed" if b is None else "unchanged" if _same(a, b) else "changed"
        md = ModuleDiff(name, status, a.source if a else None, b.source if b else None)
        if a is not None and b is not None and a.mode != b.mode:
            md.mode = (a.mode, b.mode)
        if _governs(a) != _governs(b):
            md.governs = (_governs(a), _governs(b))
        ma = Counter(map(_meaning, a.rules)) if a else Counter()
        mb = Counter(map(_meaning, b.rules)) if b else Counter()
        removed = _refs(a, ma - mb) if a else []
        added = _refs(b, mb - ma) if b else []
        md.changed = _pair(removed, added)
        md.removed = [r for _, r in removed]
        md.added = [r for _, r in added]
        if status != "unchanged" or not global_same:
            md.witnesses, md.tried = _witnesses(name, old, new)
        out.append(md)
    return TreeDiff(old, new, out, _governance(old, new))
