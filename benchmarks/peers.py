"""The same workload expressed for the peer engines: Cedar (cedarpy) and Casbin.

Both drivers type and normalise the request with the reference's
``prepare`` (lower-cased host, normalised path, malformed -> deny) inside the
timed call, as polc does inside ``check``: every engine pays for it.

Cedar: one ``PolicySet`` per module holding the module's rules plus the
``_global`` rules (an unknown module gets the ``_global`` set); ``forbid``
beats ``permit`` natively. Cedar's ``like`` has a single wildcard that
crosses dots and slashes, so single-label / single-segment semantics are
encoded faithfully with counts the driver puts into the context
(``host_labels``, ``path_depth``): ``*.svc.example.com`` becomes
``context.host like "*.svc.example.com" && context.host_labels == 4``. A
path glob with ``**`` becomes a disjunction of ``like`` alternatives
(``data/**`` = ``data`` or ``data/*``).

Casbin: ``FastEnforcer`` (casbin's indexed enforcer) with
``cache_key_order=[0, 1]``, i.e. policies are indexed by (module,
capability); the ``_global`` rules are repeated under every module. The
effect is deny-override (``some(where (p.eft == allow)) &&
!some(where (p.eft == deny))``) and the matcher calls a custom function
that matches a typed pattern string (host, port range, path glob, string
glob) using the reference's matchers, compiled once per pattern.
"""

from __future__ import annotations

import functools
import itertools

from reference import arg_matcher, prepare
from workload import GLOBAL, SIGNATURES, Rule, Workload

# --------------------------------------------------------------------------
# Cedar


def _cedar_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cedar_like(s: str) -> str:
    # in a like pattern '*' is the wildcard; a literal star would be '\*'
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cedar_host(pat: str) -> str:
    if "*" not in pat:
        return f"context.host == {_cedar_str(pat)}"
    labels = pat.split(".")
    like = ".".join("*" if lab in ("*", "**") else lab for lab in labels)
    if "**" in labels:
        # '**' is one or more labels: at least len(labels) labels
        return f"(context.host like {_cedar_like(like)} && context.host_labels >= {len(labels)})"
    return f"(context.host like {_cedar_like(like)} && context.host_labels == {len(labels)})"


def _path_alternatives(segs: list[str]) -> list[list[str]]:
    """Expand each '**' into 'nothing' or '*' (a like-star that crosses '/')."""
    opts = [[[]] if s != "**" else [[], ["*"]] for s in segs]
    opts = [o if s == "**" else [[s]] for o, s in zip(opts, segs)]
    out = []
    for combo in itertools.product(*opts):
        out.append([x for part in combo for x in part])
    return out


def _cedar_path(pat: str) -> str | None:
    segs = pat.split("/")
    has_dstar = "**" in segs
    has_star = any("*" in s for s in segs if s != "**")
    if has_dstar and has_star:
        raise NotImplementedError(f"path shape not encoded for Cedar: {pat}")
    if has_star:
        return f"(context.path like {_cedar_like(pat)} && context.path_depth == {len(segs)})"
    if not has_dstar:
        return f"context.path == {_cedar_str(pat)}"
    if all(s == "**" for s in segs):
        return None  # '**' alone matches every path, the root included
    alts = []
    for alt in _path_alternatives(segs):
        text = "/".join(alt)
        if not alt:
            alts.append('context.path == ""')
        elif "*" in text:
            alts.append(f"context.path like {_cedar_like(text)}")
        else:
            alts.append(f"context.path == {_cedar_str(text)}")
    return "(" + " || ".join(dict.fromkeys(alts)) + ")"


def _cedar_arg(name: str, typ: str, arg: tuple) -> str | None:
    kind = arg[0]
    if kind == "any":
        return None
    if kind == "host":
        return _cedar_host(arg[1])
    if kind == "port":
        lo, hi = arg[1], arg[2]
        if lo == hi:
            return f"context.{name} == {lo}"
        return f"(context.{name} >= {lo} && context.{name} <= {hi})"
    if kind == "path":
        return _cedar_path(arg[1])
    if kind == "str":
        s = arg[1]
        if "?" in s:
            raise NotImplementedError("'?' has no Cedar equivalent in like")
        if "*" in s:
            return f"context.{name} like {_cedar_like(s)}"
        return f"context.{name} == {_cedar_str(s)}"
    raise ValueError(arg)


# context attribute names per capability (the driver builds the context)
_CEDAR_PARAMS = {
    "network.outbound": ("host", "port"),
    "fs.read": ("root", "path"),
    "process.exec": ("command",),
}


