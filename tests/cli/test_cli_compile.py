"""``polc compile`` / ``polc check`` through click's runner and a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess

from click.testing import CliRunner

from polc.cli import cli

GOOD = 'security module tenant.acme {\n    entitle module to network.outbound("*.acme.com", 443);\n}\n'
BAD = "security module tenant.bad {\n    entitle module to network.inbound(8080);\n}\n"
WARN = (
    "security module tenant.warn {\n"
    '    entitle module to fs.read("a");\n'
    '    entitle module to fs.read("a");\n'
    "}\n"
)
LEAK = re.compile(r"\b_?[A-Z][A-Z_]{2,}\b|__ANON|Unexpected[A-Z]|Traceback")


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_compile_ok_summary_on_stderr(write_tree, tmp_path):
    src = write_tree({"a.pol": GOOD})
    r = run("compile", str(src), "-o", str(tmp_path / "out"))
    assert r.exit_code == 0
    assert r.stdout == ""
    assert r.stderr.strip() == "compiled 1, up to date 0, failed 0"
    r = run("compile", str(src), "-o", str(tmp_path / "out"))
    assert r.stderr.strip() == "compiled 0, up to date 1, failed 0"


def test_compile_error_exit_1_with_caret(write_tree, tmp_path):
    src = write_tree({"bad.pol": BAD, "good.pol": GOOD})
    r = run("compile", str(src), "-o", str(tmp_path / "out"))
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    assert lines[0] == (
        f"{src}/bad.pol:2:23: error: unknown capability 'network.inbound'; did you mean 'network.listen'?"
    )
    assert lines[1] == "        entitle module to network.inbound(8080);"
    assert lines[2] == "                          ^~~~~~~~~~~~~~~"
    assert lines[-1] == "compiled 1, up to date 0, failed 1"
    assert (tmp_path / "out" / "tenant.acme.bin").exists()
    assert not (tmp_path / "out" / "tenant.bad.bin").exists()


def test_syntax_error_in_words(write_tree, tmp_path):
    src = write_tree({"a.pol": "security module m {\n    deny module to process.exec\n}\n"})
    r = run("check", str(src))
    assert r.exit_code == 1
    assert "a.pol:2:32: error: expected ';' after the rule" in r.stderr
    assert not LEAK.search(r.stderr), r.stderr


def test_strict(write_tree, tmp_path):
    src = write_tree({"w.pol": WARN})
    r = run("compile", str(src), "-o", str(tmp_path / "out"))
    assert r.exit_code == 0 and "warning: duplicate rule" in r.stderr
    r = run("compile", "--strict", "--force", str(src), "-o", str(tmp_path / "out2"))
    assert r.exit_code == 1 and "error: duplicate rule" in r.stderr
    assert not (tmp_path / "out2" / "tenant.warn.bin").exists()


def test_json_format(write_tree, tmp_path):
    src = write_tree({"bad.pol": BAD, "good.pol": GOOD})
    r = run("compile", "--format", "json", str(src), "-o", str(tmp_path / "out"))
    assert r.exit_code == 1
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["summary"] == {"compiled": 1, "up_to_date": 0, "failed": 1, "errors": 1, "warnings": 0}
    (d,) = doc["diagnostics"]
    assert (d["line"], d["col"], d["severity"], d["module"]) == (2, 23, "error", "tenant.bad")
    assert {m["module"]: m["status"] for m in doc["modules"]} == {"tenant.bad": "failed", "tenant.acme": "compiled"}


def test_verbose_and_quiet(write_tree, tmp_path):
    src = write_tree({"a.pol": GOOD})
    r = run("compile", "-v", str(src), "-o", str(tmp_path / "out"))
    assert "compiled: tenant.acme" in r.stderr and "tenant.acme.bin" in r.stderr
    r = run("compile", "-q", str(src), "-o", str(tmp_path / "out"))
    assert r.exit_code == 0 and r.stderr == ""


def test_check_writes_nothing(write_tree, tmp_path, chdir):
    write_tree({"a.pol": GOOD})
    r = run("check", "policies-src")
    assert r.exit_code == 0 and r.stderr.strip() == "checked 1, failed 0"
    assert not (tmp_path / "policies").exists()


def test_usage_errors_exit_2(tmp_path):
    r = run("compile", str(tmp_path / "missing"))
    assert r.exit_code == 2 and "no such file or directory" in r.stderr
    r = run("compile")
    assert r.exit_code == 2
    r = run("compile", "-j", "-1", str(tmp_path))
    assert r.exit_code == 2


def test_subprocess_end_to_end(write_tree, tmp_path, polc_cmd):
    src = write_tree({"a.pol": GOOD, "b.pol": BAD})
    env = dict(os.environ, PYTHONWARNINGS="error")

    def polc(*args):
        return subprocess.run([*polc_cmd, *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)

    p = polc("compile", "policies-src", "-j", "2")
    assert p.returncode == 1, p.stderr
    assert "policies-src/b.pol:2:23: error: unknown capability 'network.inbound'" in p.stderr
    assert p.stderr.rstrip().endswith("compiled 1, up to date 0, failed 1")
    assert (tmp_path / "policies" / "tenant.acme.bin").exists()
    (src / "b.pol").unlink()
    p = polc("compile", "policies-src")
    assert p.returncode == 0 and p.stderr.strip() == "compiled 0, up to date 1, failed 0"
    p = polc("check", "policies-src/nope.pol")
    assert p.returncode == 2
    p = polc("compile", "--format", "json", "policies-src")
    assert json.loads(p.stdout)["summary"]["up_to_date"] == 1


def test_examples_compile_cleanly(examples_dir, tmp_path):
    r = run("compile", "--strict", str(examples_dir), "-o", str(tmp_path / "out"))
    assert r.exit_code == 0, r.stderr
    assert r.stderr.strip().startswith("compiled ")
    assert "warning" not in r.stderr


def test_check_reads_one_source_from_stdin(write_tree, tmp_path, polc_cmd):
    src = write_tree({"a.pol": GOOD, "b.pol": GOOD.replace("tenant.acme", "tenant.b")})

    def polc(*args, input):
        return subprocess.run([*polc_cmd, *args], cwd=tmp_path, input=input, capture_output=True, text=True,
                              timeout=60)

    p = polc("check", "-", input=GOOD)
    assert p.returncode == 0 and p.stderr.strip() == "checked 1, failed 0", p.stderr
    p = polc("check", "-", input=BAD)
    assert p.returncode == 1
    assert p.stderr.startswith("<stdin>:2:23: error: unknown capability 'network.inbound'"), p.stderr
    assert "        entitle module to network.inbound(8080);\n                          ^~~" in p.stderr
    p = polc("check", "--format", "json", "-", "--stdin-filename", "policies-src/a.pol", input=BAD)
    doc = json.loads(p.stdout)
    assert p.returncode == 1 and doc["diagnostics"][0]["file"] == "policies-src/a.pol"
    # within its tree: the buffer replaces the file of that name, the rest is checked with it
    p = polc("check", "-", "policies-src", "--stdin-filename", "policies-src/a.pol",
             input=GOOD.replace("tenant.acme", "tenant.b"))
    assert p.returncode == 1 and "duplicate module 'tenant.b'" in p.stderr, p.stderr
    assert "checked 2, failed 2" in p.stderr
    p = polc("check", "-", "policies-src", "--stdin-filename", "policies-src/a.pol", input=GOOD)
    assert p.returncode == 0 and "checked 2, failed 0" in p.stderr, p.stderr
    # usage errors
    for args in (["compile", "-"], ["check", "-", "-"], ["check", "policies-src", "--stdin-filename", "x.pol"]):
        p = polc(*args, input=GOOD)
        assert p.returncode == 2 and "polc: error:" in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    assert not (tmp_path / "policies").exists()
    assert sorted(os.listdir(src)) == ["a.pol", "b.pol"]


DECLARES = "security module agent.gateway {\n    capability tool.call(server: string, tool: string);\n}\n"
USES = 'security module agent.user {\n    entitle module to tool.call("github", "search_*");\n}\n'


def test_capability_declared_in_a_file_left_out_is_named(write_tree, tmp_path, polc_cmd):
    write_tree({"a.pol": USES, "b.pol": DECLARES, "sub/c.pol": "security module c { }\n"})
    p = subprocess.run([*polc_cmd, "check", "policies-src/a.pol"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert lines[0] == (
        "policies-src/a.pol:2:23: error: unknown capability 'tool.call': it is declared in policies-src/b.pol, "
        "which is not part of this check; check the directory or pass both files"
    )
    assert lines[3] == "policies-src/b.pol:2:16: note: 'tool.call' is declared here"
    assert lines[4] == "        capability tool.call(server: string, tool: string);"
    # checking both, or the directory, is fine
    assert run("check", str(tmp_path / "policies-src" / "a.pol"), str(tmp_path / "policies-src" / "b.pol")).exit_code == 0
    assert run("check", str(tmp_path / "policies-src")).exit_code == 0
    # from stdin with a file name, and for compile
    r = CliRunner().invoke(cli, ["check", "-", "--stdin-filename", str(tmp_path / "policies-src" / "a.pol")],
                           input=USES)
    assert r.exit_code == 1 and f"declared in {tmp_path}/policies-src/b.pol, which is not part" in r.stderr
    r = run("compile", str(tmp_path / "policies-src" / "a.pol"), "-o", str(tmp_path / "out"))
    assert r.exit_code == 1 and "which is not part of this compile; compile the directory" in r.stderr
    # a capability declared nowhere keeps the plain message (with its suggestion)
    write_tree({"d.pol": USES.replace("tool.call", "tool.cal").replace("agent.user", "agent.d")})
    r = run("check", str(tmp_path / "policies-src" / "d.pol"))
    assert r.exit_code == 1
    assert "unknown capability 'tool.cal'\n" in r.stderr or "unknown capability 'tool.cal';" in r.stderr
    assert "declared in" not in r.stderr
