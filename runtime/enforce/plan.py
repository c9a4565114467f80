"""Plans: what one (module, capability) pair needs, resolved once per snapshot.

A plan holds the request's signature (the module's, else ``_global``'s,
else the built-in one), the tables of its four tiers (denies of
``_global``, of the module, entitles of the module, of ``_global``) and its
decider: the fused one (:mod:`~polc.runtime.enforce.deciders`) when the
tables index compatibly, else :meth:`Plan.decide`, the sequential
evaluation table by table, which the fused deciders are tested against
(tests/runtime/enforce/test_enforcer_fused.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import FunctionType
from typing import Any, cast

from .. import patterns
from ..catalog import BUILTINS, COMMAND, GLOBAL_MODULE, Capability
from ..format.opcodes import ENTITLE
from ..memo import Memo, put_bounded
from .accel import TYPE_CODES
from .deciders import NAMESPACE, Decider, decider_code
from .decision import Decision
from .index import (
    BIG,
    BUCKETS,
    COMMAND_INDEX,
    EMPTY_MAP,
    GLOBAL_DENY,
    GLOBAL_ENTITLE,
    SCAN,
    TIER_MASK,
    TIER_SHIFT,
    TIERS,
    Bucket,
    Table,
    int_pos,
    rank_obj,
)
from .link import LinkedModule, types_of
from .matchers import SHARE_MAX, command_rule
from .normalize import MEMO_MAX, NORMALIZERS, normalizer_of

__all__ = ["DECISIONS_MAX", "Plan", "clip"]

DECISIONS_MAX = 4096  # Decisions memoised per module (cleared whole when full)
_REASON_MAX = 400  # a reason never quotes more of a request than this

# The signature of a plan whose capability has none (its ``error`` decides every request).
_NO_SIGNATURE = Capability("", ())

# Refusals (Plan._bad_argument, Plan._wrong_arity), process-wide: (plan token, args) -> Decision
# for invalid arguments, when every argument is a plain str or int (a bool or a str subclass
# equal to one must never share an entry) whose normalisation reads no file system, and
# (plan token, number of arguments) -> Decision for a wrong arity.
_REFUSED_TEXT_MAX = 256
_REFUSED: Memo[tuple[object, object], Decision] = Memo("refusals", 4096)
_refused_get = _REFUSED.get

_Tiers = tuple["Table | None", "Table | None", "Table | None", "Table | None"]
_NOTIERS: _Tiers = (None, None, None, None)
# The buckets of one table: (exact, wild1, wildn, pfx, ip, rest)
_Ranked = tuple[Mapping[Any, Bucket], Mapping[Any, Bucket], Mapping[Any, Bucket], Mapping[Any, Bucket], Bucket, Bucket]


def clip(text: str) -> str:
    """``text`` cut to the length a reason may quote."""
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


_REASONS: Memo[tuple[str, str], str] = Memo("decision reasons", MEMO_MAX)
_reasons_get = _REASONS.get


def _reason(verb: str, name: str) -> str:
    """``entitled by M`` / ``denied by M``: one string per module, shared by its Decisions."""
    key = (verb, name)
    r = _reasons_get(key)
    return r if r is not None else _REASONS.put(key, verb + name)


_SHARED: Memo[tuple[int, ...], tuple[int, ...]] = Memo("depths and prefix lengths", SHARE_MAX)
_shared_get = _SHARED.get


def _share(t: tuple[int, ...]) -> tuple[int, ...]:
    """One object per distinct small tuple of ints (depths, prefix lengths)."""
    if not t:
        return ()
    r = _shared_get(t)
    return r if r is not None else _SHARED.put(t, t)


def _concat(buckets: list[Bucket]) -> Bucket:
    """Buckets given in rank order as one; a single non-empty bucket is reused, not copied."""
    buckets = [b for b in buckets if b]
    if not buckets:
        return ()
    if len(buckets) == 1:
        return buckets[0]
    return sum(buckets, ())


def _reoffset(bucket: Bucket, offset: int) -> Bucket:
    return tuple([(rank_obj(offset | (e[0] & TIER_MASK)), *e[1:]) for e in bucket])


def _ranked_table(table: Table, offset: int, ipos: int) -> _Ranked | None:
    """The table's buckets ``(exact, wild1, wildn, pfx, ip, rest)`` ranked for tier ``offset``:
    its own (built at link time, shared by every plan and snapshot) when the tier is the one
    its owner gives it, else a re-ranked copy; None when the range split differs."""
    if table.ipos != ipos:
        return None
    if table.tier << TIER_SHIFT == offset:
        return (table.exact, table.wild1, table.wildn, table.pfx, table.ip, table.rest)

    def rd(d: Mapping[Any, Bucket]) -> Mapping[Any, Bucket]:
        return {k: _reoffset(v, offset) for k, v in d.items()} if d else EMPTY_MAP

    return (
        rd(table.exact),
        rd(table.wild1),
        rd(table.wildn),
        rd(table.pfx),
        _reoffset(table.ip, offset),
        _reoffset(table.rest, offset),
    )


def _size(table: Table) -> int:
    return table.size


def _merge_dicts(dicts: list[Mapping[Any, Bucket]]) -> Mapping[Any, Bucket]:
    """One dict from ranked dicts given in rank order (buckets of a key concatenated)."""
    dicts = [d for d in dicts if d]
    if not dicts:
        return EMPTY_MAP
    if len(dicts) == 1:
        return dicts[0]
    out = dict(dicts[0])
    for d in dicts[1:]:
        for k, v in d.items():
            prev = out.get(k)
            out[k] = v if prev is None else BUCKETS.intern(prev + v)
    return out


_CommandIndex = tuple[int, Callable[[object], int]]
_COMMAND_INDEXES: Memo[Bucket, _CommandIndex | None] = Memo("command indexes", SHARE_MAX)
_NOT_BUILT: Any = ()


def _command_index(rest: Bucket) -> _CommandIndex | None:
    """``(position, first)``: a scanned plan's rules as one command index of that parameter
    (``patterns.command_index``: ``first(command)`` normalises the command and returns the
    smallest matching rank, BIG for none), or None when some rule tests anything but one
    command parameter. Shared by the plans whose rules are the same."""
    got: _CommandIndex | None = _COMMAND_INDEXES.get(rest, _NOT_BUILT)
    if got is not _NOT_BUILT:
        return got
    pos = -1
    rules: list[patterns.CommandRule] = []
    any_rank = BIG
    for entry in rest:
        rank, checks = entry
        if not checks:  # the command is "*": every request
            any_rank = min(any_rank, rank)
            continue
        rule = command_rule(checks[0][1]) if len(checks) == 1 else None
        if rule is None or (pos >= 0 and checks[0][0] != pos):
            pos = -1
            break
        pos = checks[0][0]
        rules.append((rank, *rule, checks[0][1]))
    got = (pos, patterns.command_index(rules, any_rank, BIG)) if pos >= 0 else None
    return _COMMAND_INDEXES.put(rest, got)


class Plan:
    """What one (module, capability) pair needs. Kept small (one per pair, ~30,000 for 10,000
    modules x 3 capabilities): the fused decider's defaults hold the plan itself (for the
    rare paths: wrong arity, bad argument, first use of a rule's Decision), and the Decisions
    are memoised per module, not per plan (``memo``, shared by a module's plans in a
    snapshot: rank -> Decision, -1 -> the module's "no entitlement")."""

    __slots__ = (
        "_glob",
        "_memo",
        "_mod",
        "_tiers",
        "_token",
        "arity",
        "cap",
        "error",
        "fn",
        "module",
        "no_entitlement",
        "sig",
    )

    def __init__(
        self,
        module: str,
        cap_name: str,
        mod: LinkedModule | None,
        glob: LinkedModule | None,
        memo: dict[int, Decision] | None = None,
        accel: Any = None,
    ) -> None:
        self.fn: Decider = self.decide
        self._token = object()  # this plan's part of its keys in _REFUSED
        self.module = module
        self.cap = cap_name
        self.error: Decision | None = None
        self._tiers = _NOTIERS
        # the modules whose rules the tiers hold: a rule's module and location come from these,
        # never from the table (equal tables are one object shared by every module that has one)
        self._mod = mod
        self._glob = glob
        self._memo: dict[int, Decision] = memo if memo is not None else {}
        sig = (mod.caps.get(cap_name) if mod else None) or (glob.caps.get(cap_name) if glob else None)
        if sig is None:
            sig = BUILTINS.get(cap_name)
        rev = mod.revision if mod is not None else None
        if sig is None:
            self.sig = _NO_SIGNATURE
            self.error = Decision(False, "deny", f"unknown capability {patterns.shown(cap_name)}", None, module, rev)
            self.arity = -1
            self.no_entitlement = self.error
            return
        self.sig = sig
        self.arity = sig.arity
        gsig = glob.caps.get(cap_name) if glob is not None else None
        gtabs = glob.tables.get(cap_name, (None, None)) if glob is not None else (None, None)
        if gsig is not None and types_of(gsig) != types_of(sig) and (gtabs[0] or gtabs[1]):
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
        self._tiers = (gtabs[0], mtabs[0], mtabs[1], gtabs[1])  # in Tier order
        self._fuse(sig, accel)

    def _fuse(self, sig: Capability, accel: Any = None) -> None:
        """Build the fused decider when the tables index compatibly (else keep ``decide``).

        The index is the largest table's; a table indexing another argument joins as a
        scan of its flat copy (a small table of ``_global``'s: ``Table.flat``), else the
        plan stays sequential. ``accel``: the C extension (:mod:`~polc.runtime.enforce.accel`),
        whose Decider takes the same values as the generated code, or None for that code."""
        tiers = self._tiers
        indexed = [t for t in tiers if t is not None and t.kind != SCAN]
        shape = None
        if indexed:
            big = max(indexed, key=_size)
            shape = (big.kind, big.pos)
            for other in indexed:
                if (other.kind, other.pos) != shape and other.flat is None:
                    return
        kind, pos = shape if shape is not None else (SCAN, 0)
        types = types_of(sig)
        ipos = int_pos(types)
        parts: list[tuple[Table, _Ranked]] = []
        for tier, t in zip(TIERS, tiers, strict=False):
            if t is not None:
                if t.kind != SCAN and (t.kind, t.pos) != shape:
                    assert t.flat is not None
                    if t.ipos != ipos or tier != t.tier:
                        return
                    empty: Bucket = ()
                    parts.append((t, (EMPTY_MAP, EMPTY_MAP, EMPTY_MAP, EMPTY_MAP, empty, t.flat)))
                    continue
                r = _ranked_table(t, tier << TIER_SHIFT, ipos)
                if r is None:
                    return
                parts.append((t, r))
        rest = _concat([r[5] for _, r in parts])
        exact: Mapping[Any, Bucket]
        wild1: Mapping[Any, Bucket]
        wildn: Mapping[Any, Bucket]
        pfx: Mapping[Any, Bucket]
        depths: tuple[int, ...]
        pfx_lens: tuple[int, ...]
        ip: Bucket
        commands = None
        if kind == SCAN:
            exact = wild1 = wildn = pfx = EMPTY_MAP
            depths = pfx_lens = ip = ()
            if COMMAND in types and ipos < 0 and rest:
                found = _command_index(rest)
                if found is not None:  # every rule tests the command alone: one index of them
                    kind = COMMAND_INDEX
                    pos, commands = found
                    rest = ()
        else:
            idx = [(t, r) for t, r in parts if (t.kind, t.pos) == shape]
            exact = _merge_dicts([r[0] for _, r in idx])
            wild1 = _merge_dicts([r[1] for _, r in idx])
            wildn = _merge_dicts([r[2] for _, r in idx])
            pfx = _merge_dicts([r[3] for _, r in idx])
            depths = _share(tuple(sorted({d for t, _ in idx for d in t.depths})))
            pfx_lens = _share(tuple(sorted({n for t, _ in idx for n in t.pfx_lens})))
            ip = _concat([r[4] for _, r in idx])
        if accel is not None:
            self.fn = accel.Decider(
                kind,
                pos,
                ipos,
                tuple([TYPE_CODES[t] for t in types]),
                self.arity,
                self,
                self.no_entitlement,
                self._memo,
                exact,
                wild1,
                wildn,
                depths,
                pfx,
                pfx_lens,
                ip,
                rest,
                commands,
            )
            return
        flags = (bool(exact), bool(wild1), bool(depths), bool(pfx_lens), bool(ip), bool(rest))
        code, names = decider_code((types, kind, pos, flags))
        values: dict[str, object] = {
            "arity": self.arity,
            "plan": self,
            "no_ent": self.no_entitlement,
            "decisions": self._memo,
            "exact": exact,
            "wild1": wild1,
            "wildn": wildn,
            "depths": depths,
            "pfx": pfx,
            "pfx_lens": pfx_lens,
            "ip": ip,
            "rest": rest,
            "commands": commands,
        }
        self.fn = FunctionType(code, NAMESPACE, "decide", tuple([values[n] for n in names]))

    def _ranked_decision(self, rank: int) -> Decision:
        table = self._tiers[rank >> TIER_SHIFT]
        assert table is not None  # a rank is only ever found in one of the plan's tables
        tier = rank >> TIER_SHIFT
        owner = self._glob if tier == GLOBAL_DENY or tier == GLOBAL_ENTITLE else self._mod  # noqa: SIM109
        assert owner is not None  # a tier holds a table only when its module is there
        d = self._decision(table, owner, rank & TIER_MASK)
        # -1, the module's "no entitlement", outlives a clearing: its plans share it
        return put_bounded(self._memo, DECISIONS_MAX, rank, d, keep=-1)

    def _wrong_arity(self, args: tuple[object, ...]) -> Decision:
        key = (self._token, len(args))  # the count alone decides it
        d = _refused_get(key)
        if d is None:
            d = _REFUSED.put(
                key,
                Decision(
                    False,
                    "deny",
                    f"wrong arity: {self.cap} takes {self.arity} argument{'s' if self.arity != 1 else ''}, "
                    f"got {len(args)}",
                    None,
                    self.module,
                    self.no_entitlement.revision,
                ),
            )
        return d

    def decide(self, args: tuple[object, ...]) -> Decision:
        """The sequential evaluation, table by table (plans that cannot be fused; the reference
        the fused deciders are tested against)."""
        if self.error is not None:
            return self.error
        if len(args) != self.arity:
            return self._wrong_arity(args)
        try:
            v = normalizer_of(self.sig)(args)
        except ValueError:
            return self._bad_argument(args)
        for tier, table in enumerate(self._tiers):
            if table is not None:
                i = table.first(v)
                if i >= 0:
                    rank = tier << TIER_SHIFT | i
                    d = self._memo.get(rank)
                    return d if d is not None else self._ranked_decision(rank)
        return self.no_entitlement

    def _bad_argument(self, args: tuple[object, ...]) -> Decision:
        key = self._refusal_key(args)
        if key is not None:
            d = _refused_get(key)
            if d is not None:
                return d
        for p, value in zip(self.sig.params, args, strict=False):
            try:
                NORMALIZERS[p.type](value)
            except ValueError as exc:
                reason = f"invalid argument {p.name!r} of {self.cap}: {clip(str(exc))}"
                break
            except Exception as exc:  # a value whose own methods raise
                reason = (
                    f"invalid argument {p.name!r} of {self.cap}: unusable {patterns.type_name(value)} "
                    f"({patterns.type_name(exc)})"
                )
                break
        else:  # pragma: no cover - normalize() raised, so one of them does
            reason = f"invalid arguments for {self.cap}"
        d = Decision(False, "deny", reason, None, self.module, self.no_entitlement.revision)
        if key is not None:
            _REFUSED.put(key, d)
        return d

    def _refusal_key(self, args: tuple[object, ...]) -> tuple[object, tuple[object, ...]] | None:
        """The key of a refusal that is a function of the request alone, or None: every argument
        a plain str (at most _REFUSED_TEXT_MAX characters) or int, and no str for a command
        parameter (whether a command resolves is the file system's answer)."""
        params = self.sig.params
        if len(params) != len(args):
            return None
        for p, a in zip(params, args, strict=True):
            t = type(a)
            if t is str:
                if p.type == COMMAND or len(cast(str, a)) > _REFUSED_TEXT_MAX:
                    return None
            elif t is not int or cast(int, a).bit_length() > 64:
                return None
        return (self._token, args)

    def _decision(self, table: Table, owner: LinkedModule, i: int) -> Decision:
        if table.effect == ENTITLE:
            return Decision(
                True, "allow", _reason("entitled by ", owner.name), owner.location(i), self.module, owner.revision
            )
        return Decision(
            owner.audit,
            "deny",
            _reason("denied by ", owner.name),
            owner.location(i),
            self.module,
            owner.revision,
            owner.audit,
        )
