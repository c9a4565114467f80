"""``polc fmt``: one canonical layout for policy sources and test files, comments kept.

The formatter works on the token stream, not on a grammar of its own: the
source is scanned with the grammar's own terminals (comments and white space
included), grouped into statements by the punctuation every statement of the
language ends with (``;``, or a ``{ ... }`` block), and printed again:

- four spaces of indentation per block level, one statement per line;
- one space between words, none before ``; , ) :`` or after ``(``, none around
  ``..``, ``name(`` without a space, ``{`` after a space at the end of its line;
- at most one blank line kept where the author left blank lines between
  statements or comments, none at the start or end of a block, exactly one
  between top-level blocks, and one between a module's declarations and its
  rules;
- in a ``security module`` body the declarations, whose order has no meaning,
  come first in a fixed order (``mode``, ``governs``, ``capability``, each
  kind in its source order), and the package names of ``governs`` are sorted;
  rules and every other statement keep their order, because the first
  matching rule is the one a decision names;
- comments stay with the token they were written beside: a comment on its
  own line before a statement is printed on its own line before it, a comment
  at the end of a line stays at the end of that line (two spaces before it),
  a block comment inside a statement stays inside it; the text of a comment is
  never changed (a multi-line block comment keeps its inner lines as written);
- ``\\n`` line ends, no trailing white space, one final newline, no BOM.

A statement keyword the formatter does not know is formatted like any other
statement, in place: a new statement of the language needs no change here
unless its declarations are to be ordered (:data:`SECTIONS`).

Before a result is returned it is parsed again and compared with the source
(syntax trees without positions, with the declarations ordered as above, and
the comments as a multiset): a difference is a :class:`FormatError`, so a
formatter bug can never change what a policy means.
"""

from __future__ import annotations

import importlib
import importlib.resources
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from polc.runtime.errors import PolcError

from .diagnostics import ERROR, Diagnostic

__all__ = [
    "SECTIONS",
    "SORTED_LISTS",
    "TEST_SUFFIX",
    "FormatError",
    "Formatted",
    "format_source",
    "is_test_file",
]

TEST_SUFFIX = ".test.pol"
"""Test files (``polc test``) are formatted with the test grammar (grammar/tests.lark)."""

SECTIONS: dict[str, int] = {"mode": 0, "governs": 1, "capability": 2}
"""Statements of a ``security module`` body whose position has no meaning, by first word, in print order.

Every other statement (rules, and any statement not listed) comes after them in source order.
"""
SORTED_LISTS = frozenset({"governs"})
"""Statements (by first word) whose comma-separated strings have no order: printed sorted."""
_ORDERED = len(SECTIONS)
_ORDERED_BLOCKS = frozenset({"security"})
"""Blocks (by first word) whose bodies get the declaration sections; test blocks keep their order."""

INDENT = "    "
NO_SPACE_BEFORE = frozenset({";", ",", ")", ":", ".."})
NO_SPACE_AFTER = frozenset({"(", ".."})


class FormatError(PolcError):
    """The formatter's result would not mean what the source means (a formatter bug; nothing is written)."""

    exit_code = 1


def is_test_file(path: str) -> bool:
    return path.endswith(TEST_SUFFIX)


# --------------------------------------------------------------------------
# syntaxes: the terminals to scan with, the syntax check, the position-free tree


@dataclass(slots=True)
class _Syntax:
    scanner: re.Pattern[str]
    whitespace: frozenset[str]
    comments: frozenset[str]
    names: frozenset[str]
    check: Callable[[str, str], tuple[Any, list[Diagnostic]]]
    """``(text, path) -> (position-free tree or None, syntax diagnostics)``."""


def _scanner(terminals: list[Any]) -> tuple[re.Pattern[str], frozenset[str]]:
    """One regex over ``terminals`` in lark's order; a NAME-like terminal swallows the keywords it matches."""
    terms = sorted(terminals, key=lambda t: (-t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name))
    regex_terms = [t for t in terms if t.pattern.type == "re"]
    names: set[str] = set()
    alts = []
    for t in terms:
        if t.pattern.type == "str":
            covering = [r for r in regex_terms if re.fullmatch(r.pattern.to_regexp(), t.pattern.value)]
            if covering:
                names.update(r.name for r in covering)
                continue
        alts.append(f"(?P<{t.name}>{t.pattern.to_regexp()})")
    return re.compile("|".join(alts)), frozenset(names)


