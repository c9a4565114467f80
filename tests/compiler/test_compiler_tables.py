"""The LALR tables shipped in compiler/_grammar_tables.py match the grammar.

``polc compile`` loads the parser from those tables instead of rebuilding it
(and re-running lark's terminal-collision analysis) at every start. They must
be regenerated whenever grammar/policy.lark or the lark version changes:
``python -m polc.compiler.grammar --write-tables``.
"""

from __future__ import annotations

import pytest

from polc.compiler import grammar as gm
from polc.compiler import parser as pm

from support import REPO


def test_shipped_tables_are_current():
    from polc.compiler import _grammar_tables as tables

    assert gm.tables_key() == tables.KEY, (
        "compiler/_grammar_tables.py is stale: run python -m polc.compiler.grammar --write-tables"
    )
    assert pm.get_parser().from_tables


def test_shipped_tables_equal_a_fresh_strict_build():
    """Same terminals, same rules, same parses (state numbers may differ between builds)."""
    pytest.importorskip("interegular")

    fresh = gm.build_lark(pm.Builder(), strict=True)  # raises on a terminal collision
    shipped = gm.load_tables(pm.Builder())
    assert shipped is not None
    assert {(t.name, t.pattern.to_regexp(), t.priority) for t in fresh.terminals} == {
        (t.name, t.pattern.to_regexp(), t.priority) for t in shipped.terminals
    }
    assert {str(r) for r in fresh.rules} == {str(r) for r in shipped.rules}
    fresh_states = fresh.parser.parser.parser.parse_table.states
    shipped_states = shipped.parser.parser.parser.parse_table.states
    assert len(fresh_states) == len(shipped_states)
    root = REPO / "policies-src"
    for src in sorted(p for p in root.rglob("*.pol") if not p.name.endswith(".test.pol")):
        text = src.read_text("utf-8")
        assert fresh.parse(text) == shipped.parse(text)


def test_stale_tables_are_not_used(monkeypatch):
    monkeypatch.setattr(gm, "tables_key", lambda grammar=None: "0" * 64)
    assert gm.load_tables(pm.Builder()) is None


def test_parser_built_from_the_grammar_parses_the_same(monkeypatch):
    """Without usable tables (stale, or another lark) the parser is built and behaves the same."""

    shipped = pm.get_parser()
    monkeypatch.setattr(gm, "tables_key", lambda grammar=None: "0" * 64)
    built = pm.Parser()
    assert not built.from_tables and built.fast is not None
    root = REPO / "policies-src"
    for src in sorted(p for p in root.rglob("*.pol") if not p.name.endswith(".test.pol")):
        text = src.read_text("utf-8")
        for p in (shipped, built):
            p.builder.file = "x.pol"
        assert built.fast.parse(text) == shipped.fast.parse(text) is not None
