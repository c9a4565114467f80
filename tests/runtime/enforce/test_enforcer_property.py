"""Property: random policy sources, compiled by the real compiler and loaded by
PolicyAgent, decide every random request exactly as a plain reference
evaluator written here from docs/design.md (naive loops over the source-level
rules; shares no code with the enforcer)."""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polc.compiler.memory import compile_sources
from polc.runtime import PolicyAgent
from polc.runtime.format.writer import write_atomic

# ---------------------------------------------------------------------------
# The reference evaluator

SIGS = {
    "network.outbound": (("host", "host"), ("port", "port")),
    "network.listen": (("port", "port"),),
    "fs.read": (("root", "string"), ("path", "path")),
    "fs.write": (("root", "string"), ("path", "path")),
    "process.exec": (("command", "command"),),
    "threads.create": (),
    "env.read": (("name", "string"),),
    # declared in the generated tree
    "tool.call": (("server", "string"), ("tool", "string")),
    "quota.set": (("limit", "int"),),
}
DECLARED = {"tool.call", "quota.set"}
LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
COMPAT = ipaddress.ip_network("::/96")


def ref_addresses(addr):
    """Every address an IP literal reaches (docs/design.md, value semantics)."""
    if addr.version == 6:
        addr = ipaddress.IPv6Address(int(addr))  # no zone id
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
    out = {addr}
    if addr.version == 6:
        if addr in NAT64 or addr in TRANSLATED or (addr in COMPAT and int(addr) > 1):
            out.add(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        if int(addr) == 0:
            out.add(ipaddress.IPv6Address("::1"))
    elif int(addr) == 0:
        out.add(ipaddress.IPv4Address("127.0.0.1"))
    return frozenset(out)


class Bad(Exception):
    pass


def ref_norm(ptype, v):
    if ptype in ("port", "int"):
        if isinstance(v, bool) or not isinstance(v, int):
            raise Bad
        if ptype == "port" and not 0 <= v <= 65535:
            raise Bad
        return int(v)
    if not isinstance(v, str):
        raise Bad
    if ptype == "string":
        return str(v)
    if ptype == "command":
        # no program of these tests exists: no PATH lookup, real path == lexical path
        if not v or "\0" in v or len(v) > 4096:
            raise Bad
        bare = "/" not in v
        paths = [] if bare else [posixpath.normpath(posixpath.join(os.getcwd(), v)).replace("//", "/")]
        names = {v} if bare else set()
        names.update(posixpath.basename(p) for p in paths)
        return ("command", v, bare, tuple(paths), frozenset(names))
    if ptype == "path":
        if "\0" in v or v.startswith("/"):
            raise Bad
        out = []
        for seg in v.split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                if not out:
                    raise Bad
                out.pop()
            else:
                out.append(seg)
        return tuple(out)
    # host
    if v.startswith("[") and v.endswith("]"):
        try:
            return ref_addresses(ipaddress.IPv6Address(v[1:-1]))
        except ValueError:
            raise Bad from None
    try:
        return ref_addresses(ipaddress.ip_address(v))
    except ValueError:
        pass
    name = v.lower()
    if name.endswith(".") and len(name) > 1:
        name = name[:-1]
    labels = name.split(".")
    if len(name) > 253 or not all(LABEL.fullmatch(x) for x in labels) or NUMBER.fullmatch(labels[-1]):
        raise Bad
    return tuple(labels)


def glob_chars(p, s):
    """* any run, ? one char (within whatever alphabet the caller allows)."""
    if not p:
        return not s
    if p[0] == "*":
        return any(glob_chars(p[1:], s[k:]) for k in range(len(s) + 1))
    if not s:
        return False
    return (p[0] == "?" or p[0] == s[0]) and glob_chars(p[1:], s[1:])


def host_labels(pl, hl):
    if not pl:
        return not hl
    if pl[0] == "*":
        return bool(hl) and host_labels(pl[1:], hl[1:])
    if pl[0] == "**":
        return any(host_labels(pl[1:], hl[k:]) for k in range(1, len(hl) + 1))
    return bool(hl) and hl[0] == pl[0] and host_labels(pl[1:], hl[1:])


def path_segs(pl, vl):
    if not pl:
        return not vl
    if pl[0] == "**":
        return any(path_segs(pl[1:], vl[k:]) for k in range(len(vl) + 1))
    return bool(vl) and glob_chars(pl[0], vl[0]) and path_segs(pl[1:], vl[1:])


def ref_match(ptype, pat, v, effect):
    if pat == "*":
        return True
    if ptype in ("port", "int"):
        lo, hi = (pat, pat) if isinstance(pat, int) else pat
        return lo <= v <= hi
    if ptype == "string":
        return glob_chars(pat, v)
    if ptype == "command":
        _, text, bare, paths, names = v
        if pat.startswith("/"):
            return any(glob_chars(pat, p) for p in paths)
        if effect == "deny":
            return glob_chars(pat, text) or any(glob_chars(pat, n) for n in names)
        return bare and glob_chars(pat, text)
    if ptype == "path":
        return path_segs([s for s in pat.split("/") if s not in ("", ".")], list(v))
    # host
    is_ip = isinstance(v, frozenset)
    if "/" in pat or ":" in pat or pat.replace(".", "").isdigit():
        net = ipaddress.ip_network(pat)
        if net.version == 6 and net.subnet_of(ipaddress.ip_network("::ffff:0:0/96")):
            net = ipaddress.ip_network(f"{ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)}/{net.prefixlen - 96}")
        return is_ip and any(a in net for a in v)
    return not is_ip and host_labels(pat.split("."), list(v))


def ref_check(policy, revisions, module, cap, args):
    """-> (allowed, effect, reason_kind, rule, revision, audit)."""
    mod = policy.get(module) if module != "_global" else None
    glob = policy.get("_global")
    modrev = revisions.get(module) if mod is not None else None
    sig = SIGS.get(cap) if (cap not in DECLARED or any(
        p is not None and any(r[1] == cap for r in p["rules"]) for p in (mod, glob)
    )) else None
    if sig is None:
        return (False, "deny", "unknown capability", None, modrev, False)
    if len(args) != len(sig):
        return (False, "deny", "wrong arity", None, modrev, False)
    vals = []
    for (pname, ptype), a in zip(sig, args):
        try:
            vals.append(ref_norm(ptype, a))
        except Bad:
            return (False, "deny", f"invalid argument {pname!r}", None, modrev, False)

    def matches(rule):
        effect, rcap, rargs, line, src = rule
        if rcap != cap:
            return False
        full = list(rargs) + ["*"] * (len(sig) - len(rargs))
        return all(ref_match(t, p, v, effect) for (_, t), p, v in zip(sig, full, vals))

    for name, art in (("_global", glob), (module, mod)):
        if art is None:
            continue
        for rule in art["rules"]:
            if rule[0] == "deny" and matches(rule):
                audit = art["mode"] == "audit"
                return (audit, "deny", f"denied by {name}", f"{rule[4]}:{rule[3]}:5", revisions[name], audit)
    for name, art in ((module, mod), ("_global", glob)):
        if art is None:
            continue
        for rule in art["rules"]:
            if rule[0] == "entitle" and matches(rule):
                return (True, "allow", f"entitled by {name}", f"{rule[4]}:{rule[3]}:5", revisions[name], False)
    owner = mod if mod is not None else glob
    audit = owner is not None and owner["mode"] == "audit"
    return (audit, "deny", "no entitlement", None, modrev, audit)


def kind(reason: str) -> str:
    for prefix in ("unknown capability", "wrong arity"):
        if reason.startswith(prefix):
            return prefix
    m = re.match(r"invalid argument '[a-z]+'", reason)
    return m.group(0) if m else reason


# ---------------------------------------------------------------------------
# Random sources

PATTERNS = {
    "host": ["*", "api.acme.com", "*.acme.com", "**.acme.com", "acme.com", "a.*.acme.com",
             "*.*.acme.com", "**", "10.0.0.0/8", "10.1.2.3", "::1", "2001:db8::/32", "x_y.z",
             "::ffff:10.0.0.0/104", "127.0.0.0/8", "64:ff9b::/96"],
    "port": ["*", 443, 80, (8000, 8999), (0, 1024), 0, 65535],
    "int": ["*", 0, -5, (1, 10), (-100, 100), 2**40],
    "string": ["*", "ls", "l*", "?s", "tenants/acme", "t*", "a?c*", "rm -rf *"],
    # no program of these names or paths exists (the reference does not model PATH or symlinks)
    "command": ["*", "zzq", "zz*", "?zq", "/opt/zzq/bin/tool", "/opt/zzq/bin/*", "/opt/zzq/*/t?ol", "*q -c*"],
    "path": ["**", "a/**", "a/*.txt", "**/x", "a/b", "a/?", "*/b", "*", "a/**/c", "x*y"],
}
REQUESTS = {
    "host": ["api.acme.com", "API.ACME.COM.", "x.acme.com", "a.b.acme.com", "acme.com", "a.x.acme.com",
             "10.1.2.3", "10.0.0.1", "11.0.0.1", "::1", "2001:db8::5", "[::1]", "bad host", "x_y.z",
             "1.2.3", "", 443, None, "::ffff:10.1.2.3", "[::FFFF:a01:203]", "0x0a010203", "10.1.515",
             "0.0.0.0", "::", "127.0.0.1", "64:ff9b::10.9.8.7", "::10.0.0.9", "fe80::1%eth0", "[2001:db8::5%1]"],
    "port": [443, 80, 8080, 0, 65535, 65536, -1, True, 443.0, "443"],
    "int": [0, -5, 5, 2**40, 2**70, False, 1.5, "1"],
    "string": ["ls", "lx", "as", "tenants/acme", "t", "", "abc", "rm -rf /", 3, None],
    "command": ["zzq", "zzqx", "/opt/zzq/bin/tool", "/opt/zzq//bin/./tool", "/opt/zzq/x/../bin/tool",
                "/opt/other/zzq", "bin/zzq", "./zzq", "zzq -c x/y", "", "a\0b", 3, None],
    "path": ["a/b", "a/./b", "a/../b", "../x", "/etc", "a/b/c.txt", "", "a", "x", "a\0",
             "x/y/z/x", "a/c", "a/b/c", "xay", "a//b/", 7],
}
MODULES = ["_global", "tenant.a", "tenant.b"]
CAPS = list(SIGS)
# the capabilities with the richest patterns, drawn more often
WEIGHTED = CAPS + ["network.outbound"] * 4 + ["fs.read"] * 2


def fmt(arg) -> str:
    if arg == "*":
        return "*"
    if isinstance(arg, tuple):
        return f"{arg[0]}..{arg[1]}"
    if isinstance(arg, int):
        return str(arg)
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def rules(draw):
    cap = draw(st.sampled_from(WEIGHTED))
    sig = SIGS[cap]
    n = draw(st.integers(0, len(sig)))
    args = tuple(draw(st.sampled_from(PATTERNS[t])) for _, t in sig[:n])
    effect = draw(st.sampled_from(["entitle", "entitle", "deny"]))
    return effect, cap, args


@st.composite
def policies(draw):
    policy = {}
    for name in MODULES:
        if draw(st.booleans()) or name == "tenant.a":
            policy[name] = {
                "mode": draw(st.sampled_from(["enforce", "enforce", "audit"])),
                "rules": draw(st.lists(rules(), max_size=10)),
            }
    return policy


LABELS = ["a", "b", "x", "acme", "com"]


@st.composite
def instance(draw, ptype, pat=None):
    """A request value made from a pattern of the type: wildcards filled in, often nudged off."""
    if pat is None:
        pat = draw(st.sampled_from(PATTERNS[ptype]))
    if ptype in ("port", "int"):
        if pat == "*":
            return draw(st.integers(-2, 70000))
        lo, hi = (pat, pat) if isinstance(pat, int) else pat
        return draw(st.sampled_from([lo - 1, lo, hi, hi + 1]))
    if pat == "*":
        return draw(st.sampled_from(REQUESTS[ptype]))
    if ptype == "host":
        if "/" in pat or ":" in pat or pat.replace(".", "").isdigit():
            return draw(st.sampled_from(["10.0.0.7", "10.255.1.1", "9.0.0.1", "::1", "::2", "2001:db8::1", "2001:db9::1",
                                         "::ffff:10.0.0.7", "[::ffff:a00:7]", "0xa000007", "64:ff9b::a00:7",
                                         "127.0.0.1", "0.0.0.0", "[::]"]))
        out = []
        for lab in pat.split("."):
            if lab == "*":
                out.append(draw(st.sampled_from(LABELS)))
            elif lab == "**":
                out.extend(draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=3)))
            else:
                out.append(lab)
        nudge = draw(st.integers(0, 3))
        if nudge == 1:
            out.insert(0, draw(st.sampled_from(LABELS)))
        elif nudge == 2 and len(out) > 1:
            out.pop(0)
        return ".".join(out)
    if ptype == "path":
        out = []
        for seg in pat.split("/"):
            if seg == "**":
                out.extend(draw(st.lists(st.sampled_from(["a", "b", "c", "x"]), max_size=3)))
            else:
                out.append(seg.replace("*", draw(st.sampled_from(["", "f", "x.y"]))).replace("?", draw(st.sampled_from(["b", "q"]))))
        nudge = draw(st.integers(0, 4))
        if nudge == 1:
            out.append("z")
        elif nudge == 2 and out:
            out.pop()
        elif nudge == 3:
            out.insert(0, "..") if draw(st.booleans()) else out.insert(1, "./x/..")
        return "/".join(out)
    # string glob
    text = pat.replace("*", draw(st.sampled_from(["", "s", "xyz"]))).replace("?", draw(st.sampled_from(["l", "a"])))
    return text + draw(st.sampled_from(["", "", "!"]))


