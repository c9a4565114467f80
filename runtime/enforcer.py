"""Linking verified artifacts into indexed, immutable decision tables.

Three layers, each immutable once built:

* :class:`LinkedModule` — one verified artifact, linked on its own: its rules
  grouped by capability and effect into :class:`_Table` objects that index
  the rules by one argument (exact hosts, strings and ports in dicts, host
  wildcards by their literal parent domain, CIDR blocks apart from DNS
  rules), so a check looks at a handful of candidate rules instead of all of
  them. Linking a module never looks at any other module, so a tenant's
  artifact is linked once and reused by every snapshot until it changes.
* :class:`Snapshot` — the set of linked modules plus ``_global`` that the
  agent publishes with one attribute assignment. It owns the decision cache
  and the per-(module, capability) plans, so a swap invalidates both by
  construction. Readers never lock: they read the agent's snapshot once per
  check and only ever see one complete policy set.
* :class:`Decision` — the immutable answer; decisions are cached and shared.

Semantics (docs/design.md): denies of ``_global`` then of the module (first
matching rule in source order decides), then entitles of the module then of
``_global``, else ``no entitlement``; a deny decided by an artifact in
``mode audit`` is returned allowed, flagged ``audit`` and logged as "would
deny". ``check`` never raises.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

from .bytecode import (
    ANY,
    DENY,
    ENTITLE,
    HOST_CIDR,
    HOST_EXACT,
    HOST_WILD,
    INT_RANGE,
    PATH_GLOB,
    STR_EXACT,
    STR_GLOB,
)
from .catalog import BUILTINS, GLOBAL_MODULE, HOST, INT, PATH, PORT, PORT_MAX, PORT_MIN, STRING
from .catalog import Capability
from . import patterns

__all__ = ["Decision", "LinkedModule", "Snapshot", "link", "EMPTY_SNAPSHOT"]

logger = logging.getLogger("polc")

_intern = sys.intern


# --------------------------------------------------------------------------
# Decision


class Decision:
    """The answer to one ``check``. Truthy when the request is allowed.

    ``effect`` is ``"allow"`` or ``"deny"``; an audited deny has
    ``allowed=True, effect="deny", audit=True``. ``rule`` is the deciding
    rule as ``file:line:col`` (None for "no entitlement" and request errors).
    ``revision`` is the revision of the artifact that decided (the module's
    own artifact for "no entitlement"), None when there is none.
    Decisions are immutable and shared between checks.
    """

    __slots__ = ("allowed", "effect", "reason", "rule", "module", "revision", "audit")

    allowed: bool
    effect: str
    reason: str
    rule: str | None
    module: str
    revision: str | None
    audit: bool

    def __init__(
        self,
        allowed: bool,
        effect: str,
        reason: str,
        rule: str | None = None,
        module: str = "",
        revision: str | None = None,
        audit: bool = False,
    ) -> None:
        s = object.__setattr__
        s(self, "allowed", allowed)
        s(self, "effect", effect)
        s(self, "reason", reason)
        s(self, "rule", rule)
        s(self, "module", module)
        s(self, "revision", revision)
        s(self, "audit", audit)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Decision is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Decision is immutable")

    def __bool__(self) -> bool:
        return self.allowed

    def _key(self) -> tuple:
        return (self.allowed, self.effect, self.reason, self.rule, self.module, self.revision, self.audit)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Decision:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "effect": self.effect,
            "reason": self.reason,
            "rule": self.rule,
            "module": self.module,
            "revision": self.revision,
            "audit": self.audit,
        }

    def __repr__(self) -> str:
        flags = ", audit=True" if self.audit else ""
        return (
            f"Decision(allowed={self.allowed}, effect={self.effect!r}, reason={self.reason!r}, "
            f"rule={self.rule!r}, module={self.module!r}, revision={self.revision!r}{flags})"
        )


# --------------------------------------------------------------------------
# Request normalisation, per parameter type. Each returns the normalised
# value or raises ValueError with a reason. The fast paths accept only input
# that patterns.normalize_* would return unchanged (tests/test_enforcer.py
# checks the equivalence with hypothesis) and fall back to them otherwise.

_FAST_DNS = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
)
_fast_dns = _FAST_DNS.fullmatch

# Normalisation is a pure function of the string, and services ask about the
# same few hosts and paths over and over: memoise it (bounded, cleared whole
# when full). Only exact ``str`` keys, so no equal-but-different value can hit.
_MEMO_MAX = 65536
_host_memo: dict[str, object] = {}
_path_memo: dict[str, str] = {}
# Refusals are memoised apart (message of the ValueError), off the fast path.
_host_bad: dict[str, str] = {}
_path_bad: dict[str, str] = {}


def _refuse(memo: dict[str, str], value: str, exc: ValueError) -> ValueError:
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[value] = str(exc)
    return exc


def _norm_host(value: object) -> object:
    if value.__class__ is str:
        r = _host_memo.get(value)  # type: ignore[call-overload]
        if r is not None:
            return r
        bad = _host_bad.get(value)  # type: ignore[call-overload]
        if bad is not None:
            raise ValueError(bad)
        try:
            if len(value) <= 253 and _fast_dns(value) is not None:  # type: ignore[arg-type]
                if value[value.rfind(".") + 1 :].isdigit():  # type: ignore[index,union-attr]
                    r = patterns.normalize_host(value)  # an IPv4 literal (or malformed)
                else:
                    r = value
            else:
                r = patterns.normalize_host(value)
        except ValueError as exc:
            raise _refuse(_host_bad, value, exc)  # type: ignore[arg-type]
        if len(_host_memo) >= _MEMO_MAX:
            _host_memo.clear()
        _host_memo[value] = r  # type: ignore[index]
        return r
    return patterns.normalize_host(value)


def _norm_path(value: object) -> str:
    if value.__class__ is str:
        r = _path_memo.get(value)  # type: ignore[call-overload]
        if r is not None:
            return r
        if (
            value
            and value[0] != "/"  # type: ignore[index]
            and value[-1] != "/"  # type: ignore[index]
            and "//" not in value  # type: ignore[operator]
            and "\0" not in value  # type: ignore[operator]
            and "/." not in "/" + value  # type: ignore[operator]
        ):
            r = value  # type: ignore[assignment]
        else:
            bad = _path_bad.get(value)  # type: ignore[call-overload]
            if bad is not None:
                raise ValueError(bad)
            try:
                r = patterns.normalize_path(value)
            except ValueError as exc:
                raise _refuse(_path_bad, value, exc)  # type: ignore[arg-type]
        if len(_path_memo) >= _MEMO_MAX:
            _path_memo.clear()
        _path_memo[value] = r  # type: ignore[index]
        return r  # type: ignore[return-value]
    return patterns.normalize_path(value)


def _norm_string(value: object) -> str:
    if value.__class__ is str:
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        return str(value)
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _norm_port(value: object) -> int:
    if value.__class__ is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a port number (int), got {type(value).__name__}")
        value = int(value)
    if PORT_MIN <= value <= PORT_MAX:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    raise ValueError(f"port {value} out of range ({PORT_MIN}..{PORT_MAX})")


def _norm_int(value: object) -> int:
    if value.__class__ is int:
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an int, got {type(value).__name__}")
    return int(value)


_NORMALIZERS: dict[str, Callable[[object], object]] = {
    HOST: _norm_host,
    PORT: _norm_port,
    PATH: _norm_path,
    STRING: _norm_string,
    INT: _norm_int,
}


# --------------------------------------------------------------------------
# Argument matchers, memoised across artifacts (10,000 tenants share most
# patterns; regexes are compiled once per distinct constant).


def _true(value: object) -> bool:
    return True


@lru_cache(maxsize=8192)
def _host_wild(const: str) -> Callable[[object], bool]:
    labels = const.split(".")
    # The common forms "*.x" and "**.x" with a literal parent domain x.
    if len(labels) > 1 and labels[0] in ("*", "**") and not any(
        lab in ("*", "**") for lab in labels[1:]
    ):
        parent = "." + ".".join(labels[1:])
        n = len(parent)
        if labels[0] == "*":

            def one_label(v: object) -> bool:
                return (
                    v.__class__ is str
                    and v.endswith(parent)  # type: ignore[union-attr]
                    and len(v) > n  # type: ignore[arg-type]
                    and v.find(".", 0, len(v) - n) < 0  # type: ignore[union-attr,arg-type]
                )

            return one_label

        def some_labels(v: object) -> bool:
            return v.__class__ is str and len(v) > n and v.endswith(parent)  # type: ignore[union-attr,arg-type]

        return some_labels
    m = patterns.host_wild_matcher(const)

    def general(v: object) -> bool:
        return v.__class__ is str and m(v)  # type: ignore[arg-type]

    return general


@lru_cache(maxsize=8192)
def _host_cidr(const: str) -> Callable[[object], bool]:
    net = patterns.cidr_network(const)

    def in_net(v: object) -> bool:
        return v.__class__ is not str and v in net  # type: ignore[operator]

    return in_net


_GLOB_CHARS = frozenset("*?")


@lru_cache(maxsize=8192)
def _path_glob(const: str) -> Callable[[object], bool]:
    if const == "**":
        return _true
    segs = const.split("/")
    if segs[-1] == "**" and not any(_GLOB_CHARS & set(s) for s in segs[:-1]):
        prefix = "/".join(segs[:-1])
        slash = prefix + "/"

        def under(v: object) -> bool:
            return v == prefix or v.startswith(slash)  # type: ignore[union-attr]

        return under
    if not _GLOB_CHARS & set(const):

        def same(v: object) -> bool:
            return v == const

        return same
    return patterns.path_matcher(const)  # type: ignore[return-value]


@lru_cache(maxsize=8192)
def _str_glob(const: str) -> Callable[[object], bool]:
    return patterns.string_matcher(const)  # type: ignore[return-value]


def _matcher(instr: tuple) -> Callable[[object], bool] | None:
    op = instr[0]
    if op == ANY:
        return None
    if op == HOST_EXACT or op == STR_EXACT:
        c = instr[1]

        def eq(v: object) -> bool:
            return v == c

        return eq
    if op == HOST_WILD:
        return _host_wild(instr[1])
    if op == HOST_CIDR:
        return _host_cidr(instr[1])
    if op == INT_RANGE:
        lo, hi = instr[1], instr[2]
        if lo == hi:

            def eq_int(v: object) -> bool:
                return v == lo

            return eq_int

        def in_range(v: object) -> bool:
            return lo <= v <= hi  # type: ignore[operator]

        return in_range
    if op == PATH_GLOB:
        return _path_glob(instr[1])
    if op == STR_GLOB:
        return _str_glob(instr[1])
    raise ValueError(f"unknown argument opcode {op:#x}")  # the verifier rules this out


# --------------------------------------------------------------------------
# Linked rules and tables
#
# A linked rule is an entry ``(index, checks)`` in one bucket of a table:
# ``index`` its position in the artifact (source order), ``checks`` a tuple
# of ``(position, matcher)`` still to run once the index selected the entry.
# Matchers and whole ``checks`` tuples are shared process-wide (10,000
# tenants repeat the same ports, paths and patterns), so a rule costs one
# small tuple. The deciding rule's ``file:line:col`` is formatted only when
# a Decision is built (from the module's packed line/column array).

_SHARE_MAX = 1 << 13
_MATCHERS: dict[tuple, Callable[[object], bool] | None] = {}
_CHECKS: dict[tuple, tuple] = {}
_INDEX_KEYS: dict[tuple, tuple | None] = {}
_NO_KEY: tuple = ()
_EMPTY_MAP: Mapping = {}  # never written: the shared value of every empty index dict


_UNSEEN = object()


def _matcher_of(arg: tuple) -> Callable[[object], bool] | None:
    m = _MATCHERS.get(arg, _UNSEEN)
    if m is _UNSEEN:
        m = _matcher(arg)
        if len(_MATCHERS) >= _SHARE_MAX:
            _MATCHERS.clear()
        _MATCHERS[arg] = m
    return m


def _checks_of(args: tuple, skip: int) -> tuple:
    """``((position, matcher), ...)`` for the non-ANY arguments other than ``skip``; shared."""
    key = (skip, args)
    c = _CHECKS.get(key)
    if c is None:
        c = tuple(
            (i, m)
            for i, m in ((i, _matcher_of(a)) for i, a in enumerate(args) if i != skip and a[0] != ANY)
            if m is not None
        )
        if len(_CHECKS) >= _SHARE_MAX:
            _CHECKS.clear()
        _CHECKS[key] = c
    return c


_BIG = 1 << 62

_SCAN, _HOSTKEY, _KEY = 0, 1, 2


def _index_key(instr: tuple) -> tuple | None:
    """How an argument instruction can be indexed: a bucket key, or None (scan). Memoised."""
    key = _INDEX_KEYS.get(instr, _NO_KEY)
    if key is _NO_KEY:
        key = _compute_index_key(instr)
        if len(_INDEX_KEYS) >= _SHARE_MAX:
            _INDEX_KEYS.clear()
        _INDEX_KEYS[instr] = key
    return key


def _compute_index_key(instr: tuple) -> tuple | None:
    op = instr[0]
    if op == HOST_EXACT or op == STR_EXACT:
        return ("=", instr[1])
    if op == INT_RANGE and instr[1] == instr[2]:
        return ("=", instr[1])
    if op == HOST_WILD:
        labels = instr[1].split(".")
        last = max(i for i, lab in enumerate(labels) if lab in ("*", "**"))
        parent = ".".join(labels[last + 1 :])
        if not parent:
            return None  # "*", "**", "api.*": nothing literal to key on
        if last == 0 and labels[0] == "*":
            return ("1", _intern(parent))  # "*.x": exactly one label before x
        if last == 0:
            return ("+", _intern(parent))  # "**.x": one or more labels before x
        return ("?", _intern(parent))  # "a.*.x" and friends: keyed by x, matched by regex
    if op == HOST_CIDR:
        return ("ip",)
    if op == STR_GLOB:
        const = instr[1]
        cut = min((i for i in (const.find("*"), const.find("?")) if i >= 0), default=len(const))
        if cut > 0:
            return ("^", _intern(const[:cut]))  # only values starting with the literal prefix can match
    return None


def _suffixes(host: str) -> tuple[str, ...]:
    """Proper parent domains of a DNS name, longest first: a.b.c -> ("b.c", "c")."""
    out = []
    i = host.find(".")
    while i >= 0:
        out.append(host[i + 1 :])
        i = host.find(".", i + 1)
    r = tuple(out)
    if len(_suffix_memo) >= _MEMO_MAX:
        _suffix_memo.clear()
    _suffix_memo[host] = r
    return r


_suffix_memo: dict[str, tuple[str, ...]] = {}


def _freeze(buckets: dict) -> Mapping:
    if not buckets:
        return _EMPTY_MAP
    return {k: tuple(v) for k, v in buckets.items()}


class _Table:
    """Rules of one effect for one capability in one artifact, indexed.

    One argument position is chosen as the index (the one that leaves the
    fewest rules in any bucket plus the unindexable rest). ``first(vals)``
    collects the candidate buckets for the request's value at that position
    — the exact bucket; for a DNS name, the ``*.x`` bucket of its parent
    domain and the ``**.x``/general buckets of every proper ancestor; for an
    IP, the CIDR rules — plus the rules that cannot be indexed, and returns
    the index of the first rule in source order whose remaining arguments
    match (-1 when none does).
    """

    __slots__ = ("kind", "pos", "exact", "wild1", "wildn", "depths", "pfx", "pfx_lens", "ip", "rest", "size",
                 "owner", "effect")

    def __init__(self, owner: "LinkedModule", effect: int, rules: list[tuple[int, tuple]], types: tuple[str, ...]):
        self.owner = owner
        self.effect = effect
        self.size = len(rules)
        pos, kind, keys = self._choose(rules, types)
        self.kind = kind
        self.pos = pos
        exact: dict[object, list] = {}
        wild1: dict[str, list] = {}
        wildn: dict[str, list] = {}
        pfx: dict[str, list] = {}
        ip: list = []
        rest: list = []
        checks_of = _checks_of
        if keys is None:
            for idx, args in rules:
                rest.append((idx, checks_of(args, -1)))
        else:
            for (idx, args), key in zip(rules, keys):
                if key is None:
                    rest.append((idx, checks_of(args, -1)))
                    continue
                k0 = key[0]
                if k0 == "=":
                    exact.setdefault(key[1], []).append((idx, checks_of(args, pos)))
                elif k0 == "1":
                    wild1.setdefault(key[1], []).append((idx, checks_of(args, pos)))
                elif k0 == "+":
                    wildn.setdefault(key[1], []).append((idx, checks_of(args, pos)))
                elif k0 == "?":
                    wildn.setdefault(key[1], []).append((idx, checks_of(args, -1)))
                elif k0 == "^":
                    pfx.setdefault(key[1], []).append((idx, checks_of(args, -1)))
                else:  # CIDR: the bucket holds every IP rule, each checks its network
                    ip.append((idx, checks_of(args, -1)))
        self.exact = _freeze(exact)
        self.wild1 = _freeze(wild1)
        self.wildn = _freeze(wildn)
        # label counts of the wildn keys: only those ancestors of a host are probed
        self.depths = tuple(sorted({k.count(".") + 1 for k in wildn}))
        self.pfx = _freeze(pfx)
        self.pfx_lens = tuple(sorted({len(k) for k in pfx}))
        self.ip = tuple(ip)
        self.rest = tuple(rest)

    @staticmethod
    def _choose(rules: list[tuple[int, tuple]], types: tuple[str, ...]) -> tuple[int, int, list | None]:
        best: tuple[int, int, str, list] | None = None
        ikey = _index_key
        for pos, typ in enumerate(types):
            if typ not in (HOST, STRING, PORT, INT):
                continue
            keys = [ikey(args[pos]) for _, args in rules]
            buckets: dict[object, int] = {}
            scan = 0
            for key in keys:
                if key is None:
                    scan += 1
                else:
                    buckets[key] = buckets.get(key, 0) + 1
            if not buckets:
                continue
            cost = scan + max(buckets.values())
            if best is None or cost < best[0]:
                best = (cost, pos, typ, keys)
        if best is None:  # nothing indexable: every rule is scanned
            return 0, _SCAN, None
        return best[1], (_HOSTKEY if best[2] == HOST else _KEY), best[3]

    def first(self, vals: tuple) -> int:
        kind = self.kind
        if kind == _SCAN:
            for idx, checks in self.rest:
                for pos, fn in checks:
                    if not fn(vals[pos]):
                        break
                else:
                    return idx
            return -1
        v = vals[self.pos]
        if kind == _KEY and not self.pfx_lens:
            # the common case: the exact bucket and/or the rest, no list built
            b = self.exact.get(v)
            rest = self.rest
            if b is None or not rest:
                for idx, checks in b if b is not None else rest:
                    for pos, fn in checks:
                        if not fn(vals[pos]):
                            break
                    else:
                        return idx
                return -1
            buckets: list = [b, rest]
        else:
            buckets = self._buckets(kind, v)
        best = -1
        bound = _BIG
        for bucket in buckets:
            for idx, checks in bucket:
                if idx >= bound:
                    break
                for pos, fn in checks:
                    if not fn(vals[pos]):
                        break
                else:
                    best = bound = idx
                    break
        return best

    def _buckets(self, kind: int, v: object) -> list:
        """The candidate buckets for value ``v`` at the indexed position, rest last."""
        buckets = []
        if kind == _HOSTKEY:
            if v.__class__ is not str:
                if self.ip:
                    buckets.append(self.ip)
            else:
                b = self.exact.get(v)
                if b is not None:
                    buckets.append(b)
                if self.wild1 or self.depths:
                    sfx = _suffix_memo.get(v)
                    if sfx is None:
                        sfx = _suffixes(v)
                    if sfx:
                        if self.wild1:
                            b = self.wild1.get(sfx[0])
                            if b is not None:
                                buckets.append(b)
                        n = len(sfx)
                        for depth in self.depths:
                            if depth > n:
                                break
                            b = self.wildn.get(sfx[n - depth])
                            if b is not None:
                                buckets.append(b)
        else:
            b = self.exact.get(v)
            if b is not None:
                buckets.append(b)
            if self.pfx_lens and v.__class__ is str:
                for n in self.pfx_lens:
                    if n > len(v):
                        break
                    b = self.pfx.get(v[:n])
                    if b is not None:
                        buckets.append(b)
        if self.rest:
            buckets.append(self.rest)
        return buckets


# --------------------------------------------------------------------------
# Linking one artifact


class LinkedModule:
    """One verified artifact, linked. Immutable; independent of other modules."""

    __slots__ = (
        "name",
        "mode",
        "audit",
        "revision",
        "digest",
        "source",
        "rule_count",
        "caps",
        "tables",
        "_where",
        "__weakref__",
    )

    def __init__(self, artifact: Any) -> None:
        self.name: str = _intern(artifact.module)
        self.mode: str = artifact.mode
        self.audit: bool = artifact.mode == "audit"
        self.revision: str = artifact.revision
        self.digest: str = artifact.digest_hex
        self.source: str = artifact.source
        rules = artifact.rules
        self.rule_count: int = len(rules)
        caps: dict[str, Capability] = {c.name: c for c in artifact.caps}
        # line, col of rule i at 2i, 2i+1: one object per module, not one string per rule
        where: list[int] = []
        grouped: dict[tuple[str, int], list] = {}
        for r in rules:
            where.append(r.line)
            where.append(r.col)
            key = (r.cap.name, r.effect)
            g = grouped.get(key)
            if g is None:
                g = grouped[key] = []
            g.append((r.index, r.args))
        self._where = array("I" if max(where, default=0) < 1 << 32 else "q", where)
        tables: dict[str, list] = {}
        for (cap_name, effect), group in grouped.items():
            cap = caps.get(cap_name)
            if cap is None:  # rule of a capability missing from caps: the verifier forbids it
                cap = next(r.cap for r in rules if r.cap.name == cap_name)
                caps[cap_name] = cap
            slot = tables.get(cap_name)
            if slot is None:
                slot = tables[cap_name] = [None, None]
            slot[0 if effect == DENY else 1] = _Table(self, effect, group, _types(cap))
        self.caps = caps
        self.tables: dict[str, tuple[_Table | None, _Table | None]] = {
            k: (v[0], v[1]) for k, v in tables.items()
        }

    def location(self, index: int) -> str:
        """``file:line:col`` of rule ``index``."""
        w = self._where
        return f"{self.source}:{w[2 * index]}:{w[2 * index + 1]}"

    def __repr__(self) -> str:
        return f"<LinkedModule {self.name} rev {self.revision} ({self.rule_count} rules, {self.mode})>"


def link(artifact: Any) -> LinkedModule:
    """Link one verified artifact (see runtime/artifact.py) into indexed tables."""
    return LinkedModule(artifact)


_TYPES: dict[Capability, tuple[str, ...]] = {}


def _types(cap: Capability) -> tuple[str, ...]:
    t = _TYPES.get(cap)
    if t is None:
        t = tuple(p.type for p in cap.params)
        if len(_TYPES) >= _SHARE_MAX:
            _TYPES.clear()
        _TYPES[cap] = t
    return t


# --------------------------------------------------------------------------
# Plans: what one (module, capability) pair needs, resolved once per snapshot


def _normalizer(norms: tuple) -> Callable[[tuple], tuple]:
    """One function normalising a whole request, unrolled for small arities."""
    if len(norms) == 0:
        return lambda args: ()
    if len(norms) == 1:
        (n0,) = norms
        return lambda args: (n0(args[0]),)
    if len(norms) == 2:
        n0, n1 = norms
        return lambda args: (n0(args[0]), n1(args[1]))
    if len(norms) == 3:
        n0, n1, n2 = norms
        return lambda args: (n0(args[0]), n1(args[1]), n2(args[2]))
    return lambda args: tuple([n(a) for n, a in zip(norms, args)])


class _Plan:
    __slots__ = (
        "module",
        "cap",
        "arity",
        "params",
        "denies",
        "entitles",
        "no_entitlement",
        "error",
        "normalize",
    )

    def __init__(self, module: str, cap_name: str, mod: LinkedModule | None, glob: LinkedModule | None):
        self.normalize = _normalizer(())
        self.module = module
        self.cap = cap_name
        self.error: Decision | None = None
        self.denies: tuple[tuple[_Table, dict], ...] = ()
        self.entitles: tuple[tuple[_Table, dict], ...] = ()
        sig = (mod.caps.get(cap_name) if mod else None) or (glob.caps.get(cap_name) if glob else None)
        if sig is None:
            sig = BUILTINS.get(cap_name)
        rev = mod.revision if mod is not None else None
        if sig is None:
            self.error = Decision(False, "deny", f"unknown capability {cap_name!r}", None, module, rev)
            self.arity = -1
            self.params = ()
            self.no_entitlement = self.error
            return
        self.arity = sig.arity
        self.params = tuple((p.name, _NORMALIZERS[p.type]) for p in sig.params)
        self.normalize = _normalizer(tuple(n for _, n in self.params))
        gsig = glob.caps.get(cap_name) if glob is not None else None
        gtabs = glob.tables.get(cap_name, (None, None)) if glob is not None else (None, None)
        if gsig is not None and _types(gsig) != _types(sig) and (gtabs[0] or gtabs[1]):
            self.error = Decision(
                False,
                "deny",
                f"capability {cap_name!r} is declared as {sig.signature()} by {mod.name if mod else '?'} "
                f"but as {gsig.signature()} by {GLOBAL_MODULE}",
                None,
                module,
                rev,
            )
            self.no_entitlement = self.error
            return
        mtabs = mod.tables.get(cap_name, (None, None)) if mod is not None else (None, None)
        # (table, memo of the decisions its rules gave for this module)
        self.denies = tuple((t, {}) for t in (gtabs[0], mtabs[0]) if t is not None)
        self.entitles = tuple((t, {}) for t in (mtabs[1], gtabs[1]) if t is not None)
        owner = mod if mod is not None else glob
        audit = owner is not None and owner.audit
        self.no_entitlement = Decision(audit, "deny", "no entitlement", None, module, rev, audit)

    def decide(self, args: tuple) -> Decision:
        if self.error is not None:
            return self.error
        if len(args) != self.arity:
            return Decision(
                False,
                "deny",
                f"wrong arity: {self.cap} takes {self.arity} argument{'s' if self.arity != 1 else ''}, "
                f"got {len(args)}",
                None,
                self.module,
                self.no_entitlement.revision,
            )
        try:
            v = self.normalize(args)
        except ValueError:
            return self._bad_argument(args)
        for table, memo in self.denies:
            i = table.first(v)
            if i >= 0:
                d = memo.get(i)
                return d if d is not None else self._decision(table, memo, i)
        for table, memo in self.entitles:
            i = table.first(v)
            if i >= 0:
                d = memo.get(i)
                return d if d is not None else self._decision(table, memo, i)
        return self.no_entitlement

    def _bad_argument(self, args: tuple) -> Decision:
        for (name, norm), value in zip(self.params, args):
            try:
                norm(value)
            except ValueError as exc:
                reason = f"invalid argument {name!r} of {self.cap}: {exc}"
                break
        else:  # pragma: no cover - normalize() raised, so one of them does
            reason = f"invalid arguments for {self.cap}"
        return Decision(False, "deny", reason, None, self.module, self.no_entitlement.revision)

    def _decision(self, table: _Table, memo: dict, i: int) -> Decision:
        owner = table.owner
        if table.effect == ENTITLE:
            d = Decision(True, "allow", f"entitled by {owner.name}", owner.location(i), self.module, owner.revision)
        else:
            d = Decision(
                owner.audit,
                "deny",
                f"denied by {owner.name}",
                owner.location(i),
                self.module,
                owner.revision,
                owner.audit,
            )
        memo[i] = d
        return d


# --------------------------------------------------------------------------
# Snapshot


def _log_audit(d: Decision, capability: str, args: tuple) -> None:
    if logger.isEnabledFor(logging.INFO):
        call = f"{capability}({', '.join(map(repr, args))})"
        where = f" at {d.rule}" if d.rule else ""
        logger.info("would deny %s %s: %s%s (audit mode)", d.module, call, d.reason, where)


_MAX_PLANS = 65536


class Snapshot:
    """An immutable set of linked modules, the unit that the agent swaps.

    ``check`` is safe to call from any number of threads without a lock: the
    snapshot's own state never changes after construction except for the two
    memo dicts (decision cache, plans), whose entries are pure functions of
    the snapshot and are only ever added or cleared whole.
    """

    __slots__ = ("modules", "glob", "unavailable", "_cache", "_cache_size", "_plans", "__weakref__")

    def __init__(
        self,
        modules: Mapping[str, LinkedModule],
        glob: LinkedModule | None = None,
        *,
        unavailable: str | None = None,
        cache_size: int = 65536,
    ) -> None:
        self.modules: dict[str, LinkedModule] = dict(modules)
        self.modules.pop(GLOBAL_MODULE, None)
        self.glob = glob
        # A reason to deny every request (a _global that failed to load, no
        # load yet): without the global restrictions, nothing is decided.
        self.unavailable = unavailable
        self._cache: dict = {}
        self._cache_size = cache_size
        self._plans: dict = {}

    def replace(
        self,
        changed: Iterable[LinkedModule] = (),
        removed: Iterable[str] = (),
        *,
        glob: LinkedModule | None | bool = False,
        unavailable: str | None | bool = False,
    ) -> "Snapshot":
        """A new snapshot with some modules replaced; this one is untouched."""
        modules = dict(self.modules)
        for name in removed:
            modules.pop(name, None)
        new_glob = self.glob if glob is False else glob
        for m in changed:
            if m.name == GLOBAL_MODULE:
                new_glob = m
            else:
                modules[m.name] = m
        return Snapshot(
            modules,
            new_glob,  # type: ignore[arg-type]
            unavailable=self.unavailable if unavailable is False else unavailable,  # type: ignore[arg-type]
            cache_size=self._cache_size,
        )

    def check(self, module: str, capability: str, *args: object) -> Decision:
        if not self._cache_size:  # no cache: no key to build and hash
            return self._miss(module, capability, args, False)
        try:
            d = self._cache.get((module, capability, args))
        except Exception:  # unhashable argument: decide without the cache
            return self._miss(module, capability, args, False)
        if d is not None:
            # bool/float/Decimal values equal to an int share its hash and
            # key: a hit counts only when every argument is a plain str/int.
            for a in args:
                if a.__class__ is not str and a.__class__ is not int:
                    break
            else:
                if d.audit:
                    _log_audit(d, capability, args)
                return d
        return self._miss(module, capability, args, True)

    def _miss(self, module: object, capability: object, args: tuple, cacheable: bool) -> Decision:
        try:
            plan = self._plans.get((module, capability))
            if plan is None:
                plan = self._plan(module, capability)
                if plan is None:
                    return self._refuse(module, capability, args)
            d = plan.decide(args)
            if cacheable and self._cache_size > 0:
                for a in args:
                    if a.__class__ is not str and a.__class__ is not int:
                        break
                else:
                    cache = self._cache
                    if len(cache) >= self._cache_size:
                        cache.clear()
                    cache[(module, capability, args)] = d
            if d.audit:
                _log_audit(d, capability, args)  # type: ignore[arg-type]
            return d
        except Exception as exc:  # never raise into the application
            logger.exception("internal error deciding %r %r", module, capability)
            return Decision(False, "deny", f"internal error: {exc!r}", None, str(module))

    def _plan(self, module: object, capability: object) -> _Plan | None:
        """The plan for a (module, capability) pair; None when the request is refused whole."""
        if module.__class__ is not str or capability.__class__ is not str or self.unavailable:
            return None
        plan = _Plan(module, capability, self.modules.get(module), self.glob)  # type: ignore[arg-type]
        plans = self._plans
        if len(plans) >= _MAX_PLANS:
            plans.clear()
        plans[(module, capability)] = plan
        return plan

    def _refuse(self, module: object, capability: object, args: tuple) -> Decision:
        if not isinstance(module, str) or not isinstance(capability, str):
            return Decision(False, "deny", "module and capability must be strings", None, repr(module))
        if self.unavailable is not None:
            mod = self.modules.get(module)
            return Decision(False, "deny", self.unavailable, None, str(module), mod.revision if mod else None)
        # str subclasses: decide as the plain strings they are (never cached)
        return self._miss(str(module), str(capability), args, False)

    def decide_uncached(self, module: str, capability: str, *args: object) -> Decision:
        """Decide without reading or filling the decision cache (for tests and tools)."""
        return self._miss(module, capability, args, False)

    def __repr__(self) -> str:
        g = " +_global" if self.glob is not None else ""
        return f"<Snapshot {len(self.modules)} modules{g}>"


EMPTY_SNAPSHOT = Snapshot({}, None, unavailable="policy not loaded yet (PolicyAgent.start() not called)")
