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
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from types import FunctionType
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
from .catalog import BUILTINS, COMMAND, GLOBAL_MODULE, HOST, INT, PATH, PORT, PORT_MAX, PORT_MIN, STRING
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
# when full). Only exact ``str`` keys, so no equal-but-different value can hit,
# and only short ones, so the memos hold at most _MEMO_MAX x _MEMO_KEY_MAX
# characters whatever callers send.
_MEMO_MAX = 65536
_MEMO_KEY_MAX = 1024
_host_memo: dict[str, object] = {}
_path_memo: dict[str, str] = {}
# Refusals are memoised apart (message of the ValueError), off the fast path.
_host_bad: dict[str, str] = {}
_path_bad: dict[str, str] = {}


def _refuse(memo: dict[str, str], value: str, exc: ValueError) -> ValueError:
    if len(value) <= _MEMO_KEY_MAX:
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[value] = str(exc)
    return exc


def _norm_host(value: object) -> object:
    if type(value) is str:
        r = _host_memo.get(value)  # type: ignore[call-overload]
        if r is not None:
            return r
        bad = _host_bad.get(value)  # type: ignore[call-overload]
        if bad is not None:
            raise ValueError(bad)
        try:
            if len(value) <= 253 and _fast_dns(value) is not None:  # type: ignore[arg-type]
                last = value[value.rfind(".") + 1 :]  # type: ignore[index,union-attr]
                if last.isdigit() or last.startswith("0x"):
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
    if type(value) is str:
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
        if len(value) <= _MEMO_KEY_MAX:  # type: ignore[arg-type]
            if len(_path_memo) >= _MEMO_MAX:
                _path_memo.clear()
            _path_memo[value] = r  # type: ignore[index]
        return r  # type: ignore[return-value]
    return patterns.normalize_path(value)


def _norm_string(value: object) -> str:
    t = type(value)
    if t is str:
        return value  # type: ignore[return-value]
    if issubclass(t, str):
        return str.__str__(value)  # type: ignore[arg-type]  # a copy; the subclass's methods never run
    raise ValueError(f"expected a string, got {patterns.type_name(value)}")


def _int_text(v: int) -> str:
    return str(v) if v.bit_length() <= 64 else f"of {v.bit_length()} bits"


def _exact_int(value: object, what: str) -> int:
    t = type(value)
    if t is bool or not issubclass(t, int):
        raise ValueError(f"expected {what}, got {patterns.type_name(value)}")
    return int.__int__(value)  # type: ignore[arg-type]  # an int subclass's methods never run


def _norm_port(value: object) -> int:
    if type(value) is not int:
        value = _exact_int(value, "a port number (int)")
    if PORT_MIN <= value <= PORT_MAX:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    raise ValueError(f"port {_int_text(value)} out of range ({PORT_MIN}..{PORT_MAX})")  # type: ignore[arg-type]


def _norm_int(value: object) -> int:
    if type(value) is int:
        return value  # type: ignore[return-value]
    return _exact_int(value, "an int")


# A command is resolved on the file system; what it found is reused for at most
# patterns.RESOLVE_TTL seconds, and so are decisions about a capability with a
# command parameter (Snapshot._timed), never longer.
_norm_command = patterns.command_of


