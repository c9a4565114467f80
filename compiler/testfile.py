"""Test files (``*.test.pol``): their syntax tree and their parser, with syntax errors in words.

The grammar is grammar/tests.lark, which imports the policy language's own
terminals (names, strings, numbers, punctuation, comments) from
grammar/policy.lark, so an expectation's arguments are written as a rule's.
The parser is built once per process (about 0.2 s; test runs are not a hot
path, so no tables are shipped) with an inline Transformer that builds the
frozen nodes below. A file that does not parse is parsed again token by token
(lark's basic lexer and interactive parser), keeping a checkpoint after every
``;``, ``{`` and ``}``: every syntax error is reported once, in words, and the
parse resumes at the next expectation or test.
"""

from __future__ import annotations

import gc
import importlib.resources
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import BasicLexer, LexerState
from lark.load_grammar import FromPackageLoader
from lark.utils import TextSlice

from .ast import AnyArg, Arg, IntArg, Name, Node, RangeArg, StrArg, int_literal
from .diagnostics import ERROR, Diagnostic, did_you_mean
from .messages import TERMINAL_WORDS, found_words, lexical_message
from .parser import _unescape

__all__ = ["Expect", "TestBlock", "TestFile", "parse_tests", "tests_grammar_text"]


@dataclass(frozen=True, slots=True)
class Expect(Node):
    """``expect VERDICT MODULE to CAP[(ARGS)] [by "FILE:LINE[:COL]"];`` located at ``expect``."""

    verdict: Name
    module: Name
    cap: Name
    args: tuple[Arg, ...] | None
    """``None`` when the capability is written without parentheses."""
    by: StrArg | None


@dataclass(frozen=True, slots=True)
class TestBlock(Node):
    """``test "NAME" { EXPECT... }`` located at ``test``."""

    name: StrArg
    expects: tuple[Expect, ...]


@dataclass(frozen=True, slots=True)
class TestFile:
    path: str
    tests: tuple[TestBlock, ...]


def tests_grammar_text() -> str:
    """The text of grammar/tests.lark (package data of ``polc.grammar``)."""
    return importlib.resources.files("polc.grammar").joinpath("tests.lark").read_text("utf-8")


@v_args(inline=True)
class _Builder(Transformer[Any, Any]):
    def __init__(self) -> None:
        super().__init__(visit_tokens=False)
        self.file = "<memory>"

    def start(self, *tests: TestBlock) -> tuple[TestBlock, ...]:
        return tests

    def test(self, kw: Any, name: Any, *expects: Expect) -> TestBlock:
        return TestBlock(self.file, kw.line, kw.column, kw.end_column, self._str(name), expects)

    def expect(self, kw: Any, verdict: Any, module: Any, cap: Any, args: Any, _by: Any, by: Any) -> Expect:
        return Expect(
            self.file, kw.line, kw.column, kw.end_column,
            self._name(verdict), self._name(module), self._name(cap), args,
            None if by is None else self._str(by),
        )

    def arglist(self, *args: Any) -> tuple[Any, ...]:
        if len(args) == 1 and args[0] is None:
            return ()
        return args

    def str_arg(self, tok: Any) -> StrArg:
        return self._str(tok)

    def int_arg(self, tok: Any) -> IntArg:
        return IntArg(self.file, tok.line, tok.column, tok.end_column, int_literal(tok))

    def range_arg(self, lo: Any, hi: Any) -> RangeArg:
        end = hi.end_column if hi.line == lo.line else lo.end_column
        return RangeArg(self.file, lo.line, lo.column, end, int_literal(lo), int_literal(hi))

    def any_arg(self, tok: Any) -> AnyArg:
        return AnyArg(self.file, tok.line, tok.column, tok.end_column)

    def _str(self, tok: Any) -> StrArg:
        value, bad = _unescape(str(tok))
        return StrArg(self.file, tok.line, tok.column, tok.end_column, value, bad)

    def _name(self, tok: Any) -> Name:
        return Name(self.file, tok.line, tok.column, tok.end_column, str(tok))


class _Parser:
    def __init__(self) -> None:
        self.builder = _Builder()
        self.lark: Any = Lark(
            tests_grammar_text(),
            transformer=self.builder,
            parser="lalr",
            lexer="contextual",
            maybe_placeholders=True,
            import_paths=[FromPackageLoader("polc.grammar", (".",))],
        )
        self.basic_lexer: Any = BasicLexer(self.lark.lexer_conf)
        self.lock = threading.Lock()


