"""Change detection at scale: inotify against polling, on trees of 20-rule artifacts.

* Drop-to-enforce while a thread saturates ``check()``: an artifact is
  replaced with ``write_atomic`` (alternately one that entitles the request
  and an empty one), and a loop checks every 0.2 ms until the decision
  flips. With inotify (reload interval and safety net of an hour: only an
  event can find it) the figure is the worst latency (bar 50 ms); polling
  every 0.1 s, the worst latency minus the interval (bar 50 ms).
* Idle cost: the poller thread's CPU time per second of wall time with
  nothing changing (``/proc/self/task/<tid>/stat``), inotify against
  polling every 0.1 s.
* The safety-net sweep (one full step of an agent woken by inotify) against
  a bare ``os.stat`` of every artifact, interleaved as in test_poll.py
  (bar 1.5x).

Size: the suite's big size (10,000; 2,000 with ``POLC_BENCH_SCALE=small``),
or ``POLC_BENCH_WATCH_N``.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import threading
import time

import pytest
import startup_tree

import polc_side
from common import BIG_N, SMALL, record

pytestmark = [
    pytest.mark.skipif(not polc_side.have_runtime(), reason="polc.runtime.agent not available yet"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only"),
]

N = int(os.environ.get("POLC_BENCH_WATCH_N", BIG_N))
DROPS = 10 if SMALL else 20
INTERVAL = 0.1
REQ = ("tenant.s1", "network.outbound", "x.svc0.t1.example", 443)


@pytest.fixture(scope="module")
def live(bench_root):
    src = startup_tree.build(N)
    d = bench_root / f"watch-{N}"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(src, d)
    return d


def _saturate(agent, stop):
    reqs = [(f"tenant.s{i}", "network.outbound", f"x.svc0.t{i}.example", 443) for i in range(2, 50)]
    reqs += [(f"tenant.s{i}", "fs.read", f"tenants/t{i}", "d2/x") for i in range(2, 50)]
    check = agent.check
    while not stop.is_set():
        for r in reqs:
            check(*r)


def _drops(agent, target, allow, deny):
    from polc.runtime.format.writer import write_atomic

    rng = random.Random(5)
    lat = []
    for i in range(DROPS):
        want = i % 2 == 1
        time.sleep(rng.uniform(0, INTERVAL))
        write_atomic(target, allow if want else deny)
        t0 = time.perf_counter()
        while bool(agent.check(*REQ)) != want:
            assert time.perf_counter() - t0 < 30, "drop not enforced within 30 s"
            time.sleep(0.0002)
        lat.append(time.perf_counter() - t0)
    return sorted(lat)


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_drop_to_enforce_busy(live, mode):
    from polc.runtime import PolicyAgent

    target = live / "tenant.s1.bin"
    allow = startup_tree.artifact("tenant.s1", 1)
    deny = startup_tree.artifact("tenant.s1", -1)
    target.write_bytes(allow)
    if mode == "inotify":
        agent = PolicyAgent(live, reload_interval=3600.0, background_load=False)
    else:
        agent = PolicyAgent(live, reload_interval=INTERVAL, inotify=False, background_load=False)
    agent.start()
    stop = threading.Event()
    worker = threading.Thread(target=_saturate, args=(agent, stop), daemon=True)
    try:
        assert agent.status()["watch"]["mode"] == mode
        assert agent.check(*REQ)
        worker.start()
        lat = _drops(agent, target, allow, deny)
    finally:
        stop.set()
        worker.join()
        agent.stop()
        target.write_bytes(allow)
    worst = lat[-1]
    med = lat[len(lat) // 2]
    if mode == "inotify":
        record(f"watch.drop.inotify.{N}", f"drop-to-enforce with inotify, {N:,} artifacts, a thread saturating check()",
               worst * 1e3, "ms", bar=50.0, note=f"worst of {DROPS}; median {med * 1e3:.1f} ms")
    else:
        record(f"watch.drop.poll.{N}",
               f"drop-to-enforce polling every {INTERVAL:g} s, minus the interval, {N:,} artifacts, busy check()",
               (worst - INTERVAL) * 1e3, "ms", bar=50.0,
               note=f"worst of {DROPS} {worst * 1e3:.0f} ms; median {med * 1e3:.0f} ms")


def _thread_cpu(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_idle_cpu(live, mode):
    from polc.runtime import PolicyAgent

    if mode == "inotify":
        agent = PolicyAgent(live, reload_interval=3600.0, background_load=False)
    else:
        agent = PolicyAgent(live, reload_interval=INTERVAL, inotify=False, background_load=False)
    agent.start()
    try:
        thread = agent._thread
        assert thread is not None and thread.native_id is not None
        time.sleep(0.3)  # settle: racy files re-read, first steps done
        c0 = _thread_cpu(thread.native_id)
        t0 = time.perf_counter()
        time.sleep(3.0)
        cpu = _thread_cpu(thread.native_id) - c0
        wall = time.perf_counter() - t0
    finally:
        agent.stop()
    what = "inotify (safety net every hour)" if mode == "inotify" else f"polling every {INTERVAL:g} s"
    record(f"watch.idle-cpu.{mode}.{N}", f"poller CPU per second idle, {N:,} artifacts, {what}",
           cpu / wall * 1e3, "ms/s", note=f"{cpu * 1e3:.0f} ms CPU over {wall:.1f} s (clock ticks of 10 ms)")


def _bare_stat(paths):
    stat = os.stat
    for p in paths:
        stat(p)


def test_safety_net_sweep_vs_bare_stat(live):
    from polc.runtime import PolicyAgent

    agent = PolicyAgent(live, reload_interval=3600.0, background_load=False).start()
    try:
        assert agent.status()["watch"]["mode"] == "inotify"
        watcher = agent._watcher
        paths = [os.path.join(live, n) for n in sorted(os.listdir(live)) if n.endswith(".bin")]

        def safety_net():  # what the watch loop runs every sweep_interval
            assert watcher is not None and watcher.still_armed()
            agent._poll()

        safety_net()
        rounds = 11 if SMALL else 31
        bare, sweep = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            _bare_stat(paths)
            t1 = time.perf_counter()
            safety_net()
            t2 = time.perf_counter()
            bare.append(t1 - t0)
            sweep.append(t2 - t1)
    finally:
        agent.stop()
    ratio = statistics.median(sweep) / statistics.median(bare)
    record(f"watch.sweep-ratio.{N}", f"safety-net sweep / bare os.stat, {len(paths):,} artifacts, interleaved",
           ratio, "x", bar=1.5,
           note=f"medians of {rounds} pairs: {statistics.median(sweep) * 1e3:.2f} / {statistics.median(bare) * 1e3:.2f} ms")
