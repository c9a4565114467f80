"""``polc fmt``: the canonical layout, idempotent, comment-keeping, meaning-preserving, never destructive."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polc.cli import cli
from polc.compiler import compile_source
from polc.compiler.fmt import format_source, grammar_text_of_tests
from polc.compiler.suggest import has_governs
from polc.runtime.format.header import HEADER_SIZE, read_envelope
from polc.runtime.format.opcodes import RULE

from support import REPO

EXAMPLES = sorted((REPO / "policies-src").rglob("*.pol"))
SOURCES = [p for p in EXAMPLES if not p.name.endswith(".test.pol")]

MESSY = """/* Header
   kept as written.   */


security   module  tenant.messy{entitle module to network.outbound( "a.com" ,443 ) ; // trailing
   // own line before the deny


 deny module to fs.read(/* root */ "r",
   // inside the argument list
   "**") ;
capability tool.call ( s : string , t:string ) ;
entitle module to network.listen(8000 .. 8999);mode audit ;
  entitle module to tool.call(*, "x");}
security module tenant.other { /* a */ // b
  entitle module to threads.create; /* c */ deny module to env.read("X");
  // before the closing brace


}
// end of file
"""

MESSY_FORMATTED = """/* Header
   kept as written.   */

security module tenant.messy {
    mode audit;
    capability tool.call(s: string, t: string);

    entitle module to network.outbound("a.com", 443);  // trailing
    // own line before the deny

    deny module to fs.read(/* root */ "r",
        // inside the argument list
        "**");
    entitle module to network.listen(8000..8999);
    entitle module to tool.call(*, "x");
}

security module tenant.other {  /* a */ // b
    entitle module to threads.create;  /* c */
    deny module to env.read("X");
    // before the closing brace
}

// end of file
"""


def stripped_payloads(text: str, path: str) -> dict[str, Any]:
    """Each module's decoded payload without source positions (rule line/col) and the source digest."""
    result = compile_source(text, path)
    assert result.ok, result.render()
    out = {}
    for name, data in result.artifacts:
        header, _, _, _ = read_envelope(data)
        payload = msgpack.unpackb(data[HEADER_SIZE:HEADER_SIZE + header.payload_len], raw=False)
        payload.pop("source_digest")
        payload["code"] = [ins[:3] + [0, 0] if ins[0] == RULE else ins for ins in payload["code"]]
        out[name] = payload
    return out


def test_messy_source_gets_the_canonical_layout() -> None:
    result = format_source(MESSY, "messy.pol")
    assert result.diagnostics == []
    assert result.text == MESSY_FORMATTED
    assert format_source(MESSY_FORMATTED, "messy.pol").text == MESSY_FORMATTED
    assert stripped_payloads(MESSY, "messy.pol") == stripped_payloads(MESSY_FORMATTED, "messy.pol")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_every_example_is_formatted_idempotent_and_meaning_preserving(path: Path) -> None:
    text = path.read_text("utf-8")
    once = format_source(text, path.name).text
    assert once is not None
    assert format_source(once, path.name).text == once
    assert once == text, "policies-src/ is kept formatted (polc fmt --check policies-src)"
    scrambled = scramble(text)
    assert scrambled != text
    assert format_source(scrambled, path.name).text is not None
    assert stripped_payloads(scrambled, path.name) == stripped_payloads(text, path.name)


_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*[\s\S]*?\*/|[A-Za-z_][\w.]*|-?\d+|\.\.|\s+|.')


def scramble(text: str) -> str:
    """The same tokens and comments in another layout: a line break or spaces between every two tokens."""
    out = []
    for k, tok in enumerate(_TOKEN.findall(text)):
        if tok.isspace():
            out.append("\n\n\n  " if "\n" in tok else "\t \n")
        else:
            out.append(tok if tok.startswith("//") else (" \n " if k % 3 == 0 else "  ") + tok)
    return "".join(out)


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.name.endswith(".test.pol")], ids=lambda p: p.name)
def test_every_example_test_file_is_formatted_and_idempotent(path: Path) -> None:
    text = path.read_text("utf-8")
    once = format_source(text, path.name)
    assert once.text is not None, once.diagnostics
    assert once.text == text, "policies-src/ is kept formatted (polc fmt --check policies-src)"
    scrambled = format_source(scramble(text), path.name).text
    assert scrambled is not None and format_source(scrambled, path.name).text == scrambled


