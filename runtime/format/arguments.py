"""Argument instructions: which ones are valid for a parameter type, and their shared decoded form.

A constant is valid for an opcode only in normal form: ``patterns.compile_*``
returns it unchanged (docs/artifact-format.md, "Instructions"); a range is
checked by ``patterns.check_range``. Both linkers (the reference check in
``verify.py`` and the fast path in ``link_fast.py``) decide validity here,
so they cannot disagree about it.
"""

from __future__ import annotations

import re
from typing import Any

from .. import patterns
from ..catalog import COMMAND
from ..memo import Memo
from .opcodes import (
    ALLOWED_OPS,
    ANY,
    CONST_OPS,
    HOST_EXACT,
    HOST_WILD,
    INT_RANGE,
    OPCODE_NAMES,
    PATH_GLOB,
    STR_EXACT,
    STR_GLOB,
)

__all__ = ["ANY_ARG", "Arg", "const_problem", "decode_arg", "range_problem"]

Arg = tuple[Any, ...]
"""An argument instruction, raw (``(opcode, operand, ...)`` as unpacked) or decoded (``Rule.args``)."""

# The shared decoded form of an ANY argument.
ANY_ARG: tuple[int] = (ANY,)

# A fast accept for the common host constant: a lower-case DNS name or
# pattern in normal form. Anything it accepts, patterns.compile_host returns
# unchanged (tests/runtime/format/test_artifact.py checks that with hypothesis); anything
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


def const_problem(op: int, const: str, ptype: str) -> str | None:
    """Why ``const`` is not a valid constant for ``op``; None when it is."""
    if op in (HOST_EXACT, HOST_WILD) and _fast_host_ok(op, const):
        return None
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


def range_problem(ptype: str, lo: int, hi: int) -> str | None:
    """Why ``lo..hi`` is not a valid INT_RANGE for a ``ptype`` parameter; None when it is."""
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
_VALID_ARGS_MAX = 1 << 16
_VALID_ARG_CHARS = 256
_VALID_ARGS: Memo[Arg, Arg] = Memo("valid arguments", _VALID_ARGS_MAX)
# a command constant has its own normal form: remembered apart
_VALID_COMMAND_ARGS: Memo[Arg, Arg] = Memo("valid command arguments", _VALID_ARGS_MAX)
# the getters bound once: a module-level getter is what a plain dict's .get cost
_valid_args_get = _VALID_ARGS.get
_valid_command_args_get = _VALID_COMMAND_ARGS.get


_CONST_OPS_FOR: dict[str, frozenset[int]] = {t: ops & CONST_OPS for t, ops in ALLOWED_OPS.items()}


def decode_arg(ptype: str, a: Arg, consts: tuple[str, ...]) -> Arg | None:
    """Validate argument instruction ``a`` for a ``ptype`` parameter: its decoded form, or None if invalid."""
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
        known = (_valid_command_args_get if ptype == COMMAND else _valid_args_get)(key)
        if known is not None:
            return known
        if const_problem(op, key[1], ptype) is not None:
            return None
        if len(key[1]) > _VALID_ARG_CHARS:
            return key
        return (_VALID_COMMAND_ARGS if ptype == COMMAND else _VALID_ARGS).put(key, key)
    if op == ANY:
        return ANY_ARG if len(a) == 1 else None
    if op == INT_RANGE and len(a) == 3 and op in ALLOWED_OPS[ptype]:
        _, lo, hi = a
        if type(lo) is not int or type(hi) is not int:
            return None
        rkey = (ptype, lo, hi)
        known = _valid_args_get(rkey)
        if known is not None:
            return known
        if range_problem(ptype, lo, hi) is not None:
            return None
        return _VALID_ARGS.put(rkey, (INT_RANGE, lo, hi))
    return None
