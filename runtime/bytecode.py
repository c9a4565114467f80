"""The rule instruction set of artifact format 1 (see docs/design.md).

This module holds the opcode table, the instruction encoding (``assemble``),
the structural verifier that turns an unpacked payload into rules
(``verify_payload``), and the disassembler used by ``polc inspect``.

The verifier runs on untrusted data: everything it is given comes from
``msgpack.unpackb(use_list=False)`` of a file someone dropped into a
directory. It accepts exactly the payloads of docs/artifact-format.md and
raises :class:`VerifyError` with a message that says what is wrong and where
(``code[7]: unknown opcode 0x55``) for anything else. ``runtime/artifact.py``
turns that into a ``MalformedPayload``.

Two implementations of the code check exist on purpose: an optimistic fast
path (``_link_fast``) that only answers "valid, here are the rules" or "not
sure", and the reference check (``_link_reference``) that is step-by-step,
says precisely what is wrong, and is the one that decides whenever the fast
path is not sure. Tests assert that the fast path never accepts what the
reference rejects.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from .catalog import (
    BUILTINS,
    COMMAND,
    HOST,
    INT,
    INT_MAX,
    INT_MIN,
    LEGACY_SIGNATURES,
    PATH,
    PORT,
    STRING,
    TYPES,
    Capability,
    Param,
)

# Rule header: RULE effect cap line col
RULE = 0x01
# Argument instructions, one per capability parameter.
ANY = 0x10
HOST_EXACT = 0x11
HOST_WILD = 0x12
HOST_CIDR = 0x13
INT_RANGE = 0x20
PATH_GLOB = 0x30
STR_EXACT = 0x40
STR_GLOB = 0x41

DENY = 0
ENTITLE = 1

OPCODE_NAMES: dict[int, str] = {
    RULE: "RULE",
    ANY: "ANY",
    HOST_EXACT: "HOST_EXACT",
    HOST_WILD: "HOST_WILD",
    HOST_CIDR: "HOST_CIDR",
    INT_RANGE: "INT_RANGE",
    PATH_GLOB: "PATH_GLOB",
    STR_EXACT: "STR_EXACT",
    STR_GLOB: "STR_GLOB",
}
OPCODES_BY_NAME: dict[str, int] = {v: k for k, v in OPCODE_NAMES.items()}

# ---------------------------------------------------------------------------
# Instruction encoding: every instruction is a msgpack array
# ``[opcode, operand, ...]`` with a fixed operand count per opcode.

OPERAND_COUNTS: dict[int, int] = {
    RULE: 4,  # effect, cap, line, col
    ANY: 0,
    HOST_EXACT: 1,  # const index
    HOST_WILD: 1,
    HOST_CIDR: 1,
    INT_RANGE: 2,  # lo, hi (signed)
    PATH_GLOB: 1,
    STR_EXACT: 1,
    STR_GLOB: 1,
}
# Argument opcodes whose single operand indexes the constant pool.
CONST_OPS: frozenset[int] = frozenset({HOST_EXACT, HOST_WILD, HOST_CIDR, PATH_GLOB, STR_EXACT, STR_GLOB})
ARG_OPS: frozenset[int] = frozenset(OPCODE_NAMES) - {RULE}

# Which argument opcodes each parameter type accepts (design.md).
ALLOWED_OPS: dict[str, frozenset[int]] = {
    HOST: frozenset({ANY, HOST_EXACT, HOST_WILD, HOST_CIDR}),
    PORT: frozenset({ANY, INT_RANGE}),
    INT: frozenset({ANY, INT_RANGE}),
    PATH: frozenset({ANY, PATH_GLOB}),
    STRING: frozenset({ANY, STR_EXACT, STR_GLOB}),
    COMMAND: frozenset({ANY, STR_EXACT, STR_GLOB}),
}

EFFECT_NAMES: dict[int, str] = {DENY: "deny", ENTITLE: "entitle"}
EFFECTS_BY_NAME: dict[str, int] = {v: k for k, v in EFFECT_NAMES.items()}

# The payload map: exactly these keys, in this order when written.
PAYLOAD_KEYS: tuple[str, ...] = (
    "module",
    "mode",
    "compiler",
    "source",
    "source_digest",
    "caps",
    "consts",
    "code",
)
MODES: tuple[str, ...] = ("enforce", "audit")

MAX_NAME_LEN = 255
# NAME.bin must fit the 255-byte file-name limit of common filesystems.
MAX_MODULE_NAME_LEN = MAX_NAME_LEN - len(".bin")

# How much one artifact may hold (docs/artifact-format.md, "Limits"). Each is
# far beyond what a policy written by people needs (the largest benchmarked
# module has 10,000 rules), and together they bound what any file costs to
# read and link. The compiler refuses a module that would exceed one.
MAX_RULES = 100_000
MAX_PARAMS = 64  # parameters of one capability
MAX_CAPS = 10_000  # entries of ``caps``
MAX_CONSTS = 1_000_000  # entries of ``consts``
MAX_STRING = 64 * 1024  # bytes of any string of the payload (a host name is at most 253)
_MODULE_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_CAP_NAME = _MODULE_NAME
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")

# The shared decoded form of an ANY argument.
ANY_ARG: tuple[int] = (ANY,)


class VerifyError(ValueError):
    """A payload that is not a well-formed format-1 payload.

    ``read_artifact`` re-raises it as ``artifact.MalformedPayload``.
    """


def is_valid_module_name(name: object) -> bool:
    """A dotted module name: letters, digits, ``_``, ``-``; no empty part; at most 251 chars.

    251 so that ``NAME.bin`` fits a 255-byte file name. The compiler should
    check module names with this function before it generates anything.
    """
    return (
        type(name) is str
        and 0 < len(name) <= MAX_MODULE_NAME_LEN
        and _MODULE_NAME.fullmatch(name) is not None
    )


# ---------------------------------------------------------------------------
# The verified, linked form


class Rule(NamedTuple):
    """One verified rule. Immutable.

    ``args`` holds one decoded argument instruction per capability parameter:
    ``(ANY,)``, ``(HOST_EXACT | HOST_WILD | HOST_CIDR | PATH_GLOB | STR_EXACT
    | STR_GLOB, const_string)`` or ``(INT_RANGE, lo, hi)``. Equal arguments
    are the same tuple object, within an artifact and across artifacts.

    A named tuple rather than a frozen dataclass: linking makes one per rule
    of every artifact loaded, and a frozen dataclass costs ~0.6 us to build
    (six ``object.__setattr__`` calls) against ~0.1 us for a tuple; 0.5 ms of
    the 5 ms budget for loading a 1,000-rule artifact.
    """

    index: int
    effect: int
    cap: Capability
    line: int
    col: int
    args: tuple[tuple[Any, ...], ...]

    @property
    def effect_name(self) -> str:
        return EFFECT_NAMES[self.effect]

    def location(self, source: str) -> str:
        return f"{source}:{self.line}:{self.col}"


class Program(NamedTuple):
    """A verified payload: what ``verify_payload`` returns."""

    module: str
    mode: str
    compiler: str
    source: str
    source_digest: str
    caps: tuple[Capability, ...]
    consts: tuple[str, ...]
    rules: tuple[Rule, ...]


# ---------------------------------------------------------------------------
# Payload verification


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


# The payload's string fields, in the order they are checked and written.
FIELD_KEYS: tuple[str, ...] = PAYLOAD_KEYS[:5]


def verify_payload(obj: object, *, allow_unknown_keys: bool = False) -> Program:
    """Verify an unpacked payload (``use_list=False``) and link its rules.

    ``allow_unknown_keys`` is set by the reader for artifacts of a newer
    minor format than this one: they may carry payload keys this reader
    does not know, which it then ignores. (``runtime/artifact.py`` does not
    call this: it streams the payload through the same checks, below, without
    unpacking it whole.)
    """
    if type(obj) is not dict:
        raise VerifyError(f"payload: expected map, got {_tname(obj)}")
    missing = [k for k in PAYLOAD_KEYS if k not in obj]
    if missing:
        raise VerifyError(f"payload: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if not allow_unknown_keys and len(obj) != len(PAYLOAD_KEYS):
        extra = sorted(repr(k) for k in obj if k not in PAYLOAD_KEYS)
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
    return Program(module, mode, compiler, source, source_digest, caps, consts, tuple(linker.rules))


def make_program(fields: Sequence[str], caps: tuple[Capability, ...], consts: tuple[str, ...], rules: list[Rule]) -> Program:
    """The Program of verified parts (``fields``: the values of FIELD_KEYS, as ``verify_field`` returned them)."""
    module, mode, compiler, source, source_digest = fields
    return Program(module, mode, compiler, source, source_digest, caps, consts, tuple(rules))


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


def verify_consts(chunk: tuple, start: int = 0) -> tuple[str, ...]:
    """The entries ``start``, ``start + 1``, ... of ``consts``, checked and interned."""
    try:
        return tuple(map(sys.intern, chunk))
    except TypeError:
        for k, c in enumerate(chunk):
            if type(c) is not str:
                raise VerifyError(f"consts[{start + k}]: expected str, got {_tname(c)}") from None
        raise


# Verified capability tables, process-wide: raw ``caps`` -> the verified tuple.
# Verification is a pure function of the raw value, and tenants' artifacts
# repeat the same few tables. Only exact str/tuple structures are keys (a
# hit must be equal element by element with the same types: see _plain), and
# only small ones: what the cache holds is bounded (1,024 tables of at most
# 4,096 characters), whatever the files it has seen.
_VALID_CAPS: dict[tuple, tuple[Capability, ...]] = {}
_VALID_CAPS_MAX = 1 << 10
_VALID_CAPS_ENTRIES = 32
_VALID_CAPS_CHARS = 4096


def verify_caps(raw: object) -> tuple[Capability, ...]:
    """The payload's ``caps`` (unpacked with ``use_list=False``), checked: a tuple of Capability."""
    _expect(raw, tuple, "caps")
    try:
        known = _VALID_CAPS.get(raw)  # type: ignore[call-overload]
    except TypeError:  # unhashable (a map inside): the full check says what is wrong
        known = None
    if known is not None and _plain(raw):
        return known
    caps = _verify_caps_full(raw)
    if _plain(raw) and _small(raw):
        if len(_VALID_CAPS) >= _VALID_CAPS_MAX:
            _VALID_CAPS.clear()
        _VALID_CAPS[raw] = caps  # type: ignore[index]
    return caps


