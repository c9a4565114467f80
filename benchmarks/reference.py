"""The reference decision function: plain Python over the neutral rule list.

It implements docs/design.md's semantics independently of ``polc.runtime``
(its own host, path and string matchers), so that every engine -- polc
included -- is checked against it before anything is timed.

It doubles as the plain dict-and-loop evaluator the benchmarks compare with:
rules are grouped in a dict by ``(module, capability)`` and scanned in a loop.

``decide(module, cap, args)`` returns ``(allowed, where)`` where ``where`` is
``(module_name, line)`` of the deciding rule, or ``None`` for "no
entitlement" and malformed requests.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from workload import GLOBAL, SIGNATURES, Workload

# --------------------------------------------------------------------------
# request typing and normalisation (shared with the peers' drivers)

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


class Malformed(ValueError):
    pass


def norm_host(v: object) -> str:
    if not isinstance(v, str):
        raise Malformed("host")
    h = v.lower()
    if h.endswith("."):
        h = h[:-1]
    if not h or len(h) > 253:
        raise Malformed("host")
    labels = h.split(".")
    for lab in labels:
        if not _LABEL.match(lab):
            raise Malformed("host")
    if labels[-1].isdigit():
        raise Malformed("host")  # IP literals are not used by the workload
    return h


def norm_port(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
        raise Malformed("port")
    return v


def norm_path(v: object) -> str:
    if not isinstance(v, str) or "\0" in v or v.startswith("/"):
        raise Malformed("path")
    out: list[str] = []
    for seg in v.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                raise Malformed("path escapes its root")
            out.pop()
        else:
            out.append(seg)
    return "/".join(out)


def norm_string(v: object) -> str:
    if not isinstance(v, str):
        raise Malformed("string")
    return v


NORMALISE = {"host": norm_host, "port": norm_port, "path": norm_path, "string": norm_string}


def prepare(cap: str, args: tuple) -> tuple | None:
    """Typed, normalised arguments, or None for a request that must be denied."""
    sig = SIGNATURES.get(cap)
    if sig is None or len(args) != len(sig):
        return None
    try:
        return tuple(NORMALISE[t](a) for t, a in zip(sig, args))
    except Malformed:
        return None


# --------------------------------------------------------------------------
# matchers


def _labels_match(pat: list[str], host: list[str]) -> bool:
    if not pat:
        return not host
    head = pat[0]
    if head == "**":
        # one or more labels
        return any(_labels_match(pat[1:], host[i:]) for i in range(1, len(host) + 1))
    if not host:
        return False
    if head != "*" and head != host[0]:
        return False
    return _labels_match(pat[1:], host[1:])


def host_matcher(pat: str) -> Callable[[str], bool]:
    if "*" not in pat:
        return pat.__eq__
    plabels = pat.split(".")
    return lambda h: _labels_match(plabels, h.split("."))


def _seg_regex(seg: str) -> re.Pattern:
    body = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in seg)
    return re.compile(body + r"\Z", re.DOTALL)


def _segs_match(pat: list, segs: list[str]) -> bool:
    if not pat:
        return not segs
    head = pat[0]
    if head == "**":
        return any(_segs_match(pat[1:], segs[i:]) for i in range(0, len(segs) + 1))
    if not segs:
        return False
    if not head.match(segs[0]):
        return False
    return _segs_match(pat[1:], segs[1:])


def path_matcher(pat: str) -> Callable[[str], bool]:
    compiled = ["**" if s == "**" else _seg_regex(s) for s in pat.split("/")]
    return lambda p: _segs_match(compiled, p.split("/") if p else [])


def string_matcher(pat: str) -> Callable[[str], bool]:
    if "*" not in pat and "?" not in pat:
        return pat.__eq__
    rx = re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pat) + r"\Z", re.DOTALL
    )
    return lambda s: rx.match(s) is not None


def arg_matcher(arg: tuple) -> Callable[[object], bool] | None:
    kind = arg[0]
    if kind == "any":
        return None
    if kind == "host":
        return host_matcher(arg[1])
    if kind == "port":
        lo, hi = arg[1], arg[2]
        return lambda v: lo <= v <= hi
    if kind == "path":
        return path_matcher(arg[1])
    if kind == "str":
        return string_matcher(arg[1])
    raise ValueError(arg)


# --------------------------------------------------------------------------
# the evaluator


class Reference:
    """Deny-overrides over ``_global`` + module rules, per docs/design.md."""

    name = "dict-loop"

    def __init__(self, wl: Workload):
        self.modules = set(wl.modules)
        # (module, cap) -> ([deny rules], [entitle rules]); a rule is (matchers, where)
        self.table: dict[tuple[str, str], tuple[list, list]] = {}
        for mod in wl.modules.values():
            for rule in mod.rules:
                denies, ents = self.table.setdefault((mod.name, rule.cap), ([], []))
                entry = (
                    tuple((i, m) for i, m in enumerate(map(arg_matcher, rule.args)) if m is not None),
                    (mod.name, rule.line),
                )
                (ents if rule.effect == "entitle" else denies).append(entry)

    @staticmethod
    def _first(rules: list, args: tuple):
        for matchers, where in rules:
            for i, m in matchers:
                if not m(args[i]):
                    break
            else:
                return where
        return None

    def decide(self, module: str, cap: str, args: tuple) -> tuple[bool, tuple | None]:
        a = prepare(cap, args)
        if a is None:
            return False, None
        empty = ([], [])
        g = self.table.get((GLOBAL, cap), empty)
        m = self.table.get((module, cap), empty) if module != GLOBAL else empty
        where = self._first(g[0], a) or self._first(m[0], a)
        if where:
            return False, where
        where = self._first(m[1], a) or self._first(g[1], a)
        if where:
            return True, where
        return False, None

    def check(self, module: str, cap: str, args: tuple) -> bool:
        return self.decide(module, cap, args)[0]
