"""The error-recovering parser: every syntax error of a source, each reported once.

Only a source the fast path (compiler/lalr_fast.py) refuses comes here. It is
tokenized by lark's basic lexer (a character no token starts with is reported
and skipped) and fed token by token to lark's interactive parser, keeping a
checkpoint at every statement boundary (after ``;``, ``{`` and ``}``). On an
error it restores the checkpoint and skips to the next ``;``, ``}`` or
statement keyword at the start of a line; a missing ``}`` before the next
``security`` is supplied. Further errors are not reported until a token has
been accepted again, so one mistake gives one message. The words of each
message come from compiler/messages.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from lark import Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedToken
from lark.lexer import LexerState
from lark.utils import TextSlice

from .ast import Module
from .diagnostics import ERROR, Diagnostic
from .grammar import BOUNDARIES, KEYWORDS, STATEMENT_KEYWORDS
from .messages import lexical_message, syntax_message

__all__ = ["Recovery"]


class ParserLike(Protocol):
    """What recovery needs of the parser (compiler/parser.py: Parser)."""

    lark: Any
    basic_lexer: Any


# A checkpoint: the parser's state stack, its value stack (with the length of
# each tree's child list at the time) and the module being parsed.
_Checkpoint = tuple[list[Any], list[tuple[Any, int]], str | None]


class Recovery:
    """Parse token by token, report every syntax error, recover at statement boundaries."""

    def __init__(self, p: ParserLike, text: str, path: str) -> None:
        self.p = p
        self.text = text
        self.path = path
        self.diags: list[Diagnostic] = []
        self.module: str | None = None  # the module whose body we are in
        self.pending_module: str | None = None
        # indices of tokens that follow a lexical error: a syntax error there is
        # a consequence of the first and is not reported again
        self.after_lex_error: set[int] = set()

    # -- tokens ------------------------------------------------------------

    def _tokens(self) -> list[Any]:
        """All tokens; a character no token starts with is reported and skipped."""
        lexer = self.p.basic_lexer
        state = LexerState(TextSlice.cast_from(self.text))
        out: list[Any] = []
        text = self.text
        while True:
            try:
                out.append(lexer.next_token(state))
            except EOFError:
                break
            except UnexpectedCharacters as e:
                pos = state.line_ctr.char_pos
                msg, skip = lexical_message(text, pos)
                self._error(e.line, e.column, msg, 1)
                self.after_lex_error.add(len(out))
                state.line_ctr.feed(text[pos:skip])
        return out

    # -- reporting ---------------------------------------------------------

    def _error(self, line: int, col: int, msg: str, length: int = 1) -> None:
        self.diags.append(Diagnostic(ERROR, self.path, line, col, msg, length, self.module))

    # -- the loop ----------------------------------------------------------

    def run(self) -> tuple[list[Module], list[Diagnostic]]:
        """The modules that parsed (in part, after errors) and the diagnostics."""
        tokens = self._tokens()
        ip = self.p.lark.parse_interactive("")
        ps = ip.parser_state
        states = ps.parse_conf.parse_table.states

        # lark's LALR tree builder extends the child list of a left-recursive
        # rule (``stmt*``) in place (only ever appending), so a checkpoint
        # records each list's length and a restore truncates it back: cheap,
        # and linear over a file however many errors it has.
        def save() -> _Checkpoint:
            values = [(v, len(v.children)) if isinstance(v, Tree) else (v, -1) for v in ps.value_stack]
            return (list(ps.state_stack), values, self.module)

        def restore(cp: _Checkpoint) -> None:
            ps.state_stack[:] = cp[0]
            for v, n in cp[1]:
                if n >= 0:
                    del v.children[n:]
            ps.value_stack[:] = [v for v, _ in cp[1]]
            self.module = cp[2]

        def accepts(tok_type: str) -> bool:
            return tok_type in states[ps.state_stack[-1]]

        checkpoint = save()
        stmt: list[Any] = []  # tokens fed since the last boundary
        recovering = False  # no token fed yet since the last error
        prev: Any = None
        retried = -1  # index of the token last re-parsed as a statement start
        i, n = 0, len(tokens)
        while i < n:
            tok = tokens[i]
            try:
                self._feed(ip, tok)
            except UnexpectedToken as e:
                if not recovering and i not in self.after_lex_error:
                    self._report(tok, e.expected, stmt, prev)
                restore(checkpoint)
                mid_statement = bool(stmt)
                stmt = []
                if (
                    not recovering
                    and mid_statement
                    and retried != i
                    and tok.type == "NAME"
                    and prev is not None
                    and tok.line > prev.end_line
                    and accepts("ENTITLE")
                ):
                    # The statement before ended without its ';' and a new
                    # line starts with a name: parse that line as the next
                    # statement, so a misspelt keyword there is reported too
                    # instead of being skipped with the broken statement.
                    retried = i
                    continue
                recovering = True
                i, closed = self._resync(tokens, i, accepts, ip)
                if closed:
                    checkpoint = save()
                continue
            recovering = False
            stmt.append(tok)
            if tok.type == "SECURITY":
                self.pending_module = None
            elif tok.type == "NAME" and len(stmt) == 3 and stmt[0].type == "SECURITY":
                self.pending_module = tok.value
            if tok.type in BOUNDARIES:
                if tok.type == "_LBRACE":
                    self.module = self.pending_module
                elif tok.type == "_RBRACE":
                    self.module = None
                checkpoint = save()
                stmt = []
            prev = tok
            i += 1
        # end of file
        end = self._eof_token(prev)
        try:
            return list(self._feed(ip, end)), self.diags
        except UnexpectedToken as e:
            if not recovering and n not in self.after_lex_error:
                self._report(end, e.expected, stmt, prev)
        restore(checkpoint)
        try:
            if self.module is not None:
                self._feed(ip, Token.new_borrow_pos("_RBRACE", "}", end))
            result = self._feed(ip, end)
        except UnexpectedToken:
            result = [v for v in ps.value_stack if isinstance(v, Module)]
        return list(result), self.diags

    def _eof_token(self, prev: Any) -> Any:
        if prev is not None:
            return Token("$END", "", prev.end_pos, prev.end_line, prev.end_column)
        lines = self.text.split("\n")
        return Token("$END", "", len(self.text), len(lines), len(lines[-1]) + 1)

    def _feed(self, ip: Any, tok: Any) -> Any:
        try:
            return ip.feed_token(tok)
        except UnexpectedToken:
            # Where the grammar wants a name, a keyword is a name (as lark's
            # contextual lexer does on the fast path: `deny module to mode.x`).
            if tok.type in KEYWORDS and "NAME" in ip.parser_state.parse_conf.parse_table.states[
                ip.parser_state.state_stack[-1]
            ]:
                return ip.feed_token(Token.new_borrow_pos("NAME", tok.value, tok))
            raise

    def _resync(self, tokens: list[Any], i: int, accepts: Callable[[str], bool], ip: Any) -> tuple[int, bool]:
        """(index of the token to resume at, whether a missing '}' was supplied).

        The parser has been restored to the last checkpoint.
        """
        n = len(tokens)
        j = i
        while j < n:
            t = tokens[j]
            if t.type == "_SEMI":
                return j + 1, False
            if t.type == "_RBRACE":
                if accepts("_RBRACE"):
                    return j, False
                if j == i:
                    return j + 1, False  # a stray '}' (already reported)
            elif t.type in STATEMENT_KEYWORDS or t.type == "SECURITY":
                line_start = j == 0 or tokens[j - 1].end_line < t.line or tokens[j - 1].type in BOUNDARIES
                if (line_start or j == i) and accepts(t.type):
                    return j, False
                if t.type == "SECURITY" and line_start and self.module is not None and accepts("_RBRACE"):
                    # the module before lacks its '}': close it and start the next one
                    ip.feed_token(Token.new_borrow_pos("_RBRACE", "}", t))
                    self.module = None
                    return j, True
            j += 1
        return n, False

    def _report(self, tok: Any, expected: set[str], stmt: list[Any], prev: Any) -> None:
        msg, at_prev = syntax_message(tok, set(expected), stmt, prev, self.module)
        if at_prev and prev is not None:
            line, col, length = prev.end_line, prev.end_column, 1
        else:
            line, col = tok.line, tok.column
            length = max(1, len(tok.value)) if tok.type != "$END" else 1
            if tok.end_line != tok.line:
                length = 1
        self._error(line, col, msg, length)
