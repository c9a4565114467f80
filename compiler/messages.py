"""Syntax errors in words: what the error-recovering parser (compiler/recovery.py) reports.

lark's terminal names and exception types never reach the user: every
terminal has its words here (``TERMINAL_WORDS``; tests/compiler/test_compiler_syntax.py
checks that it covers every terminal the parser knows), and a syntax error is
worded by what was being written when it happened: nothing yet (a statement
boundary, at the top level or in a module body), a module header, a rule, a
``mode`` statement, a ``capability`` declaration, an argument list. Each of
those has its own function; :func:`syntax_message` picks them in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .diagnostics import did_you_mean
from .grammar import KEYWORDS, STATEMENT_KEYWORDS

__all__ = ["TERMINAL_WORDS", "Wording", "found_words", "lexical_message", "one_of", "syntax_message"]

# Every terminal of the grammar in words.
TERMINAL_WORDS: dict[str, str] = {
    "SECURITY": "'security'",
    "_MODULE": "'module'",
    "_TO": "'to'",
    "ENTITLE": "'entitle'",
    "DENY": "'deny'",
    "MODE": "'mode'",
    "CAPABILITY": "'capability'",
    "GOVERNS": "'governs'",
    "NAME": "a name",
    "STRING": "a string",
    "INT": "a number",
    "STAR": "'*'",
    "_LBRACE": "'{'",
    "_RBRACE": "'}'",
    "_LPAR": "'('",
    "_RPAR": "')'",
    "_SEMI": "';'",
    "_COMMA": "','",
    "_COLON": "':'",
    "_DOTDOT": "'..'",
    "$END": "end of file",
}

_STATEMENT_WORDS = ("entitle", "deny", "mode", "capability", "governs")
_STATEMENT_SYNONYMS = {
    "allow": "entitle",
    "grant": "entitle",
    "permit": "entitle",
    "entitlement": "entitle",
    "forbid": "deny",
    "block": "deny",
    "reject": "deny",
    "refuse": "deny",
    "disallow": "deny",
    "declare": "capability",
    "cap": "capability",
    "govern": "governs",
    "governed": "governs",
    "package": "governs",
    "packages": "governs",
}
_ARG_START = {"STRING", "INT", "STAR"}
_WHAT = {
    "ENTITLE": "the rule",
    "DENY": "the rule",
    "MODE": "the mode",
    "CAPABILITY": "the capability declaration",
    "GOVERNS": "the governs statement",
}
"""The statements that end with ';', by their first terminal, in words."""

Wording = tuple[str, bool]
"""``(message, point_after_previous_token)``: where the caret goes is part of the wording."""


def found_words(tok: Any) -> str:
    """The unexpected token, in words."""
    t = tok.type
    if t == "$END":
        return "end of file"
    if t == "NAME":
        return f"'{tok.value}'"
    if t in KEYWORDS:
        return f"'{tok.value}'"
    if t == "STRING":
        return f"string {tok.value}"
    if t == "INT":
        return f"number {tok.value}"
    return TERMINAL_WORDS.get(t, f"'{tok.value}'")


def one_of(types: Iterable[str]) -> str:
    """Expected terminals in words: ``'(' or ';'``."""
    words = sorted({TERMINAL_WORDS.get(t, "something else") for t in types})
    if not words:
        return "nothing more"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def lexical_message(text: str, pos: int) -> tuple[str, int]:
    """``(message, where to resume)`` for a character at ``pos`` that no token starts with."""
    ch = text[pos]
    if ch == '"':
        skip = text.find("\n", pos)
        return ("unterminated string: a string must end with '\"' on the same line",
                len(text) if skip < 0 else skip)
    if text.startswith("/*", pos):
        return "unterminated comment: '/*' without a closing '*/'", len(text)
    shown = ch if ch.isprintable() else repr(ch)[1:-1]
    msg = f"unexpected character '{shown}'"
    before = text[pos - 1] if pos else ""
    if ch == "." and before.isdigit():
        msg += ": numbers are whole (a range is written 8000..8999)"
    elif ch == "." and (before.isalnum() or before == "_"):
        msg += ": a name cannot end with '.'"
    return msg, pos + 1


@dataclass(frozen=True, slots=True)
class _Error:
    """A syntax error as the wording functions see it."""

    tok: Any
    """The token the parser refused."""
    expected: set[str]
    """The terminals it would have accepted."""
    kinds: list[str]
    """The terminals of the statement so far (since the last boundary)."""
    values: list[str]
    """Their text."""
    prev: Any
    """The token before ``tok``, if any."""
    module: str | None
    """The module whose body the error is in."""
    found: str
    word: str | None
    """``tok``'s text when it is a name or a keyword (a candidate for "did you mean")."""

    @property
    def first(self) -> str:
        return self.kinds[0]

    @property
    def last(self) -> str:
        return self.kinds[-1]

    def hint(self, candidates: Sequence[str]) -> str:
        return did_you_mean(self.word, candidates) if self.word else ""