_NORMALIZERS: dict[str, Callable[[object], object]] = {
    HOST: _norm_host,
    PORT: _norm_port,
    PATH: _norm_path,
    STRING: _norm_string,
    INT: _norm_int,
    COMMAND: _norm_command,
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
    net = patterns.cidr_network(const)  # an IPv4-mapped block as the IPv4 block
    v4 = ipaddress.IPv4Address
    v6 = ipaddress.IPv6Address
    many = patterns.HostAddresses

    def in_net(v: object) -> bool:
        c = v.__class__
        if c is v4 or c is v6:
            return v in net  # type: ignore[operator]
        if c is many:  # an address that also reaches others (NAT64, 0.0.0.0, ...)
            return any(a in net for a in v)  # type: ignore[attr-defined]
        return False

    return in_net


# Command arguments match through the request's spellings, and a bare name
# matches differently in a deny and an entitle (patterns.command_matcher), so
# a command rule's argument is linked as its own instruction: (_CMD, effect,
# opcode, constant). _CMD is no opcode of the artifact format.
_CMD = -1


def _command_args(args: tuple, types: tuple[str, ...], effect: int) -> tuple:
    return tuple(
        (_CMD, effect, a[0], a[1]) if t == COMMAND and a[0] != ANY else a for a, t in zip(args, types)
    )


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
    # the common shapes "P*", "*S" and "*X*" (no other "*" or "?") without a regex
    core = const.strip("*")
    if core and not _GLOB_CHARS & set(core) and len(const) - len(core) <= 2:
        lead, trail = const[0] == "*", const[-1] == "*"
        if lead and trail:

            def contains(v: object) -> bool:
                return core in v  # type: ignore[operator]

            return contains
        if trail:

            def starts(v: object) -> bool:
                return v.startswith(core)  # type: ignore[union-attr]

            return starts
        if lead:

            def ends(v: object) -> bool:
                return v.endswith(core)  # type: ignore[union-attr]

            return ends
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

            eq_int.lohi = (lo, hi)  # type: ignore[attr-defined]
            return eq_int

        def in_range(v: object) -> bool:
            return lo <= v <= hi  # type: ignore[operator]

        in_range.lohi = (lo, hi)  # type: ignore[attr-defined]
        return in_range
    if op == PATH_GLOB:
        return _path_glob(instr[1])
    if op == STR_GLOB:
        return _str_glob(instr[1])
    if op == _CMD:
        return patterns.command_matcher(  # type: ignore[return-value]
            instr[2], instr[3], deny=instr[1] == DENY, glob_matcher=_str_glob  # type: ignore[arg-type]
        )
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


def _freeze(buckets: dict[object, list]) -> Mapping:
    """Buckets of final entries (lists, in rank order) as shared tuples."""
    if not buckets:
        return _EMPTY_MAP
    get = _BUCKETS.get
    out = {}
    for k, v in buckets.items():
        t = tuple(v)
        b = get(t)
        out[k] = b if b is not None else _shared(_BUCKETS, t)
    return out


def _bucket(entries: list) -> tuple:
    if not entries:
        return ()
    t = tuple(entries)
    b = _BUCKETS.get(t)
    return b if b is not None else _shared(_BUCKETS, t)


# Entries and buckets are shared between modules when equal: a rank is a rule's position
# and checks/matchers are shared already, so 10,000 tenants with rules of the same shapes
# hold one entry tuple per (rank, range, checks) and one tuple per identical bucket.
_ENTRIES: dict[tuple, tuple] = {}
_BUCKETS: dict[tuple, tuple] = {}
_ENTRIES_MAX = 1 << 16


def _shared(memo: dict, t: tuple) -> tuple:
    r = memo.get(t)
    if r is None:
        if len(memo) >= _ENTRIES_MAX:
            memo.clear()
        r = memo[t] = t
    return r


_RANKS: dict[int, int] = {}


def _rank_obj(rank: int) -> int:
    """One shared int object per rank value (10,000 modules repeat the same ranks)."""
    r = _RANKS.get(rank)
    if r is None:
        if len(_RANKS) >= _SHARE_MAX:
            _RANKS.clear()
        r = _RANKS[rank] = rank
    return r


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
                 "owner", "effect", "tier", "ipos")

    def __init__(self, owner: "LinkedModule", effect: int, rules: list[tuple[int, tuple]], types: tuple[str, ...]):
        self.owner = owner
        self.effect = effect
        self.size = len(rules)
        pos, kind, keys = self._choose(rules, types)
        self.kind = kind
        self.pos = pos
        # Entries are stored in the fused deciders' form from the start (one copy of the rules,
        # shared by every plan and snapshot): ``(rank, checks)``, or ``(rank, lo, hi, checks)``
        # when the capability has a port/int parameter (its range check taken out, ``ipos``).
        # The rank is ``tier << 32 | index`` with the tier this table has in every plan.
        glob = owner.name == GLOBAL_MODULE
        tier = (0 if glob else 1) if effect == DENY else (3 if glob else 2)
        self.tier = tier
        offset = tier << _TIER_SHIFT
        ipos = self.ipos = _int_pos(types)
        # One pass: each rule becomes its final, shared entry and goes straight into its
        # bucket (the memo lookups are inlined; a miss takes the function that fills it).
        exact: dict[object, list] = {}
        wild1: dict[str, list] = {}
        wildn: dict[str, list] = {}
        pfx: dict[str, list] = {}
        ip: list = []
        rest: list = []
        ranks_get = _RANKS.get
        checks_get = _CHECKS.get
        splits_get = _SPLITS.get
        ents_get = _ENTRIES.get
        if keys is None:
            keys = [None] * len(rules)
        for (idx, args), key in zip(rules, keys):
            if key is None:
                skip = -1
                dest = rest
            else:
                k0 = key[0]
                if k0 == "=":
                    skip = pos
                    dest = exact.get(key[1])
                    if dest is None:
                        dest = exact[key[1]] = []
                elif k0 == "1":
                    skip = pos
                    dest = wild1.get(key[1])
                    if dest is None:
                        dest = wild1[key[1]] = []
                elif k0 == "+" or k0 == "?":
                    skip = pos if k0 == "+" else -1
                    dest = wildn.get(key[1])
                    if dest is None:
                        dest = wildn[key[1]] = []
                elif k0 == "^":
                    # "P*" matches exactly the values the bucket of prefix P holds
                    skip = pos if args[pos][1] == key[1] + "*" else -1
                    dest = pfx.get(key[1])
                    if dest is None:
                        dest = pfx[key[1]] = []
                else:  # CIDR: the bucket holds every IP rule, each checks its network
                    skip = -1
                    dest = ip
            rank = offset | idx
            r = ranks_get(rank)
            if r is None:
                r = _rank_obj(rank)
            checks = checks_get((skip, args))
            if checks is None:
                checks = _checks_of(args, skip)
            if ipos >= 0:
                sp = splits_get((ipos, checks))
                if sp is None:
                    sp = _split(checks, ipos)
                e = (r, *sp)
            else:
                e = (r, checks)
            shared = ents_get(e)
            dest.append(shared if shared is not None else _shared(_ENTRIES, e))
        self.exact = _freeze(exact)
        self.wild1 = _freeze(wild1)
        self.wildn = _freeze(wildn)
        # label counts of the wildn keys: only those ancestors of a host are probed
        self.depths = tuple(sorted({k.count(".") + 1 for k in wildn}))
        self.pfx = _freeze(pfx)
        self.pfx_lens = tuple(sorted({len(k) for k in pfx}))
        self.ip = _bucket(ip)
        self.rest = _bucket(rest)

    @staticmethod
    def _choose(rules: list[tuple[int, tuple]], types: tuple[str, ...]) -> tuple[int, int, list | None]:
        best: tuple[int, int, str, list] | None = None
        ikey = _index_key
        get = _INDEX_KEYS.get
        nokey = _NO_KEY
        for pos, typ in enumerate(types):
            if typ not in (HOST, STRING, PORT, INT):
                continue
            keys = [get(args[pos], nokey) for _, args in rules]
            if nokey in keys:  # first sight of some argument (only () is equal to _NO_KEY)
                keys = [ikey(args[pos]) if k is nokey else k for k, (_, args) in zip(keys, rules)]
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
        """Source index of the first matching rule (-1: none). The sequential path, used by
        plans whose tables cannot be fused (and by the tests as the reference)."""
        kind = self.kind
        buckets = (self.rest,) if kind == _SCAN else self._buckets(kind, vals[self.pos])
        ipos = self.ipos
        best = _BIG
        for bucket in buckets:
            for e in bucket:
                r = e[0]
                if r >= best:
                    break
                if ipos >= 0 and not e[1] <= vals[ipos] <= e[2]:
                    continue
                for pos, fn in e[-1]:
                    if not fn(vals[pos]):
                        break
                else:
                    best = r
                    break
        return -1 if best == _BIG else best & _TIER_MASK

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
        "volatile",
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
        try:
            self._where = array("I", _chain(map(_LINE_COL, rules)))
        except OverflowError:  # a line or column past 2**32 - 1 (the verifier allows 2**63 - 1)
            self._where = array("q", _chain(map(_LINE_COL, rules)))
        grouped: dict[tuple[str, int], list] = {}
        get = grouped.get
        for index, effect, cap, _line, _col, args in rules:
            key = (cap.name, effect)
            g = get(key)
            if g is None:
                g = grouped[key] = []
            g.append((index, args))
        tables: dict[str, list] = {}
        for (cap_name, effect), group in grouped.items():
            cap = caps.get(cap_name)
            if cap is None:  # rule of a capability missing from caps: the verifier forbids it
                cap = next(r.cap for r in rules if r.cap.name == cap_name)
                caps[cap_name] = cap
            slot = tables.get(cap_name)
            if slot is None:
                slot = tables[cap_name] = [None, None]
            types = _types(cap)
            if COMMAND in types:
                group = [(index, _command_args(args, types, effect)) for index, args in group]
            slot[0 if effect == DENY else 1] = _Table(self, effect, group, types)
        self.caps = caps
        # capabilities whose decisions depend on the file system (a command parameter): never cached
        self.volatile: frozenset[str] = frozenset(n for n, c in caps.items() if COMMAND in _types(c))
        self.tables: dict[str, tuple[_Table | None, _Table | None]] = {
            k: (v[0], v[1]) for k, v in tables.items()
        }

    def location(self, index: int) -> str:
        """``file:line:col`` of rule ``index``."""
        w = self._where
        return f"{self.source}:{w[2 * index]}:{w[2 * index + 1]}"

    def __repr__(self) -> str:
        return f"<LinkedModule {self.name} rev {self.revision} ({self.rule_count} rules, {self.mode})>"