def _split_ignored(lk: Any) -> tuple[frozenset[str], frozenset[str]]:
    ignored = set(lk.lexer_conf.ignore)
    ws = {t.name for t in lk.lexer_conf.terminals if t.name in ignored and re.fullmatch(t.pattern.to_regexp(), " ")}
    return frozenset(ws), frozenset(ignored - ws)


def _strip(node: Any) -> Any:
    """A syntax tree without positions: what the formatter must never change."""
    if is_dataclass(node) and not isinstance(node, type):
        skip = {"file", "line", "col", "end_col", "path"}
        return (type(node).__name__, *(_strip(getattr(node, f.name)) for f in fields(node) if f.name not in skip))
    if isinstance(node, tuple | list):
        return tuple(_strip(n) for n in node)
    if isinstance(node, int) and not isinstance(node, bool):
        return ("int", repr(node))
    return node


def _policy_syntax() -> _Syntax:
    from .parser import get_parser, parse

    lk = get_parser().lark
    scanner, names = _scanner(list(lk.lexer_conf.terminals))
    ws, comments = _split_ignored(lk)

    def check(text: str, path: str) -> tuple[Any, list[Diagnostic]]:
        sf, diags = parse(text, path)
        errors = [d for d in diags if d.severity == ERROR]
        if errors:
            return None, errors
        modules = []
        for m in sf.modules:
            body = sorted(m.body, key=_ast_section)  # stable: the formatter's order
            modules.append((_strip(m.name), _strip(tuple(_sorted_list(st) for st in body))))
        return tuple(modules), []

    return _Syntax(scanner, ws, comments, names, check)


def _sorted_list(stmt: Any) -> Any:
    """A statement whose list has no order (:data:`SORTED_LISTS`) with its list sorted, as the formatter prints it."""
    from dataclasses import replace

    if type(stmt).__name__.lower().startswith(tuple(SORTED_LISTS)) and hasattr(stmt, "names"):
        return replace(stmt, names=tuple(sorted(stmt.names, key=lambda a: a.value)))
    return stmt


def _ast_section(stmt: Any) -> int:
    name = type(stmt).__name__.lower()
    for word, rank in SECTIONS.items():
        if name.startswith(word):
            return rank
    return _ORDERED


def grammar_text_of_tests() -> str | None:
    """grammar/tests.lark, when this installation has the test language."""
    res = importlib.resources.files("polc.grammar").joinpath("tests.lark")
    return res.read_text("utf-8") if res.is_file() else None


def _tree(node: Any) -> Any:
    from lark import Token, Tree

    if isinstance(node, Tree):
        return (str(node.data), tuple(_tree(c) for c in node.children))
    if isinstance(node, Token):
        return (node.type, str(node))
    return node


def _test_syntax() -> _Syntax | None:
    text = grammar_text_of_tests()
    if text is None:
        return None
    import os

    from lark import Lark
    from lark.exceptions import UnexpectedInput

    here = os.path.dirname(str(importlib.resources.files("polc.grammar").joinpath("tests.lark")))
    lk = Lark(text, parser="lalr", lexer="contextual", maybe_placeholders=True, import_paths=[here])
    scanner, names = _scanner(list(lk.lexer_conf.terminals))
    ws, comments = _split_ignored(lk)

    try:  # the test-file parser polc test uses, when installed: its syntax errors are in words
        parse_tests: Any = importlib.import_module(f"{__package__}.testfile").parse_tests
    except (ImportError, AttributeError):
        parse_tests = None

    def check(src: str, path: str) -> tuple[Any, list[Diagnostic]]:
        if parse_tests is not None:
            tf, diags = parse_tests(src, path)
            errors = [d for d in diags if d.severity == ERROR]
            return (None, errors) if errors else (_strip(tf), [])
        try:
            return _tree(lk.parse(src)), []
        except UnexpectedInput as exc:
            line, col = getattr(exc, "line", 1) or 1, getattr(exc, "column", 1) or 1
            tok = getattr(exc, "token", None)
            what = f"unexpected {str(tok)!r}" if tok is not None and str(tok) else "unexpected input"
            if tok is not None and getattr(tok, "type", "") == "$END":
                what = "unexpected end of file"
            return None, [Diagnostic(ERROR, path, max(1, line), max(1, col), f"syntax error: {what}")]

    return _Syntax(scanner, ws, comments, names, check)