@pytest.mark.skipif(not has_governs(), reason="this language has no governs statement")
def test_governs_comes_first_with_its_packages_sorted() -> None:
    src = ('security module com.vendor.library {\n    entitle module to threads.create;  // one\n'
           '    governs "vendorlib_ext", "vendorlib";  // its packages\n}\n')
    out = format_source(src, "v.pol").text
    assert out == ('security module com.vendor.library {\n    governs "vendorlib", "vendorlib_ext";  // its packages\n\n'
                   '    entitle module to threads.create;  // one\n}\n')
    assert format_source(out, "v.pol").text == out
    assert stripped_payloads(src, "v.pol") == stripped_payloads(out, "v.pol")


def test_the_stripped_payload_comparison_can_fail() -> None:
    a = "security module t { entitle module to network.outbound(\"a.com\", 443); }"
    b = "security module t { entitle module to network.outbound(\"a.com\", 444); }"
    assert stripped_payloads(a, "t.pol") != stripped_payloads(b, "t.pol")


# --------------------------------------------------------------------------
# generated sources

_HOSTS = ['"api.acme.com"', '"*.acme.com"', '"**.io"', '"10.0.0.0/8"', '"::1"', "*"]
_PORTS = ["443", "80", "8000..8999", "*"]
_PATHS = ['"a/b"', '"**"', '"config/*.yaml"', "*"]
_COMMENTS = ["// note", "/* inline */", "/* two\n   lines */", "// ** not a rule"]


@st.composite
def _rule(draw: st.DrawFn) -> str:
    effect = draw(st.sampled_from(["entitle", "deny"]))
    kind = draw(st.integers(0, 4))
    if kind == 0:
        args = f"({draw(st.sampled_from(_HOSTS))}, {draw(st.sampled_from(_PORTS))})"
        cap = "network.outbound"
    elif kind == 1:
        args, cap = f'("root", {draw(st.sampled_from(_PATHS))})', draw(st.sampled_from(["fs.read", "fs.write"]))
    elif kind == 2:
        args, cap = draw(st.sampled_from(["", "()"])), "threads.create"
    elif kind == 3:
        args, cap = f"({draw(st.sampled_from(_PORTS))})", "network.listen"
    else:
        args, cap = f'("{draw(st.sampled_from(["git", "/bin/sh", "python3*"]))}")', "process.exec"
    return f"{effect} module to {cap}{args};"


@st.composite
def _module(draw: st.DrawFn, index: int) -> list[str]:
    stmts = draw(st.lists(_rule(), min_size=0, max_size=6))
    if draw(st.booleans()):
        stmts.insert(draw(st.integers(0, len(stmts))), f"mode {draw(st.sampled_from(['audit', 'enforce']))};")
    if has_governs() and draw(st.booleans()):
        names = draw(st.permutations([f'"gen{index}pkg_b"', f'"gen{index}pkg_a"', f'"gen{index}pkg_c.x"']))
        stmts.insert(draw(st.integers(0, len(stmts))), f"governs {', '.join(names[:draw(st.integers(1, 3))])};")
    if draw(st.booleans()):
        stmts.insert(draw(st.integers(0, len(stmts))), f"capability gen{index}.call(a: string, b: int);")
        stmts.append(f'entitle module to gen{index}.call("x", 1..5);')
    return [f"security module gen.m{index} {{", *stmts, "}"]


_SEP = st.sampled_from([" ", "  ", "\n", "\n\n", "\n\n\n", "\t", " \n ", "\r\n"])


@st.composite
def _source(draw: st.DrawFn) -> str:
    n = draw(st.integers(1, 3))
    parts: list[str] = []
    for i in range(n):
        for piece in draw(_module(i)):
            parts.append(piece)
            if draw(st.integers(0, 4)) == 0:
                parts.append(draw(st.sampled_from(_COMMENTS)) + "\n")
    out = []
    for piece in parts:
        out.append(piece)
        out.append("\n" if piece.startswith("//") else draw(_SEP))
    return "".join(out)


