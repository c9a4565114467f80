"""One measurement, in a fresh interpreter: ``PYTHON probe.py KIND [options]`` prints JSON.

Run by ``benchmarks/scale/run.py`` with the Python of the checkout measured
(this file only uses polc's public runtime API, so one harness measures an
older checkout too). Kinds:

* ``agent``: start-up to the first answer and to every artifact linked
  (wall and CPU time), resident memory after one check of every (module,
  capability) pair (RSS growth over the interpreter with ``polc.runtime``
  imported), and idle ``reload_now()`` steps against a bare ``os.stat`` sweep;
* ``drop``: an agent polling every ``--interval`` seconds; its idle CPU, then
  drops of a denying artifact while a thread saturates ``check()``;
* ``check``: median uncached and cached ``check`` per request on the 10 x 20,
  1000 x 20 and path-glob trees, with the peers when asked.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def cpu() -> float:
    return time.process_time()


def loading(agent) -> tuple[int, int] | None:
    """(linked, total) while the agent still links in the background, else None."""
    probe = getattr(agent, "loading", None)
    if callable(probe):
        got = probe()
        if got is None or got is False:
            return None
        if isinstance(got, tuple):
            return got if got[0] < got[1] else None
    st = agent.status()
    val = st.get("loading")
    if not val:
        return None
    if isinstance(val, dict):
        done, total = val.get("linked", val.get("done", 0)), val.get("total", 0)
        return (done, total) if done < total else None
    if isinstance(val, str):
        nums = [int(x) for x in re.findall(r"\d+", val)]
        if len(nums) >= 2 and nums[0] < nums[1]:
            return nums[0], nums[1]
    return None


def wait_linked(agent) -> int:
    """Wait until every artifact is linked (the agent's own wait when it has one); polls made."""
    wait = getattr(agent, "wait_loaded", None)
    if callable(wait):
        wait(600.0)
        return 0
    polls = 0
    while loading(agent) is not None:
        polls += 1
        time.sleep(0.05)
    return polls


def watch_mode(agent) -> str:
    """How the agent learns of changes: "inotify", or "poll" (the stat sweep alone)."""
    watch = agent.status().get("watch")
    mode = watch.get("mode") if isinstance(watch, dict) else None
    return "inotify" if mode == "inotify" else "poll"


def bare_stat(paths: list[str]) -> None:
    stat = os.stat
    for p in paths:
        stat(p)


def _paths(d: str) -> list[str]:
    return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".bin")]