def _plain(raw: tuple) -> bool:
    """Only tuples of (str, tuple of (str, str)): equal then means identical content."""
    for entry in raw:
        if type(entry) is not tuple or len(entry) != 2 or type(entry[0]) is not str or type(entry[1]) is not tuple:
            return False
        for p in entry[1]:
            if type(p) is not tuple or len(p) != 2 or type(p[0]) is not str or type(p[1]) is not str:
                return False
    return True


def _small(raw: tuple) -> bool:
    """A verified table small enough to keep (a hit is equal, so it is as small)."""
    if len(raw) > _VALID_CAPS_ENTRIES:
        return False
    return sum(len(name) + sum(len(p) + len(t) for p, t in params) for name, params in raw) <= _VALID_CAPS_CHARS


def _verify_caps_full(raw: tuple) -> tuple[Capability, ...]:
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
                    f"{where}: built-in capability {name} has signature {builtin.signature()}, "
                    f"not {cap.signature()}"
                )
            cap = builtin
        caps.append(cap)
    return tuple(caps)


_verify_caps = verify_caps  # the older name, kept for callers that use it

_CANON_TYPES = {t: t for t in TYPES}


# ---------------------------------------------------------------------------
# Linking code into rules


_PATTERNS = None


def _patterns():
    # Imported on first use: runtime/patterns.py imports this module's opcodes.
    global _PATTERNS
    if _PATTERNS is None:
        from . import patterns

        _PATTERNS = patterns
    return _PATTERNS


