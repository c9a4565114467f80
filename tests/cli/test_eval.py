"""`polc eval`: one decision from a policy directory; exit 0 allow, 1 deny, 2 error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from polc.cli import cli

from support.agent import write_artifact


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    write_artifact(d, "_global", [("deny", "network.outbound", ("169.254.0.0/16",))])
    write_artifact(
        d,
        "tenant.acme",
        [
            ("entitle", "network.outbound", ("*.acme.com", 443)),
            ("entitle", "network.listen", ((8000, 8999),)),
            ("entitle", "fs.read", ("tenants/acme", "**")),
        ],
    )
    write_artifact(d, "legacy.lib", [("entitle", "threads.create", ())], mode="audit")
    return d


def run(*args: str):
    return CliRunner().invoke(cli, ["eval", *args])


def test_allow_prints_decision_and_rule(pdir):
    r = run(str(pdir), "tenant.acme", "network.outbound", "api.acme.com", "443")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == 'allow: tenant.acme network.outbound("api.acme.com", 443)'
    assert "rule:     src/tenant.acme.pol:2:5" in r.stdout
    assert "reason:   entitled by tenant.acme" in r.stdout


def test_deny_exit_1_names_the_deciding_rule(pdir):
    r = run(str(pdir), "tenant.acme", "network.outbound", "169.254.169.254", "443")
    assert r.exit_code == 1
    assert r.stdout.startswith("deny:") and "src/_global.pol:2:5" in r.stdout


def test_json_format(pdir):
    r = run(str(pdir), "tenant.acme", "network.listen", "8080", "--format", "json")
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["allowed"] is True and out["effect"] == "allow" and out["rule"] == "src/tenant.acme.pol:3:5"
    assert out["request"] == {"module": "tenant.acme", "capability": "network.listen", "args": [8080]}


def test_args_are_typed_by_signature(pdir):
    # a port that is not a number stays a string and is denied with a reason
    r = run(str(pdir), "tenant.acme", "network.listen", "http", "--format", "json")
    assert r.exit_code == 1 and "invalid argument 'port'" in json.loads(r.stdout)["reason"]
    r = run(str(pdir), "tenant.acme", "network.listen", "-5")  # negative numbers are not options
    assert r.exit_code == 1 and "out of range" in r.stdout
    # a string parameter keeps digits as a string
    r = run(str(pdir), "tenant.acme", "fs.read", "tenants/acme", "123")
    assert r.exit_code == 0


def test_no_entitlement_and_unknown_capability(pdir):
    r = run(str(pdir), "tenant.acme", "process.exec", "ls")
    assert r.exit_code == 1 and "no entitlement" in r.stdout
    r = run(str(pdir), "tenant.acme", "network.inbound")
    assert r.exit_code == 1 and "unknown capability 'network.inbound'" in r.stdout


def test_audit_mode_is_an_allow_flagged_would_deny(pdir):
    r = run(str(pdir), "legacy.lib", "process.exec", "ls", "--format", "json")
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["allowed"] is True and out["effect"] == "deny" and out["audit"] is True
    r = run(str(pdir), "legacy.lib", "process.exec", "ls")
    assert r.stdout.startswith("allow (audit: would deny)")


def test_errors_exit_2(tmp_path, pdir):
    r = run(str(tmp_path / "missing"), "m", "threads.create")
    assert r.exit_code == 2 and "no such directory" in r.stderr
    f = tmp_path / "file"
    f.write_text("x")
    r = run(str(f), "m", "threads.create")
    assert r.exit_code == 2 and "not a directory" in r.stderr
    r = run(str(pdir))
    assert r.exit_code == 2  # click usage error: missing arguments


def test_bad_artifact_is_reported_and_falls_back(pdir):
    (pdir / "tenant.acme.bin").write_bytes(b"garbage")
    r = run(str(pdir), "tenant.acme", "network.outbound", "api.acme.com", "443")
    assert r.exit_code == 1
    assert "tenant.acme.bin" in r.stderr and "falls back to _global only" in r.stderr


def test_real_subprocess(pdir):
    r = subprocess.run(
        [sys.executable, "-m", "polc", "eval", str(pdir), "tenant.acme", "network.outbound", "x.acme.com", "443"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("allow:")


def test_options_after_arguments_are_honoured_or_rejected_never_arguments(pdir):
    # an unknown option after the arguments is a usage error, not one more argument
    r = run(str(pdir), "tenant.acme", "network.outbound", "api.acme.com", "443", "-v")
    assert r.exit_code == 2, r.output
    assert "no such option: -v" in r.stderr and "-- -v" in r.stderr
    assert r.stdout == ""
    for bad, named in (("--verbose", "--verbose"), ("-x", "-x"), ("--formats=json", "--formats"), ("-hv", "-v")):
        r = run(str(pdir), "tenant.acme", "fs.read", "tenants/acme", "a", bad)
        assert r.exit_code == 2, (bad, r.output)
        assert f"no such option: {named} " in r.stderr, (bad, r.stderr)
    # known options are honoured wherever they are
    r = run(str(pdir), "tenant.acme", "network.outbound", "api.acme.com", "443", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["allowed"] is True
    r = run(str(pdir), "tenant.acme", "network.outbound", "--format=json", "api.acme.com", "443")
    assert r.exit_code == 0 and json.loads(r.stdout)["request"]["args"] == ["api.acme.com", 443]
    r = run(str(pdir), "tenant.acme", "network.outbound", "api.acme.com", "-h")
    assert r.exit_code == 0 and "Usage:" in r.stdout
    # '--' ends the options: what follows is an argument, whatever it looks like
    r = run(str(pdir), "tenant.acme", "fs.read", "tenants/acme", "--", "-v")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == 'allow: tenant.acme fs.read("tenants/acme", "-v")'
    r = run(str(pdir), "tenant.acme", "fs.read", "--", "tenants/acme", "--format")
    assert r.exit_code == 0 and '"--format")' in r.stdout.splitlines()[0]


def test_trailing_option_in_a_real_subprocess(pdir):
    base = [sys.executable, "-m", "polc", "eval", str(pdir), "tenant.acme", "fs.read", "tenants/acme"]
    r = subprocess.run([*base, "-v"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such option: -v" in r.stderr and r.stdout == ""
    r = subprocess.run([*base, "--", "-v"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and '"-v")' in r.stdout