_LINE_COL = itemgetter(3, 4)  # Rule.line, Rule.col
_chain = chain.from_iterable


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
# Fused deciders: one index over _global's and the module's tables
#
# When every indexed table of a plan indexes the same argument position the
# same way (the common case), the plan merges them into one index whose
# entries carry a rank ``tier << 32 | source index`` (tiers: 0 denies of
# ``_global``, 1 denies of the module, 2 entitles of the module, 3 entitles
# of ``_global``). The smallest matching rank is then exactly the deciding
# rule of the sequential evaluation (first tier with a match, first rule of
# it in source order), found with one probe of each candidate bucket instead
# of one probe per table. The decider itself is Python source generated per
# shape (parameter types, index kind) and compiled once per process; it
# normalises the arguments inline (memo probes, no call on the fast path).

_TIER_SHIFT = 32
_TIER_MASK = (1 << _TIER_SHIFT) - 1


_SPLITS: dict[tuple, tuple] = {}
_NEG_INF = float("-inf")
_INF = float("inf")


def _split(checks: tuple, ipos: int) -> tuple:
    """``(lo, hi, other checks)``: the range check at ``ipos`` taken out to be inlined. Shared."""
    key = (ipos, checks)
    r = _SPLITS.get(key)
    if r is None:
        lo: object = _NEG_INF  # unbounded: int values are (any size of int is within these)
        hi: object = _INF
        found = False
        other = []
        for c in checks:
            lohi = getattr(c[1], "lohi", None) if c[0] == ipos and not found else None
            if lohi is not None:
                lo, hi = lohi
                found = True
            else:
                other.append(c)
        r = (lo, hi, tuple(other))
        if len(_SPLITS) >= _SHARE_MAX:
            _SPLITS.clear()
        _SPLITS[key] = r
    return r


def _reoffset(bucket: tuple, offset: int) -> tuple:
    return tuple([(_rank_obj(offset | (e[0] & _TIER_MASK)), *e[1:]) for e in bucket])


