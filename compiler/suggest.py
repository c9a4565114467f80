"""``polc suggest``: draft policies from the guard's observation log.

The log is JSON Lines, one observation per line, with exactly these keys::

    {"v": 1, "time": "2026-01-02T03:04:05Z", "package": "vendorlib", "module": "com.vendor.library",
     "capability": "network.outbound", "args": ["api.acme.com", 443], "decision": "allow",
     "site": "vendorlib/client.py:42"}

The file is hostile input: every line is bounded (:data:`MAX_LINE` bytes),
decoded strictly, parsed without duplicate keys or non-finite numbers, and
checked field by field against the capability's signature; a bad line is a
diagnostic (``file:line:1: error: ...``) and is left out. A value that no
exact pattern can say (a glob character, a control character, a relative
command path) is refused rather than widened.

One draft module per governing module (the ``module`` field; for ``_global``,
the observed package's name), with ``governs "pkg";`` when the language has
it and the package is not the module's own name. Entitlements are
generalised only where the observations ask for it:

- ports and every other argument are kept as seen;
- hosts are grouped under their registrable domain (``*.acme.com``, or
  ``**.acme.com`` when the names are deeper) only when more than one name
  below it was seen with the same other arguments, and never over a request
  that was denied when observed;
- paths are grouped by directory (``dir/**``) likewise; top-level files stay
  as they are;
- each rule has a comment with how many times it was seen.

Requests that were denied when observed are not entitled: they are listed in
a comment and expected to stay denied in the draft's test file. The output is
deterministic (sorted; no clock). :func:`verify_drafts` compiles the drafts
and decides every observation with the runtime's :class:`Snapshot`.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any

from polc.runtime.catalog import BUILTINS, COMMAND, GLOBAL_MODULE, HOST, INT, PATH, PORT, Capability
from polc.runtime.format.opcodes import is_valid_module_name

from .diagnostics import ERROR, Diagnostic

__all__ = [
    "KEYS",
    "MAX_LINE",
    "Draft",
    "Observation",
    "draft_modules",
    "owners",
    "read_observations",
    "registrable_domain",
    "verify_drafts",
]

KEYS = frozenset({"v", "time", "package", "module", "capability", "args", "decision", "site"})
"""The keys of every observation line, no more and no fewer."""
VERSION = 1
MAX_LINE = 64 * 1024
"""The longest line read, in bytes (newline included); a longer one is an error and is skipped."""
MAX_VALUE = 1024
"""The longest string argument kept."""
MAX_DISTINCT = 100_000
"""Distinct (module, package, capability, arguments) kept; further ones are errors."""
MAX_KEPT_BYTES = 32 << 20
"""About how much the distinct observations kept may take; further ones are errors."""
MAX_DIAGNOSTICS = 100
"""Bad lines reported one by one; the rest are counted in one last diagnostic."""
DECISIONS = ("allow", "audit", "deny")
_PACKAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_GLOB = frozenset("*?")

# Public suffixes under which names are registered one label deeper (a small,
# fixed list: the draft is reviewed by a person, and a missing entry only
# means a group one label too wide is not proposed).
MULTI_LABEL_SUFFIXES = frozenset((
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "net.uk", "ltd.uk", "plc.uk", "sch.uk", "nhs.uk",
    "com.au", "net.au", "org.au", "edu.au", "gov.au", "id.au", "co.nz", "net.nz", "org.nz", "govt.nz",
    "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp", "co.kr", "or.kr", "com.cn", "net.cn", "org.cn", "gov.cn",
    "edu.cn", "com.hk", "com.tw", "com.sg", "com.my", "co.id", "co.th", "com.ph", "com.vn", "co.in",
    "net.in", "org.in", "gov.in", "com.br", "net.br", "org.br", "gov.br", "com.ar", "com.mx", "co.za",
    "org.za", "com.tr", "co.il", "com.pl", "com.ua", "com.eg", "github.io", "gitlab.io", "herokuapp.com",
    "appspot.com", "blogspot.com", "cloudfront.net", "azurewebsites.net", "pages.dev", "workers.dev",
    "vercel.app", "netlify.app", "firebaseapp.com", "web.app", "s3.amazonaws.com", "elb.amazonaws.com",
    "compute.amazonaws.com",
))


@dataclass(frozen=True, slots=True)
class Observation:
    line: int
    package: str
    module: str
    capability: str
    args: tuple[Any, ...]
    decision: str

    @property
    def draft_module(self) -> str:
        return self.package if self.module == GLOBAL_MODULE else self.module


class _Bad(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise _Bad(f"{name} is not a number JSON allows")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Bad(f"duplicate key {json.dumps(k)}")
        out[k] = v
    return out


def _text(value: object, what: str, limit: int = MAX_VALUE) -> str:
    if type(value) is not str:
        raise _Bad(f"{what} must be a string")
    if len(value) > limit:
        raise _Bad(f"{what} is longer than {limit} characters")
    if not value.isprintable():
        raise _Bad(f"{what} contains a control or invisible character")
    return value


def _time(value: object) -> None:
    text = _text(value, "'time'", 64)
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise _Bad(f"'time' is not an ISO-8601 time: {json.dumps(text)}") from None
    if when.utcoffset() != timedelta(0):
        raise _Bad("'time' must be in UTC")


def _rooted_at_slash(capability: str) -> bool:
    """Is this built-in's path rooted at '/' (given absolute, as ``native.load``'s library is)?"""
    from polc.runtime import catalog

    return capability in getattr(catalog, "ROOTED_AT_SLASH", frozenset())


def _absolute(text: str) -> str:
    """An absolute path, normalised lexically (``..`` at the top stays at the root, as in the file system)."""
    out: list[str] = []
    for seg in text.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
        else:
            out.append(seg)
    if not out:
        raise _Bad("the path is the root itself, which a path rule cannot name")
    return "/" + "/".join(out)


def _arg(ptype: str, value: object, name: str, capability: str = "") -> Any:
    from polc.runtime.patterns import PatternError, compile_command, compile_host, normalize_path

    what = f"argument '{name}'"
    if ptype in (PORT, INT):
        if type(value) is not int:
            raise _Bad(f"{what} must be an integer")
        lo, hi = (0, 65535) if ptype == PORT else (-(2**63), 2**63 - 1)
        if not lo <= value <= hi:
            raise _Bad(f"{what} {value} is out of range {lo}..{hi}")
        return value
    text = _text(value, what)
    if _GLOB & set(text):
        raise _Bad(f"{what} {json.dumps(text)} contains '*' or '?', which no exact rule can say")
    try:
        if ptype == HOST:
            if _is_ip(text):
                return str(ipaddress.ip_address(text))
            _, norm = compile_host(text.lower().rstrip("."))
            return norm
        if ptype == PATH and text.startswith("/") and _rooted_at_slash(capability):
            if "\0" in text:
                raise _Bad(f"{what} contains a NUL byte")
            return _absolute(text)
        if ptype == PATH:
            norm = normalize_path(text)
            if not norm:
                raise _Bad(f"{what} is the root itself, which a path rule cannot name")
            return norm
        if ptype == COMMAND:
            _, norm = compile_command(text)
            return norm
    except (PatternError, ValueError) as exc:
        raise _Bad(f"{what}: {exc}") from None
    if not text:
        raise _Bad(f"{what} is empty")
    return text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _observation(raw: bytes, line: int) -> Observation:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("the line is not valid UTF-8") from None
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except _Bad:
        raise
    except (ValueError, RecursionError) as exc:
        raise _Bad(f"not a JSON document ({type(exc).__name__})") from None
    if type(doc) is not dict:
        raise _Bad("an observation must be a JSON object")
    keys = set(doc)
    if keys != KEYS:
        missing, extra = sorted(KEYS - keys), sorted(keys - KEYS)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(json.dumps(k)[:40] for k in extra[:5])}"] if extra else [])
        raise _Bad(f"an observation has exactly the keys {', '.join(sorted(KEYS))}: {'; '.join(parts)}")
    if type(doc["v"]) is not int or doc["v"] != VERSION:
        raise _Bad(f"'v' must be {VERSION}")
    _time(doc["time"])
    package = _text(doc["package"], "'package'", 255)
    if not _PACKAGE.match(package):
        raise _Bad(f"'package' is not a dotted Python package name: {json.dumps(package)}")
    module = _text(doc["module"], "'module'", 255)
    if module != GLOBAL_MODULE and not is_valid_module_name(module):
        raise _Bad(f"'module' is not a module name: {json.dumps(module)}")
    if module == GLOBAL_MODULE and not is_valid_module_name(package):
        raise _Bad(f"the package name {json.dumps(package)} cannot name a module")
    cap_name = _text(doc["capability"], "'capability'", 255)
    cap = BUILTINS.get(cap_name)
    if cap is None:
        raise _Bad(f"unknown capability {json.dumps(cap_name)}")
    decision = doc["decision"]
    if decision not in DECISIONS or type(decision) is not str:
        raise _Bad(f"'decision' must be one of {', '.join(DECISIONS)}")
    _text(doc["site"], "'site'", 4096)
    args = doc["args"]
    if type(args) is not list:
        raise _Bad("'args' must be an array")
    if len(args) != cap.arity:
        raise _Bad(f"{cap_name} takes {cap.arity} argument(s) ({cap.signature}), the observation has {len(args)}")
    typed = tuple(_arg(p.type, a, p.name, cap_name) for p, a in zip(cap.params, args, strict=True))
    return Observation(line, package, module, cap_name, typed, decision)


def _lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes without the newline)``; ``None`` for a line longer than :data:`MAX_LINE`."""
    n = 0
    while True:
        chunk = fh.readline(MAX_LINE + 1)
        if not chunk:
            return
        n += 1
        if len(chunk) > MAX_LINE or (len(chunk) == MAX_LINE + 1 and not chunk.endswith(b"\n")):
            while chunk and not chunk.endswith(b"\n"):
                chunk = fh.readline(MAX_LINE + 1)
            yield n, None
            continue
        yield n, chunk.rstrip(b"\n").rstrip(b"\r")