_PARSER: _Parser | None = None
_PARSER_LOCK = threading.Lock()


def _parser() -> _Parser:
    global _PARSER
    if _PARSER is None:
        with _PARSER_LOCK:
            if _PARSER is None:
                _PARSER = _Parser()
    return _PARSER


def parse_tests(text: str, path: str) -> tuple[TestFile, list[Diagnostic]]:
    """Parse one test file. Never raises for bad input: problems come back as diagnostics."""
    p = _parser()
    with p.lock:
        p.builder.file = path
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            try:
                return TestFile(path, tuple(p.lark.parse(text))), []
            except UnexpectedInput:
                pass
            tests, diags = _Recovery(p, text, path).run()
            return TestFile(path, tuple(tests)), diags
        finally:
            if gc_was_enabled:
                gc.enable()


# --------------------------------------------------------------------------
# syntax errors in words

_KEYWORDS = {"TEST": "test", "EXPECT": "expect", "BY": "by", "_TO": "to"}
_WORDS = {**TERMINAL_WORDS, "TEST": "'test'", "EXPECT": "'expect'", "BY": "'by'"}
_BOUNDARIES = ("_SEMI", "_LBRACE", "_RBRACE")
_EXPECT_SYNONYMS = {"assert": "expect", "check": "expect", "require": "expect", "expects": "expect"}
_TEST_SYNONYMS = {"tests": "test", "case": "test", "describe": "test", "it": "test"}


def _one_of(types: set[str]) -> str:
    words = sorted({_WORDS.get(t, "something else") for t in types})
    if not words:
        return "nothing more"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _found(tok: Any) -> str:
    if tok.type in _KEYWORDS:
        return f"'{tok.value}'"
    return found_words(tok)


def _syntax_message(tok: Any, expected: set[str], stmt: list[Any], prev: Any) -> tuple[str, bool]:
    """``(message, caret after the previous token)`` for an unexpected token."""
    found = _found(tok)
    first = stmt[0].type if stmt else None
    if (
        first == "EXPECT"
        and "_SEMI" in expected
        and prev is not None
        and (tok.type in ("EXPECT", "_RBRACE", "TEST", "$END") or tok.line > prev.end_line)
    ):
        return "missing ';' at the end of the expectation", True
    if first is None:
        if "EXPECT" in expected:  # in a test's body
            hint = did_you_mean(str(tok.value), ["expect"], synonyms=_EXPECT_SYNONYMS) if tok.type == "NAME" else ""
            if tok.type == "$END":
                return "end of file inside a test: a '}' is missing", False
            return f"expected an expectation ('expect allow|deny|audit MODULE to CAP(ARGS);') or '}}', " \
                   f"found {found}{hint}", False
        hint = did_you_mean(str(tok.value), ["test"], synonyms=_TEST_SYNONYMS) if tok.type == "NAME" else ""
        return f"expected a test ('test \"NAME\" {{ ... }}'), found {found}{hint}", False
    if first == "TEST":
        if len(stmt) == 1:
            return f"expected the test's name, a string, after 'test'; found {found}", False
        return f"expected '{{' after the test's name, found {found}", False
    if first == "EXPECT":
        n = len(stmt)
        if n == 1:
            return f"expected allow, deny or audit after 'expect', found {found}", False
        if n == 2:
            return f"expected the module's name after '{stmt[1].value}', found {found}", False
        if n == 3:
            return f"expected 'to' after the module's name, found {found}", False
        if n == 4:
            return f"expected the capability's name after 'to', found {found}", False
        if stmt[-1].type == "BY":
            return f"expected the deciding rule after 'by', a string \"FILE:LINE[:COL]\"; found {found}", False
        if any(t.type == "_LPAR" for t in stmt) and not any(t.type == "_RPAR" for t in stmt):
            return f"expected {_one_of(expected)} in the argument list, found {found}", False
        return f"expected {_one_of(expected)} in the expectation, found {found}", False
    return f"expected {_one_of(expected)}, found {found}", False  # pragma: no cover - every statement is above


_Checkpoint = tuple[list[Any], list[tuple[Any, int]]]


