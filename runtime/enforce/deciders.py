"""Fused deciders: Python code generated per plan shape, through a small code writer.

When every indexed table of a plan indexes the same argument position the
same way (the common case), the plan merges them into one index whose
entries carry a rank ``tier << TIER_SHIFT | source index``
(:mod:`~polc.runtime.enforce.index`). The smallest matching rank is then
exactly the deciding rule of the sequential evaluation (first tier with a
match, first rule of it in source order), found with one probe of each
candidate bucket instead of one probe per table.

The decider is Python source written for one *shape* — parameter types,
index kind and position, which buckets exist — by :class:`CodeWriter`, and
compiled once per process (at most 256 shapes are kept). It normalises the
arguments inline (memo probes; a normaliser is called only on a miss or a
refusal), checks the first port/int parameter's range inline, and returns
the Decision memoised per rank. Each plan's decider is a function of that
code whose defaults are the plan's values: no closure cells, one small tuple
per plan, and locals are faster to read than cells. This is what brings an
uncached check (``cache_size=0``) to ~1.6 µs per request of the mixed
benchmark stream at 10 modules x 20 rules, the loop included, and building
a plan to ~10 µs at 1,000 x 20 (3.11, 2 shared vCPUs; docs/benchmarks.md).

The generated code reads nothing but its arguments and :data:`NAMESPACE`,
an explicit dict of the helpers it calls (and the five builtins it uses):
a helper renamed without updating it fails when the namespace is built, at
import, and every name the code loads is checked against it when the code
is compiled. Each shape's source is registered with :mod:`linecache` under
its own file name (``<polc decider ...>``), so a traceback through a
decider shows its lines, and :func:`source_of` returns it.
"""

from __future__ import annotations

import dis
import linecache
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType, FunctionType
from typing import TYPE_CHECKING, Any

from ..catalog import COMMAND, HOST, INT, PATH, PORT, PORT_MAX, PORT_MIN, STRING
from ..memo import Memo
from .index import (
    BIG,
    COMMAND_INDEX,
    HOST_INDEX,
    INDEX_KIND_NAMES,
    KEY_INDEX,
    PATH_INDEX,
    IndexKind,
    int_pos,
    segment_prefixes,
    segment_prefixes_get,
    suffixes,
    suffixes_get,
)
from .normalize import HOST_MEMO, PATH_MEMO, norm_command, norm_host, norm_int, norm_path, norm_port, norm_string

if TYPE_CHECKING:
    from .decision import Decision

__all__ = ["NAMESPACE", "CodeWriter", "Decider", "Shape", "decider_code", "make_decider", "source_of"]

Decider = Callable[[tuple[object, ...]], "Decision"]
# (parameter types, index kind, index position,
#  (has exact, has wild1, has depths, has pfx, has ip, has rest))
Shape = tuple[tuple[str, ...], IndexKind, int, tuple[bool, bool, bool, bool, bool, bool]]

# Everything the generated code may load by name.
NAMESPACE: dict[str, Any] = {
    "__builtins__": {"len": len, "type": type, "int": int, "str": str, "Exception": Exception},
    "BIG": BIG,
    "PORT_MIN": PORT_MIN,
    "PORT_MAX": PORT_MAX,
    "host_memo_get": HOST_MEMO.get,
    "path_memo_get": PATH_MEMO.get,
    "suffixes_get": suffixes_get,
    "suffixes": suffixes,
    "segments_get": segment_prefixes_get,
    "segment_prefixes": segment_prefixes,
    "norm_host": norm_host,
    "norm_path": norm_path,
    "norm_port": norm_port,
    "norm_string": norm_string,
    "norm_int": norm_int,
    "norm_command": norm_command,
}


