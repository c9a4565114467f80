"""check() on the C accelerator and on the pure-Python path, side by side in one process.

    .venv/bin/python benchmarks/accel_ab.py [--sizes 10,1000] [--peers]

For the workload trees of ``make bench-scale`` (benchmarks/scale/tree.py; built
and cached on first use), one snapshot per variant over the same linked
modules — uncached and cached, accelerated and pure — is timed in interleaved
rounds. Per request: the CPU time (``time.process_time``) of ``REPS`` calls,
the loop included, divided by ``REPS``; a figure is the median request of the
stream (and the stream mean: the whole stream ten times), the median of the rounds. ``--peers`` adds Cedar's and Casbin's
stream means (CPU time, 200 requests) for the 100x ratio. CPU time keeps what
the other jobs on a shared machine take out of the figures; the ratios between
columns are the figures to read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "scale")]

import tree as trees  # noqa: E402

import workload  # noqa: E402

REPS = 100


def per_request(check, reqs) -> float:
    clock = time.process_time
    rng = range(REPS)
    per = []
    for m, c, x in reqs:
        t0 = clock()
        for _ in rng:
            check(m, c, *x)
        per.append((clock() - t0) / REPS * 1e6)
    per.sort()
    return per[len(per) // 2]


def stream_mean(check, reqs) -> float:
    clock = time.process_time
    t0 = clock()
    for _ in range(10):
        for m, c, x in reqs:
            check(m, c, *x)
    return (clock() - t0) / (10 * len(reqs)) * 1e6


def noop(m, c, *x):
    return None


def main() -> None:
    from polc.runtime.agent import PolicyAgent
    from polc.runtime.enforce import Snapshot, accel

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,1000")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--peers", action="store_true")
    a = p.parse_args()
    if not accel.available():
        raise SystemExit("the C accelerator is not built (make venv)")
    for n in [int(x) for x in a.sizes.split(",")]:
        t = trees.build(f"n{n}")
        wl = workload.generate(n, 20)
        reqs = [r.as_tuple() for r in wl.requests]
        agent = PolicyAgent(t.policies, reload=False, cache_size=0).start()
        s = agent.snapshot
        mods = {name: s.module(name) for name in list(s.modules)}
        variants = {
            "uncached pure": Snapshot(mods, s.glob, cache_size=0, accel=False).fast_check,
            "uncached accel": Snapshot(mods, s.glob, cache_size=0, accel=True).fast_check,
            "cached pure": Snapshot(mods, s.glob, accel=False).fast_check,
            "cached accel": Snapshot(mods, s.glob, accel=True).fast_check,
            "no-op": noop,
        }
        for check in variants.values():
            for m, c, x in reqs:
                check(m, c, *x)
        got: dict[str, list[float]] = {k: [] for k in variants}
        means: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(a.rounds):
            for k, check in variants.items():
                got[k].append(per_request(check, reqs))
                means[k].append(stream_mean(check, reqs))
        med = {k: statistics.median(v) for k, v in got.items()}
        mean = {k: statistics.median(v) for k, v in means.items()}
        print(f"{n}x20 median request (CPU): " + ", ".join(f"{k} {v:.3f} us" for k, v in med.items()))
        print(f"{n}x20 stream mean (CPU): " + ", ".join(f"{k} {v:.3f} us" for k, v in mean.items()))
        print(f"  accel / pure: uncached {med['uncached accel'] / med['uncached pure']:.2f}, "
              f"cached {med['cached accel'] / med['cached pure']:.2f}")
        if a.peers:
            from peers import available_peers

            pre = [r.as_tuple() for r in wl.requests[:200]]
            for name, cls in available_peers().items():
                eng = cls(wl)
                times = []
                for _ in range(5):
                    t0 = time.process_time()
                    for m, c, x in pre:
                        eng.check(m, c, x)
                    times.append((time.process_time() - t0) / len(pre) * 1e6)
                peer = statistics.median(times)
                print(f"  {name} stream mean (CPU) {peer:.1f} us: {peer / mean['uncached accel']:.0f}x polc uncached "
                      f"accel's stream mean, {peer / mean['uncached pure']:.0f}x pure's")
        agent.stop()


if __name__ == "__main__":
    main()