def _ranked_table(table: "_Table", offset: int, ipos: int) -> tuple | None:
    """The table's buckets ``(exact, wild1, wildn, pfx, ip, rest)`` ranked for tier ``offset``:
    its own (built at link time, shared by every plan and snapshot) when the tier is the one
    its owner gives it, else a re-ranked copy; None when the range split differs."""
    if table.ipos != ipos:
        return None
    if table.tier << _TIER_SHIFT == offset:
        return (table.exact, table.wild1, table.wildn, table.pfx, table.ip, table.rest)

    def rd(d: Mapping) -> Mapping:
        return {k: _reoffset(v, offset) for k, v in d.items()} if d else _EMPTY_MAP

    return (
        rd(table.exact),
        rd(table.wild1),
        rd(table.wildn),
        rd(table.pfx),
        _reoffset(table.ip, offset),
        _reoffset(table.rest, offset),
    )


def _merge_dicts(dicts: list[Mapping]) -> Mapping:
    """One dict from ranked dicts given in rank order (buckets of a key concatenated)."""
    dicts = [d for d in dicts if d]
    if not dicts:
        return _EMPTY_MAP
    if len(dicts) == 1:
        return dicts[0]
    out = dict(dicts[0])
    for d in dicts[1:]:
        for k, v in d.items():
            prev = out.get(k)
            out[k] = v if prev is None else _shared(_BUCKETS, prev + v)
    return out


# Each normaliser leaves v{i} normalised or returns the plan's "invalid argument"
# decision. ``except Exception``: a hostile value (a __class__ or __eq__ that
# raises) is bad input like any other, and a try costs nothing until it raises.
_NORM_SRC = {
    HOST: (
        "    a = args[{i}]\n"
        "    try:\n"
        "        v{i} = _host_memo.get(a) if type(a) is str else None\n"
        "        if v{i} is None:\n"
        "            v{i} = _norm_host(a)\n"
        "    except Exception:\n"
        "        return plan._bad_argument(args)\n"
    ),
    PATH: (
        "    a = args[{i}]\n"
        "    try:\n"
        "        v{i} = _path_memo.get(a) if type(a) is str else None\n"
        "        if v{i} is None:\n"
        "            v{i} = _norm_path(a)\n"
        "    except Exception:\n"
        "        return plan._bad_argument(args)\n"
    ),
    PORT: (
        "    v{i} = args[{i}]\n"
        "    if type(v{i}) is not int or not PORT_MIN <= v{i} <= PORT_MAX:\n"
        "        try:\n"
        "            v{i} = _norm_port(v{i})\n"
        "        except Exception:\n"
        "            return plan._bad_argument(args)\n"
    ),
    STRING: (
        "    v{i} = args[{i}]\n"
        "    if type(v{i}) is not str:\n"
        "        try:\n"
        "            v{i} = _norm_string(v{i})\n"
        "        except Exception:\n"
        "            return plan._bad_argument(args)\n"
    ),
    INT: (
        "    v{i} = args[{i}]\n"
        "    if type(v{i}) is not int:\n"
        "        try:\n"
        "            v{i} = _norm_int(v{i})\n"
        "        except Exception:\n"
        "            return plan._bad_argument(args)\n"
    ),
    COMMAND: (
        "    try:\n"
        "        v{i} = _norm_command(args[{i}])\n"
        "    except Exception:\n"
        "        return plan._bad_argument(args)\n"
    ),
}


def _scan_src(bucket: str, indent: int, ipos: int = -1) -> str:
    """Source scanning one bucket (entries in rank order) for a rank below ``best``."""
    p = " " * indent
    if ipos >= 0:  # entries (rank, lo, hi, checks): the range check at ipos inline
        return (
            f"{p}for r, lo, hi, checks in {bucket}:\n"
            f"{p}    if r >= best:\n"
            f"{p}        break\n"
            f"{p}    if not lo <= v{ipos} <= hi:\n"
            f"{p}        continue\n"
            f"{p}    for p, fn in checks:\n"
            f"{p}        if not fn(vals[p]):\n"
            f"{p}            break\n"
            f"{p}    else:\n"
            f"{p}        best = r\n"
            f"{p}        break\n"
        )
    return (
        f"{p}for r, checks in {bucket}:\n"
        f"{p}    if r >= best:\n"
        f"{p}        break\n"
        f"{p}    for p, fn in checks:\n"
        f"{p}        if not fn(vals[p]):\n"
        f"{p}            break\n"
        f"{p}    else:\n"
        f"{p}        best = r\n"
        f"{p}        break\n"
    )


def _opt_scan_src(bucket: str, indent: int, ipos: int = -1) -> str:
    p = " " * indent
    return f"{p}if {bucket} is not None:\n" + _scan_src(bucket, indent + 4, ipos)


def _int_pos(types: tuple[str, ...]) -> int:
    """The parameter whose range checks the fused decider inlines (-1: none)."""
    for i, t in enumerate(types):
        if t == PORT or t == INT:
            return i
    return -1


_FACTORIES: dict[tuple, tuple] = {}


