"""Tables: the rules of one effect for one capability in one artifact, indexed by one argument.

A rule becomes an *entry* in one bucket of a table. The bucket is chosen by
the rule's argument at the table's index position (:func:`index_key`):

========================  ==============================================  =====================
bucket kind               rules                                           probed with
========================  ==============================================  =====================
``EXACT``                 exact hosts, strings, ports (``lo == hi``)      the value
``ONE_LABEL``             ``*.x`` hosts, keyed by ``x``                   the host's parent domain
``SOME_LABELS``           ``**.x`` hosts, keyed by ``x``                  the ancestors at the depths held
``INNER_WILD``            ``a.*.x`` and friends, keyed by ``x``           as ``SOME_LABELS``; matcher run
``CIDR``                  every CIDR rule                                 IP requests only
``PREFIX``                string globs with a literal prefix ``P``        each distinct prefix length
``SEGMENTS``              path globs whose first ``d`` segments are       the path's first ``d``
                          literal (``logs/l5/*.log``: ``logs/l5``)        segments, at each ``d`` held
``LAST_SEGMENT``          path globs whose last segment is literal        the path's last segment
                          (``reports/*/s5.csv``: ``s5.csv``)
========================  ==============================================  =====================

and everything else (ANY, ``**``, ``*sudo*``) is in the table's ``rest``. A
path glob may have both a literal first segment and a literal last one: it
goes to whichever of its two buckets fewer of the table's rules share (the
first on a tie), so 10,000 globs under one root spread over many buckets. A
path index stores its ``LAST_SEGMENT`` buckets where a host or key index
keeps its exact ones (``exact``) and its ``SEGMENTS`` buckets where a host
index keeps the ``**.x`` ones (``wildn``, with the segment counts held as
``depths``), so plans merge and deciders probe them the same way.

An entry is ``(rank, checks)``, or ``(rank, lo, hi, checks)`` when the
capability has a port/int parameter (its range check taken out, to be
inlined by the deciders). The rank is ``tier << TIER_SHIFT | source index``,
with the tier the table has in every plan (denies of ``_global``,
denies of the module, entitles of the module, entitles of ``_global``): the
smallest matching rank over every table of a plan is the deciding rule.
Ranks, checks, entries and identical buckets are shared between modules
(:class:`~polc.runtime.memo.Memo`), so 10,000 tenants with rules of
the same shapes hold one copy of each.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Final, NewType, Protocol

from ..catalog import HOST, INT, PATH, PORT, STRING
from ..format.opcodes import DENY, HOST_CIDR, HOST_EXACT, HOST_WILD, INT_RANGE, PATH_GLOB, STR_EXACT, STR_GLOB
from ..memo import Memo
from .matchers import SHARE_MAX, Checks, Instr, IntRange, checks_get, checks_of
from .normalize import MEMO_MAX

__all__ = [
    "BIG",
    "BUCKETS",
    "BUCKET_KIND_NAMES",
    "CIDR",
    "COMMAND_INDEX",
    "EMPTY_MAP",
    "EXACT",
    "FLAT_MAX",
    "GLOBAL_DENY",
    "GLOBAL_ENTITLE",
    "HOST_INDEX",
    "INDEX_KIND_NAMES",
    "INNER_WILD",
    "KEY_INDEX",
    "LAST_SEGMENT",
    "MODULE_DENY",
    "MODULE_ENTITLE",
    "ONE_LABEL",
    "PATH_INDEX",
    "PATH_INDEX_MIN",
    "PREFIX",
    "SCAN",
    "SEGMENTS",
    "SOME_LABELS",
    "TIERS",
    "TIER_MASK",
    "TIER_SHIFT",
    "Bucket",
    "BucketKind",
    "Entry",
    "IndexKind",
    "RuleOwner",
    "Table",
    "Tier",
    "index_key",
    "int_pos",
    "path_keys",
    "rank_obj",
    "segment_prefixes",
    "segment_prefixes_get",
    "suffixes",
    "suffixes_get",
]

_intern = sys.intern

# The named kinds below are ints under a NewType (typed for mypy, plain ints at
# run time) rather than IntEnums: index keys are hashed once per rule and
# candidate position while linking (a tuple holding an IntEnum member hashes
# 60 % slower than one holding an int), and reading an IntEnum member costs
# ~70 ns on 3.11; as IntEnums they made building a plan ~8 % slower.

# Bucket kinds: the bucket of a table an indexed rule goes into.
BucketKind = NewType("BucketKind", int)
EXACT: Final = BucketKind(0)
ONE_LABEL: Final = BucketKind(1)
SOME_LABELS: Final = BucketKind(2)
INNER_WILD: Final = BucketKind(3)
CIDR: Final = BucketKind(4)
PREFIX: Final = BucketKind(5)
SEGMENTS: Final = BucketKind(6)
LAST_SEGMENT: Final = BucketKind(7)
BUCKET_KIND_NAMES: Final = (
    "EXACT",
    "ONE_LABEL",
    "SOME_LABELS",
    "INNER_WILD",
    "CIDR",
    "PREFIX",
    "SEGMENTS",
    "LAST_SEGMENT",
)


# Index kinds: how a table indexes its position.
IndexKind = NewType("IndexKind", int)
SCAN: Final = IndexKind(0)  # nothing indexable: every rule is in ``rest``
HOST_INDEX: Final = IndexKind(1)  # a host parameter: EXACT, ONE_LABEL, SOME_LABELS/INNER_WILD, CIDR buckets
KEY_INDEX: Final = IndexKind(2)  # a string/port/int parameter: EXACT and PREFIX buckets
PATH_INDEX: Final = IndexKind(3)  # a path parameter: SEGMENTS and LAST_SEGMENT buckets
# A plan's, never a table's: every rule of a scanned plan tested by one command index
# (patterns.command_index) of its command parameter.
COMMAND_INDEX: Final = IndexKind(4)
INDEX_KIND_NAMES: Final = ("scan", "host", "key", "path", "command")

# Tiers: the order in which a plan consults tables; the first tier with a match decides.
Tier = NewType("Tier", int)
GLOBAL_DENY: Final = Tier(0)
MODULE_DENY: Final = Tier(1)
MODULE_ENTITLE: Final = Tier(2)
GLOBAL_ENTITLE: Final = Tier(3)
TIERS: Final = (GLOBAL_DENY, MODULE_DENY, MODULE_ENTITLE, GLOBAL_ENTITLE)


TIER_SHIFT: Final = 32
TIER_MASK: Final = (1 << TIER_SHIFT) - 1
BIG: Final = 1 << 62  # above every rank: "no match yet"

# The value of an index key depends on its kind: the exact constant (str or
# int) for EXACT, a parent domain or a literal prefix (str) otherwise.
IndexKey = tuple[BucketKind, Any]
# ``(rank, checks)`` or ``(rank, lo, hi, checks)``: which, the table's ``ipos`` says.
Entry = tuple[Any, ...]
Bucket = tuple[Entry, ...]


class RuleOwner(Protocol):
    """What a plan needs of the linked module a table's rules come from (to word a Decision)."""

    @property
    def name(self) -> str: ...

    @property
    def audit(self) -> bool: ...

    @property
    def revision(self) -> str: ...

    def location(self, index: int) -> str: ...