class CodeWriter:
    """Python source built line by line, each block indented under its header
    (in the manner of Jinja's ``CodeGenerator``); an empty block gets ``pass``."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._depth = 0

    def line(self, text: str) -> None:
        self._lines.append("    " * self._depth + text + "\n")

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        self.line(header)
        self._depth += 1
        start = len(self._lines)
        try:
            yield
        finally:
            if len(self._lines) == start:
                self.line("pass")
            self._depth -= 1

    def source(self) -> str:
        return "".join(self._lines)


# --------------------------------------------------------------------------
# The pieces of a decider


def _write_normalizer(w: CodeWriter, typ: str, i: int) -> None:
    """Leave ``v{i}`` normalised, or return the plan's "invalid argument" decision.

    ``except Exception``: a hostile value (a ``__class__`` or ``__eq__`` that
    raises) is bad input like any other, and a try costs nothing until it raises.
    """
    v = f"v{i}"
    if typ in (HOST, PATH):
        memo_get, norm = ("host_memo_get", "norm_host") if typ == HOST else ("path_memo_get", "norm_path")
        w.line(f"a = args[{i}]")
        with w.block("try:"):
            w.line(f"{v} = {memo_get}(a) if type(a) is str else None")
            with w.block(f"if {v} is None:"):
                w.line(f"{v} = {norm}(a)")
        with w.block("except Exception:"):
            w.line("return plan._bad_argument(args)")
    elif typ in (PORT, STRING, INT):
        test, norm = {
            PORT: (f"type({v}) is not int or not PORT_MIN <= {v} <= PORT_MAX", "norm_port"),
            STRING: (f"type({v}) is not str", "norm_string"),
            INT: (f"type({v}) is not int", "norm_int"),
        }[typ]
        w.line(f"{v} = args[{i}]")
        with w.block(f"if {test}:"):
            with w.block("try:"):
                w.line(f"{v} = {norm}({v})")
            with w.block("except Exception:"):
                w.line("return plan._bad_argument(args)")
    elif typ == COMMAND:
        with w.block("try:"):
            w.line(f"{v} = norm_command(args[{i}])")
        with w.block("except Exception:"):
            w.line("return plan._bad_argument(args)")
    else:  # pragma: no cover - the verifier admits no other type
        raise ValueError(f"no normaliser for parameter type {typ!r}")


def _write_scan(w: CodeWriter, bucket: str, ipos: int) -> None:
    """Scan one bucket (entries in rank order) for a matching rank below ``best``."""
    ranged = ipos >= 0  # entries (rank, lo, hi, checks): the range check at ipos inline
    with w.block(f"for r, lo, hi, checks in {bucket}:" if ranged else f"for r, checks in {bucket}:"):
        with w.block("if r >= best:"):
            w.line("break")
        if ranged:
            with w.block(f"if not lo <= v{ipos} <= hi:"):
                w.line("continue")
        with w.block("for p, fn in checks:"), w.block("if not fn(vals[p]):"):
            w.line("break")
        with w.block("else:"):
            w.line("best = r")
            w.line("break")


def _write_probe(w: CodeWriter, lookup: str, ipos: int) -> None:
    """``b = <lookup>`` and scan ``b`` when the index has that bucket."""
    w.line(f"b = {lookup}")
    with w.block("if b is not None:"):
        _write_scan(w, "b", ipos)


def _parameters(flags: tuple[bool, ...]) -> tuple[str, ...]:
    has_exact, has_wild1, has_depths, has_pfx, has_ip, has_rest = flags
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
    return tuple(names)


def write_decider(shape: Shape) -> tuple[str, tuple[str, ...]]:
    """The source of the decider of one shape, and the names of its parameters after ``args``."""
    types, kind, pos, flags = shape
    has_exact, has_wild1, has_depths, has_pfx, has_ip, has_rest = flags
    ipos = int_pos(types)
    names = _parameters(flags)
    if kind == COMMAND_INDEX:
        names += ("commands",)
    w = CodeWriter()
    with w.block(f"def decide(args, {', '.join(names)}):"):
        with w.block("if len(args) != arity:"):
            w.line("return plan._wrong_arity(args)")
        for i, t in enumerate(types):
            if kind == COMMAND_INDEX and i == pos:
                w.line(f"v{i} = args[{i}]")  # normalised by the index itself
            else:
                _write_normalizer(w, t, i)
        w.line("vals = (" + "".join(f"v{i}, " for i in range(len(types))) + ")")
        w.line("best = BIG")
        if kind == HOST_INDEX:
            w.line(f"k = v{pos}")
            with w.block("if k.__class__ is str:"):
                if has_exact:
                    _write_probe(w, "exact.get(k)", ipos)
                if has_wild1 or has_depths:
                    w.line("sfx = suffixes_get(k)")
                    with w.block("if sfx is None:"):
                        w.line("sfx = suffixes(k)")
                    with w.block("if sfx:"):
                        if has_wild1:
                            _write_probe(w, "wild1.get(sfx[0])", ipos)
                        if has_depths:
                            w.line("n = len(sfx)")
                            with w.block("for depth in depths:"):
                                with w.block("if depth > n:"):
                                    w.line("break")
                                _write_probe(w, "wildn.get(sfx[n - depth])", ipos)
            if has_ip:
                with w.block("else:"):
                    _write_scan(w, "ip", ipos)
        elif kind == PATH_INDEX:  # v{pos} is a normalised path (a str)
            w.line(f"k = v{pos}")
            if has_exact:  # the LAST_SEGMENT buckets
                _write_probe(w, 'exact.get(k[k.rfind("/") + 1:])', ipos)
            if has_depths:  # the SEGMENTS buckets, at the segment counts held
                w.line("pre = segments_get(k)")
                with w.block("if pre is None:"):
                    w.line("pre = segment_prefixes(k)")
                w.line("n = len(pre)")
                with w.block("for depth in depths:"):
                    with w.block("if depth > n:"):
                        w.line("break")
                    _write_probe(w, "wildn.get(pre[depth - 1])", ipos)
        elif kind == KEY_INDEX:
            w.line(f"k = v{pos}")
            if has_exact:
                _write_probe(w, "exact.get(k)", ipos)
            if has_pfx:
                with w.block("if k.__class__ is str:"), w.block("for n in pfx_lens:"):
                    with w.block("if n > len(k):"):
                        w.line("break")
                    _write_probe(w, "pfx.get(k[:n])", ipos)
        elif kind == COMMAND_INDEX:  # every rule in one index of the command (normalising it)
            with w.block("try:"):
                w.line(f"best = commands(v{pos})")
            with w.block("except Exception:"):
                w.line("return plan._bad_argument(args)")
        if has_rest:
            _write_scan(w, "rest", ipos)
        with w.block("if best == BIG:"):
            w.line("return no_ent")
        w.line("d = decisions.get(best)")
        w.line("return d if d is not None else plan._ranked_decision(best)")
    return w.source(), names


def _file_name(shape: Shape) -> str:
    types, kind, pos, flags = shape
    held = [n for n, f in zip(("exact", "wild1", "wildn", "pfx", "ip", "rest"), flags, strict=True) if f]
    return f"<polc decider ({', '.join(types)}) {INDEX_KIND_NAMES[kind]}@{pos} [{' '.join(held)}]>"


def _forget_sources(entries: dict[Shape, tuple[CodeType, tuple[str, ...]]]) -> None:
    for code, _names in entries.values():
        linecache.cache.pop(code.co_filename, None)


_CODES: Memo[Shape, tuple[CodeType, tuple[str, ...]]] = Memo("decider code", 256, on_clear=_forget_sources)
_codes_get = _CODES.get


def _compile(shape: Shape) -> tuple[CodeType, tuple[str, ...]]:
    source, names = write_decider(shape)
    filename = _file_name(shape)
    defined: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), NAMESPACE, defined)
    code: CodeType = defined["decide"].__code__
    builtins = NAMESPACE["__builtins__"]
    for ins in dis.get_instructions(code):
        if ins.opname == "LOAD_GLOBAL" and ins.argval not in NAMESPACE and ins.argval not in builtins:
            raise RuntimeError(f"generated decider {filename} loads {ins.argval!r}, which NAMESPACE lacks")
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    return code, names


def decider_code(shape: Shape) -> tuple[CodeType, tuple[str, ...]]:
    """``(code, names)``: the compiled decider of one shape and the names of its
    parameters after ``args``. Compiled once per shape (256 kept)."""
    f = _codes_get(shape)
    if f is None:
        f = _CODES.put(shape, _compile(shape))
    return f


def make_decider(code: CodeType, defaults: tuple[object, ...]) -> Decider:
    """One plan's decider: the shape's code with the plan's values as its defaults."""
    fn: Decider = FunctionType(code, NAMESPACE, "decide", defaults)
    return fn


def source_of(decider: Callable[..., object]) -> str | None:
    """The generated source of a decider (None for a function that is not one)."""
    name = decider.__code__.co_filename if isinstance(decider, FunctionType) else ""
    lines = linecache.cache.get(name)
    return "".join(lines[2]) if lines is not None and len(lines) == 4 else None
