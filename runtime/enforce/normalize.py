"""Request normalisation, per parameter type.

Each normaliser returns the value as the matchers compare it, or raises
ValueError with a reason. The fast paths accept only input that
``patterns.normalize_*`` would return unchanged (tests/runtime/enforce/test_enforcer.py
checks the equivalence with hypothesis) and fall back to those functions
otherwise. ``int`` and ``str`` subclasses are decided as the plain values
they hold: their methods never run.

Normalising a host or a path is a pure function of the string, and services
ask about the same few hosts and paths over and over, so both are memoised
(:class:`~polc.runtime.memo.Memo`, 65,536 entries each, refusals
apart): only exact ``str`` keys, so no equal-but-different value can hit,
and only keys of at most 1,024 characters, so the memos hold a bounded
number of characters whatever callers send. The generated deciders read
``HOST_MEMO``/``PATH_MEMO`` inline and call the normalisers only on a miss.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .. import patterns
from ..catalog import COMMAND, HOST, INT, PATH, PORT, PORT_MAX, PORT_MIN, STRING, Capability
from ..memo import Memo

__all__ = [
    "HOST_BAD",
    "HOST_MEMO",
    "MEMO_KEY_MAX",
    "MEMO_MAX",
    "NORMALIZERS",
    "PATH_BAD",
    "PATH_MEMO",
    "HostValue",
    "int_text",
    "norm_command",
    "norm_host",
    "norm_int",
    "norm_path",
    "norm_port",
    "norm_string",
    "normalizer_of",
]

# What a host parameter's value is once normalised: a DNS name, an address,
# or the addresses an IP literal reaches.
HostValue = str | patterns.IPAddress | patterns.HostAddresses

_FAST_DNS = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_fast_dns = _FAST_DNS.fullmatch

MEMO_MAX = 65536
MEMO_KEY_MAX = 1024
HOST_MEMO: Memo[str, HostValue] = Memo("normalised hosts", MEMO_MAX)
PATH_MEMO: Memo[str, str] = Memo("normalised paths", MEMO_MAX)
# Refusals are memoised apart (the ValueError's message), off the fast path.
HOST_BAD: Memo[str, str] = Memo("refused hosts", MEMO_MAX)
PATH_BAD: Memo[str, str] = Memo("refused paths", MEMO_MAX)
_host_get = HOST_MEMO.get
_host_bad_get = HOST_BAD.get
_path_get = PATH_MEMO.get
_path_bad_get = PATH_BAD.get


def _refuse(memo: Memo[str, str], value: str, exc: ValueError) -> ValueError:
    if len(value) <= MEMO_KEY_MAX:
        memo.put(value, str(exc))
    return exc


def norm_host(value: object) -> HostValue:
    if type(value) is str:
        r = _host_get(value)
        if r is not None:
            return r
        bad = _host_bad_get(value)
        if bad is not None:
            raise ValueError(bad)
        try:
            if len(value) <= 253 and _fast_dns(value) is not None:
                last = value[value.rfind(".") + 1 :]
                # an IPv4 literal (or malformed) when the last label is a number
                r = patterns.normalize_host(value) if last.isdigit() or last.startswith("0x") else value
            else:
                r = patterns.normalize_host(value)
        except ValueError as exc:
            raise _refuse(HOST_BAD, value, exc) from None
        return HOST_MEMO.put(value, r)
    return patterns.normalize_host(value)


def norm_path(value: object) -> str:
    if type(value) is str:
        r = _path_get(value)
        if r is not None:
            return r
        if (
            value
            and value[0] != "/"
            and value[-1] != "/"
            and "//" not in value
            and "\0" not in value
            and "/." not in "/" + value
        ):
            r = value
        else:
            bad = _path_bad_get(value)
            if bad is not None:
                raise ValueError(bad)
            try:
                r = patterns.normalize_path(value)
            except ValueError as exc:
                raise _refuse(PATH_BAD, value, exc) from None
        if len(value) <= MEMO_KEY_MAX:
            PATH_MEMO.put(value, r)
        return r
    return patterns.normalize_path(value)


def norm_string(value: object) -> str:
    if type(value) is str:
        return value
    # issubclass of the real type, not isinstance: isinstance would consult a
    # (hostile) __class__ of the value.
    if issubclass(type(value), str):
        return str.__str__(value)  # a str subclass: its methods never run
    raise ValueError(f"expected a string, got {patterns.type_name(value)}")


def int_text(v: int) -> str:
    """An int for a reason or a log line: its digits, or its size when it is huge."""
    return str(v) if v.bit_length() <= 64 else f"of {v.bit_length()} bits"


def _exact_int(value: object, what: str) -> int:
    t = type(value)
    if t is bool or not issubclass(t, int):  # the real type, never a (hostile) __class__
        raise ValueError(f"expected {what}, got {patterns.type_name(value)}")
    return int.__int__(value)  # type: ignore[arg-type]  # an int subclass; its methods never run


def norm_port(value: object) -> int:
    port = value if type(value) is int else _exact_int(value, "a port number (int)")
    if PORT_MIN <= port <= PORT_MAX:
        return port
    raise ValueError(f"port {int_text(port)} out of range ({PORT_MIN}..{PORT_MAX})")


def norm_int(value: object) -> int:
    if type(value) is int:
        return value
    return _exact_int(value, "an int")


# A command is resolved on the file system; what it found is reused for at most
# patterns.RESOLVE_TTL seconds, and so are decisions about a capability with a
# command parameter (Snapshot's timed cache), never longer.
norm_command = patterns.command_of


NORMALIZERS: dict[str, Callable[[object], object]] = {
    HOST: norm_host,
    PORT: norm_port,
    PATH: norm_path,
    STRING: norm_string,
    INT: norm_int,
    COMMAND: norm_command,
}


Normalizer = Callable[[tuple[object, ...]], tuple[object, ...]]


def _normalizer(norms: tuple[Callable[[object], object], ...]) -> Normalizer:
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
    return lambda args: tuple([n(a) for n, a in zip(norms, args, strict=False)])


_NORMALIZERS_OF: Memo[Capability, Normalizer] = Memo("request normalisers", 1 << 13)
_normalizers_get = _NORMALIZERS_OF.get


def normalizer_of(sig: Capability) -> Normalizer:
    """The whole-request normaliser of a signature (the sequential path's; memoised)."""
    f = _normalizers_get(sig)
    if f is None:
        f = _NORMALIZERS_OF.put(sig, _normalizer(tuple(NORMALIZERS[p.type] for p in sig.params)))
    return f