# --------------------------------------------------------------------------
# Index keys

_INDEX_KEYS: Memo[Instr, IndexKey | None] = Memo("index keys", SHARE_MAX)
_NO_KEY: Any = ()  # "not memoised yet" (None means: not indexable)
index_keys_get = _INDEX_KEYS.get


def index_key(instr: Instr) -> IndexKey | None:
    """How an argument instruction can be indexed: a bucket key, or None (scan). Memoised."""
    key: IndexKey | None = _INDEX_KEYS.get(instr, _NO_KEY)
    if key is _NO_KEY:
        key = _INDEX_KEYS.put(instr, _compute_index_key(instr))
    return key


def _compute_index_key(instr: Instr) -> IndexKey | None:
    op = instr[0]
    if op in (HOST_EXACT, STR_EXACT):
        return (EXACT, instr[1])
    if op == INT_RANGE and instr[1] == instr[2]:
        return (EXACT, instr[1])
    if op == HOST_WILD:
        labels = instr[1].split(".")
        last = max(i for i, lab in enumerate(labels) if lab in ("*", "**"))
        parent = ".".join(labels[last + 1 :])
        if not parent:
            return None  # "*", "**", "api.*": nothing literal to key on
        if last == 0 and labels[0] == "*":
            return (ONE_LABEL, _intern(parent))  # "*.x": exactly one label before x
        if last == 0:
            return (SOME_LABELS, _intern(parent))  # "**.x": one or more labels before x
        return (INNER_WILD, _intern(parent))  # "a.*.x" and friends: keyed by x, matched by regex
    if op == HOST_CIDR:
        return (CIDR, None)
    if op == STR_GLOB:
        const = instr[1]
        cut = min((i for i in (const.find("*"), const.find("?")) if i >= 0), default=len(const))
        if cut > 0:
            return (PREFIX, _intern(const[:cut]))  # only values starting with the literal prefix can match
    return None