def syntax_message(tok: Any, expected: set[str], stmt: Sequence[Any], prev: Any, module: str | None) -> Wording:
    """The words for the parser refusing ``tok`` after the tokens ``stmt`` of the current statement."""
    word = tok.value if tok.type == "NAME" or tok.type in KEYWORDS else None
    e = _Error(tok, expected, [t.type for t in stmt], [t.value for t in stmt], prev, module, found_words(tok), word)
    if not e.kinds:
        return _in_body(e) if expected & set(STATEMENT_KEYWORDS) else _at_top_level(e)
    for wording in _BY_STATEMENT.get(e.first, (_arguments,)):
        said = wording(e)
        if said is not None:
            return said
    return _anything_else(e)


# -- at a statement boundary ------------------------------------------------


def _in_body(e: _Error) -> Wording:
    """Where a statement of a module body (or its closing '}') should start."""
    if e.tok.type == "SECURITY":
        return f"expected '}}' to close module '{e.module}' before the next module", False
    if e.tok.type == "$END":
        return f"unexpected end of file: expected '}}' to close module '{e.module}'", False
    if e.word is not None:
        hint = did_you_mean(e.word, _STATEMENT_WORDS, synonyms=_STATEMENT_SYNONYMS)
        if not hint:
            hint = "; expected 'entitle', 'deny', 'mode', 'capability', 'governs' or '}'"
        return f"unknown statement {e.found}{hint}", False
    return (f"expected a statement ('entitle', 'deny', 'mode', 'capability' or 'governs') or '}}', "
            f"found {e.found}", False)


def _at_top_level(e: _Error) -> Wording:
    """Where a module should start."""
    if e.tok.type == "_RBRACE":
        return "unexpected '}': no module is open here", False
    if e.tok.type in STATEMENT_KEYWORDS:
        return f"'{e.tok.value}' must be inside a module: write 'security module <name> {{ ... }}' around it", False
    hint = e.hint(["security"])
    return f"expected 'security module <name> {{', found {e.found}{hint}", False


# -- inside a statement -----------------------------------------------------


def _module_header(e: _Error) -> Wording | None:
    """``security module NAME {``."""
    if e.last == "SECURITY":
        return f"expected 'module' after 'security', found {e.found}{e.hint(['module'])}", False
    if e.last == "_MODULE":
        return f"expected a module name after 'security module', found {e.found}", False
    if "_LBRACE" in e.expected:
        return f"expected '{{' after the module name, found {e.found}", True
    return None


def _missing_semicolon(e: _Error) -> Wording | None:
    """The end of a statement that ends with ';'."""
    if "_SEMI" not in e.expected:
        return None
    what = _WHAT[e.first]
    tok, prev = e.tok, e.prev
    if tok.type == "$END" or (prev is not None and tok.line > prev.end_line) or tok.type == "_RBRACE":
        return f"expected ';' after {what}", True
    return f"expected ';' after {what}, found {e.found}", False