def _factory(types: tuple[str, ...], kind: int, pos: int, flags: tuple[bool, ...]) -> tuple:
    """``(code, names)``: the decider's code for one shape and the names of its parameters after
    ``args``. A plan's decider is a function of that code whose defaults are the plan's values
    (one small tuple per plan: no closure cells, and locals are faster to read than cells)."""
    shape = (types, kind, pos, flags)
    f = _FACTORIES.get(shape)
    if f is not None:
        return f
    has_exact, has_wild1, has_depths, has_pfx, has_ip, has_rest = flags
    ipos = _int_pos(types)
    names = ["arity", "plan", "no_ent", "decisions"]
    if has_exact:
        names.append("exact")
    if has_wild1:
        names.append("wild1")
    if has_depths:
        names += ["wildn", "depths"]
    if has_pfx:
        names += ["pfx", "pfx_lens"]
    if has_ip:
        names.append("ip")
    if has_rest:
        names.append("rest")
    src = [
        f"def decide(args, {', '.join(names)}):\n",
        "    if len(args) != arity:\n",
        "        return plan._wrong_arity(args)\n",
    ]
    body = []
    for i, t in enumerate(types):
        body.append(_NORM_SRC[t].format(i=i))
    n = len(types)
    body.append("    vals = (" + "".join(f"v{i}, " for i in range(n)) + ")\n")
    body.append("    best = _BIG\n")
    if kind == _HOSTKEY:
        body.append(f"    k = v{pos}\n")
        body.append("    if k.__class__ is str:\n")
        if has_exact:
            body.append("        b = exact.get(k)\n" + _opt_scan_src("b", 8, ipos))
        if has_wild1 or has_depths:
            body.append("        sfx = _suffix_memo.get(k)\n")
            body.append("        if sfx is None:\n            sfx = _suffixes(k)\n")
            body.append("        if sfx:\n")
            if has_wild1:
                body.append("            b = wild1.get(sfx[0])\n" + _opt_scan_src("b", 12, ipos))
            if has_depths:
                body.append("            n = len(sfx)\n")
                body.append("            for depth in depths:\n")
                body.append("                if depth > n:\n                    break\n")
                body.append("                b = wildn.get(sfx[n - depth])\n" + _opt_scan_src("b", 16, ipos))
        body.append("        pass\n")
        if has_ip:
            body.append("    else:\n" + _scan_src("ip", 8, ipos))
    elif kind == _KEY:
        body.append(f"    k = v{pos}\n")
        if has_exact:
            body.append("    b = exact.get(k)\n" + _opt_scan_src("b", 4, ipos))
        if has_pfx:
            body.append("    if k.__class__ is str:\n")
            body.append("        for n in pfx_lens:\n")
            body.append("            if n > len(k):\n                break\n")
            body.append("            b = pfx.get(k[:n])\n" + _opt_scan_src("b", 12, ipos))
    if has_rest:
        body.append(_scan_src("rest", 4, ipos))
    body.append("    if best == _BIG:\n        return no_ent\n")
    body.append("    d = decisions.get(best)\n")
    body.append("    return d if d is not None else plan._ranked_decision(best)\n")
    src += body
    ns: dict = {}
    exec(compile("".join(src), f"<polc decider {shape!r}>", "exec"), globals(), ns)
    f = (ns["decide"].__code__, tuple(names))
    if len(_FACTORIES) >= 256:
        _FACTORIES.clear()
    _FACTORIES[shape] = f
    return f


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


_NO_TIERS: tuple = (None, None, None, None)