def probe_agent(a: argparse.Namespace) -> dict:
    import polc.runtime  # noqa: F401
    from polc.runtime import enforce  # noqa: F401
    from polc.runtime.agent import PolicyAgent
    from polc.runtime.format import reader  # noqa: F401

    with open(a.pairs) as f:
        pairs = [(m, c, tuple(x)) for m, c, x in json.load(f)]
    n = int(a.n)
    probe_mod = f"tenant.m{n // 2}"
    r0 = rss()
    w0, c0 = time.perf_counter(), cpu()
    agent = PolicyAgent(a.dir, reload_interval=3600.0)
    agent.start()
    d = agent.check(probe_mod, "process.exec", "git-1")
    w1, c1 = time.perf_counter(), cpu()
    assert d.allowed, d
    polls = wait_linked(agent)
    w2, c2 = time.perf_counter(), cpu()
    r1 = rss()
    allowed = 0
    check = agent.check
    for m, c, x in pairs:
        allowed += check(m, c, *x).allowed
    w3 = time.perf_counter()
    r2 = rss()
    paths = _paths(a.dir)
    step = agent.reload_now
    step()
    rounds = max(3, min(21, 200_000 // max(n, 1)))
    bare, poll = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        bare_stat(paths)
        t1 = time.perf_counter()
        res = step()
        t2 = time.perf_counter()
        assert not res.changed and not res.failed, res
        bare.append(t1 - t0)
        poll.append(t2 - t1)
    agent.stop()
    return {
        "n": n, "artifacts": len(paths), "pairs": len(pairs), "allowed": allowed,
        "first_wall": w1 - w0, "first_cpu": c1 - c0, "linked_wall": w2 - w0, "linked_cpu": c2 - c0,
        "loading_polls": polls, "checks_wall": w3 - w2,
        "rss_base": r0, "rss_linked": r1, "rss_checked": r2,
        "poll_ms": statistics.median(poll) * 1e3, "stat_ms": statistics.median(bare) * 1e3, "rounds": rounds,
    }


def _saturate(agent, stop: threading.Event, reqs: list) -> None:
    check = agent.check
    while not stop.is_set():
        for m, c, x in reqs:
            check(m, c, *x)


def probe_drop(a: argparse.Namespace) -> dict:
    from tree import denying_module

    from polc.compiler import compile_source
    from polc.runtime.agent import PolicyAgent
    from polc.runtime.format.writer import write_atomic

    import workload

    n = int(a.n)
    name = "tenant.m1"
    target = Path(a.dir) / f"{name}.bin"
    allow_bytes = target.read_bytes()
    mod = _module_of(n, name)
    res = compile_source(workload.render_module(denying_module(mod)), f"{name}.pol")
    ((_n, deny_bytes),) = res.artifacts
    interval = float(a.interval)
    kw = {}
    if a.no_inotify:
        import inspect

        if "inotify" not in inspect.signature(PolicyAgent).parameters:
            raise SystemExit("this PolicyAgent has no inotify= parameter")
        kw["inotify"] = False
    agent = PolicyAgent(a.dir, reload_interval=interval, **kw)
    agent.start()
    wait_linked(agent)
    mode = watch_mode(agent)
    assert agent.check(name, "process.exec", "git-1").allowed
    # idle CPU of the agent's own thread(s): the main thread sleeps meanwhile
    time.sleep(interval)
    c0, w0 = cpu(), time.perf_counter()
    time.sleep(max(3 * interval, 2.0))
    idle_cpu_per_s = (cpu() - c0) / (time.perf_counter() - w0)
    reqs = [r.as_tuple() for r in workload.generate(10, 20).requests[:200]]
    stop = threading.Event()
    worker = threading.Thread(target=_saturate, args=(agent, stop, reqs), daemon=True)
    worker.start()
    import random

    rng = random.Random(5)
    lat = []
    try:
        for i in range(int(a.drops)):
            want = i % 2 == 1
            time.sleep(rng.uniform(0, interval))
            write_atomic(target, allow_bytes if want else deny_bytes)
            t0 = time.perf_counter()
            while agent.check(name, "process.exec", "git-1").allowed != want:
                if time.perf_counter() - t0 > float(a.timeout):
                    break
                time.sleep(0.0002)
            lat.append(time.perf_counter() - t0)
    finally:
        stop.set()
        worker.join()
        write_atomic(target, allow_bytes)
        agent.stop()
    return {"n": n, "interval": interval, "idle_cpu_per_s": idle_cpu_per_s, "latencies": lat, "mode": mode}


def _module_of(n: int, name: str):
    """Module ``name`` of the n x 20 workload without generating all n modules."""
    import random

    import workload

    rng = random.Random(f"polc-bench-{n}-20-1")
    i = int(name.rsplit("m", 1)[1])
    mod = None
    for j in range(i + 1):
        specs = workload._module_rules(rng, j, 20)
        if j == i:
            mod = workload._build_module(f"tenant.m{j}", specs)
    return mod


REPS = 20


def per_request(check, reqs) -> tuple[float, float]:
    per = []
    clock = time.perf_counter
    rng = range(REPS)
    for m, c, x in reqs:
        t0 = clock()
        for _ in rng:
            check(m, c, *x)
        per.append((clock() - t0) / REPS * 1e6)
    per.sort()
    return per[len(per) // 2], per[int(len(per) * 0.9)]


def stream_mean(check, reqs, rounds: int = 15) -> float:
    clock = time.perf_counter
    out = []
    for _ in range(rounds):
        t0 = clock()
        for m, c, x in reqs:
            check(m, c, *x)
        out.append((clock() - t0) / len(reqs) * 1e6)
    return statistics.median(out)


def _agree(agent, wl, limit: int) -> None:
    from reference import Reference

    ref = Reference(wl)
    bad = []
    for req in wl.requests[:limit]:
        allowed, _where = ref.decide(*req.as_tuple())
        d = agent.check(req.module, req.cap, *req.args)
        if d.allowed != allowed:
            bad.append((req, allowed, d))
    if bad:
        raise SystemExit(f"polc disagrees with the reference on {len(bad)} requests, e.g. {bad[:3]}")


def probe_check(a: argparse.Namespace) -> dict:
    import tree as trees

    from polc.runtime.agent import PolicyAgent

    import workload

    out: dict = {}
    for label, d in (("10x20", a.t10), ("1000x20", a.t1000), ("globs", a.globs)):
        if label == "globs":
            wl = trees.glob_workload()
        else:
            n = int(label.split("x")[0])
            wl = workload.generate(n, 20)
        reqs = [r.as_tuple() for r in wl.requests]
        unc = PolicyAgent(d, reload=False, cache_size=0).start()
        cached = PolicyAgent(d, reload=False).start()
        for ag in (unc, cached):
            wait_linked(ag)
        _agree(unc, wl, 200 if label == "globs" else len(reqs))
        _agree(cached, wl, 200 if label == "globs" else len(reqs))
        fig = {}
        fig["uncached_median"], fig["uncached_p90"] = per_request(unc.check, reqs)
        fig["uncached_mean"] = stream_mean(unc.check, reqs, 7 if label == "globs" else 15)
        fig["cached_median"], fig["cached_p90"] = per_request(cached.check, reqs)
        fig["cached_mean"] = stream_mean(cached.check, reqs)
        if a.peers and label != "globs":
            from peers import available_peers

            for pname, cls in available_peers().items():
                eng = cls(wl)
                pre = [r.as_tuple() for r in wl.requests[:200]]

                def run(check=eng.check, pre=pre):
                    for m, c, x in pre:
                        check(m, c, x)
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    run()
                    times.append((time.perf_counter() - t0) / len(pre) * 1e6)
                fig[f"peer_{pname}_mean"] = statistics.median(times)
        out[label] = fig
        unc.stop()
        cached.stop()

    def noop(m, c, *x):
        return None

    out["loop_overhead"] = stream_mean(noop, [r.as_tuple() for r in workload.generate(10, 20).requests])
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["agent", "drop", "check"])
    p.add_argument("--dir")
    p.add_argument("--n")
    p.add_argument("--pairs")
    p.add_argument("--interval", default="1.0")
    p.add_argument("--drops", default="6")
    p.add_argument("--timeout", default="60")
    p.add_argument("--t10")
    p.add_argument("--t1000")
    p.add_argument("--globs")
    p.add_argument("--peers", action="store_true")
    p.add_argument("--no-inotify", action="store_true")
    a = p.parse_args()
    fn = {"agent": probe_agent, "drop": probe_drop, "check": probe_check}[a.kind]
    print(json.dumps(fn(a)))


if __name__ == "__main__":
    main()