_SYNTAXES: dict[bool, _Syntax | None] = {}
_LOCK = threading.Lock()


def _syntax(test_file: bool) -> _Syntax | None:
    with _LOCK:
        if test_file not in _SYNTAXES:
            _SYNTAXES[test_file] = _test_syntax() if test_file else _policy_syntax()
        return _SYNTAXES[test_file]


# --------------------------------------------------------------------------
# the token stream, grouped into statements


@dataclass(slots=True)
class _Item:
    kind: str
    text: str
    newlines: int
    """Line breaks between the previous item (or the start of the file) and this one."""
    comment: bool = False

    @property
    def line_comment(self) -> bool:
        return self.comment and not self.text.startswith("/*")


@dataclass(slots=True)
class _Comment:
    text: str
    blank_before: bool


@dataclass(slots=True)
class _Stmt:
    leading: list[_Comment] = field(default_factory=list)
    """Comments on their own lines before the statement."""
    blank_before: bool = False
    blank_after_leading: bool = False
    """A blank line between its leading comments and its first token."""
    tokens: list[_Item] = field(default_factory=list)
    """Its tokens up to ``;`` or ``{``, with the comments between them (``comment=True``)."""
    body: list[_Stmt] | None = None
    """The statements of its block, when it has one."""
    open_comment: str | None = None
    """A comment at the end of the line of ``{``."""
    closing: list[_Comment] = field(default_factory=list)
    """Comments on their own lines before ``}``."""
    trailing: str | None = None
    """A comment at the end of its last line (after ``;`` or ``}``)."""

    @property
    def first_word(self) -> str:
        for t in self.tokens:
            if not t.comment:
                return t.text
        return ""


def _scan(text: str, syntax: _Syntax, path: str) -> list[_Item]:
    items: list[_Item] = []
    pos = 0
    pending = 0
    for m in syntax.scanner.finditer(text):
        if m.start() != pos:
            break
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group()
        if kind in syntax.whitespace:
            pending += value.count("\n")
            continue
        comment = kind in syntax.comments
        if comment:
            value = "\n".join(line.rstrip(" \t\r") for line in value.split("\n"))
        items.append(_Item(kind, value, pending, comment))
        pending = 0
    if pos != len(text):
        raise FormatError(f"{path}: cannot scan the text at offset {pos}")
    items.append(_Item("$END", "", pending))
    return items


