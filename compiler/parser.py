"""Stage 1: source text -> syntax tree (compiler/ast.py) plus syntax diagnostics.

The grammar (grammar/policy.lark) is compiled once per process into an LALR
parser whose inline Transformer builds the frozen AST nodes directly, so lark
never builds a parse tree. A source without syntax errors is parsed in one
call with the garbage collector paused (GC is ~40% of a large parse).

A source with syntax errors goes down a second, slower path that reports
every error: it feeds tokens one by one to lark's interactive parser, keeps a
checkpoint at every statement boundary (after ``;``, ``{`` and ``}``), and on
an error restores the checkpoint and skips to the next ``;``, ``}`` or
statement keyword at the start of a line. Error messages are written in words
("expected ';' after the rule"); lark's terminal names and exception types
never reach the user.
"""

from __future__ import annotations

import gc
import importlib.resources
import threading
from collections.abc import Iterable

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import BasicLexer, LexerState
from lark.utils import TextSlice

from .ast import (
    AnyArg,
    CapabilityDecl,
    IntArg,
    Module,
    ModeStmt,
    Name,
    ParamDecl,
    RangeArg,
    Rule,
    SourceFile,
    StrArg,
    int_literal,
)
from .diagnostics import ERROR, Diagnostic, did_you_mean

__all__ = ["parse", "get_parser", "grammar_text", "TERMINAL_WORDS"]


# --------------------------------------------------------------------------
# grammar and parser construction


def grammar_text() -> str:
    return importlib.resources.files("polc.grammar").joinpath("policy.lark").read_text("utf-8")


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
class _Builder(Transformer):
    """Builds AST nodes as lark reduces rules (no parse tree is ever built)."""

    def __init__(self) -> None:
        super().__init__(visit_tokens=False)
        self.file = "<memory>"

    def start(self, *modules):
        return modules

    def module(self, kw, name, *body):
        return Module(self.file, kw.line, kw.column, kw.end_column, self._name(name), body)

    def rule(self, kw, cap, args):
        effect = "entitle" if kw == "entitle" else "deny"
        return Rule(self.file, kw.line, kw.column, kw.end_column, effect, self._name(cap), args)

    def arglist(self, *args):
        if len(args) == 1 and args[0] is None:
            return ()
        return args

    def str_arg(self, tok):
        value, bad = _unescape(str(tok))
        return StrArg(self.file, tok.line, tok.column, tok.end_column, value, bad)

    def int_arg(self, tok):
        return IntArg(self.file, tok.line, tok.column, tok.end_column, int_literal(tok))

    def range_arg(self, lo, hi):
        end = hi.end_column if hi.line == lo.line else lo.end_column
        return RangeArg(self.file, lo.line, lo.column, end, int_literal(lo), int_literal(hi))

    def any_arg(self, tok):
        return AnyArg(self.file, tok.line, tok.column, tok.end_column)

    def mode(self, kw, name):
        return ModeStmt(self.file, kw.line, kw.column, kw.end_column, self._name(name))

    def capability(self, kw, name, *params):
        if len(params) == 1 and params[0] is None:
            params = ()
        return CapabilityDecl(self.file, kw.line, kw.column, kw.end_column, self._name(name), params)

    def param(self, name, type_):
        n = self._name(name)
        return ParamDecl(self.file, n.line, n.col, n.end_col, n, self._name(type_))

    def _name(self, tok) -> Name:
        return Name(self.file, tok.line, tok.column, tok.end_column, str(tok))


# The options the parser is built with; part of the tables' key.
_OPTIONS = dict(parser="lalr", lexer="contextual", maybe_placeholders=True, propagate_positions=False)
TABLES_MODULE = "_grammar_tables"
"""compiler/_grammar_tables.py: the LALR tables lark builds from the grammar, as Python literals."""


