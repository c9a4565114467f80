"""Structural verification of a payload, and the incremental :class:`Linker`.

The verifier runs on untrusted data: everything it is given comes from
msgpack (``use_list=False``) of a file someone dropped into a directory. It
accepts exactly the payloads of docs/artifact-format.md and raises
:class:`~polc.runtime.errors.VerifyError` with a message that says what is
wrong and where (``code[7]: unknown opcode 0x55``) for anything else; the
reader (``payload.py``) turns that into ``MalformedPayload``.

Two implementations of the code check exist on purpose: an optimistic fast
path (``link_fast.py``) that only answers "valid, here are the rules" or "not
sure", and the reference check here (:func:`link_reference_part`) that is
step-by-step, says precisely what is wrong, and is the one that decides
whenever the fast path is not sure. Tests assert that the fast path never
accepts what the reference rejects.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from ..catalog import BUILTINS, GLOBAL_MODULE, INT_MAX, INT_MIN, LEGACY_SIGNATURES, TYPES, Capability, Param
from ..errors import VerifyError
from ..memo import Memo
from .arguments import ANY_ARG, Arg, const_problem, range_problem
from .header import FORMAT_MINOR
from .link_fast import CapInfo, cap_table, link_fast_part
from .opcodes import (
    ALLOWED_OPS,
    ANY,
    EFFECT_NAMES,
    GOVERNS_KEY,
    GOVERNS_MINOR,
    INT_RANGE,
    MAX_CAPS,
    MAX_CONSTS,
    MAX_GOVERNS,
    MAX_MODULE_NAME_LEN,
    MAX_NAME_LEN,
    MAX_PARAMS,
    MAX_RULES,
    MODES,
    MODULE_NAME,
    OPCODE_NAMES,
    OPERAND_COUNTS,
    PAYLOAD_KEYS,
    RULE,
    is_valid_module_name,
    package_name_problem,
)
from .program import Program, Rule

__all__ = [
    "Linker",
    "VerifyError",
    "check_caps_count",
    "check_code_count",
    "check_consts_count",
    "check_governs",
    "check_governs_count",
    "check_governs_minor",
    "link_reference_part",
    "make_program",
    "verify_caps",
    "verify_consts",
    "verify_field",
    "verify_governs",
    "verify_payload",
]

_CAP_NAME = MODULE_NAME
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def _tname(value: object) -> str:
    if value is None:
        return "nil"
    return {
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        bytes: "bin",
        tuple: "array",
        list: "array",
        dict: "map",
    }.get(type(value), type(value).__name__)


def _expect(value: object, typ: type, where: str) -> None:
    if type(value) is not typ:
        raise VerifyError(f"{where}: expected {_tname(typ())}, got {_tname(value)}")


def verify_payload(obj: object, *, allow_unknown_keys: bool = False, minor: int = FORMAT_MINOR) -> Program:
    """Verify an unpacked payload (``use_list=False``) and link its rules.

    ``allow_unknown_keys`` is set by the reader for artifacts of a newer
    minor format than this one: they may carry payload keys this reader
    does not know, which it then ignores. ``minor`` is the artifact's format
    minor: a key of a later minor than it (``governs``, 1.2) is refused.
    (``read_artifact`` calls this only for a small payload; a larger one it
    streams through the same checks without unpacking it whole: ``payload.py``.)
    """
    if type(obj) is not dict:
        raise VerifyError(f"payload: expected map, got {_tname(obj)}")
    missing = [k for k in PAYLOAD_KEYS if k not in obj]
    if missing:
        raise VerifyError(f"payload: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    has_governs = GOVERNS_KEY in obj
    if has_governs:
        check_governs_minor(minor)
    if not allow_unknown_keys and len(obj) != len(PAYLOAD_KEYS) + has_governs:
        extra = sorted(repr(k) for k in obj if k not in PAYLOAD_KEYS and k != GOVERNS_KEY)
        raise VerifyError(f"payload: unknown key{'s' if len(extra) > 1 else ''} {', '.join(extra)}")
    module = verify_field("module", obj["module"])
    mode = verify_field("mode", obj["mode"])
    compiler = verify_field("compiler", obj["compiler"])
    source = verify_field("source", obj["source"])
    source_digest = verify_field("source_digest", obj["source_digest"])
    caps = verify_caps(obj["caps"])
    raw = obj["consts"]
    _expect(raw, tuple, "consts")
    check_consts_count(len(raw))
    consts = verify_consts(raw)
    code = obj["code"]
    _expect(code, tuple, "code")
    linker = Linker(caps, consts)
    check_code_count(len(code), linker.tail - 1)
    linker.feed(code, final=True)
    governs: tuple[str, ...] = ()
    if has_governs:
        raw_governs = obj[GOVERNS_KEY]
        _expect(raw_governs, tuple, GOVERNS_KEY)
        check_governs_count(len(raw_governs))
        governs = verify_governs(raw_governs)
    check_governs(module, governs)
    return Program(module, mode, compiler, source, source_digest, caps, consts, tuple(linker.rules), governs)


def make_program(
    fields: Sequence[str],
    caps: tuple[Capability, ...],
    consts: tuple[str, ...],
    rules: list[Rule],
    governs: tuple[str, ...] = (),
) -> Program:
    """The Program of verified parts (``fields``: the values of FIELD_KEYS, as ``verify_field`` returned them;
    ``governs`` as :func:`verify_governs` returned it, checked here against the module)."""
    module, mode, compiler, source, source_digest = fields
    check_governs(module, governs)
    return Program(module, mode, compiler, source, source_digest, caps, consts, tuple(rules), governs)


# -- governs (format 1.2): the Python package names a module binds besides its own name


def check_governs_minor(minor: int) -> None:
    """``governs`` in an artifact whose header says it is of a minor before 1.2: refused."""
    if minor < GOVERNS_MINOR:
        raise VerifyError(
            f"{GOVERNS_KEY}: a field of format 1.{GOVERNS_MINOR}, in an artifact that says it is "
            f"format 1.{minor}, which has no such field"
        )


def check_governs_count(n: int) -> None:
    if n == 0:
        raise VerifyError(f"{GOVERNS_KEY}: an empty array (a module that binds no package name has no such key)")
    if n > MAX_GOVERNS:
        raise VerifyError(f"{GOVERNS_KEY}: {n:,} names, more than the {MAX_GOVERNS:,} an artifact may hold")


def verify_governs(raw: tuple[Any, ...], start: int = 0, previous: str | None = None) -> tuple[str, ...]:
    """Entries ``start``, ``start + 1``, ... of ``governs`` (``previous``: the entry before them), checked
    and interned: dotted Python package names, in ascending order, each once (the compiler's form)."""
    before = previous
    for k, name in enumerate(raw, start):
        if type(name) is not str:
            raise VerifyError(f"{GOVERNS_KEY}[{k}]: expected str, got {_tname(name)}")
        problem = package_name_problem(name)
        if problem is not None:
            raise VerifyError(f"{GOVERNS_KEY}[{k}]: invalid package name {name[:100]!r}: {problem}")
        if before is not None and not before < name:
            raise VerifyError(
                f"{GOVERNS_KEY}[{k}]: {name[:100]!r} after {before[:100]!r}; the names are sorted, each once"
            )
        before = name
    return tuple(map(sys.intern, raw))


def check_governs(module: str, governs: tuple[str, ...]) -> None:
    """What ``governs`` may not name, given the module: its own name, or anything for ``_global``."""
    if not governs:
        return
    if module == GLOBAL_MODULE:
        raise VerifyError(f"{GOVERNS_KEY}: {GLOBAL_MODULE} applies to every governed package and binds none by name")
    if module in governs:
        raise VerifyError(f"{GOVERNS_KEY}: {module!r} is the module's own name, which it governs already")


def verify_field(key: str, value: object) -> str:
    """One of the payload's string fields (``FIELD_KEYS``), checked; the value to keep."""
    if type(value) is not str:
        raise VerifyError(f"{key}: expected str, got {_tname(value)}")
    if key == "module":
        if not is_valid_module_name(value):
            raise VerifyError(
                f"module: invalid module name {value[:300]!r} (dotted name of letters, digits, "
                f"'_' and '-', at most {MAX_MODULE_NAME_LEN} characters)"
            )
        return sys.intern(value)
    if key == "mode":
        if value not in MODES:
            raise VerifyError(f"mode: expected 'enforce' or 'audit', got {value[:100]!r}")
        return MODES[0] if value == MODES[0] else MODES[1]
    if key == "source_digest":
        if _HEX_DIGEST.fullmatch(value) is None:
            raise VerifyError(f"source_digest: expected 64 lower-case hex digits, got {value[:100]!r}")
        return value
    if key == "source":
        return sys.intern(value)
    return value


def check_caps_count(n: int) -> None:
    if n > MAX_CAPS:
        raise VerifyError(f"caps: {n:,} capabilities, more than the {MAX_CAPS:,} an artifact may hold")


def check_consts_count(n: int) -> None:
    if n > MAX_CONSTS:
        raise VerifyError(f"consts: {n:,} constants, more than the {MAX_CONSTS:,} an artifact may hold")


def check_code_count(n: int, arity: int) -> None:
    """``code`` of ``n`` instructions cannot hold more than MAX_RULES rules of at most ``arity`` arguments."""
    limit = MAX_RULES * (1 + arity)
    if n > limit:
        raise VerifyError(
            f"code: {n:,} instructions, more than the {limit:,} that {MAX_RULES:,} rules "
            f"of at most {arity} argument{'s' if arity != 1 else ''} take"
        )


def verify_consts(chunk: tuple[Any, ...], start: int = 0) -> tuple[str, ...]:
    """The entries ``start``, ``start + 1``, ... of ``consts``, checked (exact ``str`` each).

    Not interned: a constant outlives linking only inside a decoded argument,
    and equal arguments are one shared tuple (``arguments.decode_arg``'s
    memo), so equal constants of two artifacts are already one object; the
    interpreter's table of interned strings would add an entry per distinct
    constant (about 0.5-0.8 KB per 20-rule module at 10,000 modules)."""
    if set(map(type, chunk)) - {str}:
        for k, c in enumerate(chunk):
            if type(c) is not str:
                raise VerifyError(f"consts[{start + k}]: expected str, got {_tname(c)}")
    return chunk if type(chunk) is tuple else tuple(chunk)


# Verified capability tables, process-wide: raw ``caps`` -> the verified tuple.
# Verification is a pure function of the raw value, and tenants' artifacts
# repeat the same few tables. Only exact str/tuple structures are keys (a
# hit must be equal element by element with the same types: see _plain), and
# only small ones: what the cache holds is bounded (1,024 tables of at most
# 4,096 characters), whatever the files it has seen.
_VALID_CAPS_MAX = 1 << 10
_VALID_CAPS: Memo[tuple[Any, ...], tuple[Capability, ...]] = Memo("verified capability tables", _VALID_CAPS_MAX)
_valid_caps_get = _VALID_CAPS.get  # bound once: as cheap as a plain dict's .get
_VALID_CAPS_ENTRIES = 32
_VALID_CAPS_CHARS = 4096


def verify_caps(raw: object) -> tuple[Capability, ...]:
    """The payload's ``caps`` (unpacked with ``use_list=False``), checked: a tuple of Capability."""
    if type(raw) is not tuple:
        raise VerifyError(f"caps: expected array, got {_tname(raw)}")
    try:
        known = _valid_caps_get(raw)
    except TypeError:  # unhashable (a map inside): the full check says what is wrong
        known = None
    if known is not None and _plain(raw):
        return known
    caps = _verify_caps_full(raw)
    if _plain(raw) and _small(raw):
        _VALID_CAPS.put(raw, caps)
    return caps


def _plain(raw: tuple[Any, ...]) -> bool:
    """Only tuples of (str, tuple of (str, str)): equal then means identical content."""
    for entry in raw:
        if type(entry) is not tuple or len(entry) != 2 or type(entry[0]) is not str or type(entry[1]) is not tuple:
            return False
        for p in entry[1]:
            if type(p) is not tuple or len(p) != 2 or type(p[0]) is not str or type(p[1]) is not str:
                return False
    return True


def _small(raw: tuple[Any, ...]) -> bool:
    """A verified table small enough to keep (a hit is equal, so it is as small)."""
    if len(raw) > _VALID_CAPS_ENTRIES:
        return False
    return sum(len(name) + sum(len(p) + len(t) for p, t in params) for name, params in raw) <= _VALID_CAPS_CHARS


def _verify_caps_full(raw: tuple[Any, ...]) -> tuple[Capability, ...]:
    check_caps_count(len(raw))
    caps: list[Capability] = []
    seen: set[str] = set()
    for k, entry in enumerate(raw):
        where = f"caps[{k}]"
        if type(entry) is not tuple or len(entry) != 2:
            raise VerifyError(f"{where}: expected [name, [[param, type], ...]]")
        name, params = entry
        _expect(name, str, f"{where} name")
        if len(name) > MAX_NAME_LEN or _CAP_NAME.fullmatch(name) is None:
            raise VerifyError(f"{where}: invalid capability name {name[:300]!r}")
        if name in seen:
            raise VerifyError(f"{where}: capability {name} declared twice")
        seen.add(name)
        _expect(params, tuple, f"{where} ({name}) params")
        if len(params) > MAX_PARAMS:
            raise VerifyError(
                f"{where} ({name}): {len(params)} parameters, more than the {MAX_PARAMS} a capability may have"
            )
        plist: list[Param] = []
        pnames: set[str] = set()
        for m, p in enumerate(params):
            pwhere = f"{where} ({name}) param {m}"
            if type(p) is not tuple or len(p) != 2:
                raise VerifyError(f"{pwhere}: expected [name, type]")
            pname, ptype = p
            _expect(pname, str, f"{pwhere} name")
            _expect(ptype, str, f"{pwhere} type")
            if len(pname) > MAX_NAME_LEN or _PARAM_NAME.fullmatch(pname) is None:
                raise VerifyError(f"{pwhere}: invalid parameter name {pname[:300]!r}")
            if pname in pnames:
                raise VerifyError(f"{pwhere}: parameter {pname} declared twice")
            pnames.add(pname)
            if ptype not in TYPES:
                raise VerifyError(
                    f"{pwhere}: unknown type {ptype[:100]!r} (expected one of {', '.join(sorted(TYPES))})"
                )
            plist.append(Param(sys.intern(pname), _CANON_TYPES[ptype]))
        cap = Capability(sys.intern(name), tuple(plist))
        builtin = BUILTINS.get(name)
        if builtin is not None:
            if builtin != cap and LEGACY_SIGNATURES.get(name) != cap:
                raise VerifyError(
                    f"{where}: built-in capability {name} has signature {builtin.signature()}, not {cap.signature()}"
                )
            cap = builtin
        caps.append(cap)
    return tuple(caps)


_CANON_TYPES = {t: t for t in TYPES}


# ---------------------------------------------------------------------------
# Linking code into rules


class Linker:
    """Links ``code`` into rules, a chunk at a time.

    The reader feeds ``code`` in the pieces it unpacks, so it never holds the
    whole instruction stream; ``verify_payload`` feeds it in one piece. A rule
    whose arguments may continue in the next chunk is kept back (``pending``)
    until they come. Each chunk goes through the fast path first and, if that
    is not sure, through the reference check, which decides and words the
    error with the instruction's index in the whole stream.
    """

    __slots__ = ("base", "caps", "consts", "decoded", "info", "pending", "rules", "tail")

    def __init__(self, caps: tuple[Capability, ...], consts: tuple[str, ...]) -> None:
        self.caps = caps
        self.consts = consts
        self.rules: list[Rule] = []
        self.base = 0  # index in the whole code of pending[0]
        self.pending: tuple[Any, ...] = ()
        # A rule that starts within ``tail`` instructions of a chunk's end may
        # have arguments in the next one (and the reference check looks at the
        # instruction after the last argument, to tell "too many").
        self.info: list[CapInfo]
        self.info, arity = cap_table(caps)
        self.tail = 1 + arity
        self.decoded: dict[Arg, Arg] = {}

    def feed(self, chunk: tuple[Any, ...], final: bool = False) -> None:
        """Link the instructions of ``chunk`` (the next ones of ``code``); ``final``: nothing follows."""
        code = self.pending + chunk if self.pending else chunk
        n = len(code)
        limit = n if final else n - self.tail
        if limit <= 0:
            self.pending = code
            return
        start = len(self.rules)
        stop = link_fast_part(self, code, limit)
        if stop is None:
            del self.rules[start:]
            stop = link_reference_part(self, code, limit, final)
        self.base += stop
        self.pending = code[stop:] if stop < n else ()
        if len(self.rules) > MAX_RULES:
            raise VerifyError(f"code: more than the {MAX_RULES:,} rules an artifact may hold")


def _link_fast(code: tuple[Any, ...], caps: tuple[Capability, ...], consts: tuple[str, ...]) -> list[Rule] | None:
    """The rules of the whole of ``code``, or None when anything at all looks wrong (the fast path alone)."""
    linker = Linker(caps, consts)
    return linker.rules if link_fast_part(linker, code, len(code)) is not None else None


def _check_instruction(ins: object, where: str) -> None:
    """Shape, opcode, operand count and operand types of one instruction."""
    if type(ins) is not tuple:
        raise VerifyError(f"{where}: expected an instruction array, got {_tname(ins)}")
    if not ins:
        raise VerifyError(f"{where}: empty instruction")
    op = ins[0]
    if type(op) is not int:
        raise VerifyError(f"{where}: opcode must be an int, got {_tname(op)}")
    if op not in OPERAND_COUNTS:
        raise VerifyError(f"{where}: unknown opcode {op:#04x}" if op >= 0 else f"{where}: unknown opcode {op}")
    name = OPCODE_NAMES[op]
    want = OPERAND_COUNTS[op]
    if len(ins) - 1 != want:
        raise VerifyError(f"{where}: {name} takes {want} operand{'s' if want != 1 else ''}, got {len(ins) - 1}")
    for k, v in enumerate(ins[1:], 1):
        if type(v) is not int:
            raise VerifyError(f"{where}: operand {k} of {name} must be an int, got {_tname(v)}")
        if op == INT_RANGE:
            if not INT_MIN <= v <= INT_MAX:
                raise VerifyError(f"{where}: operand {k} of {name} out of the signed 64-bit range")
        elif not 0 <= v <= INT_MAX:
            raise VerifyError(f"{where}: operand {k} of {name} must be between 0 and {INT_MAX}, got {v}")


def _is_rule(ins: object) -> bool:
    return type(ins) is tuple and len(ins) > 0 and type(ins[0]) is int and ins[0] == RULE


def _link_reference(code: tuple[Any, ...], caps: tuple[Capability, ...], consts: tuple[str, ...]) -> list[Rule]:
    """The rules of the whole of ``code`` by the reference check alone."""
    linker = Linker(caps, consts)
    link_reference_part(linker, code, len(code), True)
    return linker.rules


def link_reference_part(linker: Linker, code: tuple[Any, ...], limit: int, final: bool) -> int:
    """The step-by-step check: says precisely what is wrong, and where.

    Appends the rules of ``code`` that start before ``limit`` and returns
    where it stopped; ``final``: no instruction follows ``code``.
    """
    caps = linker.caps
    consts = linker.consts
    base = linker.base
    n = len(code)
    nconsts = len(consts)
    rules = linker.rules
    decoded = linker.decoded
    i = 0
    while i < limit:
        ins = code[i]
        where = f"code[{base + i}]"
        _check_instruction(ins, where)
        if ins[0] != RULE:
            raise VerifyError(f"{where}: {OPCODE_NAMES[ins[0]]} outside a rule (the code must start with RULE)")
        _, effect, c, line, col = ins
        r = len(rules)
        if effect not in EFFECT_NAMES:
            raise VerifyError(f"{where}: rule {r}: effect {effect} is neither 0 (deny) nor 1 (entitle)")
        if c >= len(caps):
            raise VerifyError(f"{where}: rule {r}: capability index {c} out of range ({len(caps)} caps)")
        if line < 1 or col < 1:
            raise VerifyError(f"{where}: rule {r}: line and column must be >= 1, got {line}:{col}")
        cap = caps[c]
        nargs = 0
        while i + 1 + nargs < n and not _is_rule(code[i + 1 + nargs]):
            nargs += 1
        if nargs != cap.arity:
            # counted to the end of a chunk that is not the last: there may be more
            more = "at least " if not final and i + 1 + nargs == n else ""
            raise VerifyError(
                f"rule {r}: capability {cap.name} takes {cap.arity} "
                f"argument{'s' if cap.arity != 1 else ''}, got {more}{nargs}"
            )
        args = []
        for k, param in enumerate(cap.params):
            j = i + 1 + k
            a = code[j]
            awhere = f"code[{base + j}]"
            _check_instruction(a, awhere)
            op = a[0]
            name = OPCODE_NAMES[op]
            if op not in ALLOWED_OPS[param.type]:
                raise VerifyError(
                    f"rule {r}: argument {k + 1} of {cap.name} ({param.name}: {param.type}) cannot be {name}"
                )
            if op == ANY:
                dec: tuple[Any, ...] = ANY_ARG
            elif op == INT_RANGE:
                problem = range_problem(param.type, a[1], a[2])
                if problem is not None:
                    raise VerifyError(f"rule {r}: {name} {a[1]}..{a[2]} for {param.name}: {problem}")
                dec = a
            else:
                ci = a[1]
                if ci >= nconsts:
                    raise VerifyError(f"{awhere}: const index {ci} out of range ({nconsts} consts)")
                const = consts[ci]
                problem = const_problem(op, const, param.type)
                if problem is not None:
                    raise VerifyError(f"rule {r}: {name} pattern {const[:300]!r}: {problem}")
                dec = (op, const)
            args.append(decoded.setdefault(dec, dec))
        rules.append(Rule(r, effect, cap, line, col, tuple(args)))
        i += 1 + cap.arity
    return i