class _Plan:
    """What one (module, capability) pair needs. Kept small (one per pair, ~30,000 for 10,000
    modules x 3 capabilities): the fused decider's defaults hold the plan itself (for the
    rare paths: wrong arity, bad argument, first use of a rule's Decision), and the Decisions
    are memoised per module, not per plan (``memo``, shared by a module's plans in a
    snapshot: rank -> Decision, -1 -> the module's "no entitlement")."""

    __slots__ = ("module", "cap", "arity", "sig", "no_entitlement", "error", "fn", "_memo", "_tiers")

    def __init__(
        self,
        module: str,
        cap_name: str,
        mod: LinkedModule | None,
        glob: LinkedModule | None,
        memo: dict | None = None,
    ):
        self.fn: Callable[[tuple], Decision] = self.decide
        self.module = module
        self.cap = cap_name
        self.error: Decision | None = None
        self._tiers = _NO_TIERS
        self._memo = memo if memo is not None else {}
        sig = (mod.caps.get(cap_name) if mod else None) or (glob.caps.get(cap_name) if glob else None)
        if sig is None:
            sig = BUILTINS.get(cap_name)
        self.sig = sig
        rev = mod.revision if mod is not None else None
        if sig is None:
            self.error = Decision(False, "deny", f"unknown capability {patterns.shown(cap_name)}", None, module, rev)
            self.arity = -1
            self.no_entitlement = self.error
            return
        self.arity = sig.arity
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
        no_ent = self._memo.get(-1)
        if no_ent is None:  # the same for every capability of the module
            owner = mod if mod is not None else glob
            audit = owner is not None and owner.audit
            no_ent = self._memo[-1] = Decision(audit, "deny", "no entitlement", None, module, rev, audit)
        self.no_entitlement = no_ent
        # tiers: denies of _global, of the module, entitles of the module, of _global
        self._tiers = (gtabs[0], mtabs[0], mtabs[1], gtabs[1])
        self._fuse(sig)

    def _fuse(self, sig: Capability) -> None:
        """Build the fused decider when the tables index compatibly (else keep ``decide``)."""
        tiers = self._tiers
        shape = None
        for t in tiers:
            if t is not None and t.kind != _SCAN:
                if shape is None:
                    shape = (t.kind, t.pos)
                elif shape != (t.kind, t.pos):
                    return
        kind, pos = shape if shape is not None else (_SCAN, 0)
        types = _types(sig)
        ipos = _int_pos(types)
        parts = []
        for i, t in enumerate(tiers):
            if t is not None:
                r = _ranked_table(t, i << _TIER_SHIFT, ipos)
                if r is None:
                    return
                parts.append((t, r))
        rest = _concat([r[5] for _, r in parts])
        if kind == _SCAN:
            exact = wild1 = wildn = pfx = _EMPTY_MAP
            depths = pfx_lens = ip = ()
        else:
            idx = [(t, r) for t, r in parts if t.kind != _SCAN]
            exact = _merge_dicts([r[0] for _, r in idx])
            wild1 = _merge_dicts([r[1] for _, r in idx])
            wildn = _merge_dicts([r[2] for _, r in idx])
            pfx = _merge_dicts([r[3] for _, r in idx])
            depths = _share(tuple(sorted({d for t, _ in idx for d in t.depths})))
            pfx_lens = _share(tuple(sorted({n for t, _ in idx for n in t.pfx_lens})))
            ip = _concat([r[4] for _, r in idx])
        flags = (bool(exact), bool(wild1), bool(depths), bool(pfx_lens), bool(ip), bool(rest))
        code, names = _factory(types, kind, pos, flags)
        values = {
            "arity": self.arity, "plan": self, "no_ent": self.no_entitlement, "decisions": self._memo,
            "exact": exact, "wild1": wild1, "wildn": wildn, "depths": depths, "pfx": pfx,
            "pfx_lens": pfx_lens, "ip": ip, "rest": rest,
        }
        self.fn = FunctionType(code, globals(), "decide", tuple([values[n] for n in names]))

    def _ranked_decision(self, rank: int) -> Decision:
        table = self._tiers[rank >> _TIER_SHIFT]
        d = self._decision(table, rank & _TIER_MASK)
        memo = self._memo
        if len(memo) >= _MEMO_DECISIONS:
            memo.clear()
            memo[-1] = self.no_entitlement
        memo[rank] = d
        return d

    def _wrong_arity(self, args: tuple) -> Decision:
        return Decision(
            False,
            "deny",
            f"wrong arity: {self.cap} takes {self.arity} argument{'s' if self.arity != 1 else ''}, "
            f"got {len(args)}",
            None,
            self.module,
            self.no_entitlement.revision,
        )

    def decide(self, args: tuple) -> Decision:
        """The sequential evaluation, table by table (plans that cannot be fused; the reference
        the fused deciders are tested against)."""
        if self.error is not None:
            return self.error
        if len(args) != self.arity:
            return self._wrong_arity(args)
        try:
            v = _normalizer_of(self.sig)(args)
        except ValueError:
            return self._bad_argument(args)
        for tier, table in enumerate(self._tiers):
            if table is not None:
                i = table.first(v)
                if i >= 0:
                    rank = tier << _TIER_SHIFT | i
                    d = self._memo.get(rank)
                    return d if d is not None else self._ranked_decision(rank)
        return self.no_entitlement

    def _bad_argument(self, args: tuple) -> Decision:
        for p, value in zip(self.sig.params, args):
            try:
                _NORMALIZERS[p.type](value)
            except ValueError as exc:
                reason = f"invalid argument {p.name!r} of {self.cap}: {_clip(str(exc))}"
                break
            except Exception as exc:  # a value whose own methods raise
                reason = f"invalid argument {p.name!r} of {self.cap}: unusable {patterns.type_name(value)} " \
                         f"({patterns.type_name(exc)})"
                break
        else:  # pragma: no cover - normalize() raised, so one of them does
            reason = f"invalid arguments for {self.cap}"
        return Decision(False, "deny", reason, None, self.module, self.no_entitlement.revision)

    def _decision(self, table: _Table, i: int) -> Decision:
        owner = table.owner
        if table.effect == ENTITLE:
            return Decision(True, "allow", _reason("entitled by ", owner.name), owner.location(i), self.module,
                            owner.revision)
        return Decision(
            owner.audit, "deny", _reason("denied by ", owner.name), owner.location(i), self.module, owner.revision,
            owner.audit,
        )


_REASONS: dict[tuple[str, str], str] = {}
_REASON_MAX = 400  # a reason never quotes more of a request than this


def _clip(text: str) -> str:
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def _reason(verb: str, name: str) -> str:
    """``entitled by M`` / ``denied by M``: one string per module, shared by its Decisions."""
    key = (verb, name)
    r = _REASONS.get(key)
    if r is None:
        if len(_REASONS) >= _MEMO_MAX:
            _REASONS.clear()
        r = _REASONS[key] = verb + name
    return r


_MEMO_DECISIONS = 4096  # Decisions memoised per module (cleared whole when full)

_NORMALIZERS_OF: dict[Capability, Callable[[tuple], tuple]] = {}


def _normalizer_of(sig: Capability) -> Callable[[tuple], tuple]:
    f = _NORMALIZERS_OF.get(sig)
    if f is None:
        f = _normalizer(tuple(_NORMALIZERS[p.type] for p in sig.params))
        if len(_NORMALIZERS_OF) >= _SHARE_MAX:
            _NORMALIZERS_OF.clear()
        _NORMALIZERS_OF[sig] = f
    return f


_SHARED: dict[tuple, tuple] = {}


def _share(t: tuple) -> tuple:
    """One object per distinct small tuple of ints (depths, prefix lengths)."""
    if not t:
        return ()
    r = _SHARED.get(t)
    if r is None:
        if len(_SHARED) >= _SHARE_MAX:
            _SHARED.clear()
        r = _SHARED[t] = t
    return r


def _concat(buckets: list[tuple]) -> tuple:
    """Buckets given in rank order as one; a single non-empty bucket is reused, not copied."""
    buckets = [b for b in buckets if b]
    if not buckets:
        return ()
    if len(buckets) == 1:
        return buckets[0]
    return sum(buckets, ())


