"""The incident story of the seed, end to end: a running agent allows
com.vendor.library's network access; the source is edited to deny it and
recompiled with `polc compile`; within one interval the agent denies, and the
other modules are untouched."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polc.runtime import PolicyAgent

from support import REPO
from support.agent import wait_for

ROOT = REPO
INTERVAL = 0.2


def polc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polc", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def tree(tmp_path: Path):
    src = tmp_path / "policies-src"
    shutil.copytree(ROOT / "policies-src", src)
    out = tmp_path / "policies"
    r = polc("compile", str(src), "-o", str(out))
    if r.returncode != 0:
        pytest.fail(f"polc compile failed: {r.stderr}")
    return src, out


def test_incident_block_vendor_network_without_restart(tree, caplog):
    src, out = tree
    caplog.set_level("INFO", logger="polc")
    vendor = ("com.vendor.library", "network.outbound", "api.vendor.com", 443)
    others = [
        ("tenant.acme", "network.outbound", "api.acme.com", 443),
        ("tenant.acme", "fs.read", "tenants/acme", "a/b"),
        ("tenant.globex", "network.outbound", "api.acme.com", 443),
        ("com.vendor.library", "fs.read", "config", "app.yaml"),
        ("tenant.acme", "network.outbound", "169.254.169.254", 80),
    ]
    with PolicyAgent(out, reload_interval=INTERVAL) as agent:
        assert agent.check(*vendor)
        before = {m: s["revision"] for m, s in agent.status()["modules"].items()}
        decisions_before = {r: agent.check(*r) for r in others}

        path = src / "com.vendor.library.pol"
        text = path.read_text()
        marker = 'entitle module to network.outbound("api.vendor.com", 443);'
        assert marker in text
        path.write_text(text.replace(marker, "// INCIDENT: block all network\n    deny module to network.outbound;\n    " + marker))
        r = polc("compile", str(src), "-o", str(out))
        assert r.returncode == 0, r.stderr
        compiled_at = time.monotonic()

        wait_for(lambda: not agent.check(*vendor), timeout=5, interval=0.005)
        latency = time.monotonic() - compiled_at
        d = agent.check(*vendor)
        # Enforced at the next poll, not at a restart. How soon is a benchmark's
        # business (benchmarks/test_poll.py, drop-to-enforce); here only a bound
        # generous enough for a loaded machine.
        assert latency <= INTERVAL + 2.0, latency
        assert d.effect == "deny" and d.reason == "denied by com.vendor.library"
        assert d.rule.endswith("com.vendor.library.pol:9:5"), d.rule
        # The poller logs after it publishes the snapshot: wait for the line.
        wait_for(lambda: any(r.getMessage().startswith("reloaded com.vendor.library (") for r in caplog.records))

        after = {m: s["revision"] for m, s in agent.status()["modules"].items()}
        assert after["com.vendor.library"] != before["com.vendor.library"]
        assert {m: v for m, v in after.items() if m != "com.vendor.library"} == {
            m: v for m, v in before.items() if m != "com.vendor.library"
        }
        assert {r: agent.check(*r) for r in others if r[0] != "com.vendor.library"} == {
            r: d for r, d in decisions_before.items() if r[0] != "com.vendor.library"
        }
        assert agent.check("com.vendor.library", "fs.read", "config", "app.yaml")