def tables_key(grammar: str | None = None) -> str:
    """What the shipped tables must have been built from: grammar text, lark version, options."""
    import hashlib

    import lark

    g = grammar_text() if grammar is None else grammar
    blob = "\0".join([g, lark.__version__, repr(sorted(_OPTIONS.items()))])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def build_lark(transformer=None, *, strict: bool = False) -> Lark:
    """Build the LALR parser from grammar/policy.lark (slow: ~0.3 s, most of it lark's
    regex collision analysis, which runs whenever interegular is installed)."""
    return Lark(grammar_text(), transformer=transformer, strict=strict, **_OPTIONS)


def render_tables() -> str:
    """The source of compiler/_grammar_tables.py for the current grammar and lark.

    The parser is built with ``strict=True`` here, so tables exist only for a
    grammar lark has checked to be free of terminal collisions.
    """
    from lark.grammar import Rule
    from lark.lark import _LOAD_ALLOWED_OPTIONS
    from lark.lexer import TerminalDef

    import lark

    built = build_lark(strict=True)
    data, memo = built.memo_serialize([TerminalDef, Rule])
    data["options"] = {k: v for k, v in data["options"].items() if k not in _LOAD_ALLOWED_OPTIONS}
    return (
        '"""Generated by ``python -m polc.compiler.parser --write-tables``: do not edit.\n\n'
        "The LALR(1) tables lark builds from grammar/policy.lark (with strict=True),\n"
        "as plain literals, so ``polc compile`` does not rebuild them at every start.\n"
        "Used only while KEY matches the grammar, the lark version and the options\n"
        '(compiler/parser.py: tables_key); otherwise the parser is built from the grammar.\n"""\n\n'
        f"LARK_VERSION = {lark.__version__!r}\n"
        f"KEY = {tables_key()!r}\n"
        f"DATA = {data!r}\n"
        f"MEMO = {memo!r}\n"
    )


def _load_tables(transformer) -> Lark | None:
    """The parser from the shipped tables, or None when they are missing or stale."""
    import importlib

    try:
        tables = importlib.import_module(f"{__package__}.{TABLES_MODULE}")
    except ImportError:
        return None
    if getattr(tables, "KEY", None) != tables_key():
        return None
    return Lark._load_from_dict(tables.DATA, tables.MEMO, transformer=transformer)


class _Parser:
    def __init__(self) -> None:
        self.builder = _Builder()
        # The grammar's freedom from terminal collisions (strict=True) is checked
        # when the tables are generated and by tests/test_compiler_syntax.py, not
        # at every start.
        lk = _load_tables(self.builder)
        self.from_tables = lk is not None
        self.lark = lk if lk is not None else build_lark(self.builder)
        self.basic_lexer = BasicLexer(self.lark.lexer_conf)
        self.lock = threading.Lock()
        self.fast = _FastPath.build(self.lark)