_GLOB_CHARS = frozenset("*?")
_PATH_KEYS: Memo[str, tuple[IndexKey | None, IndexKey | None]] = Memo("path index keys", SHARE_MAX)


def path_keys(const: str) -> tuple[IndexKey | None, IndexKey | None]:
    """The two buckets a PATH_GLOB constant may go to: ``(SEGMENTS, its literal first
    segments)`` and ``(LAST_SEGMENT, its literal last segment)``, each None when that
    segment has a wildcard. Memoised."""
    got = _PATH_KEYS.get(const)
    if got is not None:
        return got
    segs = const.split("/")
    lead = []
    for seg in segs:
        if _GLOB_CHARS.intersection(seg):
            break
        lead.append(seg)
    first: IndexKey | None = (SEGMENTS, _intern("/".join(lead))) if lead else None
    last: IndexKey | None = None if _GLOB_CHARS.intersection(segs[-1]) else (LAST_SEGMENT, _intern(segs[-1]))
    return _PATH_KEYS.put(const, (first, last))


def _path_position_keys(args: list[Instr]) -> list[IndexKey | None]:
    """Each path argument's bucket: of its candidates, the one fewer of these rules share."""
    cands = [path_keys(a[1]) if a[0] == PATH_GLOB else (None, None) for a in args]
    count: dict[IndexKey, int] = {}
    for pair in cands:
        for key in pair:
            if key is not None:
                count[key] = count.get(key, 0) + 1
    out: list[IndexKey | None] = []
    for first, last in cands:
        if first is None or (last is not None and count[last] < count[first]):
            out.append(last)
        else:
            out.append(first)
    return out


_SEGMENTS: Memo[str, tuple[str, ...]] = Memo("path segment prefixes", MEMO_MAX)
# Read inline by Table._buckets and by the generated deciders; a miss calls segment_prefixes().
segment_prefixes_get = _SEGMENTS.get


def segment_prefixes(path: str) -> tuple[str, ...]:
    """A normalised path's first 1, 2, ... segments: a/b/c -> ("a", "a/b", "a/b/c"). Memoised."""
    out = []
    i = path.find("/")
    while i >= 0:
        out.append(path[:i])
        i = path.find("/", i + 1)
    if path:
        out.append(path)
    return _SEGMENTS.put(path, tuple(out))


_SUFFIXES: Memo[str, tuple[str, ...]] = Memo("parent domains", MEMO_MAX)
# Read inline by Table._buckets and by the generated deciders; a miss calls suffixes().
suffixes_get = _SUFFIXES.get