# A fast accept for the common host constant: a lower-case DNS name or
# pattern in normal form. Anything it accepts, patterns.compile_host returns
# unchanged (tests/test_artifact.py checks that with hypothesis); anything
# else goes to compile_host, which decides. It exists because compile_host
# first tries ipaddress (an exception per DNS name, ~4 us).
_DNS_LABEL = r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?|\*\*?)"
_DNS_NORMAL = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")


def _fast_host_ok(op: int, const: str) -> bool:
    return (
        len(const) <= 253
        and _DNS_NORMAL.fullmatch(const) is not None
        and not const.rpartition(".")[2].isdigit()
        and not const.rpartition(".")[2].startswith("0x")
        and not (op == HOST_WILD and const[0].isdigit())
        and (op == HOST_WILD) == ("*" in const)
    )


def _const_problem(op: int, const: str, ptype: str) -> str | None:
    """Why ``const`` is not a valid constant for ``op``; None when it is."""
    if (op == HOST_EXACT or op == HOST_WILD) and _fast_host_ok(op, const):
        return None
    patterns = _patterns()
    try:
        if op == PATH_GLOB:
            want_op, want = op, patterns.compile_path(const)
        elif op in (STR_EXACT, STR_GLOB):
            if ptype == COMMAND:
                want_op, want = patterns.compile_command(const)
            else:
                want_op, want = patterns.compile_string(const)
        else:
            want_op, want = patterns.compile_host(const)
    except patterns.PatternError as exc:
        return str(exc)
    except Exception as exc:  # a bug in a compile_* function must not escape the reader
        return f"rejected ({type(exc).__name__})"
    if want_op != op or want != const:
        return f"not in normal form (the compiler writes it as {OPCODE_NAMES.get(want_op, want_op)} {want!r})"
    return None