class _FastPath:
    """A tight LALR loop over lark's own tables and callbacks, for sources without errors.

    lark's per-token machinery (contextual lexer, ``feed_token``, a ``Token``
    for every terminal) is about three quarters of a parse. Here one regex
    (the root lexer's terminals, in lark's order) tokenizes the whole text with
    ``finditer``; a NAME that spells a keyword becomes that keyword where the
    parser accepts it (as ``_Recovery`` does); tokens the tree builder filters
    out (``_``-punctuation) are never materialised; and the shift/reduce loop
    is lark's ``feed_token`` inlined. It returns ``None`` at the first problem
    of any kind, and the source then goes to ``_Recovery``, which is the
    reference: tests check the two agree on every source the fast path accepts.
    """

    __slots__ = ("scanner", "keywords", "ignore", "keep", "multiline", "states", "start", "end", "callbacks",
                 "shift")

    @classmethod
    def build(cls, lk: Lark) -> _FastPath | None:
        import re

        from lark.parsers.lalr_analysis import Shift

        conf = lk.lexer_conf
        terminals = list(conf.terminals)
        if conf.g_regex_flags or any(t.pattern.flags for t in terminals) or conf.callbacks or conf.postlex:
            return None
        table = lk.parser.parser.parser.parse_table
        callbacks = lk.parser.parser.parser.callbacks
        if any(isinstance(k, str) for k in callbacks):  # terminal callbacks: not supported here
            return None
        terminals.sort(key=lambda t: (-t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name))
        regex_terms = [t for t in terminals if t.pattern.type == "re"]
        keywords: dict[str, str] = {}
        alts: list[str] = []
        for t in terminals:
            if t.pattern.type == "str" and any(re.fullmatch(r.pattern.to_regexp(), t.pattern.value)
                                               for r in regex_terms):
                keywords[t.pattern.value] = t.name  # lark's "unless": a NAME spelled like it
                continue
            alts.append(f"(?P<{t.name}>{t.pattern.to_regexp()})")
        filtered = {s.name for r in lk.rules for s in r.expansion if s.is_term and s.filter_out}
        kept = {s.name for r in lk.rules for s in r.expansion if s.is_term and not s.filter_out}
        if filtered & kept:
            return None
        self = cls.__new__(cls)
        self.scanner = re.compile("|".join(alts))
        self.keywords = keywords
        self.ignore = frozenset(conf.ignore)
        self.keep = frozenset(kept)
        # tokens that might span lines (regex terminals, or strings holding a newline);
        # the fast path leaves any such token that does to _Recovery
        self.multiline = frozenset(
            t.name for t in terminals
            if t.name not in conf.ignore and (t.pattern.type == "re" or "\n" in t.pattern.value)
        )
        self.states = table.states
        self.start = table.start_states["start"]
        self.end = table.end_states["start"]
        self.callbacks = callbacks
        self.shift = Shift
        return self

    def parse(self, text: str):
        """The start rule's value, or ``None`` if the text has any lexical or syntax error."""
        states = self.states
        callbacks = self.callbacks
        keywords = self.keywords
        ignore = self.ignore
        keep = self.keep
        multiline = self.multiline
        shift = self.shift
        state_stack = [self.start]
        value_stack: list = []
        pos = 0
        line = 1
        line_start = 0
        for m in self.scanner.finditer(text):
            start = m.start()
            if start != pos:
                return None  # a character no terminal starts with
            typ = m.lastgroup
            pos = m.end()
            if typ in ignore:
                nl = text.count("\n", start, pos)
                if nl:
                    line += nl
                    line_start = text.rindex("\n", start, pos) + 1
                continue
            row = states[state_stack[-1]]
            if typ == "NAME":
                k = keywords.get(m.group())
                if k is not None and k in row:
                    typ = k
            if typ in multiline and "\n" in m.group():
                return None
            if typ in keep:
                col = start - line_start + 1
                tok = Token(typ, m.group(), start, line, col, line, col + (pos - start), pos)
            else:
                tok = None  # punctuation the tree builder drops
            while True:
                act = row.get(typ)
                if act is None:
                    return None
                action, arg = act
                if action is shift:
                    state_stack.append(arg)
                    value_stack.append(tok)
                    break
                size = len(arg.expansion)
                if size:
                    s = value_stack[-size:]
                    del state_stack[-size:]
                    del value_stack[-size:]
                else:
                    s = []
                value_stack.append(callbacks[arg](s))
                state_stack.append(states[state_stack[-1]][arg.origin.name][1])
                row = states[state_stack[-1]]
        if pos != len(text):
            return None
        end = self.end
        while True:
            act = states[state_stack[-1]].get("$END")
            if act is None:
                return None
            action, arg = act
            if action is shift:
                return None
            size = len(arg.expansion)
            if size:
                s = value_stack[-size:]
                del state_stack[-size:]
                del value_stack[-size:]
            else:
                s = []
            value_stack.append(callbacks[arg](s))
            state_stack.append(states[state_stack[-1]][arg.origin.name][1])
            if state_stack[-1] == end:
                return value_stack[-1]


_PARSER: _Parser | None = None
_PARSER_LOCK = threading.Lock()


def get_parser() -> _Parser:
    """The process-wide parser, built on first use."""
    global _PARSER
    if _PARSER is None:
        with _PARSER_LOCK:
            if _PARSER is None:
                _PARSER = _Parser()
    return _PARSER