def suffixes(host: str) -> tuple[str, ...]:
    """Proper parent domains of a DNS name, longest first: a.b.c -> ("b.c", "c"). Memoised."""
    out = []
    i = host.find(".")
    while i >= 0:
        out.append(host[i + 1 :])
        i = host.find(".", i + 1)
    return _SUFFIXES.put(host, tuple(out))


# --------------------------------------------------------------------------
# Shared entries, buckets and ranks

EMPTY_MAP: Mapping[Any, Bucket] = {}  # never written: the shared value of every empty index dict
_ENTRIES_MAX = 1 << 16
FLAT_MAX: Final = 16  # _global tables of at most this many rules keep a flat copy (Table.flat)
# Smaller tables never index a path: scanning a few rules is as fast as probing a path's
# segments, and the plans of a module whose tables all index the same argument fuse.
PATH_INDEX_MIN: Final = 16
ENTRIES: Memo[Entry, Entry] = Memo("table entries", _ENTRIES_MAX)
BUCKETS: Memo[Bucket, Bucket] = Memo("buckets", _ENTRIES_MAX)
_RANKS: Memo[int, int] = Memo("ranks", SHARE_MAX)
_SPLITS: Memo[tuple[int, Checks], tuple[Any, Any, Checks]] = Memo("range splits", SHARE_MAX)


def _freeze(buckets: dict[Any, list[Entry]]) -> Mapping[Any, Bucket]:
    """Buckets of final entries (lists, in rank order) as shared tuples."""
    if not buckets:
        return EMPTY_MAP
    get = BUCKETS.get
    out = {}
    for k, v in buckets.items():
        t = tuple(v)
        b = get(t)
        out[k] = b if b is not None else BUCKETS.put(t, t)
    return out


def _bucket(entries: list[Entry]) -> Bucket:
    if not entries:
        return ()
    return BUCKETS.intern(tuple(entries))


def rank_obj(rank: int) -> int:
    """One shared int object per rank value (10,000 modules repeat the same ranks)."""
    r = _RANKS.get(rank)
    return r if r is not None else _RANKS.put(rank, rank)


_NEG_INF = float("-inf")
_INF = float("inf")


def split(checks: Checks, ipos: int) -> tuple[Any, Any, Checks]:
    """``(lo, hi, other checks)``: the range check at ``ipos`` taken out to be inlined. Shared."""
    key = (ipos, checks)
    r = _SPLITS.get(key)
    if r is None:
        lo: float | int = _NEG_INF  # unbounded: int values are (any size of int is within these)
        hi: float | int = _INF
        found = False
        other = []
        for c in checks:
            m = c[1]
            if c[0] == ipos and not found and type(m) is IntRange:
                lo, hi = m.lo, m.hi
                found = True
            else:
                other.append(c)
        r = _SPLITS.put(key, (lo, hi, tuple(other)))
    return r


def int_pos(types: tuple[str, ...]) -> int:
    """The parameter whose range checks the fused decider inlines (-1: none)."""
    for i, t in enumerate(types):
        if t == PORT or t == INT:  # noqa: SIM109 - no tuple built per parameter
            return i
    return -1


# --------------------------------------------------------------------------
# The table


