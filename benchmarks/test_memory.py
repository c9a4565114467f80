"""Resident memory of 10,000 modules x 20 rules (bar: <= 150 MB).

Measured in a fresh interpreter with a default PolicyAgent (reloading off,
default decision cache): RSS after importing polc.runtime, then RSS after the
agent has loaded every artifact *and* answered one check of every (module,
capability) pair that the workload's rules use (~30,000 pairs at 10,000 x
20). A resident module in a real service gets checked, and the enforcer
builds each pair's plan (merged index, decider) on its first check, so the
figure includes every plan, the Decision each check built and the decision
cache entries. The growth after load plus a single check is kept as a note
("before first checks"). /proc/self/statm, after gc.collect().
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest

import polc_side
from common import BIG_N, record
from workload import GLOBAL, _sample_args

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
    from polc.runtime import enforce  # noqa: F401 - its code counts in the baseline
    from polc.runtime.format import reader  # noqa: F401
    with open(sys.argv[2]) as f:
        pairs = [(m, c, tuple(a)) for m, c, a in json.load(f)]
    r0 = rss()
    t0 = time.perf_counter()
    agent = PolicyAgent(sys.argv[1], reload=False)
    agent.start()
    t1 = time.perf_counter()
    d = agent.check("tenant.m1", "process.exec", "git-1")
    assert d.allowed, d
    r1 = rss()
    t2 = time.perf_counter()
    allowed = 0
    for m, c, a in pairs:
        allowed += agent.check(m, c, *a).allowed
    t3 = time.perf_counter()
    r2 = rss()
    print(json.dumps({"before": r0, "loaded": r1, "after": r2, "load_s": t1 - t0, "pairs": len(pairs),
                      "allowed": allowed, "first_checks_s": t3 - t2}))
    """
)


def _pairs(wl) -> list:
    """One allowed request for every (module, capability) pair the workload's rules use."""
    rng = random.Random(3)
    out = []
    for name, mod in wl.modules.items():
        if name == GLOBAL:
            continue
        seen: dict = {}
        for rule in sorted(mod.rules, key=lambda r: r.effect != "entitle"):  # an entitle when there is one
            if rule.cap not in seen:
                seen[rule.cap] = list(_sample_args(rng, rule, False))
        out.extend([name, cap, args] for cap, args in seen.items())
    return out


def test_resident_memory_10000_modules(tree, tmp_path):
    if not polc_side.have_runtime():
        pytest.skip("polc.runtime.agent not available yet")
    wl, _src, out, _how = tree(BIG_N, 20)
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(_pairs(wl)))
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), str(pairs)], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-4000:]
    data = json.loads(res.stdout.strip().splitlines()[-1])
    mb = (data["after"] - data["before"]) / 2**20
    loaded = (data["loaded"] - data["before"]) / 2**20
    per_pair = (data["after"] - data["loaded"]) / max(data["pairs"], 1)
    record(
        "memory.modules",
        f"resident memory of {BIG_N:,} modules x 20 rules, every (module, capability) pair checked (RSS growth)",
        mb,
        "MB",
        bar=150.0,
        note=f"{data['pairs']:,} pairs ({data['allowed']:,} allowed), {per_pair:.0f} B each; "
        f"before first checks {loaded:.0f} MB; process RSS {data['after'] / 2**20:.0f} MB; "
        f"start-up load {data['load_s']:.2f} s",
    )
    record("startup.load", f"PolicyAgent start-up load of {BIG_N + 1:,} artifacts", data["load_s"], "s")