def _cost(o: Observation) -> int:
    return 64 + len(o.package) + len(o.module) + sum(len(a) if isinstance(a, str) else 8 for a in o.args)


def read_observations(fh: IO[bytes], path: str) -> tuple[list[Observation], list[Diagnostic], int, int]:
    """The good observations (one per distinct request and decision, counted), the first
    :data:`MAX_DIAGNOSTICS` errors (then one saying how many more), lines read, bad lines."""
    seen: dict[tuple[Any, ...], Observation] = {}
    counts: Counter[tuple[Any, ...]] = Counter()
    diags: list[Diagnostic] = []
    lines = bad = kept_bytes = 0

    def problem(n: int, message: str) -> None:
        nonlocal bad
        bad += 1
        if len(diags) < MAX_DIAGNOSTICS:
            diags.append(Diagnostic(ERROR, path, n, 1, message))

    for n, raw in _lines(fh):
        lines = n
        if raw is None:
            problem(n, f"line longer than {MAX_LINE} bytes; skipped")
            continue
        if not raw.strip():
            continue
        try:
            o = _observation(raw, n)
        except _Bad as exc:
            problem(n, str(exc))
            continue
        key = (o.draft_module, o.package, o.capability, o.args, o.decision)
        if key not in seen:
            cost = _cost(o)
            if len(seen) >= MAX_DISTINCT or kept_bytes + cost > MAX_KEPT_BYTES:
                problem(n, f"more than {MAX_DISTINCT} distinct observations or {MAX_KEPT_BYTES >> 20} MiB of them; "
                           "skipped")
                continue
            kept_bytes += cost
            seen[key] = o
        counts[key] += 1
    if bad > len(diags):
        diags.append(Diagnostic(ERROR, path, lines, 1, f"{bad - len(diags)} more bad line(s) not shown"))
    out: list[Observation] = []
    for key, o in seen.items():
        out.append(_Counted(o.line, o.package, o.module, o.capability, o.args, o.decision, counts[key]))
    return out, diags, lines, bad


