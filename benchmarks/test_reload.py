"""Time from an atomic artifact drop to the first check that sees it.

An agent polls a copy of the 10 x 20 tree every 0.1 s. The artifact of
``tenant.m1`` is replaced with ``write_atomic`` by one that denies
``process.exec("git*")``, then by the original again, alternately; after
each drop a loop checks every 0.2 ms until the decision flips. The figure is
the worst drop-to-enforce latency minus the interval (bar: <= 50 ms), once
on an otherwise idle process and once while another thread saturates
``check()``. Drops happen at a random phase of the poll.
"""

from __future__ import annotations

import random
import shutil
import threading
import time

import pytest

import polc_side
from common import SMALL, record, workload
from workload import Module, Rule

pytestmark = pytest.mark.skipif(not polc_side.have_runtime(), reason="polc.runtime.agent not available yet")

INTERVAL = 0.1
DROPS = 10 if SMALL else 20


def _denying(mod: Module) -> Module:
    deny = Rule("deny", "process.exec", (("str", "git*"),), 0, line=3)
    rest = [Rule(r.effect, r.cap, r.args, r.omit_trailing, line=r.line + 1, col=r.col) for r in mod.rules]
    return Module(mod.name, [deny] + rest)


def _saturate(agent, stop):
    reqs = [r.as_tuple() for r in workload(10, 20).requests[:200]]
    check = agent.check
    while not stop.is_set():
        for m, c, a in reqs:
            check(m, c, *a)


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_drop_to_enforce(tree, bench_root, busy):
    from polc.runtime.format.writer import write_atomic

    wl, _src, out, _how = tree(10, 20)
    live = bench_root / f"live-{'busy' if busy else 'idle'}"
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(out, live)
    target = live / "tenant.m1.bin"
    allow_bytes = target.read_bytes()
    deny_bytes = polc_side.artifact_bytes(_denying(wl.modules["tenant.m1"]), bench_root / "staging")
    agent = polc_side.make_agent(live, reload_interval=INTERVAL)
    stop = threading.Event()
    worker = threading.Thread(target=_saturate, args=(agent, stop), daemon=True)
    if busy:
        worker.start()
    rng = random.Random(5)
    lat, writes = [], []
    try:
        assert agent.check("tenant.m1", "process.exec", "git-1").allowed
        for i in range(DROPS):
            want = i % 2 == 1
            time.sleep(rng.uniform(0, INTERVAL))
            w0 = time.perf_counter()
            write_atomic(target, allow_bytes if want else deny_bytes)
            t0 = time.perf_counter()
            writes.append(t0 - w0)
            while agent.check("tenant.m1", "process.exec", "git-1").allowed != want:
                assert time.perf_counter() - t0 < 10, "drop not enforced within 10 s"
                time.sleep(0.0002)
            lat.append(time.perf_counter() - t0)
    finally:
        stop.set()
        if busy:
            worker.join()
        agent.stop()
    lat.sort()
    worst = lat[-1]
    tag = "busy" if busy else "idle"
    what = "while a thread saturates check()" if busy else "idle process"
    record(f"reload.drop.{tag}", f"drop-to-enforce minus interval ({INTERVAL:g} s), worst of {DROPS}, {what}",
           (worst - INTERVAL) * 1e3, "ms", bar=50.0,
           note=f"median drop-to-enforce {lat[len(lat) // 2] * 1e3:.0f} ms, worst {worst * 1e3:.0f} ms; "
                f"write_atomic {sorted(writes)[len(writes) // 2] * 1e3:.1f} ms")
