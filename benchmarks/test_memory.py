"""Resident memory of 10,000 modules x 20 rules (bar: <= 150 MB).

Measured in a fresh interpreter: RSS after importing polc.runtime, then RSS
after a PolicyAgent (reloading off) has loaded every artifact; the figure is
the difference. /proc/self/statm, after gc.collect().
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import polc_side
from common import BIG_N, record

SCRIPT = textwrap.dedent(
    """
    import gc, json, os, sys, time
    page = os.sysconf("SC_PAGE_SIZE")
    def rss():
        gc.collect()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page
    import polc.runtime
    from polc.runtime.agent import PolicyAgent
    from polc.runtime import enforcer, artifact  # noqa
    r0 = rss()
    t0 = time.perf_counter()
    agent = PolicyAgent(sys.argv[1], reload=False)
    agent.start()
    t1 = time.perf_counter()
    d = agent.check("tenant.m1", "process.exec", "git-1")
    assert d.allowed, d
    r1 = rss()
    print(json.dumps({"before": r0, "after": r1, "load_s": t1 - t0}))
    """
)


def test_resident_memory_10000_modules(tree):
    if not polc_side.have_runtime():
        pytest.skip("polc.runtime.agent not available yet")
    wl, _src, out, _how = tree(BIG_N, 20)
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    data = json.loads(res.stdout.strip().splitlines()[-1])
    mb = (data["after"] - data["before"]) / 2**20
    record("memory.modules", f"resident memory of {BIG_N:,} modules x 20 rules (RSS growth)", mb, "MB", bar=150.0,
           note=f"process RSS {data['after'] / 2**20:.0f} MB; start-up load {data['load_s']:.2f} s")
    record("startup.load", f"PolicyAgent start-up load of {BIG_N + 1:,} artifacts", data["load_s"], "s")