@dataclass(frozen=True, slots=True)
class _Counted(Observation):
    count: int = 1


# --------------------------------------------------------------------------
# drafting


def registrable_domain(host: str) -> str | None:
    """The name under which ``host`` is registered (``api.eu.acme.co.uk`` -> ``acme.co.uk``); None for an IP."""
    if _is_ip(host):
        return None
    labels = host.split(".")
    for k in (3, 2):
        if len(labels) > k and ".".join(labels[-k:]) in MULTI_LABEL_SUFFIXES:
            return ".".join(labels[-(k + 1):])
    return ".".join(labels[-2:]) if len(labels) >= 2 else None


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _arg_source(value: Any) -> str:
    return str(value) if isinstance(value, int) else _quote(value)


def _call(cap: str, args: Iterable[Any]) -> str:
    shown = [_arg_source(a) for a in args]
    return f"{cap}({', '.join(shown)})" if shown else cap


@dataclass(slots=True)
class _Rule:
    cap: str
    args: tuple[Any, ...]
    """Source text of each argument."""
    count: int
    decisions: Counter[str]
    members: list[tuple[str, int]] = field(default_factory=list)
    """For a group: each value it stands for, with its count."""

    def line(self) -> str:
        call = self.cap + (f"({', '.join(self.args)})" if self.args else "")
        times = "once" if self.count == 1 else f"{self.count} times"
        note = f"seen {times}"
        if set(self.decisions) - {"allow"}:
            note += " (" + ", ".join(f"{d} {self.decisions[d]}" for d in DECISIONS if self.decisions[d]) + ")"
        if self.members:
            shown = ", ".join(f"{v} ({c})" for v, c in self.members[:8])
            more = f", and {len(self.members) - 8} more" if len(self.members) > 8 else ""
            note += f": {shown}{more}"
        return f"entitle module to {call};  // {note}"