class _Recovery:
    """Token by token, one message per mistake, resuming at the next expectation or test."""

    def __init__(self, p: _Parser, text: str, path: str) -> None:
        self.p = p
        self.text = text
        self.path = path
        self.diags: list[Diagnostic] = []
        self.after_lex_error: set[int] = set()

    def _error(self, line: int, col: int, msg: str, length: int = 1) -> None:
        self.diags.append(Diagnostic(ERROR, self.path, line, col, msg, max(1, length)))

    def _tokens(self) -> list[Any]:
        state = LexerState(TextSlice.cast_from(self.text))
        out: list[Any] = []
        while True:
            try:
                out.append(self.p.basic_lexer.next_token(state))
            except EOFError:
                break
            except UnexpectedCharacters as e:
                pos = state.line_ctr.char_pos
                msg, skip = lexical_message(self.text, pos)
                self._error(e.line, e.column, msg)
                self.after_lex_error.add(len(out))
                state.line_ctr.feed(self.text[pos:skip])
        return out

    def run(self) -> tuple[list[TestBlock], list[Diagnostic]]:
        tokens = self._tokens()
        ip = self.p.lark.parse_interactive("")
        ps = ip.parser_state
        states = ps.parse_conf.parse_table.states

        def save() -> _Checkpoint:
            return (list(ps.state_stack), [(v, len(v.children)) if isinstance(v, Tree) else (v, -1)
                                           for v in ps.value_stack])

        def restore(cp: _Checkpoint) -> None:
            ps.state_stack[:] = cp[0]
            for v, n in cp[1]:
                if n >= 0:
                    del v.children[n:]
            ps.value_stack[:] = [v for v, _ in cp[1]]

        def accepts(t: str) -> bool:
            return t in states[ps.state_stack[-1]]

        def feed(tok: Any) -> Any:
            try:
                return ip.feed_token(tok)
            except UnexpectedToken:
                # where the grammar wants a name, a keyword is a name (as the contextual lexer has it)
                if tok.type in _KEYWORDS and accepts("NAME"):
                    return ip.feed_token(Token.new_borrow_pos("NAME", tok.value, tok))
                raise

        checkpoint = save()
        stmt: list[Any] = []
        recovering = False
        prev: Any = None
        last_fail = -1
        i, n = 0, len(tokens)
        while i < n:
            tok = tokens[i]
            try:
                feed(tok)
            except UnexpectedToken as e:
                if not recovering and i not in self.after_lex_error:
                    self._report(tok, set(e.expected), stmt, prev)
                restore(checkpoint)
                stmt = []
                if recovering and i == last_fail:  # resuming here failed again: skip the token
                    i += 1
                    continue
                last_fail = i
                recovering = True
                i = self._resync(tokens, i, accepts, ip)
                checkpoint = save()
                continue
            recovering = False
            stmt.append(tok)
            if tok.type in _BOUNDARIES:
                checkpoint = save()
                stmt = []
            prev = tok
            i += 1
        end = self._eof(prev)
        try:
            return list(feed(end)), self.diags
        except UnexpectedToken as e:
            if not recovering and n not in self.after_lex_error:
                self._report(end, set(e.expected), stmt, prev)
        restore(checkpoint)
        try:
            if accepts("_RBRACE"):
                ip.feed_token(Token.new_borrow_pos("_RBRACE", "}", end))
            result = ip.feed_token(end)
        except UnexpectedToken:
            result = [v for v in ps.value_stack if isinstance(v, TestBlock)]
        return list(result), self.diags

    def _resync(self, tokens: list[Any], i: int, accepts: Callable[[str], bool], ip: Any) -> int:
        """The index to resume at; the parser has been restored to the last checkpoint."""
        j = i
        while j < len(tokens):
            t = tokens[j]
            if t.type == "_SEMI":
                return j + 1
            if t.type == "_RBRACE":
                return j if accepts("_RBRACE") else j + 1
            if t.type in ("EXPECT", "TEST") and (j > i or accepts(t.type)):
                if accepts(t.type):
                    return j
                if t.type == "TEST" and accepts("_RBRACE"):
                    # the test before lacks its '}': close it, and start the next one here
                    ip.feed_token(Token.new_borrow_pos("_RBRACE", "}", t))
                    return j
            j += 1
        return j

    def _eof(self, prev: Any) -> Any:
        if prev is not None:
            return Token("$END", "", prev.end_pos, prev.end_line, prev.end_column)
        lines = self.text.split("\n")
        return Token("$END", "", len(self.text), len(lines), len(lines[-1]) + 1)

    def _report(self, tok: Any, expected: set[str], stmt: list[Any], prev: Any) -> None:
        msg, at_prev = _syntax_message(tok, expected, stmt, prev)
        if at_prev and prev is not None:
            self._error(prev.end_line, prev.end_column, msg)
        else:
            length = len(tok.value) if tok.type != "$END" and tok.end_line == tok.line else 1
            self._error(tok.line, tok.column, msg, length)
