"""The compiler never raises for any input: it yields artifacts or diagnostics.

Also: the fast parse path (compiler/lalr_fast.py: FastPath) agrees with the
error-recovering path (_Recovery, the reference) on every source: where the
fast path accepts, the recovery path finds the same modules and no error; where
it refuses, the recovery path reports at least one error.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polc.compiler import compile_source
from polc.compiler.build import compile_paths
from polc.compiler.diagnostics import ERROR
from polc.compiler.parser import get_parser
from polc.compiler.recovery import Recovery as _Recovery
from polc.runtime.format.opcodes import MAX_MODULE_NAME_LEN, is_valid_module_name
from polc.runtime.format.reader import read_artifact

from support import REPO

ROOT = REPO
CORPUS = [p.read_text("utf-8") for p in sorted((ROOT / "policies-src").rglob("*.pol")) if not p.name.endswith(".test.pol")]

# A source split into tokens (roughly the language's), whitespace kept apart.
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*[\s\S]*?\*/|[A-Za-z_][\w.]*|-?\d+|\.\.|\s+|.', re.S)
_VOCAB = [
    "security", "module", "to", "entitle", "deny", "mode", "capability", "audit", "enforce", "_global",
    "{", "}", "(", ")", ";", ",", ":", "..", "*", ".", "-", "/*", "*/", "//", '"', "\\", "\n", " ",
    '"x"', '"*.acme.com"', '"**"', '"../x"', '"a\\q"', '""', '"10.0.0.0/8"', '"::1"', '"a\x00b"',
    "0", "-1", "65535", "65536", "99999999999999999999999", "9223372036854775808", "1..0",
    "network.outbound", "fs.read", "threads.create", "tool.call", "string", "host", "port", "path", "int",
    "x" * (MAX_MODULE_NAME_LEN + 1), "a." * 130 + "b", "y" * 300, "\u00e9", "\ufeff", "\r", "\t",
    "securitymodule", "entitlemoduleto",
]


def _check(text: str, path: str = "fuzz.pol") -> None:
    result = compile_source(text, path)  # must not raise
    for name, data in result.artifacts:
        assert is_valid_module_name(name)
        read_artifact(data, expected_module=name)
    for d in result.diagnostics:
        assert d.line >= 1 and d.col >= 1, d
    result.render()
    failed = {m.module for m in result.modules if m.data is None}
    if failed:
        assert result.errors, failed

    if path != "fuzz.pol":
        return
    # fast path vs the reference
    p = get_parser()
    with p.lock:
        p.builder.file = "fuzz.pol"
        fast = p.fast.parse(text)
        modules, diags = _Recovery(p, text, "fuzz.pol").run()
    errors = [d for d in diags if d.severity == ERROR]
    if fast is not None:
        assert not errors, errors
        assert tuple(fast) == tuple(modules)
    else:
        assert errors, "the fast path refused a source the recovery path accepts"


def test_corpus_compiles_and_paths_agree():
    for text in CORPUS:
        _check(text)
        assert compile_source(text, "c.pol").ok


def test_glued_keywords_are_errors_not_accepted():
    # lark's contextual lexer would split these; the language's tokens do not
    result = compile_source("securitymodule t { entitle module to threads.create; }", "g.pol")
    assert not result.ok
    result = compile_source("security module t { entitlemoduleto threads.create; }", "g.pol")
    assert not result.ok


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("securitymodlenabdpwf{}();,.:*\"\\/ \n\t0123456789-_x\u00e9")),
               max_size=200))
def test_random_text_never_raises(text):
    _check(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=120))
def test_random_unicode_never_raises(text):
    _check(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(st.characters(blacklist_categories=()), max_size=40), st.text(st.characters(blacklist_categories=()),
                                                                              max_size=20))
def test_surrogates_in_text_or_path_never_raise(snippet, path):
    # lone surrogates: a str the caller built, or a file name that is not UTF-8 (os.fsdecode)
    _check(f'security module s {{ entitle module to env.read("{snippet}"); }}\n{snippet}', path or "p")
    _check("security module s { entitle module to threads.create; }", path or "p")


def test_non_utf8_file_name_is_a_diagnostic(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.pol").write_text("security module ok { entitle module to threads.create; }\n")
    bad = os.fsdecode(os.fsencode(str(src)) + b"/\xff.pol")
    with open(bad, "w") as fh:
        fh.write("security module bad { entitle module to threads.create; }\n")
    report = compile_paths([str(src)], str(tmp_path / "out"))
    assert report.exit_code == 1
    [err] = [d for d in report.diagnostics if d.severity == ERROR]
    assert err.file == bad and "file name is not valid UTF-8" in err.message
    assert sorted(os.listdir(tmp_path / "out")) == [".polc-compile.lock", "ok.bin"]
    report.render_diagnostics()
    import json

    json.dumps(report.as_dict())


def test_lone_surrogate_in_text_is_a_diagnostic():
    result = compile_source('security module x {\n    entitle module to env.read("\ud800");\n}\n', "x.pol")
    [err] = result.errors
    assert (err.line, err.col) == (2, 33) and "lone surrogate" in err.message
    assert not result.artifacts
    assert result.render().startswith("x.pol:2:33: error: the text is not valid Unicode")


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(CORPUS))
    toks = _TOKEN.findall(text)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(toks) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert"]))
        if op == "delete":
            del toks[i]
        elif op == "duplicate":
            toks.insert(i, toks[i])
        elif op == "swap" and i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
        elif op == "replace":
            toks[i] = draw(st.sampled_from(_VOCAB))
        else:
            toks.insert(i, draw(st.sampled_from(_VOCAB)))
        if not toks:
            toks = [""]
    return "".join(toks)


@pytest.mark.slow
@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_sources_never_raise(text):
    _check(text)


# --------------------------------------------------------------------------
# names longer than the artifact format allows


def test_module_name_too_long_is_a_diagnostic():
    long = "tenant." + "a" * (MAX_MODULE_NAME_LEN - 6)
    assert not is_valid_module_name(long)
    ok = "tenant." + "a" * (MAX_MODULE_NAME_LEN - 7)
    assert is_valid_module_name(ok)
    text = f"security module {long} {{\n    entitle module to threads.create;\n}}\n" \
           f"security module {ok} {{ entitle module to threads.create; }}\n"
    result = compile_source(text, "long.pol")
    [err] = result.errors
    assert (err.file, err.line, err.col) == ("long.pol", 1, 17)
    assert "too long" in err.message and str(MAX_MODULE_NAME_LEN) in err.message
    assert [name for name, _ in result.artifacts] == [ok]
    rendered = result.render()
    assert rendered.startswith("long.pol:1:17: error: module name 'tenant.aaa")
    assert "^~~~" in rendered


def test_long_capability_and_parameter_names_are_diagnostics():
    cap = "c" * 256
    param = "p" * 256
    result = compile_source(
        f"security module m {{\n capability {cap}(x: string);\n capability tool.x({param}: string);\n"
        f" entitle module to {cap};\n}}\n",
        "long.pol",
    )
    messages = [(d.line, d.message) for d in result.errors]
    assert any(line == 2 and "capability name" in m and "too long" in m for line, m in messages), messages
    assert any(line == 3 and "parameter name" in m and "too long" in m for line, m in messages), messages
    assert not result.artifacts


def test_polc_compile_reports_a_long_module_name(tmp_path):
    from click.testing import CliRunner

    from polc.cli import cli

    src = tmp_path / "src"
    src.mkdir()
    long = "m" * (MAX_MODULE_NAME_LEN + 1)
    (src / "a.pol").write_text(f"security module {long} {{ entitle module to threads.create; }}\n"
                               "security module fine { entitle module to threads.create; }\n")
    res = CliRunner().invoke(cli, ["compile", str(src), "-o", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert f"a.pol:1:17: error: module name '{'m' * 57}...' is too long" in res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".polc-compile.lock", "fine.bin"]
    # and again, with the good module up to date
    report = compile_paths([str(src)], str(tmp_path / "out"))
    assert report.exit_code == 1 and report.errors == 1


@pytest.mark.parametrize("name", ["a" * MAX_MODULE_NAME_LEN, "a." * 125 + "b"])
def test_module_names_at_the_limit_compile(name):
    assert len(name) <= MAX_MODULE_NAME_LEN
    result = compile_source(f"security module {name} {{ }}", "edge.pol")
    assert result.ok and [n for n, _ in result.artifacts] == [name]