@dataclass(slots=True)
class Draft:
    """One drafted module: its source, its test file, and what it was drafted from."""

    module: str
    packages: list[str]
    source: str
    test: str
    observations: list[Observation]


def has_governs() -> bool:
    """Does this polc's language have the ``governs "pkg";`` statement?"""
    from .grammar import grammar_text

    return '"governs"' in grammar_text()


def _group_key(sig: Capability, args: tuple[Any, ...], kind: str) -> tuple[Any, ...] | None:
    """Which group a request falls in for the first parameter of type ``kind`` (others kept equal)."""
    for i, p in enumerate(sig.params):
        if p.type != kind:
            continue
        value = args[i]
        if kind == HOST:
            where = registrable_domain(value)
            if where is None or where == value:
                return None
        else:
            where = posixpath.dirname(value)
            if where in ("", "/"):
                return None
        return (i, where, args[:i], args[i + 1:])
    return None


def _host_pattern(domain: str, hosts: Iterable[str]) -> str:
    depth = {h.count(".") - domain.count(".") for h in hosts}
    return f"*.{domain}" if depth == {1} else f"**.{domain}"


def _covers(kind: str, pattern: str, value: str) -> bool:
    if kind == HOST:
        domain = pattern.split(".", 1)[1]
        if not value.endswith("." + domain):
            return False
        return pattern.startswith("**.") or value.count(".") == domain.count(".") + 1
    return value.startswith(pattern[: -len("**")])


def _rules_for(sig: Capability, allowed: list[_Counted], denied: list[_Counted]) -> list[_Rule]:
    rules: list[_Rule] = []
    todo = list(allowed)
    for kind in (HOST, PATH):
        groups: dict[tuple[Any, ...], list[_Counted]] = {}
        for o in todo:
            key = _group_key(sig, o.args, kind)
            if key is not None:
                groups.setdefault(key, []).append(o)
        for key, members in sorted(groups.items(), key=lambda kv: repr(kv[0])):
            i, where, before, after = key
            values = sorted({m.args[i] for m in members})
            if len(values) < 2:
                continue
            pattern = _host_pattern(where, values) if kind == HOST else f"{where}/**"
            if any(d.args[:i] == before and d.args[i + 1:] == after and _covers(kind, pattern, d.args[i])
                   for d in denied):
                continue  # a group would entitle what was denied: keep the names as seen
            per_value = Counter[str]()
            decisions = Counter[str]()
            for m in members:
                per_value[m.args[i]] += m.count
                decisions[m.decision] += m.count
            shown = (*(_arg_source(a) for a in before), _quote(pattern), *(_arg_source(a) for a in after))
            rules.append(_Rule(sig.name, shown, sum(per_value.values()), decisions, sorted(per_value.items())))
            grouped = {id(m) for m in members}
            todo = [o for o in todo if id(o) not in grouped]
    singles: dict[tuple[Any, ...], _Rule] = {}
    for o in todo:
        r = singles.get(o.args)
        if r is None:
            r = singles[o.args] = _Rule(sig.name, tuple(_arg_source(a) for a in o.args), 0, Counter())
        r.count += o.count
        r.decisions[o.decision] += o.count
    rules.extend(singles.values())
    return sorted(rules, key=lambda r: r.args)


def owners(observations: Iterable[Observation]) -> dict[str, str]:
    """The one module each observed package is drafted into.

    A package is governed by one module. Its module is the one the log names
    for it (the most observations, then the first name, should the policy
    have changed during the run), else -- only ``_global`` seen -- a module
    of the package's own name. A package that is the name of a drafted module
    is that module's, by name.
    """
    seen: dict[str, Counter[str]] = {}
    for o in observations:
        c = seen.setdefault(o.package, Counter())
        if o.module != GLOBAL_MODULE:
            c[o.module] += o.count if isinstance(o, _Counted) else 1
    owner = {}
    for pkg, c in seen.items():
        owner[pkg] = min(c, key=lambda m: (-c[m], m)) if c else pkg
    drafted = set(owner.values())
    for pkg in owner:
        if pkg in drafted:
            owner[pkg] = pkg
    return owner