# --------------------------------------------------------------------------
# Snapshot


def _shown_arg(a: object) -> str:
    """A request argument for a log line: short, and no method of the value runs."""
    t = type(a)
    if t is str:
        return patterns.shown(a, 100)  # type: ignore[arg-type]
    if t is int:
        return _int_text(a)  # type: ignore[arg-type]
    if a is None or t is bool or t is float:
        return repr(a)
    return f"<{patterns.type_name(a)}>"


def _log_audit(d: Decision, capability: str, args: tuple) -> None:
    if logger.isEnabledFor(logging.INFO):
        shown = ", ".join(map(_shown_arg, args[:8])) + (", ..." if len(args) > 8 else "")
        where = f" at {d.rule}" if d.rule else ""
        logger.info("would deny %s %s(%s): %s%s (audit mode)", d.module, capability, shown, d.reason, where)


class _FaultLog:
    """Rate-limited reports of faults met while checking: each kind (a fixed, small set)
    is logged at most once per ``interval`` seconds; the next report says how many
    were not logged in between. Bad input must not be able to flood the log."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def report(self, kind: str, level: int, message: str, exc: BaseException | None = None) -> bool:
        """Log ``message`` unless ``kind`` was logged less than ``interval`` ago; True if logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._last[kind] = now
            skipped = self._suppressed.pop(kind, 0)
        if skipped:
            message += f" ({skipped} more like this in the last {now - last:.0f} s were not logged)"  # type: ignore[operator]
        else:
            message += f" (logged at most once every {self.interval:g} s)"
        try:
            logger.log(level, "%s", message, exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)
        except Exception:  # pragma: no cover - a broken handler must not reach the caller
            pass
        return True

    def reset(self) -> None:
        with self._lock:
            self._last.clear()
            self._suppressed.clear()


FAULTS = _FaultLog()
_MAX_PLANS = 65536
_NAME_MAX = 255  # no module or capability name is longer (runtime/bytecode.py)

# The decision cache is bounded by entries and by an estimate of the bytes its
# keys and decisions hold: one entry costs _CACHE_ENTRY_BASE (two tuples, a dict
# slot, the str and Decision objects' headers; measured with tracemalloc in
# tests/test_enforcer_hardening.py) plus the characters of its strings. An entry
# that would cost more than _CACHE_ENTRY_MAX is not cached at all.
CACHE_BYTES = 32 << 20
_CACHE_ENTRY_BASE = 300
_CACHE_ENTRY_MAX = 8192


_VOLATILE_BUILTINS = frozenset(n for n, c in BUILTINS.items() if COMMAND in (p.type for p in c.params))


def _text_cost(s: str) -> int:
    return len(s) if s.isascii() else 4 * len(s)


def _module_text(module: object) -> str:
    """``Decision.module`` for a request whose module may not be a usable string."""
    if issubclass(type(module), str):
        text = str.__str__(module)  # type: ignore[arg-type]
        return text if len(text) <= patterns.SHOWN_MAX else text[: patterns.SHOWN_MAX] + "..."
    return f"<{patterns.type_name(module)}>"