class Table:
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

    __slots__ = (
        "depths",
        "effect",
        "exact",
        "flat",
        "ip",
        "ipos",
        "kind",
        "pfx",
        "pfx_lens",
        "pos",
        "rest",
        "size",
        "tier",
        "wild1",
        "wildn",
    )

    def __init__(
        self, glob: bool, effect: int, rules: list[tuple[int, tuple[Instr, ...]]], types: tuple[str, ...]
    ) -> None:
        # A table is a pure function of these four (``glob``: the rules are ``_global``'s), and
        # keeps nothing of the module they come from: equal tables of two modules may be one
        # object (link.py), and a plan takes the deciding rule's module from its tier.
        self.effect = effect
        self.size = len(rules)
        pos, kind, keys = self._choose(rules, types)
        self.kind = kind
        self.pos = pos
        # Entries are stored in the fused deciders' form from the start (one copy of the rules,
        # shared by every plan and snapshot): ``(rank, checks)``, or ``(rank, lo, hi, checks)``
        # when the capability has a port/int parameter (its range check taken out, ``ipos``).
        # The rank is ``tier << TIER_SHIFT | index`` with the tier this table has in every plan.
        if effect == DENY:  # noqa: SIM108 - two nested conditional expressions read worse
            tier = GLOBAL_DENY if glob else MODULE_DENY
        else:
            tier = GLOBAL_ENTITLE if glob else MODULE_ENTITLE
        self.tier = tier
        offset = tier << TIER_SHIFT
        ipos = self.ipos = int_pos(types)
        # One pass: each rule becomes its final, shared entry and goes straight into its
        # bucket (the memo lookups are inlined; a miss takes the function that fills it).
        exact: dict[Any, list[Entry]] = {}
        wild1: dict[str, list[Entry]] = {}
        wildn: dict[str, list[Entry]] = {}
        pfx: dict[str, list[Entry]] = {}
        ip: list[Entry] = []
        rest: list[Entry] = []
        ranks_get = _RANKS.get
        splits_get = _SPLITS.get
        ents_get = ENTRIES.get
        dest: list[Entry] | None
        if keys is None:
            keys = [None] * len(rules)
        for (idx, args), key in zip(rules, keys, strict=True):
            if key is None:
                skip = -1
                dest = rest
            else:
                k0, k1 = key
                if k0 == EXACT:
                    skip = pos
                    dest = exact.get(k1)
                    if dest is None:
                        dest = exact[k1] = []
                elif k0 == ONE_LABEL:
                    skip = pos
                    dest = wild1.get(k1)
                    if dest is None:
                        dest = wild1[k1] = []
                elif k0 == SOME_LABELS or k0 == INNER_WILD:  # noqa: SIM109 - no tuple built per rule
                    skip = pos if k0 == SOME_LABELS else -1
                    dest = wildn.get(k1)
                    if dest is None:
                        dest = wildn[k1] = []
                elif k0 == PREFIX:
                    # "P*" matches exactly the values the bucket of prefix P holds
                    skip = pos if args[pos][1] == k1 + "*" else -1
                    dest = pfx.get(k1)
                    if dest is None:
                        dest = pfx[k1] = []
                elif k0 == SEGMENTS:
                    # "P/**" matches exactly the paths whose first segments are P
                    skip = pos if args[pos][1] == k1 + "/**" else -1
                    dest = wildn.get(k1)
                    if dest is None:
                        dest = wildn[k1] = []
                elif k0 == LAST_SEGMENT:
                    skip = -1
                    dest = exact.get(k1)
                    if dest is None:
                        dest = exact[k1] = []
                else:  # CIDR: the bucket holds every IP rule, each checks its network
                    skip = -1
                    dest = ip
            rank = offset | idx
            r = ranks_get(rank)
            if r is None:
                r = rank_obj(rank)
            checks = checks_get((skip, args))
            if checks is None:
                checks = checks_of(args, skip)
            e: Entry
            if ipos >= 0:
                sp = splits_get((ipos, checks))
                if sp is None:
                    sp = split(checks, ipos)
                e = (r, *sp)
            else:
                e = (r, checks)
            shared = ents_get(e)
            dest.append(shared if shared is not None else ENTRIES.put(e, e))
        self.exact = _freeze(exact)
        self.wild1 = _freeze(wild1)
        self.wildn = _freeze(wildn)
        # label counts of the wildn keys: only those ancestors of a host are probed
        # (for a path index: the segment counts of its SEGMENTS keys)
        sep = "/" if kind == PATH_INDEX else "."
        self.depths = tuple(sorted({k.count(sep) + 1 for k in wildn}))
        self.pfx = _freeze(pfx)
        self.pfx_lens = tuple(sorted({len(k) for k in pfx}))
        self.ip = _bucket(ip)
        self.rest = _bucket(rest)
        # _global's small indexed tables also keep every rule as one bucket of full checks, so a
        # plan whose module indexes another argument still fuses, scanning these (plan._fuse).
        self.flat: Bucket | None = None
        if glob and kind != SCAN and len(rules) <= FLAT_MAX:
            self.flat = _bucket([self._entry(offset | idx, args, -1) for idx, args in rules])

    def _entry(self, rank: int, args: tuple[Instr, ...], skip: int) -> Entry:
        """The shared entry of one rule whose argument ``skip`` (-1: none) the bucket decides."""
        r = rank_obj(rank)
        checks = checks_of(args, skip)
        e: Entry = (r, *split(checks, self.ipos)) if self.ipos >= 0 else (r, checks)
        return ENTRIES.intern(e)

    @staticmethod
    def _choose(
        rules: list[tuple[int, tuple[Instr, ...]]], types: tuple[str, ...]
    ) -> tuple[int, IndexKind, list[IndexKey | None] | None]:
        best: tuple[int, int, str, list[IndexKey | None]] | None = None
        ikey = index_key
        get = index_keys_get
        nokey = _NO_KEY
        for pos, typ in enumerate(types):
            if typ == PATH:
                if len(rules) < PATH_INDEX_MIN:
                    continue
                keys = _path_position_keys([args[pos] for _, args in rules])
            elif typ not in (HOST, STRING, PORT, INT):
                continue
            else:
                keys = [get(args[pos], nokey) for _, args in rules]
                if nokey in keys:  # first sight of some argument (only () is equal to _NO_KEY)
                    keys = [ikey(args[pos]) if k is nokey else k for k, (_, args) in zip(keys, rules, strict=True)]
            scan = keys.count(None)
            keyed = len(keys) - scan
            if not keyed:
                continue
            distinct = set(keys)
            distinct.discard(None)
            if len(distinct) == keyed:  # every bucket of one rule: no need to count
                top = 1
            else:
                buckets: dict[IndexKey, int] = {}
                for key in keys:
                    if key is not None:
                        buckets[key] = buckets.get(key, 0) + 1
                top = max(buckets.values())
            # a path index only where it is strictly better: a path is probed at several depths
            cost = 2 * (scan + top) + (typ == PATH)
            if best is None or cost < best[0]:
                best = (cost, pos, typ, keys)
                if cost == 2:  # nothing scanned, one rule a bucket: no later position does better
                    break
        if best is None:  # nothing indexable: every rule is scanned
            return 0, SCAN, None
        kind = HOST_INDEX if best[2] == HOST else PATH_INDEX if best[2] == PATH else KEY_INDEX
        return best[1], kind, best[3]

    def first(self, vals: tuple[Any, ...]) -> int:
        """Source index of the first matching rule (-1: none). The sequential path, used by
        plans whose tables cannot be fused (and by the tests as the reference)."""
        kind = self.kind
        buckets = (self.rest,) if kind == SCAN else self._buckets(kind, vals[self.pos])
        ipos = self.ipos
        best = BIG
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
        return -1 if best == BIG else best & TIER_MASK

    def _buckets(self, kind: IndexKind, v: Any) -> list[Bucket]:
        """The candidate buckets for value ``v`` at the indexed position, rest last."""
        buckets = []
        if kind == HOST_INDEX:
            if v.__class__ is not str:
                if self.ip:
                    buckets.append(self.ip)
            else:
                b = self.exact.get(v)
                if b is not None:
                    buckets.append(b)
                if self.wild1 or self.depths:
                    sfx = suffixes_get(v)
                    if sfx is None:
                        sfx = suffixes(v)
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
        elif kind == PATH_INDEX:  # v is a normalised path
            b = self.exact.get(v[v.rfind("/") + 1 :])
            if b is not None:
                buckets.append(b)
            if self.depths:
                pre = segment_prefixes_get(v)
                if pre is None:
                    pre = segment_prefixes(v)
                n = len(pre)
                for depth in self.depths:
                    if depth > n:
                        break
                    b = self.wildn.get(pre[depth - 1])
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