def _range_problem(ptype: str, lo: int, hi: int) -> str | None:
    patterns = _patterns()
    try:
        patterns.check_range(ptype, lo, hi)
    except patterns.PatternError as exc:
        return str(exc)
    except Exception as exc:
        return f"rejected ({type(exc).__name__})"
    return None


# Arguments already found valid, process-wide: decoded argument -> itself.
# Validity is a pure function of (opcode, constant) or (type, lo, hi), so an
# agent that reloads a changed artifact, or loads many tenants with the same
# patterns, checks each one once; and equal arguments of all loaded
# artifacts share one tuple. Bounded: cleared when full, and constants longer
# than _VALID_ARG_CHARS are checked again each time rather than kept, so what
# the cache holds does not grow with the files it has seen (a file that is
# rejected later still passes through here).
_VALID_ARGS: dict[tuple, tuple] = {}
_VALID_ARGS_MAX = 1 << 16
_VALID_ARG_CHARS = 256


_VALID_COMMAND_ARGS: dict[tuple, tuple] = {}


def _remember(key: tuple, value: tuple, memo: dict | None = None) -> tuple:
    if memo is None:
        memo = _VALID_ARGS
    if len(memo) >= _VALID_ARGS_MAX:
        memo.clear()
    memo[key] = value
    return value


_CONST_OPS_FOR: dict[str, frozenset[int]] = {t: ops & CONST_OPS for t, ops in ALLOWED_OPS.items()}


def _decode_arg(ptype: str, a: tuple, consts: tuple[str, ...]) -> tuple | None:
    """Validate argument instruction ``a`` for a ``ptype`` parameter; None if invalid."""
    op = a[0]
    if type(op) is not int:
        return None
    if len(a) == 2 and op in _CONST_OPS_FOR[ptype]:
        c = a[1]
        if type(c) is not int or c < 0:
            return None
        try:
            key = (op, consts[c])
        except IndexError:
            return None
        # a command constant has its own normal form: remembered apart
        memo = _VALID_COMMAND_ARGS if ptype == COMMAND else _VALID_ARGS
        known = memo.get(key)
        if known is not None:
            return known
        if _const_problem(op, key[1], ptype) is not None:
            return None
        return _remember(key, key, memo) if len(key[1]) <= _VALID_ARG_CHARS else key
    if op == ANY:
        return ANY_ARG if len(a) == 1 else None
    if op == INT_RANGE and len(a) == 3 and op in ALLOWED_OPS[ptype]:
        _, lo, hi = a
        if type(lo) is not int or type(hi) is not int:
            return None
        key = (ptype, lo, hi)
        known = _VALID_ARGS.get(key)
        if known is not None:
            return known
        if _range_problem(ptype, lo, hi) is not None:
            return None
        return _remember(key, (INT_RANGE, lo, hi))
    return None