class Snapshot:
    """An immutable set of linked modules, the unit that the agent swaps.

    ``check`` is safe to call from any number of threads without a lock: the
    snapshot's own state never changes after construction except for its memo
    dicts (decision cache, plans), whose entries are pure functions of the
    snapshot and are only ever added or cleared whole.

    ``cache_size`` bounds the decision cache by entries, ``cache_bytes`` by
    the (estimated) memory its entries hold; either 0 turns it off. Decisions
    about a capability with a ``command`` parameter depend on the file system:
    they are kept apart and for ``patterns.RESOLVE_TTL`` seconds at most.
    """

    __slots__ = ("modules", "glob", "unavailable", "_cache", "_timed", "_cache_size", "_cache_budget",
                 "_cache_bytes", "_plans", "_decisions", "__weakref__")

    def __init__(
        self,
        modules: Mapping[str, LinkedModule],
        glob: LinkedModule | None = None,
        *,
        unavailable: str | None = None,
        cache_size: int = 65536,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.modules: dict[str, LinkedModule] = dict(modules)
        self.modules.pop(GLOBAL_MODULE, None)
        self.glob = glob
        # A reason to deny every request (a _global that failed to load, no
        # load yet): without the global restrictions, nothing is decided.
        self.unavailable = unavailable
        self._cache: dict = {}
        self._timed: dict = {}  # decisions that depend on the file system: key -> (Decision, expiry)
        self._cache_budget = max(0, int(cache_bytes))
        self._cache_size = int(cache_size) if self._cache_budget else 0
        self._cache_bytes = 0
        self._plans: dict = {}
        self._decisions: dict[str, dict] = {}  # module -> its plans' shared Decision memo

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
            cache_bytes=self._cache_budget,
        )

    def check(self, module: str, capability: str, *args: object) -> Decision:
        try:
            if self._cache_size:
                d = self._cache.get((module, capability, args))
                if d is not None:
                    # bool/float/Decimal values equal to an int share its hash and
                    # key: a hit counts only when every argument is a plain str/int.
                    for a in args:
                        if type(a) is not str and type(a) is not int:
                            break
                    else:
                        if d.audit:
                            _log_audit(d, capability, args)
                        return d
                return self._miss(module, capability, args, True)
            fn = self._plans.get((module, capability))
            if fn is not None:
                d = fn(args)
                if d.audit:
                    _log_audit(d, capability, args)  # type: ignore[arg-type]
                return d
        except Exception:  # unhashable or misbehaving input, or a fault: decided (and reported) below
            pass
        return self._miss(module, capability, args, False)

    def _miss(self, module: object, capability: object, args: tuple, cacheable: bool) -> Decision:
        """Decide without the cache (filling it when ``cacheable``). Never raises."""
        try:
            if type(module) is not str or type(capability) is not str:
                return self._refuse(module, capability, args)
            if len(module) > _NAME_MAX or len(capability) > _NAME_MAX:
                what = "module" if len(module) > _NAME_MAX else "capability"
                return Decision(False, "deny", f"{what} name longer than {_NAME_MAX} characters", None,
                                _module_text(module))
            timed = cacheable and self._volatile(module, capability)
            if timed:
                hit = self._timed.get((module, capability, args))
                if hit is not None and hit[1] > time.monotonic():
                    for a in args:
                        if type(a) is not str and type(a) is not int:
                            break
                    else:
                        d = hit[0]
                        if d.audit:
                            _log_audit(d, capability, args)
                        return d
            fn = self._plans.get((module, capability))
            if fn is None:
                fn = self._plan(module, capability)
                if fn is None:
                    return self._refuse(module, capability, args)
            d = fn(args)
            if cacheable:
                self._remember(module, capability, args, d, timed)
            if d.audit:
                _log_audit(d, capability, args)  # type: ignore[arg-type]
            return d
        except Exception as exc:  # never raise into the application
            return self._internal_error(module, exc)

    def _volatile(self, module: str, capability: str) -> bool:
        """May the decision depend on the file system (a command parameter in any signature
        the request could be typed with)? Such decisions are kept for RESOLVE_TTL seconds only."""
        if capability in _VOLATILE_BUILTINS:
            return True
        mod = self.modules.get(module)
        if mod is not None and capability in mod.volatile:
            return True
        glob = self.glob
        return glob is not None and capability in glob.volatile

    def _remember(self, module: str, capability: str, args: tuple, d: Decision, timed: bool = False) -> None:
        cost = _CACHE_ENTRY_BASE + len(module) + len(capability) + len(d.reason)
        for a in args:
            t = type(a)
            if t is str:
                cost += 56 + _text_cost(a)  # type: ignore[arg-type]
            elif t is int:
                cost += 32 + (a.bit_length() >> 3)  # type: ignore[attr-defined]
            else:
                return  # equal-but-different values must never share an entry
        if cost > _CACHE_ENTRY_MAX or cost > self._cache_budget:
            return  # huge requests are decided every time, never kept
        cache = self._cache
        timed_cache = self._timed
        if (len(timed_cache if timed else cache) >= self._cache_size
                or self._cache_bytes + cost > self._cache_budget):
            cache.clear()
            timed_cache.clear()
            self._cache_bytes = 0
        if timed:
            timed_cache[(module, capability, args)] = (d, time.monotonic() + patterns.RESOLVE_TTL)
        else:
            cache[(module, capability, args)] = d
        self._cache_bytes += cost

    def _plan(self, module: str, capability: str) -> Callable[[tuple], Decision] | None:
        """The decider of a (module, capability) pair; None when the request is refused whole."""
        if self.unavailable:
            return None
        plans = self._plans
        if len(plans) >= _MAX_PLANS:
            plans.clear()
            self._decisions.clear()
        memo = self._decisions.get(module)
        if memo is None:
            memo = self._decisions[module] = {}
        plan = _Plan(module, capability, self.modules.get(module), self.glob, memo)
        fn = plans[(module, capability)] = plan.fn
        return fn

    def _refuse(self, module: object, capability: object, args: tuple) -> Decision:
        tm, tc = type(module), type(capability)
        if not issubclass(tm, str) or not issubclass(tc, str):
            FAULTS.report(
                "request", logging.WARNING,
                f"check() called with a module of type {patterns.type_name(module)} and a capability of "
                f"type {patterns.type_name(capability)}; both must be strings; denied",
            )
            return Decision(False, "deny", "module and capability must be strings", None, _module_text(module))
        if tm is not str or tc is not str:
            # str subclasses: decide as the plain strings they are (never cached)
            return self._miss(str.__str__(module), str.__str__(capability), args, False)  # type: ignore[arg-type]
        mod = self.modules.get(module)  # type: ignore[call-overload]
        return Decision(False, "deny", self.unavailable or "policy unavailable", None, module,  # type: ignore[arg-type]
                        mod.revision if mod else None)

    def _internal_error(self, module: object, exc: Exception) -> Decision:
        try:
            FAULTS.report("internal", logging.ERROR, f"internal error deciding a check ({patterns.type_name(exc)}); "
                          f"denied", exc)
        except Exception:  # pragma: no cover
            pass
        return Decision(False, "deny", f"internal error: {patterns.type_name(exc)}", None, _module_text(module))

    def decide_uncached(self, module: str, capability: str, *args: object) -> Decision:
        """Decide without reading or filling the decision cache (for tests and tools)."""
        return self._miss(module, capability, args, False)

    def __repr__(self) -> str:
        g = " +_global" if self.glob is not None else ""
        return f"<Snapshot {len(self.modules)} modules{g}>"


EMPTY_SNAPSHOT = Snapshot({}, None, unavailable="policy not loaded yet (PolicyAgent.start() not called)")