_GAPS = [" ", "\n", "\n\n", "\t", " /* c */ ", "/*x*/", " // c\n", "\n// own line\n", "\n\n/* a\n b */\n"]


@st.composite
def _sprinkled(draw: st.DrawFn) -> str:
    """A generated source with white space and comments between random pairs of its tokens."""
    tokens = [t for t in _TOKEN.findall(draw(_source())) if not t.isspace()]
    out = []
    for tok in tokens:
        out.append(tok)
        if tok.startswith("//"):
            out.append("\n")
        elif draw(st.integers(0, 3)) == 0:
            out.append(draw(st.sampled_from(_GAPS)))
        else:
            out.append(" ")
    return "".join(out)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_source(), _sprinkled()))
def test_generated_sources_format_idempotently_and_keep_their_meaning(src: str) -> None:
    once = format_source(src, "gen.pol")
    assert once.text is not None, once.diagnostics
    twice = format_source(once.text, "gen.pol")
    assert twice.text == once.text
    for line in once.text.split("\n"):
        assert line == line.rstrip(), "no trailing white space"
    assert "\r" not in once.text and once.text.endswith("\n")
    assert stripped_payloads(src, "gen.pol") == stripped_payloads(once.text, "gen.pol")


# --------------------------------------------------------------------------
# the command, through click's runner


