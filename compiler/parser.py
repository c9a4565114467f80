"""Stage 1: source text -> syntax tree (compiler/ast.py) plus syntax diagnostics.

The parser is built once per process from the shipped LALR tables
(compiler/grammar.py), with an inline Transformer that builds the frozen AST
nodes directly, so lark never builds a parse tree. A source is parsed with the
garbage collector paused (GC is ~40% of a large parse): first by the fast LALR
loop (compiler/lalr_fast.py); only a source it refuses goes to the slower,
error-recovering parser (compiler/recovery.py), which reports every error in
words (compiler/messages.py).
"""

from __future__ import annotations

import gc
import threading
from typing import Any

from lark import Transformer, v_args
from lark.exceptions import UnexpectedInput
from lark.lexer import BasicLexer

from .ast import (
    AnyArg,
    CapabilityDecl,
    GovernsStmt,
    IntArg,
    ModeStmt,
    Module,
    Name,
    ParamDecl,
    RangeArg,
    Rule,
    SourceFile,
    StrArg,
    int_literal,
)
from .diagnostics import Diagnostic
from .grammar import build_lark, grammar_text, load_tables
from .lalr_fast import FastPath
from .recovery import Recovery

__all__ = ["Parser", "get_parser", "grammar_text", "parse"]


def _unescape(raw: str) -> tuple[str, str | None]:
    """Decode a STRING token's text (quotes included): ``\\"`` and ``\\\\``."""
    inner = raw[1:-1]
    if "\\" not in inner:
        return inner, None
    out: list[str] = []
    bad: str | None = None
    i, n = 0, len(inner)
    while i < n:
        ch = inner[i]
        if ch == "\\" and i + 1 < n:
            nxt = inner[i + 1]
            if nxt in ('"', "\\"):
                out.append(nxt)
            else:
                if bad is None:
                    bad = "\\" + nxt
                out.append("\\" + nxt)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out), bad


@v_args(inline=True)
class Builder(Transformer[Any, Any]):
    """Builds AST nodes as lark reduces rules (no parse tree is ever built)."""

    def __init__(self) -> None:
        super().__init__(visit_tokens=False)
        self.file = "<memory>"

    def start(self, *modules: Module) -> tuple[Module, ...]:
        return modules

    def module(self, kw: Any, name: Any, *body: Any) -> Module:
        return Module(self.file, kw.line, kw.column, kw.end_column, self._name(name), body)

    def rule(self, kw: Any, cap: Any, args: Any) -> Rule:
        effect = "entitle" if kw == "entitle" else "deny"
        return Rule(self.file, kw.line, kw.column, kw.end_column, effect, self._name(cap), args)

    def arglist(self, *args: Any) -> tuple[Any, ...]:
        if len(args) == 1 and args[0] is None:
            return ()
        return args

    def str_arg(self, tok: Any) -> StrArg:
        value, bad = _unescape(str(tok))
        return StrArg(self.file, tok.line, tok.column, tok.end_column, value, bad)

    def int_arg(self, tok: Any) -> IntArg:
        return IntArg(self.file, tok.line, tok.column, tok.end_column, int_literal(tok))

    def range_arg(self, lo: Any, hi: Any) -> RangeArg:
        end = hi.end_column if hi.line == lo.line else lo.end_column
        return RangeArg(self.file, lo.line, lo.column, end, int_literal(lo), int_literal(hi))

    def any_arg(self, tok: Any) -> AnyArg:
        return AnyArg(self.file, tok.line, tok.column, tok.end_column)

    def mode(self, kw: Any, name: Any) -> ModeStmt:
        return ModeStmt(self.file, kw.line, kw.column, kw.end_column, self._name(name))

    def capability(self, kw: Any, name: Any, *params: Any) -> CapabilityDecl:
        if len(params) == 1 and params[0] is None:
            params = ()
        return CapabilityDecl(self.file, kw.line, kw.column, kw.end_column, self._name(name), params)

    def governs(self, kw: Any, *names: Any) -> GovernsStmt:
        return GovernsStmt(self.file, kw.line, kw.column, kw.end_column, tuple(self.str_arg(n) for n in names))

    def param(self, name: Any, type_: Any) -> ParamDecl:
        n = self._name(name)
        return ParamDecl(self.file, n.line, n.col, n.end_col, n, self._name(type_))

    def _name(self, tok: Any) -> Name:
        return Name(self.file, tok.line, tok.column, tok.end_column, str(tok))


class Parser:
    """The process-wide parser: lark (from the shipped tables when they are current), its fast path, a lock."""

    def __init__(self) -> None:
        self.builder = Builder()
        # The grammar's freedom from terminal collisions (strict=True) is checked
        # when the tables are generated and by tests/compiler/test_compiler_syntax.py, not
        # at every start.
        lk = load_tables(self.builder)
        self.from_tables = lk is not None
        self.lark: Any = lk if lk is not None else build_lark(self.builder)
        self.basic_lexer: Any = BasicLexer(self.lark.lexer_conf)
        self.lock = threading.Lock()
        self.fast = FastPath.build(self.lark)


_PARSER: Parser | None = None
_PARSER_LOCK = threading.Lock()


def get_parser() -> Parser:
    """The process-wide parser, built on first use."""
    global _PARSER
    if _PARSER is None:
        with _PARSER_LOCK:
            if _PARSER is None:
                _PARSER = Parser()
    return _PARSER


def parse(text: str, path: str) -> tuple[SourceFile, list[Diagnostic]]:
    """Parse one source. Never raises for bad input: problems come back as diagnostics."""
    p = get_parser()
    with p.lock:
        p.builder.file = path
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if p.fast is not None:
                modules = p.fast.parse(text)
                if modules is not None:
                    return SourceFile(path, tuple(modules)), []
            else:
                try:
                    return SourceFile(path, tuple(p.lark.parse(text))), []
                except UnexpectedInput:
                    pass
            found, diags = Recovery(p, text, path).run()
            return SourceFile(path, tuple(found)), diags
        finally:
            if gc_was_enabled:
                gc.enable()
