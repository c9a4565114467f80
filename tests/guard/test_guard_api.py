"""``agent.guard()`` in code, in a subprocess: one guard per process, audit mode, faults, a symlink
repointed between two reads, the environment through os.getenv, an executor a governed package created."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.guard import child_env


def run_api(tree, mode):
    cfg = {"policies": str(tree / "policies"), "mode": mode}
    r = subprocess.run([sys.executable, "api.py", json.dumps(cfg)], cwd=tree / "app", env=child_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_enforce(tree):
    out = run_api(tree, "enforce")
    assert "start the agent before installing the guard" in out["not_started"]
    assert "already installed in this process, for this agent" in out["second_same"]
    assert "for another agent" in out["second_other"]
    assert out["read_secret"]["capability"] == "fs.read" and out["read_secret"]["package"] == "vendorlib"
    # the symlink repointed in this process is resolved again at once
    assert out["swing"]["capability"] == "fs.read" and "secret.txt" in out["swing"]["denied"]
    assert out["getenv"] == {"denied": out["getenv"]["denied"], "capability": "env.read", "package": "vendorlib"}
    # work submitted to an executor vendorlib created carries vendorlib, whoever submits it
    assert out["creator_executor"]["capability"] == "fs.read"
    # a fault in the guard denies with the reason, is counted, and is logged once
    for name in ("fault1", "fault2"):
        assert "guard fault: RuntimeError: injected" in out[name]["denied"], out[name]
    assert out["after_fault"] == {"ok": "allowed data"}
    assert out["status"]["faults"] == 2
    assert sum("guard fault while checking open (RuntimeError: injected)" in line for line in out["log"]) == 1
    counts = out["status"]["packages"]["vendorlib"]
    assert counts["fs.read"]["denied"] >= 3 and counts["env.read"]["denied"] == 1
    assert counts["fs.write"]["allowed"] >= 3  # the symlink made, removed, made again
    assert out["status"]["mode"] == "enforce" and out["status"]["unlisted"] == "allow"
    assert out["fork_child_status"] == 13  # the forked child was denied too
    # a signal handler is the code that set it: the service's runs over a vendorlib frame unchecked,
    # the one vendorlib set is vendorlib's even when the service raises the signal
    assert out["getsignal_is_original"] is True
    assert out["service_signal"] == {"ok": "raised"} and out["service_signal_file"] is True
    assert out["vendor_signal"]["package"] == "vendorlib" and out["vendor_signal"]["capability"] == "fs.write"
    assert out["vendor_signal_dir"] is False
    # a standard-library callback vendorlib scheduled on the service's loop is still vendorlib's
    assert out["callback_errors"] == ["PolicyDenied"] and out["callback_dir"] is False
    assert out["service_callback_dir"] is True
    # the service's rotating log file works when vendorlib logs; a log file vendorlib opens is checked
    assert out["service_log_rotated"] is True
    assert out["vendor_log_file"] is False
    assert any("vendorlib may not fs.write('.', 'vendor.log')" in line for line in out["log"])


def test_audit_mode_lets_everything_happen_and_says_would_deny(tree):
    out = run_api(tree, "audit")
    assert out["read_secret"] == {"ok": "the secret"}
    assert out["swing"] == {"ok": ["allowed data", "the secret"]}
    assert out["getenv"] == {"ok": "hunter2"}
    assert out["fault1"] == {"ok": "allowed data"}  # a fault in audit mode: would deny, proceeds
    assert out["fork_child_status"] == 0
    counts = out["status"]["packages"]["vendorlib"]
    assert counts["fs.read"]["would_deny"] >= 2 and counts["fs.read"]["denied"] == 0
    lines = [line for line in out["log"] if line.startswith("would deny: vendorlib may not fs.read(")]
    assert lines and all(line.endswith("(audit mode)") for line in lines)
    # at most once per (package, capability, arguments) per interval
    assert len(lines) == len(set(lines))


def test_attribution_walks_agree_with_plain_walks(tree):
    r = subprocess.run([sys.executable, "anchors.py", str(tree / "policies")], cwd=tree / "app", env=child_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["checked"] > 3000
    assert out["nwrong"] == 0, out["wrong"]


def test_importing_the_runtime_does_not_import_the_guard():
    code = ("import sys, polc.runtime\nfrom polc.runtime import PolicyAgent, PolicyDenied, Decision\n"
            "print(sorted(m for m in sys.modules if m.startswith('polc.runtime.guard')))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("value", ["yes", " 1"])
def test_accel_setting_is_validated(tree, monkeypatch, value):
    """POLC_GUARD_ACCEL is 0, 1 or unset; anything else stops the install, saying so."""
    monkeypatch.setenv("POLC_GUARD_ACCEL", value)
    cfg = {"policies": str(tree / "policies"), "mode": "enforce"}
    r = subprocess.run([sys.executable, "api.py", json.dumps(cfg)], cwd=tree / "app", env=child_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert "POLC_GUARD_ACCEL must be 0" in r.stderr