def _tree(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    (d / "ok.pol").write_text(MESSY_FORMATTED, "utf-8")
    (d / "messy.pol").write_text(MESSY.replace("tenant.", "other."), "utf-8")
    return d


def _snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


def test_check_names_the_files_that_would_change_and_changes_nothing(tmp_path: Path) -> None:
    d = _tree(tmp_path)
    before = _snapshot(d)
    r = CliRunner().invoke(cli, ["fmt", "--check", str(d)])
    assert r.exit_code == 1, r.output
    assert r.stdout.splitlines() == [f"would reformat {d.as_posix()}/messy.pol"]
    assert "would reformat 1, unchanged 1, failed 0" in r.stderr
    assert _snapshot(d) == before


def test_diff_prints_a_unified_diff_and_changes_nothing(tmp_path: Path) -> None:
    d = _tree(tmp_path)
    before = _snapshot(d)
    r = CliRunner().invoke(cli, ["fmt", "--diff", str(d / "messy.pol")])
    assert r.exit_code == 1
    assert r.stdout.startswith(f"--- {(d / 'messy.pol').as_posix()}\n+++ ")
    assert "+security module other.messy {\n" in r.stdout
    assert "-security   module  other.messy{" in r.stdout
    assert _snapshot(d) == before


def test_rewrites_in_place_atomically_keeping_the_mode(tmp_path: Path) -> None:
    d = _tree(tmp_path)
    messy = d / "messy.pol"
    os.chmod(messy, 0o640)
    inode = messy.stat().st_ino
    ok_before = (d / "ok.pol").stat().st_mtime_ns
    r = CliRunner().invoke(cli, ["fmt", str(d)])
    assert r.exit_code == 0, r.output
    assert "reformatted 1, unchanged 1, failed 0" in r.stderr
    assert messy.read_text("utf-8") == MESSY_FORMATTED.replace("tenant.", "other.")
    assert stat.S_IMODE(messy.stat().st_mode) == 0o640
    assert messy.stat().st_ino != inode, "written as a new file and renamed over the old one"
    assert (d / "ok.pol").stat().st_mtime_ns == ok_before, "an unchanged file is not rewritten"
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []
    again = CliRunner().invoke(cli, ["fmt", "--check", str(d)])
    assert again.exit_code == 0


def test_a_symlink_is_followed_and_its_target_rewritten(tmp_path: Path) -> None:
    d = _tree(tmp_path)
    link = tmp_path / "link.pol"
    link.symlink_to(d / "messy.pol")
    r = CliRunner().invoke(cli, ["fmt", str(link)])
    assert r.exit_code == 0, r.output
    assert link.is_symlink()
    assert (d / "messy.pol").read_text("utf-8") == MESSY_FORMATTED.replace("tenant.", "other.")


def test_a_syntax_error_gives_diagnostics_and_leaves_the_file_alone(tmp_path: Path) -> None:
    d = _tree(tmp_path)
    bad = d / "bad.pol"
    bad.write_text("security module x {\n    entitle module to ;\n}\n", "utf-8")
    before = _snapshot(d)
    r = CliRunner().invoke(cli, ["fmt", str(bad), str(d / "ok.pol")])
    assert r.exit_code == 1
    assert f"{bad.as_posix()}:2:23: error: expected a capability name" in r.stderr
    assert "reformatted 0, unchanged 1, failed 1" in r.stderr
    assert _snapshot(d) == before
    latin = d / "latin.pol"
    latin.write_bytes(b"security module x { // caf\xe9\n}\n")
    r = CliRunner().invoke(cli, ["fmt", str(latin)])
    assert r.exit_code == 1 and f"{latin.as_posix()}:1:27: error: the file is not valid UTF-8" in r.stderr


def test_missing_path_is_a_usage_error() -> None:
    r = CliRunner().invoke(cli, ["fmt", "/nonexistent/x.pol"])
    assert r.exit_code == 2
    assert "no such file or directory: /nonexistent/x.pol" in r.stderr


def test_a_fifo_is_refused_not_read(tmp_path: Path) -> None:
    d = _tree(tmp_path)
    os.mkfifo(d / "pipe.pol")
    r = subprocess.run([sys.executable, "-m", "polc", "fmt", "--check", str(d)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert f"{(d / 'pipe.pol').as_posix()}: not a regular file" in r.stderr


def test_standard_input_to_standard_output() -> None:
    r = CliRunner().invoke(cli, ["fmt", "-"], input=MESSY)
    assert r.exit_code == 0
    assert r.stdout == MESSY_FORMATTED
    r = CliRunner().invoke(cli, ["fmt", "--check", "-"], input=MESSY)
    assert r.exit_code == 1 and r.stdout == ""


@pytest.mark.skipif(grammar_text_of_tests() is None, reason="the test-file grammar (grammar/tests.lark) is not here")
def test_test_files_are_formatted_too(tmp_path: Path) -> None:
    src = ('test "acme"{expect allow tenant.acme to network.outbound( "api.acme.com",443 );\n\n\n'
           '  // the shell\n expect deny tenant.acme to process.exec("/bin/sh") by "tenant.acme.pol:6:5" ;}\n')
    expected = ('test "acme" {\n    expect allow tenant.acme to network.outbound("api.acme.com", 443);\n\n'
                '    // the shell\n    expect deny tenant.acme to process.exec("/bin/sh") by "tenant.acme.pol:6:5";\n'
                "}\n")
    f = tmp_path / "acme.test.pol"
    f.write_text(src, "utf-8")
    r = CliRunner().invoke(cli, ["fmt", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert f.read_text("utf-8") == expected
    bad = tmp_path / "bad.test.pol"
    bad.write_text('test "x" { expect allow m to ; }\n', "utf-8")
    r = CliRunner().invoke(cli, ["fmt", str(bad)])
    assert r.exit_code == 1 and f"{bad.as_posix()}:1:" in r.stderr
    assert bad.read_text("utf-8") == 'test "x" { expect allow m to ; }\n'


# --------------------------------------------------------------------------
# the command, as a real process


def _polc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "polc", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_subprocess_check_fix_check(tmp_path: Path) -> None:
    d = _tree(tmp_path)
    r = _polc("fmt", "--check", "src", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stdout == "would reformat src/messy.pol\n"
    r = _polc("fmt", "src", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "reformatted 1, unchanged 1, failed 0\n"
    r = _polc("fmt", "--check", "src", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == ""
    assert (d / "messy.pol").read_text("utf-8") == MESSY_FORMATTED.replace("tenant.", "other.")


def test_subprocess_policies_src_is_formatted(tmp_path: Path) -> None:
    r = _polc("fmt", "--check", str(REPO / "policies-src"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