@st.composite
def requests(draw):
    module = draw(st.sampled_from(MODULES + ["tenant.c"]))
    cap = draw(st.sampled_from(WEIGHTED + ["nope.cap"]))
    sig = SIGS.get(cap, ())
    args = []
    for _, t in sig:
        if draw(st.integers(0, 3)) == 0:
            args.append(draw(st.sampled_from(REQUESTS[t])))
        else:
            args.append(draw(instance(t)))
    if draw(st.integers(0, 14)) == 0:
        args = args[:-1] if args else ["extra"]
    return module, cap, tuple(args)


@st.composite
def targeted(draw, policy):
    """A request aimed at one of the policy's rules (its patterns instantiated and nudged)."""
    rules = [(name, r) for name, p in policy.items() for r in p["rules"]]
    if not rules:
        return draw(requests())
    name, (effect, cap, args) = draw(st.sampled_from(rules))
    module = name if draw(st.integers(0, 4)) else draw(st.sampled_from(MODULES + ["tenant.c"]))
    sig = SIGS[cap]
    full = list(args) + ["*"] * (len(sig) - len(args))
    return module, cap, tuple(draw(instance(t, pat)) for (_, t), pat in zip(sig, full))


def render(policy):
    """Sources per module; fills in each rule's (line, source path)."""
    sources = []
    for name, p in policy.items():
        src = f"src/{name}.pol"
        lines = [f"security module {name} {{"]
        if p["mode"] == "audit":
            lines.append("    mode audit;")
        located = []
        for effect, cap, args in p["rules"]:
            argtext = f"({', '.join(fmt(a) for a in args)})" if args or cap in ("threads.create",) else ""
            lines.append(f"    {effect} module to {cap}{argtext};")
            located.append((effect, cap, args, len(lines), src))
        p["rules"] = located
        lines.append("}")
        sources.append((src, "\n".join(lines) + "\n"))
    sources.append((
        "src/decls.pol",
        "security module zz.decls {\n    capability tool.call(server: string, tool: string);\n"
        "    capability quota.set(limit: int);\n}\n",
    ))
    return sources


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.data())
def test_agent_agrees_with_reference(policy, data):
    reqs = data.draw(st.lists(st.one_of(requests(), targeted(policy), targeted(policy)), min_size=20, max_size=40))
    sources = render(policy)
    result = compile_sources(sources)
    errors = list(result.errors)
    assert not errors, (errors, sources)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in result.artifacts:
            write_atomic(Path(tmp) / f"{name}.bin", data)
        agent = PolicyAgent(tmp, reload=False, strict=True).start()
        revisions = {m: s["revision"] for m, s in agent.status()["modules"].items()}
        for module, cap, args in reqs:
            want = ref_check(policy, revisions, module, cap, args)
            for _ in range(2):  # the miss, then the cached answer
                d = agent.check(module, cap, *args)
                got = (d.allowed, d.effect, kind(d.reason), d.rule, d.revision, d.audit)
                assert got == want, (module, cap, args, d, sources)
                assert d.module == module