class Linker:
    """Links ``code`` into rules, a chunk at a time.

    The reader feeds ``code`` in the pieces it unpacks, so it never holds the
    whole instruction stream; ``verify_payload`` feeds it in one piece. A rule
    whose arguments may continue in the next chunk is kept back (``pending``)
    until they come. Each chunk goes through the fast path first and, if that
    is not sure, through the reference check, which decides and words the
    error with the instruction's index in the whole stream.
    """

    __slots__ = ("caps", "consts", "rules", "base", "pending", "tail", "info", "decoded")

    def __init__(self, caps: tuple[Capability, ...], consts: tuple[str, ...]) -> None:
        self.caps = caps
        self.consts = consts
        self.rules: list[Rule] = []
        self.base = 0  # index in the whole code of pending[0]
        self.pending: tuple = ()
        # A rule that starts within ``tail`` instructions of a chunk's end may
        # have arguments in the next one (and the reference check looks at the
        # instruction after the last argument, to tell "too many").
        arity = 0
        # One cache per parameter type: argument instruction -> decoded argument.
        caches: dict[str, dict] = {t: {} for t in TYPES}
        info = []
        for cap in caps:
            params = cap.params
            if len(params) > arity:
                arity = len(params)
            info.append((
                cap,
                len(params),
                caches[params[0].type] if params else None,
                params[0].type if params else None,
                caches[params[1].type] if len(params) > 1 else None,
                params[1].type if len(params) > 1 else None,
                tuple((p.type, caches[p.type]) for p in params),
            ))
        self.info = info
        self.tail = 1 + arity
        self.decoded: dict[tuple, tuple] = {}

    def feed(self, chunk: tuple, final: bool = False) -> None:
        """Link the instructions of ``chunk`` (the next ones of ``code``); ``final``: nothing follows."""
        code = self.pending + chunk if self.pending else chunk
        n = len(code)
        limit = n if final else n - self.tail
        if limit <= 0:
            self.pending = code
            return
        start = len(self.rules)
        stop = _link_fast_part(self, code, limit)
        if stop is None:
            del self.rules[start:]
            stop = _link_reference_part(self, code, limit, final)
        self.base += stop
        self.pending = code[stop:] if stop < n else ()
        if len(self.rules) > MAX_RULES:
            raise VerifyError(f"code: more than the {MAX_RULES:,} rules an artifact may hold")


def _link_fast(code: tuple, caps: tuple[Capability, ...], consts: tuple[str, ...]) -> list[Rule] | None:
    """The rules of the whole of ``code``, or None when anything at all looks wrong (the fast path alone)."""
    linker = Linker(caps, consts)
    return linker.rules if _link_fast_part(linker, code, len(code)) is not None else None


