"""`polc eval --explain`: every candidate rule in evaluation order, matched or not and why.

The explanation is checked against the enforcer itself: over generated
policies and requests, the rule it finds deciding is the one
``Snapshot.check`` reports (or both refuse the request before any rule).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from polc.cli import cli
from polc.compiler import compile_sources
from polc.runtime.enforce.explain import explain, rule_text
from polc.runtime.enforce.link import link
from polc.runtime.enforce.snapshot import Snapshot
from polc.runtime.format.reader import read_artifact

GLOBAL = """\
security module _global {
    deny module to network.outbound("169.254.0.0/16");
    entitle module to network.outbound("dns.internal", 53);
}
"""
# tenant.acme entitles every host on 443: a request for the metadata service is
# entitled by the module and still denied, because _global's denies come first.
ACME = """\
security module tenant.acme {
    entitle module to network.outbound(*, 443);
    entitle module to network.outbound("*.acme.com", 8443);
    deny module to process.exec;
}
"""


@pytest.fixture
def pdir(write_tree, tmp_path, polc_cmd) -> Path:
    src = write_tree({"_global.pol": GLOBAL, "tenant.acme.pol": ACME})
    out = tmp_path / "policies"
    subprocess.run([*polc_cmd, "compile", str(src), "-o", str(out), "-q"], check=True, timeout=120)
    return out


def invoke(*args: str):
    return CliRunner().invoke(cli, ["eval", *args])


def test_global_deny_decides_after_a_module_entitle_matched(pdir, polc_cmd):
    args = [str(pdir), "tenant.acme", "network.outbound", "169.254.169.254", "443", "--explain"]
    r = invoke(*args)
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == 'explain: tenant.acme network.outbound("169.254.169.254", 443)'
    assert lines[1] == "  signature: network.outbound(host: host, port: port)"
    # evaluation order: _global denies, module denies, module entitles, _global entitles
    assert lines[2] == ('  1. policies-src/_global.pol:2:5  [_global deny]  '
                        'deny module to network.outbound("169.254.0.0/16");')
    assert lines[3] == "       matched: decides"
    assert lines[4] == "  2. policies-src/tenant.acme.pol:2:5  [module entitle]  entitle module to network.outbound(*, 443);"
    assert lines[5] == "       matched (an earlier rule decides)"
    assert lines[6].startswith("  3. policies-src/tenant.acme.pol:3:5  [module entitle]")
    assert lines[7] == "       not matched: host '169.254.169.254' does not match '*.acme.com'"
    assert lines[8].startswith("  4. policies-src/_global.pol:3:5  [_global entitle]")
    assert lines[9] == "       not matched: host '169.254.169.254' does not match 'dns.internal'"
    assert lines[10] == 'deny: tenant.acme network.outbound("169.254.169.254", 443)'
    assert "  rule:     policies-src/_global.pol:2:5" in lines
    p = subprocess.run([*polc_cmd, "eval", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stdout == r.stdout
    assert p.stderr == ""


def test_a_port_that_does_not_match_is_named(pdir):
    r = invoke(str(pdir), "tenant.acme", "network.outbound", "api.acme.com", "80", "--explain")
    assert r.exit_code == 1
    assert "       not matched: port 80 does not match 443" in r.stdout
    assert "       not matched: port 80 does not match 8443" in r.stdout
    assert "  no rule matched: no entitlement" in r.stdout


def test_unknown_module_warns_that_only_global_applies(pdir, polc_cmd):
    args = [str(pdir), "tenant.nobody", "network.outbound", "dns.internal", "53", "--explain"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "polc eval: warning: module 'tenant.nobody' has no artifact: only _global's rules apply to it" in r.stderr
    assert "tenant.acme" not in r.stdout  # no rule of another module is a candidate
    assert "[_global entitle]  entitle module to network.outbound(\"dns.internal\", 53);" in r.stdout
    p = subprocess.run([*polc_cmd, "eval", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    assert "has no artifact: only _global's rules apply" in p.stderr


def test_refused_requests_are_explained(pdir):
    r = invoke(str(pdir), "tenant.acme", "network.outbound", "api.acme.com", "99999", "--explain")
    assert r.exit_code == 1
    assert "  refused before any rule: invalid argument 'port' of network.outbound" in r.stdout
    r = invoke(str(pdir), "tenant.acme", "network.outbund", "x", "--explain")
    assert r.exit_code == 1
    assert "refused before any rule: unknown capability 'network.outbund'" in r.stdout


def test_json_carries_the_same_explanation(pdir, polc_cmd):
    args = [str(pdir), "tenant.acme", "network.outbound", "169.254.169.254", "443", "--explain", "--format", "json"]
    p = subprocess.run([*polc_cmd, "eval", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["rule"] == "policies-src/_global.pol:2:5"
    ex = doc["explain"]
    assert ex["agrees"] is True
    assert [(c["tier"], c["location"], c["matched"], c["decides"]) for c in ex["rules"]] == [
        ("_global deny", "policies-src/_global.pol:2:5", True, True),
        ("module entitle", "policies-src/tenant.acme.pol:2:5", True, False),
        ("module entitle", "policies-src/tenant.acme.pol:3:5", False, False),
        ("_global entitle", "policies-src/_global.pol:3:5", False, False),
    ]
    assert ex["rules"][2]["why"] == "host '169.254.169.254' does not match '*.acme.com'"
    assert json.loads(invoke(*args).stdout) == doc


# -- the explanation agrees with the enforcer ----------------------------------------

HOST_PATTERNS = ['"*.acme.com"', '"**.acme.com"', '"api.acme.com"', '"10.0.0.0/8"', '"169.254.0.0/16"',
                 '"a.*.acme.com"', "*", '"::1"']
PORT_PATTERNS = ["443", "8000..8999", "*", "80"]
PATH_PATTERNS = ['"**"', '"a/*.txt"', '"a/**"', "*"]
ROOT_PATTERNS = ['"tenants/acme"', "*", '"tenants/*"']
CMD_PATTERNS = ['"/bin/sh"', '"sh"', '"/usr/bin/*"', '"git"', "*"]
ENV_PATTERNS = ['"AWS_*"', '"HOME"', "*"]

rule_args = st.one_of(
    st.tuples(st.just("network.outbound"), st.sampled_from(HOST_PATTERNS), st.sampled_from(PORT_PATTERNS)),
    st.tuples(st.just("fs.read"), st.sampled_from(ROOT_PATTERNS), st.sampled_from(PATH_PATTERNS)),
    st.tuples(st.just("process.exec"), st.sampled_from(CMD_PATTERNS)),
    st.tuples(st.just("env.read"), st.sampled_from(ENV_PATTERNS)),
    st.tuples(st.just("threads.create")),
)
rules = st.lists(st.tuples(st.sampled_from(["entitle", "deny"]), rule_args), max_size=8)

requests = st.one_of(
    st.tuples(st.just("network.outbound"),
              st.sampled_from(["api.acme.com", "x.y.acme.com", "acme.com", "10.1.2.3", "169.254.169.254",
                               "::ffff:10.1.2.3", "evil.com", "a.b.acme.com", "bad host!", "0x7f000001", "::1"]),
              st.sampled_from([443, 80, 8080, 70000, -1, "443"])),
    st.tuples(st.just("fs.read"), st.sampled_from(["tenants/acme", "tenants/globex", "x"]),
              st.sampled_from(["a/b.txt", "a/x/y", "../etc", "/abs", "a/b.csv", "", "a//b.txt"])),
    st.tuples(st.just("process.exec"), st.sampled_from(["/bin/sh", "sh", "/usr/bin/env", "git", "/tmp/x/git", ""])),
    st.tuples(st.just("env.read"), st.sampled_from(["AWS_KEY", "HOME", "PATH", 5])),
    st.tuples(st.just("threads.create")),
    st.tuples(st.just("threads.create"), st.just("extra")),
    st.tuples(st.just("network.outbund"), st.just("x")),
)


def _source(name: str, mode: str, rs: list) -> str:
    body = [f"    mode {mode};"]
    for effect, (cap, *args) in rs:
        call = cap + (f"({', '.join(args)})" if args else "")
        body.append(f"    {effect} module to {call};")
    return f"security module {name} {{\n" + "\n".join(body) + "\n}\n"


@settings(max_examples=150)
@given(
    glob_rules=rules, mod_rules=rules, mode=st.sampled_from(["enforce", "audit"]),
    module=st.sampled_from(["tenant.x", "_global", "tenant.none"]), reqs=st.lists(requests, min_size=1, max_size=6),
)
def test_explanation_agrees_with_snapshot_check(glob_rules, mod_rules, mode, module, reqs):
    result = compile_sources([("g.pol", _source("_global", "enforce", glob_rules)),
                              ("x.pol", _source("tenant.x", mode, mod_rules))])
    assert result.ok, result.render()
    programs = {name: read_artifact(data) for name, data in result.artifacts}
    linked = {name: link(p) for name, p in programs.items()}  # type: ignore[arg-type]
    glob = linked.pop("_global")
    snap = Snapshot(linked, glob)
    for cap, *args in reqs:
        ex = explain(programs, snap, module, cap, *args)
        d = snap.decide_uncached(module, cap, *args)
        assert ex.decision == d
        assert ex.agrees, (module, cap, args, ex)
        if ex.refused is None:
            assert d.rule == ex.expected_rule
            assert sum(r.decides for r in ex.rules) == (0 if d.rule is None else 1)
            if d.rule is None:
                assert d.reason == "no entitlement"
                assert not any(r.matched for r in ex.rules)
            for r in ex.rules:
                assert r.matched == (r.why is None)
        else:
            assert d.rule is None and not d.allowed


def test_rule_text_is_the_language():
    result = compile_sources([("t.pol", ACME)]).check()
    prog = read_artifact(result["tenant.acme"])
    assert [rule_text(r) for r in prog.rules] == [
        "entitle module to network.outbound(*, 443);",
        'entitle module to network.outbound("*.acme.com", 8443);',
        "deny module to process.exec;",
    ]


def test_control_characters_in_rules_and_requests_are_escaped(write_tree, tmp_path, polc_cmd):
    src = write_tree({"_global.pol": GLOBAL, "t.pol": (
        'security module t {\n    entitle module to fs.read("tenants/\x1b[2J", "a\x07/**");\n}\n'
    )})
    out = tmp_path / "policies"
    subprocess.run([*polc_cmd, "compile", str(src), "-o", str(out), "-q"], check=True, timeout=120)
    r = invoke(str(out), "t", "fs.read", "tenants/\x1b[2J", "b\x1b]0;x", "--explain")
    assert r.exit_code == 1
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "not matched: path 'b\\x1b]0;x' does not match 'a\\u0007/**'" in r.stdout
