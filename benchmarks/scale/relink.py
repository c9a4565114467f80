"""The cost of a check of an evicted module (docs/runtime.md, "Linked modules and the budget").

    .venv/bin/python benchmarks/scale/relink.py                 # the 10,000-module tree, budget 4,096
    .venv/bin/python benchmarks/scale/relink.py --size 1000 --budget 100

One agent over a cached scale tree (benchmarks/scale/tree.py) with a budget of
linked modules; then, in rounds, ``decide_uncached`` (no decision cache) of one
allowed request of 100 modules each: linked with their plan built, linked
without a plan (the plan dropped first), and evicted (held as their verified
payload: inflate, decode, tables and plan). Wall time per call, medians and
90th percentiles over the rounds; figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tree as trees  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--budget", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    from polc.runtime.agent import PolicyAgent

    t = trees.build(f"n{a.size}")
    pairs = [(m, c, tuple(x)) for m, c, x in json.loads(t.pairs.read_text())]
    agent = PolicyAgent(t.policies, reload_interval=3600.0, inotify=False, linked_budget=a.budget)
    agent.start()
    agent.wait_loaded(600)
    snap = agent.snapshot
    first: dict[str, tuple[str, tuple]] = {}
    for m, c, x in pairs:
        first.setdefault(m, (c, x))
    mods = list(first)
    clock = time.perf_counter

    def timed(m: str) -> float:
        c, x = first[m]
        t0 = clock()
        snap.decide_uncached(m, c, *x)
        return clock() - t0

    got: dict[str, list[float]] = {"planned": [], "linked, no plan": [], "evicted": []}
    for _ in range(a.rounds):
        linked = [m for m in mods if snap.modules[m].linked][-200:]
        for m in linked[:100]:
            timed(m)
        got["planned"] += [timed(m) for m in linked[:100]]
        for m in linked[100:]:
            snap._plans.pop((m, first[m][0]), None)
        got["linked, no plan"] += [timed(m) for m in linked[100:]]
        evicted = [m for m in mods if not snap.modules[m].linked][:100]
        got["evicted"] += [timed(m) for m in evicted]
    agent.stop()
    print(f"{a.size:,} modules, budget {a.budget:,}: {agent.status()['linked']}")
    for kind, xs in got.items():
        if xs:
            xs.sort()
            print(
                f"  {kind}: median {statistics.median(xs) * 1e6:.1f} us, p90 {xs[int(len(xs) * 0.9)] * 1e6:.1f} us, n={len(xs)}"
            )


if __name__ == "__main__":
    main()
