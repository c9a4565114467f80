"""Test files get the diagnostics sources get: `path:line:col: error:` in words, with "did you mean".

Syntax errors are each reported once and the parse resumes at the next
expectation or test; semantic errors name the unknown module, capability,
verdict, the wrong arity or type, and a `by` that names no rule.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from polc.cli import cli
from polc.compiler.testfile import parse_tests

SOURCES = {
    "_global.pol": 'security module _global {\n    deny module to network.outbound("169.254.0.0/16");\n}\n',
    "tenant.acme.pol": (
        "security module tenant.acme {\n"
        '    entitle module to network.outbound("*.acme.com", 443);\n'
        '    entitle module to fs.read("tenants/acme", "**");\n'
        "}\n"
    ),
}


def errors_of(write_tree, test_text: str) -> tuple[int, list[str], str]:
    tree = write_tree({**SOURCES, "t.test.pol": test_text})
    r = CliRunner().invoke(cli, ["test", str(tree)])
    prefix = f"{tree.as_posix()}/t.test.pol:"
    heads = [line[len(prefix):] for line in r.stderr.splitlines() if line.startswith(prefix)]
    return r.exit_code, heads, r.stdout


def one(write_tree, expectation: str) -> str:
    code, heads, out = errors_of(write_tree, f'test "t" {{\n    {expectation}\n}}\n')
    assert code == 1, heads
    assert out == ""  # no test ran
    assert len(heads) == 1, heads
    return heads[0]


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        ('expect permit tenant.acme to network.outbound("a.acme.com", 443);',
         "2:12: error: unknown verdict 'permit'; did you mean 'allow'?"),
        ('expect allow tenant.acm to network.outbound("a.acme.com", 443);',
         "2:18: error: unknown module 'tenant.acm'; did you mean 'tenant.acme'?"),
        ('expect allow tenant.acme to network.outbund("a.acme.com", 443);',
         "2:33: error: unknown capability 'network.outbund'; did you mean 'network.outbound'?"),
        ('expect allow tenant.acme to network.outbound("a.acme.com");',
         "2:33: error: wrong number of arguments: network.outbound(host: host, port: port) takes 2 arguments, "
         "got 1 (a request names a value for every parameter)"),
        ('expect allow tenant.acme to network.outbound("a.acme.com", 443, 1);',
         "2:69: error: wrong number of arguments: network.outbound(host: host, port: port) takes 2 arguments, "
         "got 3 (a request names a value for every parameter)"),
        ('expect allow tenant.acme to network.outbound("a.acme.com", "443");',
         "2:64: error: wrong argument type: parameter 'port' of network.outbound(host: host, port: port) is port, "
         "expecting a number; got a string"),
        ('expect allow tenant.acme to network.outbound(*, 443);',
         "2:50: error: '*' is a pattern, and a request names one value: parameter 'host' of "
         "network.outbound(host: host, port: port) needs a string"),
        ('expect allow tenant.acme to network.outbound("a.acme.com", 8000..8999);',
         "2:64: error: a range is a pattern, and a request names one value: parameter 'port' of "
         "network.outbound(host: host, port: port) needs a number"),
        ('expect allow tenant.acme to network.outbound("a\\q", 443);',
         "2:50: error: unknown escape '\\q' in a string; the escapes are \\\" and \\\\"),
        ('expect allow tenant.acme to network.outbound("a.acme.com", 443) by "tenant.acme.pol:7";',
         "2:72: error: no rule starts at policies-src/tenant.acme.pol:7; did you mean 'tenant.acme.pol:3:5'? "
         "(its rules start at 2:5, 3:5)"),
        ('expect allow tenant.acme to network.outbound("a.acme.com", 443) by "tenant.acme.pl:2:5";',
         "2:72: error: no compiled module comes from a source 'tenant.acme.pl'; did you mean 'tenant.acme.pol'? "
         "(FILE is relative to the source root)"),
        ('expect allow tenant.acme to network.outbound("a.acme.com", 443) by "tenant.acme.pol";',
         "2:72: error: 'by' names the deciding rule as \"FILE:LINE\" or \"FILE:LINE:COL\", got 'tenant.acme.pol'"),
        ('expect allow tenant.acme to network.outbound("169.254.1.1", 443) by "_global.pol:2:5";',
         "2:73: error: the rule at _global.pol:2:5 is a deny: it cannot allow"),
    ],
)
def test_semantic_errors(write_tree, expectation, message):
    assert one(write_tree, expectation) == message


def test_duplicate_test_names_and_empty_tests(write_tree):
    code, heads, _ = errors_of(write_tree, 'test "a" {\n}\ntest "a" {\n}\n')
    assert code == 1
    assert heads == [
        "1:1: warning: test 'a' has no expectations",
        "3:1: warning: test 'a' has no expectations",
        "3:6: error: duplicate test name 'a' in this file (first at line 1)",
    ]


def test_syntax_errors_each_once_and_checks_go_on(write_tree):
    text = (
        'test "one" {\n'
        '    assert allow tenant.acme to threads.create;\n'          # 2: not 'expect'
        '    expect allow tenant.acme to network.outbound("a.acme.com", 443)\n'  # 3: no ';'
        '    expect deny tenant.acme network.listen(80);\n'           # 4: no 'to'
        '    expect deny tenant.acm to network.listen(80);\n'         # 5: parses; unknown module
        "}\n"
        'tset "two" {\n'                                              # 7: not 'test'
        "}\n"
        'test "three" {\n'
        '    expect deny tenant.acme to network.listen(80) by 3;\n'   # 10: 'by' wants a string
        "}\n"
    )
    code, heads, _ = errors_of(write_tree, text)
    assert code == 1
    assert heads == [
        "2:5: error: expected an expectation ('expect allow|deny|audit MODULE to CAP(ARGS);') or '}', "
        "found 'assert'; did you mean 'expect'?",
        "3:68: error: missing ';' at the end of the expectation",
        "4:29: error: expected 'to' after the module's name, found 'network.listen'",
        "5:17: error: unknown module 'tenant.acm'; did you mean 'tenant.acme'?",
        "7:1: error: expected a test ('test \"NAME\" { ... }'), found 'tset'; did you mean 'test'?",
        "10:54: error: expected the deciding rule after 'by', a string \"FILE:LINE[:COL]\"; found number 3",
    ]


def test_a_caret_under_the_offending_text(write_tree):
    tree = write_tree({**SOURCES, "t.test.pol": 'test "t" {\n    expect allow tenant.acm to threads.create;\n}\n'})
    r = CliRunner().invoke(cli, ["test", str(tree)])
    lines = r.stderr.splitlines()
    i = next(i for i, line in enumerate(lines) if "unknown module" in line)
    assert lines[i + 1] == "        expect allow tenant.acm to threads.create;"
    assert lines[i + 2] == "                     ^~~~~~~~~~"


def test_unterminated_things(write_tree):
    code, heads, _ = errors_of(write_tree, 'test "t" {\n    expect allow tenant.acme to env.read("HOME);\n')
    assert code == 1
    assert heads[0] == "2:42: error: unterminated string: a string must end with '\"' on the same line"
    code, heads, _ = errors_of(write_tree, 'test "t" {\n    expect allow tenant.acme to threads.create;\n')
    assert heads == ["2:48: error: end of file inside a test: a '}' is missing"]


def test_a_file_that_is_not_utf8(write_tree, polc_cmd):
    tree = write_tree({**SOURCES, "t.test.pol": b'test "\xff" {\n}\n'})
    p = subprocess.run([*polc_cmd, "test", str(tree)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert f"{tree.as_posix()}/t.test.pol:1:7: error: the file is not valid UTF-8" in p.stderr


def test_subprocess_reports_syntax_errors_as_path_line_col(write_tree, polc_cmd):
    tree = write_tree({**SOURCES, "sub/t.test.pol": 'test "t" {\n    expect allow tenant.acme to ;\n}\n'})
    p = subprocess.run([*polc_cmd, "test", str(tree)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert (f"{tree.as_posix()}/sub/t.test.pol:2:33: error: expected the capability's name after 'to', found ';'"
            in p.stderr.splitlines())
    assert "no test was run" in p.stderr


def test_keywords_are_names_where_a_name_is_wanted():
    tf, diags = parse_tests('test "t" { expect allow test to by; expect deny to to expect.x; }', "t.test.pol")
    assert diags == []
    (t,) = tf.tests
    assert [(e.verdict.text, e.module.text, e.cap.text) for e in t.expects] == [
        ("allow", "test", "by"), ("deny", "to", "expect.x"),
    ]


def test_parse_positions_and_values(tmp_path: Path):
    text = 'test "quoted \\"name\\"" {\n  expect deny m to c("a\\\\b", -5) by "f.pol:3:5";\n}\n'
    tf, diags = parse_tests(text, "x.test.pol")
    assert diags == []
    (t,) = tf.tests
    assert t.name.value == 'quoted "name"'
    (e,) = t.expects
    assert (e.line, e.col) == (2, 3)
    assert [a.value for a in e.args] == ["a\\b", -5]  # type: ignore[union-attr]
    assert e.by is not None and e.by.value == "f.pol:3:5"


REAL_TESTS = sorted((Path(__file__).resolve().parent.parent.parent / "policies-src").glob("*.test.pol"))


@settings(max_examples=200)
@given(data=st.data())
def test_the_parser_never_raises_and_locates_every_error(data):
    base = data.draw(st.sampled_from([p.read_text("utf-8") for p in REAL_TESTS]))
    cut = data.draw(st.integers(0, len(base)))
    pieces = st.sampled_from([*'(){};,"*.:\n xyz09/', "expect", "test", "by", "to", "allow", "\\"])
    junk = "".join(data.draw(st.lists(pieces, max_size=12)))
    text = base[:cut] + junk + base[cut + data.draw(st.integers(0, 20)):]
    tf, diags = parse_tests(text, "f.test.pol")
    lines = text.split("\n")
    for d in diags:
        assert d.severity == "error" and d.file == "f.test.pol"
        assert 1 <= d.line <= len(lines) and d.col >= 1
        assert "$END" not in d.message and "_SEMI" not in d.message and "Token" not in d.message
    if not diags:
        assert all(isinstance(e.cap.text, str) for t in tf.tests for e in t.expects)
