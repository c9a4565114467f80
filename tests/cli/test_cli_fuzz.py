"""Every input to ``polc compile`` / ``polc check`` gets diagnostics and an exit code, never a traceback.

The in-memory fuzz (tests/compiler/test_compiler_fuzz.py) covers ``compile_source``;
this drives the real command line over files on disk: click's runner for the
bulk of the generated and mutated sources (so an exception is seen as an
exception, not only as text), and real subprocesses for a fixed set of the
nastiest inputs together, and for a sample of generated ones.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polc.cli import cli

from support import REPO

ROOT = REPO
CORPUS = [p.read_bytes() for p in sorted((ROOT / "policies-src").rglob("*.pol")) if not p.name.endswith(".test.pol")]

HEAD = b'security module fz {\n    entitle module to '


def _rule(arg: bytes, cap: bytes = b"network.outbound") -> bytes:
    return HEAD + cap + b"(" + arg + b");\n}\n"


# Inputs found (or feared) to break a compiler: each must give diagnostics.
NASTY: dict[str, bytes] = {
    "int4301.pol": _rule(b'"a.com", ' + b"1" * 4301),
    "int_neg_zeros.pol": _rule(b'"a.com", -' + b"0" * 6000 + b"1"),
    "range_huge.pol": _rule(b'"a.com", ' + b"9" * 5000 + b".." + b"9" * 5001),
    "int_param_huge.pol": HEAD.replace(b"to ", b"to ") + b"x.y(" + b"7" * 10000 + b");\n"
    b"    capability x.y(n: int);\n}\n",
    "deep_parens.pol": _rule(b"(" * 5000 + b")" * 5000),
    "deep_braces.pol": b"security module d " + b"{" * 5000 + b"}" * 5000,
    "nested_comments.pol": b"/*" * 3000 + b"*/" * 3000 + HEAD + b"fs.read;\n}\n",
    "nul.pol": HEAD + b"fs.read(\"a\x00b\", \x00);\n}\x00\n",
    "odd_unicode.pol": HEAD + ("fs.read(\"\u202e\u0301\ufeff\U0001f600\", \"\u2028\");\n}\n\u2029"
                        "security module \u0131\u0307 { entitle module to threads.create; }\n").encode(),
    "long_line.pol": HEAD + b"fs.read(\"" + b"a" * 200_000 + b"\");  " + b" " * 100_000 + b"x\n}\n",
    "long_names.pol": b"security module " + b"n" * 100_000 + b" { entitle module to " + b"c." * 50_000
    + b"d; capability " + b"p" * 70_000 + b"(" + b"q" * 70_000 + b": " + b"t" * 70_000 + b"); }\n",
    "binary.pol": bytes(random.Random(7).randrange(256) for _ in range(20_000)),
    "bad_utf8.pol": HEAD + b"fs.read(\"\xff\xfe\xc3\");\n}\n",
    "bom_middle.pol": HEAD + "fs.read(\"a\");\n\ufeff}\n".encode(),
    "cr_only.pol": HEAD.replace(b"\n", b"\r") + b"fs.read;\r}\r",
    "empty.pol": b"",
    "many_modules.pol": b"".join(b"security module m%d { deny module to fs.read(\"d%d\"); }\n" % (i, i)
                                 for i in range(300)),
}

VALID = {"empty.pol", "cr_only.pol", "many_modules.pol"}

# Fragments spliced into corpus files and generated sources.
FRAGMENTS = [
    b"1" * 4301, b"-" + b"0" * 4400 + b"5", b"9" * 50 + b".." + b"1", b"(" * 300, b")" * 300, b"{" * 300,
    b"}" * 300, b"/*", b"*/", b"//", b'"', b"\\", b"\x00", b"\xff", b"\xed\xa0\x80", b"\xef\xbb\xbf",
    "\u202e".encode(), "\U0001f600".encode(), "\u0301".encode(), b"\r", b"\t", b"\x1b[31m", b"..",
    b"x" * 5000, b"a." * 2000, b"security module", b"capability z(a: int);", b"entitle module to",
    b"deny module to", b"mode audit;", b"*", b";", b",", b":", b"65536", b"-1",
]


def _invoke(*args: str, input: bytes | None = None):
    r = CliRunner().invoke(cli, list(args), input=input)
    # click's runner catches the exception a subprocess would print as a traceback
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"polc {' '.join(args)} raised {r.exception!r}") from r.exception
    assert r.exit_code in (0, 1, 2), (args, r.exit_code, r.output[-2000:])
    assert "Traceback" not in r.output
    return r


def _both(src_dir: Path, out_dir: Path) -> None:
    _invoke("check", str(src_dir))
    _invoke("compile", str(src_dir), "-o", str(out_dir), "--force")
    _invoke("check", "--format", "json", str(src_dir))


@st.composite
def _mutated(draw) -> bytes:
    base = draw(st.sampled_from(CORPUS + [b""]))
    out = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(out)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        frag = draw(st.sampled_from(FRAGMENTS))
        if kind == "insert":
            out[pos:pos] = frag
        elif kind == "delete":
            del out[pos : pos + draw(st.integers(1, 40))]
        else:
            out[pos : pos + len(frag)] = frag
    return bytes(out)


_generated = st.one_of(
    _mutated(),
    st.binary(max_size=400),
    st.lists(st.sampled_from(FRAGMENTS), max_size=12).map(b" ".join),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@settings(max_examples=120, suppress_health_check=list(HealthCheck))
@given(sources=st.lists(_generated, min_size=1, max_size=3))
def test_generated_sources_through_the_cli(tmp_path_factory, sources):
    base = tmp_path_factory.mktemp("fz")
    src = base / "src"
    src.mkdir()
    for i, data in enumerate(sources):
        (src / f"f{i}.pol").write_bytes(data)
    _both(src, base / "out")
    # one file on its own too (single-file argument, and stdin)
    _invoke("check", str(src / "f0.pol"))
    _invoke("check", "-", input=sources[0])


def test_nasty_inputs_each_through_the_cli(tmp_path):
    for name, data in NASTY.items():
        d = tmp_path / name.removesuffix(".pol")
        d.mkdir()
        (d / name).write_bytes(data)
        r = _invoke("check", str(d / name))
        assert r.exit_code == (0 if name in VALID else 1), (name, r.output[-3000:])
        _invoke("compile", str(d), "-o", str(tmp_path / "out"))


def _subprocess(args: list[str], cwd: Path, input: bytes | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "polc", *args], cwd=cwd, input=input, capture_output=True,
                       timeout=300)
    err = p.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in p.stderr and b"Traceback" not in p.stdout, err[-4000:]
    assert p.returncode in (0, 1, 2), (args, p.returncode, err[-4000:])
    return p


@pytest.mark.slow
def test_nasty_inputs_in_real_subprocesses(tmp_path):
    src = tmp_path / "nasty-src"
    src.mkdir()
    for name, data in NASTY.items():
        (src / name).write_bytes(data)
    for args in (["check", "nasty-src"], ["compile", "nasty-src", "-o", "out"],
                 ["compile", "nasty-src", "-o", "out", "-j", "2", "--force"],
                 ["check", "--format", "json", "nasty-src"]):
        p = _subprocess(args, tmp_path)
        assert p.returncode == 1, p.stderr.decode("utf-8", "replace")[-3000:]
        assert (b"error:" if "json" not in args else b'"severity": "error"') in (p.stderr + p.stdout)
    # the int literal that used to crash, by itself and from stdin
    p = _subprocess(["check", "nasty-src/int4301.pol"], tmp_path)
    assert b"(4301 digits) out of range" in p.stderr
    p = _subprocess(["check", "-"], tmp_path, input=NASTY["int4301.pol"])
    assert p.returncode == 1 and b"<stdin>:2:49: error: port 11111111111111111111... (4301 digits) out of range" in p.stderr


def test_generated_sources_in_real_subprocesses(tmp_path):
    rnd = random.Random(20240611)
    src = tmp_path / "gen-src"
    src.mkdir()
    for i in range(40):
        out = bytearray(rnd.choice(CORPUS))
        for _ in range(rnd.randrange(1, 5)):
            pos = rnd.randrange(len(out) + 1)
            out[pos:pos] = rnd.choice(FRAGMENTS)
        (src / f"g{i:02d}.pol").write_bytes(bytes(out))
    _subprocess(["check", "gen-src"], tmp_path)
    _subprocess(["compile", "gen-src", "-o", "out", "-j", "2"], tmp_path)


def test_a_fifo_in_a_source_directory_is_an_error_not_a_hang(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.pol").write_bytes(CORPUS[0])
    os.mkfifo(src / "b.pol")  # nobody ever writes to it: opening it for reading would block for ever
    p = _subprocess(["check", "src"], tmp_path)
    assert p.returncode == 2 and b"b.pol: not a regular file" in p.stderr, p.stderr