# --------------------------------------------------------------------------
# entry point


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
            modules, diags = _Recovery(p, text, path).run()
            return SourceFile(path, tuple(modules)), diags
        finally:
            if gc_was_enabled:
                gc.enable()


# --------------------------------------------------------------------------
# error recovery and wording

# Every terminal of the grammar in words. tests/test_compiler_syntax.py checks
# that this covers every terminal the parser knows.
TERMINAL_WORDS: dict[str, str] = {
    "SECURITY": "'security'",
    "_MODULE": "'module'",
    "_TO": "'to'",
    "ENTITLE": "'entitle'",
    "DENY": "'deny'",
    "MODE": "'mode'",
    "CAPABILITY": "'capability'",
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

_KEYWORDS = {
    "SECURITY": "security",
    "_MODULE": "module",
    "_TO": "to",
    "ENTITLE": "entitle",
    "DENY": "deny",
    "MODE": "mode",
    "CAPABILITY": "capability",
}
_STATEMENT_KEYWORDS = ("ENTITLE", "DENY", "MODE", "CAPABILITY")
_STATEMENT_WORDS = ("entitle", "deny", "mode", "capability")
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
}
_BOUNDARIES = ("_SEMI", "_LBRACE", "_RBRACE")
_ARG_START = {"STRING", "INT", "STAR"}


def _found(tok: Token) -> str:
    """The unexpected token, in words."""
    t = tok.type
    if t == "$END":
        return "end of file"
    if t == "NAME":
        return f"'{tok.value}'"
    if t in _KEYWORDS:
        return f"'{tok.value}'"
    if t == "STRING":
        return f"string {tok.value}"
    if t == "INT":
        return f"number {tok.value}"
    return TERMINAL_WORDS.get(t, f"'{tok.value}'")


def _one_of(types: Iterable[str]) -> str:
    words = sorted({TERMINAL_WORDS.get(t, "something else") for t in types})
    if not words:
        return "nothing more"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