class _Grouper:
    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self.i = 0

    def _comments(self) -> list[_Comment]:
        """The comments on their own lines from here on (block comments followed on their line by code are code's).

        Comments that share a line are kept together, as one.
        """
        out: list[_Comment] = []
        while True:
            it = self.items[self.i]
            if not it.comment or not (it.newlines or self.i == 0) or self._glued(self.i):
                return out
            texts = [it.text]
            self.i += 1
            while not self.items[self.i - 1].line_comment and self.items[self.i].comment \
                    and self.items[self.i].newlines == 0:
                texts.append(self.items[self.i].text)
                self.i += 1
            out.append(_Comment(" ".join(texts), it.newlines > 1))

    def _glued(self, i: int) -> bool:
        """Is the comment at ``i`` (with any comments after it on its line) followed on its line by code?"""
        k = i
        while self.items[k].comment and not self.items[k].line_comment and self.items[k + 1].newlines == 0:
            k += 1
        end = self.items[k]
        return k > i and not end.comment and end.kind != "$END" and end.text != "}"

    def _trailing(self) -> str | None:
        """The comments at the end of the current line, joined by a space."""
        found: list[str] = []
        while True:
            it = self.items[self.i]
            if not (it.comment and it.newlines == 0):
                return " ".join(found) if found else None
            found.append(it.text)
            self.i += 1
            if it.line_comment:
                return " ".join(found)

    def sequence(self, top: bool) -> tuple[list[_Stmt], list[_Comment]]:
        stmts: list[_Stmt] = []
        while True:
            start = self.items[self.i]
            leading = self._comments()
            cur = self.items[self.i]
            if cur.kind == "$END" or (not top and cur.text == "}"):
                return stmts, leading
            stmt = _Stmt(leading=leading, blank_before=start.newlines > 1,
                         blank_after_leading=bool(leading) and cur.newlines > 1)
            self._statement(stmt)
            stmts.append(stmt)

    def _statement(self, stmt: _Stmt) -> None:
        while True:
            it = self.items[self.i]
            if it.kind == "$END":
                raise FormatError("unexpected end of file inside a statement")
            if it.text == "}" and not it.comment:
                raise FormatError("unexpected '}' inside a statement")
            self.i += 1
            if it.comment:
                stmt.tokens.append(it)
                continue
            if it.text == ";":
                stmt.tokens.append(it)
                stmt.trailing = self._trailing()
                return
            if it.text == "{":
                stmt.open_comment = self._trailing()
                body, closing = self.sequence(top=False)
                stmt.body, stmt.closing = body, closing
                end = self.items[self.i]
                if end.text != "}":
                    raise FormatError("a block is not closed")
                self.i += 1
                stmt.trailing = self._trailing()
                return
            stmt.tokens.append(it)


# --------------------------------------------------------------------------
# printing


class _Printer:
    def __init__(self, names: frozenset[str]) -> None:
        self.lines: list[str] = []
        self.names = names

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def comment(self, text: str, depth: int) -> None:
        first, *rest = text.split("\n")
        self.lines.append(INDENT * depth + first)
        self.lines.extend(line.rstrip(" \t\r") for line in rest)

    def sequence(self, stmts: list[_Stmt], closing: list[_Comment], depth: int, ordered: bool) -> None:
        if ordered:
            stmts = self._ordered(stmts)
        for k, stmt in enumerate(stmts):
            first = k == 0
            for j, c in enumerate(stmt.leading):
                if not (first and j == 0) and (c.blank_before or (depth == 0 and j == 0)):
                    self.blank()
                self.comment(c.text, depth)
            if stmt.blank_after_leading:
                self.blank()
            if not first and not stmt.leading and (stmt.blank_before or depth == 0):
                self.blank()
            self.statement(stmt, depth)
        for j, c in enumerate(closing):
            if (stmts or j) and (c.blank_before or (depth == 0 and j == 0 and stmts[-1].body is not None)):
                self.blank()
            self.comment(c.text, depth)

    @staticmethod
    def _ordered(stmts: list[_Stmt]) -> list[_Stmt]:
        """The declarations first (stable), one blank line between them and the rules."""
        ranked = sorted(stmts, key=lambda s: SECTIONS.get(s.first_word, _ORDERED))
        prev: int | None = None
        for s in ranked:
            rank = SECTIONS.get(s.first_word, _ORDERED)
            if prev is not None and prev < _ORDERED <= rank:
                s.blank_before = True
                if s.leading:
                    s.leading[0].blank_before = True
            prev = rank
        return ranked

    @staticmethod
    def _sort_list(stmt: _Stmt) -> None:
        """``governs "b", "a";`` -> ``governs "a", "b";`` (only a plain list: no comments inside)."""
        toks = stmt.tokens
        if stmt.first_word not in SORTED_LISTS or any(t.comment for t in toks) or len(toks) < 3:
            return
        items = toks[1:-1:2]
        seps = toks[2:-1:2]
        if toks[-1].text != ";" or len(items) != len(seps) + 1 or any(t.text != "," for t in seps):
            return
        if not all(t.text.startswith('"') for t in items):
            return

        def value(t: _Item) -> str:
            return t.text[1:-1].replace('\\"', '"').replace("\\\\", "\\")

        ordered = sorted(items, key=value)
        toks[1:-1:2] = ordered

    def statement(self, stmt: _Stmt, depth: int) -> None:
        self._sort_list(stmt)
        line = INDENT * depth
        cont = INDENT * (depth + 1)
        prev: _Item | None = None
        after_break = True
        for tok in stmt.tokens:
            if tok.comment:
                if tok.newlines and not after_break:  # a comment on its own line inside a statement
                    self.lines.append(line.rstrip())
                    line = cont
                    after_break = True
                if tok.line_comment:
                    line = (line + ("  " if not after_break else "") + tok.text) if line.strip() else cont + tok.text
                    self.lines.append(line.rstrip())
                    line = cont
                    after_break = True
                    prev = None
                    continue
                glue = after_break or (prev is not None and prev.text in NO_SPACE_AFTER)
                line += ("" if glue else " ") + tok.text
                after_break = False
                prev = tok
                continue
            if not after_break and self._space(prev, tok):
                line += " "
            line += tok.text
            after_break = False
            prev = tok
        if stmt.body is None:
            line += "  " + stmt.trailing if stmt.trailing else ""
            self.lines.append(line.rstrip())
            return
        line += ("" if after_break else " ") + "{"
        if stmt.open_comment:
            line += "  " + stmt.open_comment
        self.lines.append(line.rstrip())
        ordered = stmt.first_word in _ORDERED_BLOCKS
        self.sequence(stmt.body, stmt.closing, depth + 1, ordered)
        end = INDENT * depth + "}"
        if stmt.trailing:
            end += "  " + stmt.trailing
        self.lines.append(end)

    def _space(self, prev: _Item | None, tok: _Item) -> bool:
        if prev is None:
            return False
        if tok.text in NO_SPACE_BEFORE or prev.text in NO_SPACE_AFTER:
            return False
        return not (tok.text == "(" and (prev.kind in self.names or prev.text.isidentifier()))

    def text(self) -> str:
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n" if self.lines else ""