def _rule(e: _Error) -> Wording | None:
    """``entitle|deny module to CAP``."""
    kw = e.values[0]
    if e.last in ("ENTITLE", "DENY"):
        return f"expected 'module' after '{kw}', found {e.found}{e.hint(['module'])}", False
    if e.last == "_MODULE":
        return f"expected 'to' after '{kw} module', found {e.found}{e.hint(['to'])}", False
    if e.last == "_TO":
        return f"expected a capability name after '{kw} module to', found {e.found}", False
    return None


def _mode(e: _Error) -> Wording | None:
    """``mode NAME``."""
    if e.last == "MODE":
        return f"expected 'audit' or 'enforce' after 'mode', found {e.found}", False
    return None


def _capability(e: _Error) -> Wording | None:
    """``capability NAME(PARAM: TYPE, ...)``."""
    expected, found = e.expected, e.found
    if e.last == "CAPABILITY":
        return f"expected a capability name after 'capability', found {found}", False
    if "_LPAR" in expected and len(e.kinds) == 2:
        return f"expected '(' after the capability name in a declaration, found {found}", False
    if "_COLON" in expected:
        return f"expected ':' and a type after the parameter name, found {found}", False
    if "NAME" in expected and e.last == "_COLON":
        return f"expected a type after ':', found {found}", False
    if "NAME" in expected:
        return f"expected a parameter 'name: type', found {found}", False
    if expected & {"_COMMA", "_RPAR"}:
        return f"expected ',' or ')' in the parameter list, found {found}", False
    return None


def _governs(e: _Error) -> Wording | None:
    """``governs "PKG", ...``."""
    if e.last in ("GOVERNS", "_COMMA") and "STRING" in e.expected:
        after = "'governs'" if e.last == "GOVERNS" else "','"
        if e.tok.type == "NAME":
            value = e.tok.value
            return (f"expected a package name in quotes after {after}, found the bare word '{value}'; "
                    f'package names are quoted: "{value}"', False)
        return f"expected a package name in quotes after {after}, found {e.found}", False
    if e.last == "STRING" and e.tok.type in ("STRING", "NAME"):
        return f"expected ',' between package names, found {e.found}", False
    return None


def _arguments(e: _Error) -> Wording | None:
    """A rule's argument list ``(ARG, ...)``."""
    if "_LPAR" not in e.kinds:
        return None
    if e.last == "_DOTDOT":
        return f"expected a number after '..', found {e.found}", False
    if e.expected & _ARG_START:
        if e.tok.type == "NAME":
            value = e.tok.value
            return f'expected an argument, found the bare word \'{value}\'; strings are quoted: "{value}"', False
        return (f"expected an argument (a string, a number, a range such as 8000..8999, or '*'), "
                f"found {e.found}", False)
    if e.expected & {"_COMMA", "_RPAR"}:
        return f"expected ',' or ')' in the argument list, found {e.found}", False
    return None


def _anything_else(e: _Error) -> Wording:
    if e.tok.type == "_RBRACE":
        return f"unexpected '}}': expected {one_of(e.expected)}", False
    if e.tok.type == "$END":
        return f"unexpected end of file: expected {one_of(e.expected)}", False
    return f"expected {one_of(e.expected)}, found {e.found}", False


_BY_STATEMENT: dict[str, tuple[Callable[[_Error], Wording | None], ...]] = {
    "SECURITY": (_module_header, _arguments),
    "ENTITLE": (_missing_semicolon, _rule, _arguments),
    "DENY": (_missing_semicolon, _rule, _arguments),
    "MODE": (_missing_semicolon, _mode, _arguments),
    "CAPABILITY": (_missing_semicolon, _capability, _arguments),
    "GOVERNS": (_governs, _missing_semicolon),
}
"""The wordings tried for a statement, by its first terminal, in order; then :func:`_anything_else`."""