class _Recovery:
    """Parse token by token, report every syntax error, recover at statement boundaries."""

    def __init__(self, p: _Parser, text: str, path: str) -> None:
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

    def _tokens(self) -> list[Token]:
        """All tokens; a character no token starts with is reported and skipped."""
        lexer = self.p.basic_lexer
        state = LexerState(TextSlice.cast_from(self.text))
        out: list[Token] = []
        text = self.text
        while True:
            try:
                out.append(lexer.next_token(state))
            except EOFError:
                break
            except UnexpectedCharacters as e:
                pos = state.line_ctr.char_pos
                ch = text[pos]
                if ch == '"':
                    msg = "unterminated string: a string must end with '\"' on the same line"
                    skip = text.find("\n", pos)
                    skip = len(text) if skip < 0 else skip
                elif text.startswith("/*", pos):
                    msg = "unterminated comment: '/*' without a closing '*/'"
                    skip = len(text)
                else:
                    shown = ch if ch.isprintable() else repr(ch)[1:-1]
                    msg = f"unexpected character '{shown}'"
                    before = text[pos - 1] if pos else ""
                    if ch == "." and before.isdigit():
                        msg += ": numbers are whole (a range is written 8000..8999)"
                    elif ch == "." and (before.isalnum() or before == "_"):
                        msg += ": a name cannot end with '.'"
                    skip = pos + 1
                self._error(e.line, e.column, msg, 1)
                self.after_lex_error.add(len(out))
                state.line_ctr.feed(text[pos:skip])
        return out

    # -- reporting ---------------------------------------------------------

    def _error(self, line: int, col: int, msg: str, length: int = 1) -> None:
        self.diags.append(Diagnostic(ERROR, self.path, line, col, msg, length, self.module))

    # -- the loop ----------------------------------------------------------

    def run(self) -> tuple[list[Module], list[Diagnostic]]:
        tokens = self._tokens()
        ip = self.p.lark.parse_interactive("")
        ps = ip.parser_state
        states = ps.parse_conf.parse_table.states

        # lark's LALR tree builder extends the child list of a left-recursive
        # rule (``stmt*``) in place (only ever appending), so a checkpoint
        # records each list's length and a restore truncates it back: cheap,
        # and linear over a file however many errors it has.
        def save():
            values = [(v, len(v.children)) if isinstance(v, Tree) else (v, -1) for v in ps.value_stack]
            return (list(ps.state_stack), values, self.module)

        def restore(cp):
            ps.state_stack[:] = cp[0]
            for v, n in cp[1]:
                if n >= 0:
                    del v.children[n:]
            ps.value_stack[:] = [v for v, _ in cp[1]]
            self.module = cp[2]

        def accepts(tok_type: str) -> bool:
            return tok_type in states[ps.state_stack[-1]]

        checkpoint = save()
        stmt: list[Token] = []  # tokens fed since the last boundary
        recovering = False  # no token fed yet since the last error
        prev: Token | None = None
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
            if tok.type in _BOUNDARIES:
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

    def _eof_token(self, prev: Token | None) -> Token:
        if prev is not None:
            return Token("$END", "", prev.end_pos, prev.end_line, prev.end_column)
        lines = self.text.split("\n")
        return Token("$END", "", len(self.text), len(lines), len(lines[-1]) + 1)

    def _feed(self, ip, tok: Token):
        try:
            return ip.feed_token(tok)
        except UnexpectedToken:
            # Where the grammar wants a name, a keyword is a name (as lark's
            # contextual lexer does on the fast path: `deny module to mode.x`).
            if tok.type in _KEYWORDS and "NAME" in ip.parser_state.parse_conf.parse_table.states[
                ip.parser_state.state_stack[-1]
            ]:
                return ip.feed_token(Token.new_borrow_pos("NAME", tok.value, tok))
            raise

    def _resync(self, tokens: list[Token], i: int, accepts, ip) -> tuple[int, bool]:
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
            elif t.type in _STATEMENT_KEYWORDS or t.type == "SECURITY":
                line_start = j == 0 or tokens[j - 1].end_line < t.line or tokens[j - 1].type in _BOUNDARIES
                if (line_start or j == i) and accepts(t.type):
                    return j, False
                if t.type == "SECURITY" and line_start and self.module is not None and accepts("_RBRACE"):
                    # the module before lacks its '}': close it and start the next one
                    ip.feed_token(Token.new_borrow_pos("_RBRACE", "}", t))
                    self.module = None
                    return j, True
            j += 1
        return n, False

    def _report(self, tok: Token, expected: set[str], stmt: list[Token], prev: Token | None) -> None:
        msg, at_prev = self._message(tok, set(expected), stmt, prev)
        if at_prev and prev is not None:
            line, col, length = prev.end_line, prev.end_column, 1
        else:
            line, col = tok.line, tok.column
            length = max(1, len(tok.value)) if tok.type != "$END" else 1
            if tok.end_line != tok.line:
                length = 1
        self._error(line, col, msg, length)

    def _message(
        self, tok: Token, expected: set[str], stmt: list[Token], prev: Token | None
    ) -> tuple[str, bool]:
        """(message, point_after_previous_token)."""
        found = _found(tok)
        kinds = [t.type for t in stmt]
        first = kinds[0] if kinds else None
        word = tok.value if tok.type in ("NAME",) or tok.type in _KEYWORDS else None

        # -- at a statement boundary ---------------------------------------
        if not kinds:
            if expected & set(_STATEMENT_KEYWORDS):  # inside a module body
                if tok.type == "SECURITY":
                    return (f"expected '}}' to close module '{self.module}' before the next module", False)
                if tok.type == "$END":
                    return (f"unexpected end of file: expected '}}' to close module '{self.module}'", False)
                if word is not None:
                    hint = did_you_mean(word, _STATEMENT_WORDS, synonyms=_STATEMENT_SYNONYMS)
                    if not hint:
                        hint = "; expected 'entitle', 'deny', 'mode', 'capability' or '}'"
                    return (f"unknown statement {found}{hint}", False)
                return (
                    f"expected a statement ('entitle', 'deny', 'mode' or 'capability') or '}}', found {found}",
                    False,
                )
            # top level
            if tok.type == "_RBRACE":
                return ("unexpected '}': no module is open here", False)
            if tok.type in _STATEMENT_KEYWORDS:
                return (
                    f"'{tok.value}' must be inside a module: write 'security module <name> {{ ... }}' around it",
                    False,
                )
            if word is not None:
                hint = did_you_mean(word, ["security"])
                return (f"expected 'security module <name> {{', found {found}{hint}", False)
            return (f"expected 'security module <name> {{', found {found}", False)

        # -- inside a statement --------------------------------------------
        what = {
            "ENTITLE": "the rule",
            "DENY": "the rule",
            "MODE": "the mode",
            "CAPABILITY": "the capability declaration",
        }.get(first)
        last = kinds[-1]

        if first == "SECURITY":
            if last == "SECURITY":
                hint = did_you_mean(word, ["module"]) if word else ""
                return (f"expected 'module' after 'security', found {found}{hint}", False)
            if last == "_MODULE":
                return (f"expected a module name after 'security module', found {found}", False)
            if "_LBRACE" in expected:
                return (f"expected '{{' after the module name, found {found}", True)

        if "_SEMI" in expected and what is not None:
            if tok.type == "$END" or (prev is not None and tok.line > prev.end_line) or tok.type == "_RBRACE":
                return (f"expected ';' after {what}", True)
            return (f"expected ';' after {what}, found {found}", False)

        if first in ("ENTITLE", "DENY"):
            kw = stmt[0].value
            if last in ("ENTITLE", "DENY"):
                hint = did_you_mean(word, ["module"]) if word else ""
                return (f"expected 'module' after '{kw}', found {found}{hint}", False)
            if last == "_MODULE":
                hint = did_you_mean(word, ["to"]) if word else ""
                return (f"expected 'to' after '{kw} module', found {found}{hint}", False)
            if last == "_TO":
                return (f"expected a capability name after '{kw} module to', found {found}", False)

        if first == "MODE" and last == "MODE":
            return (f"expected 'audit' or 'enforce' after 'mode', found {found}", False)

        if first == "CAPABILITY":
            if last == "CAPABILITY":
                return (f"expected a capability name after 'capability', found {found}", False)
            if "_LPAR" in expected and len(kinds) == 2:
                return (f"expected '(' after the capability name in a declaration, found {found}", False)
            if "_COLON" in expected:
                return (f"expected ':' and a type after the parameter name, found {found}", False)
            if "NAME" in expected and last == "_COLON":
                return (f"expected a type after ':', found {found}", False)
            if "NAME" in expected:
                return (f"expected a parameter 'name: type', found {found}", False)
            if expected & {"_COMMA", "_RPAR"}:
                return (f"expected ',' or ')' in the parameter list, found {found}", False)

        if "_LPAR" in kinds:
            if last == "_DOTDOT":
                return (f"expected a number after '..', found {found}", False)
            if expected & _ARG_START:
                if tok.type == "NAME":
                    return (
                        f"expected an argument, found the bare word '{tok.value}'; "
                        f'strings are quoted: "{tok.value}"',
                        False,
                    )
                return (
                    f"expected an argument (a string, a number, a range such as 8000..8999, or '*'), "
                    f"found {found}",
                    False,
                )
            if expected & {"_COMMA", "_RPAR"}:
                return (f"expected ',' or ')' in the argument list, found {found}", False)

        if tok.type == "_RBRACE":
            return (f"unexpected '}}': expected {_one_of(expected)}", False)
        if tok.type == "$END":
            return (f"unexpected end of file: expected {_one_of(expected)}", False)
        return (f"expected {_one_of(expected)}, found {found}", False)


if __name__ == "__main__":  # python -m polc.compiler.parser --write-tables
    import os
    import sys

    if sys.argv[1:] != ["--write-tables"]:
        sys.exit("usage: python -m polc.compiler.parser --write-tables")
    target = os.path.join(os.path.dirname(os.path.abspath(__file__)), TABLES_MODULE + ".py")
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(render_tables())
    os.replace(tmp, target)
    print(f"wrote {target}")
