"""The fast parse path: a tight LALR loop over lark's own tables and callbacks.

Used for every source first; the error-recovering parser (compiler/recovery.py)
runs only when this returns ``None``. lark's per-token machinery (contextual
lexer, ``feed_token``, a ``Token`` for every terminal) is about three quarters
of a parse. Here one regex (the root lexer's terminals, in lark's order)
tokenizes the whole text with ``finditer``; a NAME that spells a keyword
becomes that keyword where the parser accepts it (as the recovering parser
does); tokens the tree builder filters out (``_``-punctuation) are never
materialised; and the shift/reduce loop is lark's ``feed_token`` inlined.

Why it is kept, in figures (the 1,000 sources x 20 rules of
benchmarks/test_compile.py, one process, best of 5 on a loaded 2-core
machine): this loop with the AST builder parses them in 0.47 s; a bare
``Lark.parse`` of the same texts (parse tree built, GC on) takes 0.65 s
(1.4x); the recovering parser, lark's interactive parser fed token by token,
0.79 s (1.7x). Parsing is about half of ``polc compile``'s time: without
this loop ``polc compile -j 1`` of that tree (1.45 s end to end) would take
about a fifth longer.

It returns ``None`` at the first problem of any kind, and the source then
goes to the recovering parser, which is the reference: tests/compiler/test_compiler_fuzz.py
checks that the two agree on random and mutated sources.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lark import Token

__all__ = ["FastPath"]


class FastPath:
    """The LALR loop for one parser's tables; ``parse(text)`` is the start rule's value or ``None``."""

    __slots__ = ("callbacks", "end", "ignore", "keep", "keywords", "multiline", "scanner", "shift", "start",
                 "states")

    scanner: re.Pattern[str]
    keywords: dict[str, str]
    ignore: frozenset[str]
    keep: frozenset[str]
    multiline: frozenset[str]
    states: Any
    start: Any
    end: Any
    callbacks: dict[Any, Callable[[list[Any]], Any]]
    shift: Any

    @classmethod
    def build(cls, lk: Any) -> FastPath | None:
        """The fast path over ``lk``'s tables, or ``None`` if it uses a feature this loop does not have."""
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
        # the fast path leaves any such token that does to the recovering parser
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

    def parse(self, text: str) -> Any:
        """The start rule's value, or ``None`` if the text has any lexical or syntax error."""
        states = self.states
        callbacks = self.callbacks
        keywords = self.keywords
        ignore = self.ignore
        keep = self.keep
        multiline = self.multiline
        shift = self.shift
        state_stack = [self.start]
        value_stack: list[Any] = []
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