def _link_fast_part(linker: Linker, code: tuple, limit: int) -> int | None:
    """Append the rules of ``code`` that start before ``limit``; where it stopped, or None when
    anything at all looks wrong (the rules appended are then the caller's to drop).

    Per-instruction work is a few type checks and one dict lookup: each
    distinct argument instruction is validated once per artifact (per
    parameter type) and decoded to one shared tuple. Rules of one or two
    parameters (every built-in capability) take an unrolled path.
    """
    info = linker.info
    consts = linker.consts
    ncaps = len(info)
    append = linker.rules.append
    new = tuple.__new__
    decode = _decode_arg
    imax = INT_MAX
    i = 0
    index = len(linker.rules)
    # A cache hit is an instruction equal to one that was validated; equal is not
    # enough (True == 1 and 1.0 == 1 hash alike), so every element of a hit is
    # type-checked too: a[0] and a[-1] cover lengths 1 and 2, a[1] length 3.
    try:
        while i < limit:
            # unpacking first is safe: msgpack gives tuples, str, bytes or dicts,
            # and anything that is not a 5-tuple fails the type check below
            op, effect, c, line, col = ins = code[i]
            if (
                ins.__class__ is not tuple
                or op.__class__ is not int
                or effect.__class__ is not int
                or c.__class__ is not int
                or line.__class__ is not int
                or col.__class__ is not int
                or op != RULE
                or not 0 <= effect <= 1
                or not 0 <= c < ncaps
                or not 0 < line <= imax
                or not 0 < col <= imax
            ):
                return None
            cap, arity, c0, t0, c1, t1, sig = info[c]
            i += 1
            if arity == 2:
                a = code[i]  # IndexError past the end: caught below
                d0 = c0.get(a)
                if d0 is None:
                    if a.__class__ is not tuple or not a:
                        return None
                    d0 = decode(t0, a, consts)
                    if d0 is None:
                        return None
                    c0[a] = d0
                elif (
                    a.__class__ is not tuple
                    or a[0].__class__ is not int
                    or a[-1].__class__ is not int
                    or (len(a) > 2 and a[1].__class__ is not int)
                ):
                    return None
                a = code[i + 1]
                d1 = c1.get(a)
                if d1 is None:
                    if a.__class__ is not tuple or not a:
                        return None
                    d1 = decode(t1, a, consts)
                    if d1 is None:
                        return None
                    c1[a] = d1
                elif (
                    a.__class__ is not tuple
                    or a[0].__class__ is not int
                    or a[-1].__class__ is not int
                    or (len(a) > 2 and a[1].__class__ is not int)
                ):
                    return None
                i += 2
                append(new(Rule, (index, effect, cap, line, col, (d0, d1))))
            elif arity == 1:
                a = code[i]
                d0 = c0.get(a)
                if d0 is None:
                    if a.__class__ is not tuple or not a:
                        return None
                    d0 = decode(t0, a, consts)
                    if d0 is None:
                        return None
                    c0[a] = d0
                elif (
                    a.__class__ is not tuple
                    or a[0].__class__ is not int
                    or a[-1].__class__ is not int
                    or (len(a) > 2 and a[1].__class__ is not int)
                ):
                    return None
                i += 1
                append(new(Rule, (index, effect, cap, line, col, (d0,))))
            elif arity == 0:
                append(new(Rule, (index, effect, cap, line, col, ())))
            else:
                args = []
                for ptype, cache in sig:
                    a = code[i]
                    i += 1
                    dec = cache.get(a)
                    if dec is None:
                        if a.__class__ is not tuple or not a:
                            return None
                        dec = decode(ptype, a, consts)
                        if dec is None:
                            return None
                        cache[a] = dec
                    elif (
                        a.__class__ is not tuple
                        or a[0].__class__ is not int
                        or a[-1].__class__ is not int
                        or (len(a) > 2 and a[1].__class__ is not int)
                    ):
                        return None
                    args.append(dec)
                append(new(Rule, (index, effect, cap, line, col, tuple(args))))
            index += 1
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        return None
    return i


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
        raise VerifyError(
            f"{where}: {name} takes {want} operand{'s' if want != 1 else ''}, got {len(ins) - 1}"
        )
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


def _link_reference(code: tuple, caps: tuple[Capability, ...], consts: tuple[str, ...]) -> list[Rule]:
    """The rules of the whole of ``code`` by the reference check alone."""
    linker = Linker(caps, consts)
    _link_reference_part(linker, code, len(code), True)
    return linker.rules


def _link_reference_part(linker: Linker, code: tuple, limit: int, final: bool) -> int:
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
            raise VerifyError(
                f"{where}: {OPCODE_NAMES[ins[0]]} outside a rule (the code must start with RULE)"
            )
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
                    f"rule {r}: argument {k + 1} of {cap.name} ({param.name}: {param.type}) "
                    f"cannot be {name}"
                )
            if op == ANY:
                dec: tuple = ANY_ARG
            elif op == INT_RANGE:
                problem = _range_problem(param.type, a[1], a[2])
                if problem is not None:
                    raise VerifyError(f"rule {r}: {name} {a[1]}..{a[2]} for {param.name}: {problem}")
                dec = a
            else:
                ci = a[1]
                if ci >= nconsts:
                    raise VerifyError(f"{awhere}: const index {ci} out of range ({nconsts} consts)")
                const = consts[ci]
                problem = _const_problem(op, const, param.type)
                if problem is not None:
                    raise VerifyError(f"rule {r}: {name} pattern {const[:300]!r}: {problem}")
                dec = (op, const)
            args.append(decoded.setdefault(dec, dec))
        rules.append(Rule(r, effect, cap, line, col, tuple(args)))
        i += 1 + cap.arity
    return i


