"""The grammar, the parser and the wording of syntax errors."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polc.compiler.ast import AnyArg, CapabilityDecl, IntArg, ModeStmt, RangeArg, Rule, StrArg
from polc.compiler.diagnostics import ERROR
from polc.compiler.messages import TERMINAL_WORDS
from polc.compiler.parser import get_parser, grammar_text, parse

# What must never reach a user: lark's terminal names and exception types.
LEAK = re.compile(r"\b_?[A-Z][A-Z_]{2,}\b|__ANON|Unexpected[A-Z]|Token\(|lark|\$END")


def errors(text: str, path: str = "t.pol"):
    sf, diags = parse(text, path)
    return sf, [d for d in diags if d.severity == ERROR]


def test_grammar_is_lalr_and_strict():
    pytest.importorskip("interegular")
    from lark import Lark

    Lark(grammar_text(), parser="lalr", lexer="contextual", strict=True)


def test_every_terminal_has_words():
    terminals = {t.name for t in get_parser().lark.terminals}
    ignored = {"WS", "LINE_COMMENT", "BLOCK_COMMENT"}
    assert terminals - ignored <= set(TERMINAL_WORDS)
    for words in TERMINAL_WORDS.values():
        assert not LEAK.search(words), words


def test_parse_builds_positioned_ast():
    text = (
        "// comment\n"
        "security module tenant.acme {\n"
        "    mode audit;\n"
        "    capability tool.call(server: string, tool: string);\n"
        '    entitle module to network.outbound("*.acme.com", 443);\n'
        "    deny module to process.exec; /* block\n comment */\n"
        "    entitle module to x(*, 8000..8999, -3);\n"
        "    entitle module to threads.create();\n"
        "}\n"
        "security module _global { }\n"
    )
    sf, diags = parse(text, "dir/t.pol")
    assert diags == []
    assert [m.name.text for m in sf.modules] == ["tenant.acme", "_global"]
    acme = sf.modules[0]
    assert (acme.file, acme.line, acme.col) == ("dir/t.pol", 2, 1)
    assert (acme.name.line, acme.name.col) == (2, 17)
    mode, decl, r1, r2, r3, r4 = acme.body
    assert isinstance(mode, ModeStmt) and mode.value.text == "audit"
    assert isinstance(decl, CapabilityDecl) and [(p.name.text, p.type.text) for p in decl.params] == [
        ("server", "string"),
        ("tool", "string"),
    ]
    assert isinstance(r1, Rule) and r1.effect == "entitle" and (r1.line, r1.col) == (5, 5)
    assert r1.cap.text == "network.outbound" and (r1.cap.line, r1.cap.col) == (5, 23)
    assert r1.args == (StrArg("dir/t.pol", 5, 40, 52, "*.acme.com"), IntArg("dir/t.pol", 5, 54, 57, 443))
    assert r2.effect == "deny" and r2.args is None
    assert isinstance(r3.args[0], AnyArg)
    assert r3.args[1] == RangeArg("dir/t.pol", 8, 28, 38, 8000, 8999)
    assert r3.args[2].value == -3
    assert r4.args == ()


def test_keywords_inside_dotted_names():
    sf, errs = errors("security module tenant.module { entitle module to fs.deny.mode; }")
    assert errs == []
    assert sf.modules[0].name.text == "tenant.module"
    assert sf.modules[0].body[0].cap.text == "fs.deny.mode"


def test_string_escapes():
    sf, errs = errors(r'security module m { entitle module to env.read("a\"b\\c"); }')
    assert errs == []
    assert sf.modules[0].body[0].args[0].value == 'a"b\\c'


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        (
            'security module m {\n  entitle module to fs.read("a")\n  entitle module to fs.read("b");\n}',
            "expected ';' after the rule",
            2, 33,
        ),
        ("security module m {\n  mode audit\n}", "expected ';' after the mode", 2, 13),
        ("security module m\n  entitle module to x;\n}", "expected '{' after the module name", 1, 18),
        ("}", "unexpected '}'", 1, 1),
        ("security module m { entitel module to x; }", "unknown statement 'entitel'; did you mean 'entitle'?", 1, 21),
        ("security module m { allow module to x; }", "did you mean 'entitle'?", 1, 21),
        ("securty module m { }", "did you mean 'security'?", 1, 1),
        ("security module m { deny modul to x; }", "expected 'module' after 'deny', found 'modul'; did you mean 'module'?", 1, 26),
        ("security module m { deny module too x; }", "expected 'to' after 'deny module'", 1, 33),
        ("security module m { deny module to fs.read(foo); }", 'strings are quoted: "foo"', 1, 44),
        ('security module m { deny module to fs.read("a" "b"); }', "expected ',' or ')' in the argument list", 1, 48),
        ("security module m { deny module to net(1..); }", "expected a number after '..'", 1, 43),
        ("security module m { deny module to net(,); }", "expected an argument", 1, 40),
        ("entitle module to x;", "must be inside a module", 1, 1),
        ("security module m { entitle module to x;", "expected '}' to close module 'm'", 1, 41),
        ("security module m { mode; }", "expected 'audit' or 'enforce' after 'mode'", 1, 25),
        ("security module m { capability t(a string); }", "expected ':' and a type after the parameter name", 1, 36),
        ("security { }", "expected 'module' after 'security'", 1, 10),
        ("security module { }", "expected a module name after 'security module'", 1, 17),
        ('security module m { entitle module to x("abc); }', "unterminated string", 1, 41),
        ("security module m { @ }", "unexpected character '@'", 1, 21),
        ("security module m { } /* never closed", "unterminated comment", 1, 23),
        ("security module m { deny module to n(1.5); }", "numbers are whole", 1, 39),
        ("security module m.x. { }", "a name cannot end with '.'", 1, 20),
    ],
)
def test_syntax_error_wording(text, message, line, col):
    _, errs = errors(text)
    assert errs, "expected a syntax error"
    first = errs[0]
    assert message in first.message
    assert (first.line, first.col) == (line, col), first
    for d in errs:
        assert not LEAK.search(d.message), d.message


def test_all_syntax_errors_reported_and_recovery_keeps_good_rules():
    text = (
        "security module a {\n"
        "    entitel module to fs.read(\"x\");\n"          # 2
        "    entitle module to fs.read(\"ok1\");\n"
        "    deny module to fs.read(\"y\" 1);\n"            # 4
        "    entitle module to fs.read(\"ok2\");\n"
        "    mode audit\n"                                  # 6
        "}\n"
        "security module b {\n"
        "    entitle module to threads.create;\n"
        "}\n"
    )
    sf, errs = errors(text)
    assert [d.line for d in errs] == [2, 4, 6]
    assert all(d.module == "a" for d in errs)
    assert [m.name.text for m in sf.modules] == ["a", "b"]
    kept = [r.args[0].value for r in sf.modules[0].body if isinstance(r, Rule)]
    assert kept == ["ok1", "ok2"]
    assert len(sf.modules[1].body) == 1


def test_missing_close_brace_recovers_at_next_module():
    sf, errs = errors("security module a {\n  entitle module to x;\nsecurity module b { entitle module to y; }\n")
    assert len(errs) == 1 and "close module 'a'" in errs[0].message
    assert [m.name.text for m in sf.modules] == ["a", "b"]


def test_header_error_belongs_to_the_file():
    _, errs = errors("security module a\n{ }")
    assert errs == [] or all(d.module is None for d in errs)
    _, errs = errors("security module a b { }")
    assert errs and errs[0].module is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(
            ["security", "module", "m.x", "{", "}", "entitle", "deny", "to", "mode", "capability",
             "(", ")", ";", ",", ":", "..", "*", '"a"', "42", "-1", "@", '"open', "/*", "//c\n", "\n", " "]
        ),
        max_size=40,
    )
)
def test_any_token_soup_gives_clean_diagnostics(parts):
    text = " ".join(parts)
    sf, diags = parse(text, "soup.pol")
    for d in diags:
        assert d.line >= 1 and d.col >= 1
        assert not LEAK.search(d.message), d.message


def test_missing_semicolon_then_misspelt_keyword_on_the_next_line_reports_both():
    text = (
        "security module tenant.x {\n"
        '    entitle module to network.outbound("a.com", 443)\n'
        '    entitel module to fs.read("x", "**");\n'
        '    deny module to process.exec("sh");\n'
        "}\n"
    )
    sf, errs = errors(text)
    assert [(e.line, e.col, e.message) for e in errs] == [
        (2, 53, "expected ';' after the rule"),
        (3, 5, "unknown statement 'entitel'; did you mean 'entitle'?"),
    ]
    # the statement after both mistakes is still parsed
    (module,) = sf.modules
    assert [r.cap.text for r in module.body] == ["process.exec"]