def draft_modules(observations: list[Observation], source_name: str, only: str | None = None) -> list[Draft]:
    """The drafts, one per module, in name order (``only``: just that module)."""
    owner = owners(observations)
    by_module: dict[str, list[_Counted]] = {}
    for o in observations:
        assert isinstance(o, _Counted)
        module = owner[o.package]
        if only is not None and module != only:
            continue
        by_module.setdefault(module, []).append(o)
    governs = has_governs()
    drafts = []
    for module in sorted(by_module):
        obs = by_module[module]
        packages = sorted({o.package for o in obs})
        lines = [
            f"// Drafted by polc suggest from {sum(o.count for o in obs)} observation(s) in {source_name}",
            f"// of package(s) {', '.join(packages)}: review it before it is enforced.",
            f"security module {module} {{",
        ]
        foreign = [p for p in packages if p != module and not p.startswith(module + ".")]
        if foreign and governs:
            lines.append(f"    governs {', '.join(_quote(p) for p in foreign)};")
            lines.append("")
        elif foreign:
            lines.append(f"    // governs the package(s) {', '.join(foreign)}")
        body: list[str] = []
        denied_lines: list[str] = []
        for cap_name in sorted({o.capability for o in obs}):
            sig = BUILTINS[cap_name]
            of_cap = [o for o in obs if o.capability == cap_name]
            allowed_args = {o.args for o in of_cap if o.decision != "deny"}
            allowed = [o for o in of_cap if o.decision != "deny"]
            denied = [o for o in of_cap if o.decision == "deny" and o.args not in allowed_args]
            body.extend("    " + r.line() for r in _rules_for(sig, allowed, denied))
            for args in sorted({d.args for d in denied}, key=repr):
                n = sum(d.count for d in denied if d.args == args)
                denied_lines.append(f"    //   {_call(cap_name, args)}: {'once' if n == 1 else f'{n} times'}")
        lines.extend(body)
        if denied_lines:
            if body:
                lines.append("")
            lines.append("    // Denied when observed, and not entitled here:")
            lines.extend(denied_lines)
        lines.append("}")
        source = "\n".join(lines) + "\n"
        drafts.append(Draft(module, packages, source, _test_file(module, obs, source_name), list(obs)))
    return drafts


def _test_file(module: str, obs: list[_Counted], source_name: str) -> str:
    allowed = {o.capability + repr(o.args) for o in obs if o.decision != "deny"}
    expects = set()
    for o in obs:
        verdict = "allow" if o.decision != "deny" else "deny"
        if verdict == "deny" and o.capability + repr(o.args) in allowed:
            continue
        expects.add(f"    expect {verdict} {module} to {_call(o.capability, o.args)};")
    lines = [
        f"// Drafted by polc suggest: every request observed in {source_name}, decided as the draft decides it.",
        f"test {_quote(f'{module} does what was observed')} {{",
        *sorted(expects),
        "}",
    ]
    return "\n".join(lines) + "\n"


def verify_drafts(drafts: list[Draft]) -> list[str]:
    """Compile the drafts and decide every observation with the runtime's Snapshot; the problems found."""
    from polc.runtime.enforce.link import link
    from polc.runtime.enforce.snapshot import Snapshot
    from polc.runtime.format.reader import read_artifact

    from .memory import compile_sources

    if not drafts:
        return []
    result = compile_sources([(f"{d.module}.pol", d.source) for d in drafts])
    if not result.ok:
        return [f"the drafts do not compile:\n{result.render()}"]
    snap = Snapshot({name: link(read_artifact(data, expected_module=name)) for name, data in result.artifacts},
                    None, cache_size=0)
    problems = []
    for d in drafts:
        allowed = {(o.capability, o.args) for o in d.observations if o.decision != "deny"}
        for o in d.observations:
            want = (o.capability, o.args) in allowed
            got = snap.check(d.module, o.capability, *o.args)
            if got.allowed != want:
                problems.append(f"{d.module} {_call(o.capability, o.args)}: observed {o.decision}, "
                                f"the draft decides {'allow' if got.allowed else 'deny'} ({got.reason})")
    return problems