# ---------------------------------------------------------------------------
# Encoding (the compiler's side)


def assemble(rules: Iterable[tuple[int, Capability, int, int, Sequence[tuple]]]) -> tuple[list, list, list]:
    """Encode rules as the payload's ``caps``, ``consts`` and ``code``.

    Each rule is ``(effect, capability, line, col, args)`` with ``args`` in
    the decoded form of :class:`Rule` (``(HOST_WILD, "*.acme.com")``,
    ``(INT_RANGE, 443, 443)``, ``(ANY,)``). Capabilities and constants are
    numbered in order of first use, so the output is deterministic.
    ``verify_payload`` of the result gives the same rules back.
    """
    cap_index: dict[str, int] = {}
    caps: list = []
    const_index: dict[str, int] = {}
    consts: list[str] = []
    code: list = []
    for effect, cap, line, col, args in rules:
        c = cap_index.get(cap.name)
        if c is None:
            c = cap_index[cap.name] = len(caps)
            caps.append([cap.name, [[p.name, p.type] for p in cap.params]])
        code.append([RULE, effect, c, line, col])
        for arg in args:
            op = arg[0]
            if op in CONST_OPS:
                k = const_index.get(arg[1])
                if k is None:
                    k = const_index[arg[1]] = len(consts)
                    consts.append(arg[1])
                code.append([op, k])
            else:
                code.append(list(arg))
    return caps, consts, code


# ---------------------------------------------------------------------------
# Disassembly


def quote(text: str) -> str:
    """A double-quoted, single-line, terminal-safe rendering of a constant."""
    import json  # only listings need it

    out = json.dumps(text, ensure_ascii=False)
    if out.isprintable():
        return out
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in out)


def printable(text: str) -> str:
    """``text`` with non-printable characters escaped (file names, sources)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)


def format_arg(arg: tuple) -> str:
    op = arg[0]
    name = OPCODE_NAMES.get(op, str(op))
    if op == ANY:
        return name
    if op == INT_RANGE:
        return f"{name} {arg[1]}..{arg[2]}"
    return f"{name} {quote(arg[1])}"


def format_rule(rule: Rule, source: str) -> str:
    """``tenant.acme.pol:3:5  ENTITLE network.outbound HOST_WILD "*.acme.com" INT_RANGE 443..443``"""
    parts = [printable(rule.location(source)), "", rule.effect_name.upper(), rule.cap.name]
    parts.extend(format_arg(a) for a in rule.args)
    return " ".join(parts)


def disassemble(code: tuple, caps: Sequence[Capability], consts: Sequence[str]) -> list[dict[str, Any]]:
    """An instruction-level listing of verified ``code``.

    One dict per instruction: ``offset``, ``op`` (name), ``operands`` (the raw
    ints) and ``comment`` (what the operands refer to).
    """
    out: list[dict[str, Any]] = []
    rule = -1
    for offset, ins in enumerate(code):
        op, *operands = ins
        name = OPCODE_NAMES.get(op, f"{op:#04x}")
        if op == RULE:
            rule += 1
            effect, c, line, col = operands
            cap = caps[c]
            comment = f"rule {rule}: {EFFECT_NAMES.get(effect, effect)} {cap.name} at {line}:{col}"
        elif op in CONST_OPS:
            comment = quote(consts[operands[0]])
        elif op == INT_RANGE:
            comment = f"{operands[0]}..{operands[1]}"
        else:
            comment = ""
        out.append({"offset": offset, "op": name, "operands": list(operands), "comment": comment})
    return out