# --------------------------------------------------------------------------
# the API


@dataclass(frozen=True, slots=True)
class Formatted:
    """The outcome of formatting one source: the new text, or the syntax errors that stopped it."""

    path: str
    original: str
    text: str | None
    diagnostics: list[Diagnostic]

    @property
    def changed(self) -> bool:
        return self.text is not None and self.text != self.original


def _comment_texts(items: list[_Item]) -> Counter[str]:
    return Counter("\n".join(line.rstrip(" \t\r") for line in it.text.split("\n")) for it in items if it.comment)


def format_source(text: str, path: str = "<memory>") -> Formatted:
    """Format one source (``*.test.pol``: a test file); never raises for a bad source.

    A syntax error leaves ``text`` ``None`` with the diagnostics; a result
    that would differ in meaning raises :class:`FormatError`.
    """
    test_file = is_test_file(path)
    syntax = _syntax(test_file)
    if syntax is None:
        return Formatted(path, text, None, [Diagnostic(
            ERROR, path, 1, 1, "this installation of polc has no test-file grammar (grammar/tests.lark)")])
    src = text[1:] if text.startswith("\ufeff") else text
    src = src.replace("\r\n", "\n")
    before, diags = syntax.check(src, path)
    if diags:
        return Formatted(path, text, None, diags)
    items = _scan(src, syntax, path)
    stmts, closing = _Grouper(items).sequence(top=True)
    printer = _Printer(syntax.names)
    printer.sequence(stmts, closing, 0, ordered=False)
    out = printer.text()
    after, again = syntax.check(out, path)
    if again or after != before:
        raise FormatError(f"{path}: formatting would change the syntax tree (a formatter bug); "
                          "the file is left as it is")
    if _comment_texts(_scan(out, syntax, path)) != _comment_texts(items):
        raise FormatError(f"{path}: formatting would lose or change a comment (a formatter bug); "
                          "the file is left as it is")
    return Formatted(path, text, out, [])
