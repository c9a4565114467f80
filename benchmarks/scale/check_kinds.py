"""Where the check figures of ``run.py --only check`` go, per request kind (a profile, not a bar).

    .venv/bin/python benchmarks/scale/check_kinds.py [--rounds 3]

Loads the 10 x 20 and 1000 x 20 trees (``tree.py``'s cache) into one interpreter, an uncached
and a cached agent each, and measures both trees in alternating rounds, so the two columns
share the machine's load. Per round and tree: ``probe.per_request`` (the figure of the scale
table: each request's mean over 20 calls) and the same loop split into the first call of a
request and its 20 calls after it (a request's first call meets cold CPU caches: at 1000 x 20
its module's plan, tables and memo entries are not the last request's). Then, for the last
round, the median of each (capability, request kind) group of the uncached figure, and the
share of the stream mean (``probe.stream_mean``) each group makes.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import tree as trees  # noqa: E402
from probe import REPS, per_request, stream_mean  # noqa: E402

from polc.runtime.agent import PolicyAgent  # noqa: E402


def split(check, reqs) -> tuple[list[float], list[float]]:
    """Per request: its first call, and the mean of the REPS calls after it (us)."""
    clock = time.perf_counter
    rng = range(REPS)
    first, warm = [], []
    for m, c, x in reqs:
        t0 = clock()
        check(m, c, *x)
        t1 = clock()
        for _ in rng:
            check(m, c, *x)
        t2 = clock()
        first.append((t1 - t0) * 1e6)
        warm.append((t2 - t1) / REPS * 1e6)
    return first, warm


def med(v: list[float]) -> float:
    return statistics.median(v)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    loaded = {}
    for name in ("n10", "n1000"):
        t = trees.build(name)
        reqs = [r.as_tuple() for r in t.workload.requests]
        unc = PolicyAgent(str(t.policies), reload=False, cache_size=0).start()
        cached = PolicyAgent(str(t.policies), reload=False).start()
        for m, c, x in reqs:
            unc.check(m, c, *x)
            cached.check(m, c, *x)
        loaded[name] = (t.workload.requests, reqs, unc, cached)
    last: dict[str, list[float]] = {}
    for rnd in range(a.rounds):
        for name in ("n10", "n1000") if rnd % 2 == 0 else ("n1000", "n10"):
            _wl, reqs, unc, cached = loaded[name]
            um, up = per_request(unc.check, reqs)
            cm, _cp = per_request(cached.check, reqs)
            first, warm = split(unc.check, reqs)
            cfirst, cwarm = split(cached.check, reqs)
            sm = stream_mean(unc.check, reqs, 5)
            print(
                f"round {rnd} {name:>5}: uncached median {um:.3f} p90 {up:.3f} | first call {med(first):.3f}, "
                f"20 after it {med(warm):.3f} | cached median {cm:.3f}: first {med(cfirst):.3f}, "
                f"after {med(cwarm):.3f} | uncached stream mean {sm:.3f} us",
                flush=True,
            )
            clock = time.perf_counter
            per = []
            for m, c, x in reqs:
                t0 = clock()
                for _ in range(REPS):
                    unc.check(m, c, *x)
                per.append((clock() - t0) / REPS * 1e6)
            last[name] = per
    for name, per in last.items():
        wl = loaded[name][0]
        groups: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for r, v in zip(wl, per):
            groups[(r.cap, r.kind)].append(v)
        total = sum(per)
        print(f"\n{name}: uncached, per (capability, kind): requests, median, p90, share of the stream's time")
        for (cap, kind), v in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
            v.sort()
            print(
                f"  {cap:<17} {kind:<15} {len(v):>4}  {v[len(v) // 2]:.3f}  {v[int(len(v) * 0.9)]:.3f}  "
                f"{sum(v) / total:5.1%}"
            )


if __name__ == "__main__":
    main()
