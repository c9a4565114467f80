"""`polc test`: expectations in *.test.pol files, run through the runtime's enforcer, on real files.

Each behaviour is seen through click's runner and through a real `polc`
subprocess: the exit status, the `N passed, N failed` line, failure lines on
stderr, coverage naming the rules nobody reached, JUnit that xml.etree parses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from polc.cli import cli

REPO = Path(__file__).resolve().parent.parent.parent

GLOBAL = """\
security module _global {
    deny module to network.outbound("169.254.0.0/16");
    entitle module to network.outbound("dns.internal", 53);
}
"""
ACME = """\
security module tenant.acme {
    entitle module to network.outbound("*.acme.com", 443);
    entitle module to fs.read("tenants/acme", "**");
    deny module to process.exec;
}
"""
PASSING = """\
test "acme reaches its own API" {
    expect allow tenant.acme to network.outbound("api.acme.com", 443) by "tenant.acme.pol:2:5";
    expect deny tenant.acme to network.outbound("169.254.169.254", 443) by "_global.pol:2:5";
}
"""
FAILING = """\
test "acme reaches evil.com" {
    expect allow tenant.acme to network.outbound("evil.com", 443);
}
test "acme is denied its own API" {
    expect deny tenant.acme to network.outbound("api.acme.com", 443);
}
"""


@pytest.fixture
def tree(write_tree) -> Path:
    return write_tree({"_global.pol": GLOBAL, "tenant.acme.pol": ACME, "acme.test.pol": PASSING})


def invoke(*args: str):
    return CliRunner().invoke(cli, ["test", *args])


def run(polc_cmd: list[str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*polc_cmd, "test", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


# -- passing and failing --------------------------------------------------------


def test_passing_tests_exit_0_with_the_summary_line(tree, polc_cmd):
    r = invoke(str(tree))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1] == "2 passed, 0 failed"
    assert r.stderr == ""
    p = run(polc_cmd, str(tree))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == "2 passed, 0 failed"


def test_a_failing_expectation_exits_1_and_names_the_deciding_rule(tree, polc_cmd):
    (tree / "bad.test.pol").write_text(FAILING)
    r = invoke(str(tree))
    assert r.exit_code == 1
    assert r.stdout.splitlines()[-1] == "2 passed, 2 failed"
    bad = f"{tree.as_posix()}/bad.test.pol"
    assert f"{bad}:2:5: error: expected allow, got deny (no entitlement)" in r.stderr
    assert f"{bad}:5:5: error: expected deny, got allow (entitled by policies-src/tenant.acme.pol:2:5)" in r.stderr
    p = run(polc_cmd, str(tree))
    assert p.returncode == 1
    assert p.stdout.splitlines()[-1] == "2 passed, 2 failed"
    assert f"{bad}:5:5: error: expected deny, got allow (entitled by policies-src/tenant.acme.pol:2:5)" in p.stderr


def test_by_names_the_deciding_rule_and_a_different_one_fails(write_tree):
    tree = write_tree({"_global.pol": GLOBAL, "tenant.acme.pol": ACME, "by.test.pol": (
        'test "decided by the module, not by _global" {\n'
        '    expect allow tenant.acme to network.outbound("api.acme.com", 443) by "_global.pol:3:5";\n'
        "}\n"
    )})
    r = invoke(str(tree))
    assert r.exit_code == 1
    assert ("by.test.pol:2:5: error: expected allow by policies-src/_global.pol:3:5, got allow "
            "(entitled by policies-src/tenant.acme.pol:2:5)") in r.stderr


def test_audit_mode_expectations(write_tree):
    tree = write_tree({
        "_global.pol": GLOBAL,
        "t.pol": "security module t {\n    mode audit;\n    deny module to process.exec;\n}\n",
        "t.test.pol": (
            'test "audited" {\n'
            '    expect audit t to process.exec("/usr/bin/env") by "t.pol:3:5";\n'
            '    expect deny t to process.exec("/usr/bin/env");\n'
            "}\n"
        ),
    })
    r = invoke(str(tree))
    assert r.exit_code == 1
    assert r.stdout.splitlines()[-1] == "1 passed, 1 failed"
    assert "t.test.pol:3:5: error: expected deny, got audit (denied by policies-src/t.pol:3:5, audit mode)" in r.stderr


def test_run_selects_tests_by_name(tree):
    (tree / "bad.test.pol").write_text(FAILING)
    r = invoke(str(tree), "--run", "^acme reaches its own API$")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1] == "2 passed, 0 failed"
    r = invoke(str(tree), "--run", "evil")
    assert r.exit_code == 1
    assert r.stdout.splitlines()[-1] == "0 passed, 1 failed"
    r = invoke(str(tree), "--run", "no such test")
    assert r.exit_code == 2
    assert "no test name matches" in r.stderr
    r = invoke(str(tree), "--run", "(")
    assert r.exit_code == 2
    assert "not a regular expression" in r.stderr


def test_no_test_files_is_a_usage_error(write_tree, polc_cmd):
    tree = write_tree({"_global.pol": GLOBAL})
    p = run(polc_cmd, str(tree))
    assert p.returncode == 2
    assert "no test files (*.test.pol) found" in p.stderr
    p = run(polc_cmd, str(tree / "missing"))
    assert p.returncode == 2


def test_sources_with_errors_run_no_test(tree):
    (tree / "tenant.acme.pol").write_text(ACME.replace("fs.read", "fs.raed"))
    r = invoke(str(tree))
    assert r.exit_code == 1
    assert "unknown capability 'fs.raed'; did you mean 'fs.read'?" in r.stderr
    assert "no test was run" in r.stderr
    assert "passed" not in r.stdout


# -- coverage -------------------------------------------------------------------


def test_coverage_names_every_unreached_rule(tree, polc_cmd):
    r = invoke(str(tree), "--coverage")
    assert r.exit_code == 0, r.output
    out = r.stdout
    # reached: _global 2:5 and tenant.acme 2:5; the others are named
    assert "not reached: policies-src/_global.pol:3:5" in out
    assert "not reached: policies-src/tenant.acme.pol:3:5" in out
    assert "not reached: policies-src/tenant.acme.pol:4:5" in out
    assert "not reached: policies-src/tenant.acme.pol:2:5" not in out
    assert "not reached: policies-src/_global.pol:2:5" not in out
    assert "tenant.acme" in out and "33.3%" in out
    assert "total" in out and "40.0%  (2/5 rules)" in out
    p = run(polc_cmd, str(tree), "--coverage", "--fail-under", "40")
    assert p.returncode == 0, p.stderr
    assert "not reached: policies-src/tenant.acme.pol:4:5" in p.stdout
    p = run(polc_cmd, str(tree), "--coverage", "--fail-under", "41")
    assert p.returncode == 1
    assert "40.0% of the rules reached, below --fail-under 41" in p.stderr
    assert p.stdout.splitlines()[-1] == "2 passed, 0 failed"


def test_coverage_counts_only_the_tests_that_ran(tree):
    (tree / "more.test.pol").write_text(
        'test "dns" {\n    expect allow tenant.acme to network.outbound("dns.internal", 53);\n}\n'
    )
    r = invoke(str(tree), "--coverage")
    assert "not reached: policies-src/_global.pol:3:5" not in r.stdout
    r = invoke(str(tree), "--coverage", "--run", "^acme")
    assert "not reached: policies-src/_global.pol:3:5" in r.stdout


# -- formats --------------------------------------------------------------------


def test_junit_parses_with_one_testcase_per_test(tree, polc_cmd):
    (tree / "bad.test.pol").write_text(FAILING)
    p = run(polc_cmd, str(tree), "--format", "junit")
    assert p.returncode == 1
    root = ET.fromstring(p.stdout)
    assert root.tag == "testsuites"
    assert root.get("tests") == "3" and root.get("failures") == "2"
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"acme reaches its own API", "acme reaches evil.com", "acme is denied its own API"}
    assert cases["acme reaches its own API"].find("failure") is None
    assert all(float(c.get("time")) >= 0 for c in cases.values())
    failure = cases["acme is denied its own API"].find("failure")
    assert failure is not None
    assert failure.get("message") == "expected deny, got allow (entitled by policies-src/tenant.acme.pol:2:5)"
    assert "bad.test.pol:5:5" in (failure.text or "")
    assert p.stderr.splitlines()[-1] == "2 passed, 2 failed"
    r = invoke(str(tree), "--format", "junit")
    assert ET.fromstring(r.stdout).get("failures") == "2"


def test_json_document(tree):
    r = invoke(str(tree), "--format", "json", "--coverage")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["summary"] == {"passed": 2, "failed": 0, "tests": 1}
    (t,) = doc["tests"]
    assert t["name"] == "acme reaches its own API" and t["passed"] is True
    first = t["expectations"][0]
    assert first["got"] == "allow" and first["rule"] == "policies-src/tenant.acme.pol:2:5"
    assert first["args"] == ["api.acme.com", 443]
    mods = {m["module"]: m for m in doc["coverage"]["modules"]}
    assert mods["tenant.acme"]["missed"] == ["policies-src/tenant.acme.pol:3:5", "policies-src/tenant.acme.pol:4:5"]


# -- artifacts ------------------------------------------------------------------


def test_artifacts_directory_as_the_agent_loads_it(tree, tmp_path, polc_cmd):
    out = tmp_path / "policies"
    subprocess.run([*polc_cmd, "compile", str(tree), "-o", str(out), "-q"], check=True, timeout=120)
    tests_only = tmp_path / "checks"
    tests_only.mkdir()
    shutil.copy(tree / "acme.test.pol", tests_only / "acme.test.pol")
    (tests_only / "bad.test.pol").write_text(FAILING)
    p = run(polc_cmd, str(tests_only), "--artifacts", str(out), "--coverage")
    assert p.returncode == 1
    assert p.stdout.splitlines()[-1] == "2 passed, 2 failed"
    assert "not reached: policies-src/tenant.acme.pol:4:5" in p.stdout
    assert "expected deny, got allow (entitled by policies-src/tenant.acme.pol:2:5)" in p.stderr
    # a damaged artifact fails the run rather than testing a fallback
    data = (out / "tenant.acme.bin").read_bytes()
    (out / "tenant.acme.bin").write_bytes(data[:-3])
    p = run(polc_cmd, str(tests_only), "--artifacts", str(out))
    assert p.returncode == 1
    assert "tenant.acme.bin" in p.stderr


# -- the repository's own policies -------------------------------------------------


def test_policies_src_tests_reach_every_rule(polc_cmd):
    p = run(polc_cmd, "policies-src", "--coverage", "--fail-under", "100", cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "total               100.0%" in p.stdout
    assert p.stdout.splitlines()[-1].endswith(" passed, 0 failed")


def test_a_rule_removed_from_the_tests_drops_the_coverage(tmp_path, polc_cmd):
    src = tmp_path / "policies-src"
    shutil.copytree(REPO / "policies-src", src)
    t = src / "tenant.globex.test.pol"
    t.write_text("\n".join(line for line in t.read_text().splitlines() if "threads.create" not in line) + "\n")
    p = run(polc_cmd, str(src), "--coverage", "--fail-under", "100")
    assert p.returncode == 1
    assert "not reached: policies-src/tenant.globex.pol:10:5" in p.stdout


def test_source_discovery_skips_test_files(tree, polc_cmd, tmp_path):
    p = subprocess.run([*polc_cmd, "check", str(tree)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "checked 2, failed 0" in p.stderr
    out = tmp_path / "out"
    subprocess.run([*polc_cmd, "compile", str(tree), "-o", str(out), "-q"], check=True, timeout=120)
    assert sorted(x.name for x in out.glob("*.bin")) == ["_global.bin", "tenant.acme.bin"]


def test_source_root_names_the_sources_and_by_follows(tree):
    (tree / "bad.test.pol").write_text(FAILING)
    r = invoke(str(tree), "--source-root", str(tree))
    assert r.exit_code == 1
    assert "expected deny, got allow (entitled by tenant.acme.pol:2:5)" in r.stderr
    assert r.stdout.splitlines()[-1] == "2 passed, 2 failed"  # by "tenant.acme.pol:2:5" still names its rule
    r = invoke(str(tree), "--source-root", str(tree / "missing"))
    assert r.exit_code == 2


def test_listed_in_polc_help():
    r = CliRunner().invoke(cli, ["--help"])
    assert "test" in r.stdout.split()
    r = invoke("--help")
    assert r.exit_code == 0 and "--fail-under PCT" in r.stdout


def test_control_characters_never_reach_the_terminal_or_break_the_xml(write_tree, polc_cmd):
    tree = write_tree({"_global.pol": GLOBAL, "tenant.acme.pol": ACME, "c.test.pol": (
        'test "bell \x07 escape \x1b[31m" {\n'
        '    expect allow tenant.acme to fs.read("tenants/acme", "a\x1b[2J");\n'
        '    expect deny tenant.acme to fs.read("tenants/acme", "b\x01");\n'
        "}\n"
    )})
    p = run(polc_cmd, str(tree), "--format", "junit")
    assert p.returncode == 1
    case = ET.fromstring(p.stdout).find(".//testcase")
    assert case is not None and case.get("name") == "bell \\x07 escape \\x1b[31m"
    assert "\x1b" not in p.stdout and "\x01" not in p.stdout
    assert "\x1b" not in p.stderr and "\x01" not in p.stderr
    assert "c.test.pol:3:5: error: expected deny, got allow" in p.stderr


def test_errors_before_any_test_still_give_a_document(tree, polc_cmd):
    (tree / "bad.test.pol").write_text('test "x" {\n    expect allow tenant.acm to threads.create;\n}\n')
    p = run(polc_cmd, str(tree), "--format", "junit")
    assert p.returncode == 1
    root = ET.fromstring(p.stdout)
    assert root.get("errors") == "1" and root.get("failures") == "0"
    err = root.find(".//testcase/error")
    assert err is not None
    assert "unknown module 'tenant.acm'; did you mean 'tenant.acme'?" in (err.get("message") or "")
    assert "no test was run" in p.stderr
    r = invoke(str(tree), "--format", "json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["summary"] is None and doc["tests"] == []
    assert [(d["line"], d["col"], d["severity"]) for d in doc["diagnostics"]] == [(2, 18, "error")]
    (tree / "bad.test.pol").unlink()
    (tree / "tenant.acme.pol").write_text(ACME.replace("fs.read", "fs.raed"))
    p = run(polc_cmd, str(tree), "--format", "junit")
    assert p.returncode == 1
    err = ET.fromstring(p.stdout).find(".//testcase/error")
    assert err is not None and "fs.raed" in (err.get("message") or "")


def test_a_bar_just_missed_never_shows_as_reached(write_tree):
    rules = "".join(f'    entitle module to env.read("V{i}");\n' for i in range(1000))
    expects = "".join(f'    expect allow m to env.read("V{i}");\n' for i in range(999))
    tree = write_tree({"_global.pol": "security module _global {\n}\n",
                       "m.pol": "security module m {\n" + rules + "}\n",
                       "m.test.pol": 'test "all but one" {\n' + expects + "}\n"})
    r = invoke(str(tree), "--coverage", "--fail-under", "100")
    assert r.exit_code == 1
    assert "  m         99.9%  (999/1000 rules)" in r.stdout
    assert "not reached: policies-src/m.pol:1001:5" in r.stdout
    assert "99.9% of the rules reached, below --fail-under 100" in r.stderr
    r = invoke(str(tree), "--coverage", "--fail-under", "99.9")
    assert r.exit_code == 0, r.output