def cedar_policy(module: str, rule: Rule) -> str:
    names = _CEDAR_PARAMS[rule.cap]
    conds = [c for c in (_cedar_arg(n, t, a) for n, t, a in zip(names, SIGNATURES[rule.cap], rule.args)) if c]
    effect = "permit" if rule.effect == "entitle" else "forbid"
    principal = "principal" if module == GLOBAL else f"principal == Module::{_cedar_str(module)}"
    when = f" when {{ {' && '.join(conds)} }}" if conds else ""
    return f'{effect}({principal}, action == Action::{_cedar_str(rule.cap)}, resource){when};'


class CedarEngine:
    name = "cedar"

    def __init__(self, wl: Workload):
        import cedarpy

        self._is_authorized = cedarpy.is_authorized
        glob = [cedar_policy(GLOBAL, r) for r in wl.modules[GLOBAL].rules]
        self.texts: dict[str, str] = {}
        self.sets: dict[str, object] = {}
        for name, mod in wl.modules.items():
            pols = [cedar_policy(name, r) for r in mod.rules] + ([] if name == GLOBAL else glob)
            text = "\n".join(pols)
            self.texts[name] = text
            # a pre-parsed handle where cedarpy has one (newer releases), else the text
            ps = getattr(cedarpy, "PolicySet", None)
            self.sets[name] = ps.from_str(text) if ps is not None else text
        self.global_set = self.sets[GLOBAL]
        ents = getattr(cedarpy, "Entities", None)
        self.entities = ents.from_json_str("[]") if ents is not None else []
        self.rule_count = wl.rule_count

    def check(self, module: str, cap: str, args: tuple) -> bool:
        a = prepare(cap, args)
        if a is None:
            return False
        if cap == "network.outbound":
            ctx = {"host": a[0], "host_labels": a[0].count(".") + 1, "port": a[1]}
        elif cap == "fs.read":
            ctx = {"root": a[0], "path": a[1], "path_depth": a[1].count("/") + 1 if a[1] else 0}
        else:
            ctx = {"command": a[0]}
        req = {
            "principal": {"type": "Module", "id": module},
            "action": {"type": "Action", "id": cap},
            "resource": {"type": "Resource", "id": "r"},
            "context": ctx,
        }
        return self._is_authorized(req, self.sets.get(module, self.global_set), self.entities).allowed


# --------------------------------------------------------------------------
# Casbin

CASBIN_MODEL = """
[request_definition]
r = sub, cap, a1, a2

[policy_definition]
p = sub, cap, a1, a2, eft

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = r.sub == p.sub && r.cap == p.cap && argmatch(r.a1, p.a1) && argmatch(r.a2, p.a2)
"""


def _casbin_pattern(arg: tuple) -> str:
    kind = arg[0]
    if kind == "any":
        return "*"
    if kind == "port":
        return f"port:{arg[1]}-{arg[2]}"
    return f"{kind}:{arg[1]}"


def _casbin_unpattern(text: str) -> tuple:
    if text == "*":
        return ("any",)
    kind, _, body = text.partition(":")
    if kind == "port":
        lo, hi = body.split("-")
        return ("port", int(lo), int(hi))
    return (kind, body)


@functools.cache
def _compiled(pattern: str):
    return arg_matcher(_casbin_unpattern(pattern))


def argmatch(value, pattern) -> bool:
    m = _compiled(pattern)
    return True if m is None else m(value)


class CasbinEngine:
    name = "casbin"

    def __init__(self, wl: Workload):
        import logging

        import casbin

        logging.getLogger("casbin").setLevel(logging.WARNING)
        from casbin.model import FastModel

        m = FastModel([0, 1])
        m.load_model_from_text(CASBIN_MODEL)
        self.e = casbin.FastEnforcer(m, None, cache_key_order=[0, 1])
        self.e.add_function("argmatch", argmatch)
        glob = wl.modules[GLOBAL].rules
        rows = []
        names = [n for n in wl.modules if n != GLOBAL]
        for name in names + [GLOBAL]:
            rules = wl.modules[name].rules + ([] if name == GLOBAL else glob)
            for r in rules:
                pats = [_casbin_pattern(a) for a in r.args] + ["*"] * (2 - len(r.args))
                rows.append([name, r.cap, pats[0], pats[1], "allow" if r.effect == "entitle" else "deny"])
        self.e.add_policies(rows)
        self.known = frozenset(names)
        self.enforce = self.e.enforce

    def check(self, module: str, cap: str, args: tuple) -> bool:
        a = prepare(cap, args)
        if a is None:
            return False
        sub = module if module in self.known else GLOBAL
        a1 = a[0]
        a2 = a[1] if len(a) > 1 else ""
        return self.enforce(sub, cap, a1, a2)


PEERS = {"cedar": CedarEngine, "casbin": CasbinEngine}


def available_peers() -> dict[str, type]:
    out = {}
    try:
        import cedarpy  # noqa: F401

        out["cedar"] = CedarEngine
    except ImportError:
        pass
    try:
        import casbin  # noqa: F401

        out["casbin"] = CasbinEngine
    except ImportError:
        pass
    return out
