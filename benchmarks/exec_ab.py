"""The uncached check of the ``make bench-scale`` stream, and of its ``process.exec`` requests, A/B.

    .venv/bin/python benchmarks/exec_ab.py [--size 10] [--rounds 9]
    .venv/bin/python benchmarks/exec_ab.py --against /path/to/other/checkout [--cpu 1]

Without ``--against``: in one process, plans whose command rules are matched through one
command index (``patterns.command_index``, the default) against the same linked modules
with the index turned off (each rule's ``command_matcher`` called in turn, as before it),
on the C accelerator and on the pure-Python path, in interleaved rounds. With ``--against``:
this checkout and another one (its own ``.venv``), each in a worker process pinned to the
same CPU (``taskset -c``), rounds alternating. Figures: CPU time per request of the whole
stream, of its ``process.exec`` requests, and (``--against``) the median request; the median
of the rounds, and the median of the per-round ratios, which are the figures to read on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(root: Path, n: int):
    sys.path[:0] = [str(root / "benchmarks"), str(root / "benchmarks" / "scale")]
    import tree as trees

    from polc.runtime.agent import PolicyAgent

    import workload

    t = trees.build(f"n{n}", log=lambda *a: None)
    reqs = [r.as_tuple() for r in workload.generate(n, 20).requests]
    agent = PolicyAgent(t.policies, reload=False, cache_size=0).start()
    s = agent.snapshot
    return agent, {name: s.module(name) for name in list(s.modules)}, s.glob, reqs


def _mean(check, reqs, k: int) -> float:
    clock = time.process_time
    t0 = clock()
    for _ in range(k):
        for m, c, x in reqs:
            check(m, c, *x)
    return (clock() - t0) / (k * len(reqs)) * 1e6


def _median_request(check, reqs, reps: int = 100) -> float:
    clock = time.process_time
    per = []
    for m, c, x in reqs:
        t0 = clock()
        for _ in range(reps):
            check(m, c, *x)
        per.append((clock() - t0) / reps * 1e6)
    per.sort()
    return per[len(per) // 2]


def _report(got: dict[str, list[dict[str, float]]], a: str, b: str, fields: tuple[str, ...]) -> None:
    for k, rs in got.items():
        print(f"{k}: " + ", ".join(f"{f} {statistics.median(r[f] for r in rs):.3f} us" for f in fields))
    ratios = {f: statistics.median(y[f] / x[f] for x, y in zip(got[a], got[b], strict=True)) for f in fields}
    print(f"  {b} / {a}: " + ", ".join(f"{f} {v:.3f}" for f, v in ratios.items()))


def in_process(n: int, rounds: int) -> None:
    from polc.runtime.enforce import Snapshot
    from polc.runtime.enforce import plan as planmod

    agent, mods, glob, reqs = _load(HERE.parent, n)
    execs = [r for r in reqs if r[1] == "process.exec"]
    real = planmod._command_index
    variants = {}
    for accel in (True, False):
        side = "accel" if accel else "pure"
        new = variants[f"index {side}"] = Snapshot(mods, glob, cache_size=0, accel=accel).fast_check
        for m, c, x in reqs:  # the plans are built now, with the index
            new(m, c, *x)
        planmod._command_index = lambda rest: None  # plans built now match rule by rule
        try:
            old = variants[f"per rule {side}"] = Snapshot(mods, glob, cache_size=0, accel=accel).fast_check
            for m, c, x in reqs:
                old(m, c, *x)
        finally:
            planmod._command_index = real
    got: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, check in variants.items():
            got[k].append({"stream": _mean(check, reqs, 5), "exec": _mean(check, execs, 15)})
    print(f"{n}x20, {len(reqs)} requests, {len(execs)} process.exec, CPU time per request:")
    for side in ("accel", "pure"):
        _report(
            {k: v for k, v in got.items() if k.endswith(side)}, f"per rule {side}", f"index {side}", ("stream", "exec")
        )
    agent.stop()


def worker(root: Path, n: int) -> None:
    from polc.runtime.enforce import Snapshot

    agent, mods, glob, reqs = _load(root, n)
    execs = [r for r in reqs if r[1] == "process.exec"]
    check = Snapshot(mods, glob, cache_size=0, accel=True).fast_check
    for m, c, x in reqs:
        check(m, c, *x)
    print("ready", flush=True)
    for _line in sys.stdin:
        out = {
            "stream": _mean(check, reqs, 10),
            "exec": _mean(check, execs, 30),
            "median": _median_request(check, reqs),
        }
        print(json.dumps(out), flush=True)
    agent.stop()


def against(other: Path, n: int, rounds: int, cpu: str) -> None:
    sides = {"other": other, "this": HERE.parent}
    procs = {}
    for k, root in sides.items():
        cmd = [
            "taskset",
            "-c",
            cpu,
            str(root / ".venv" / "bin" / "python"),
            __file__,
            "--worker",
            str(root),
            "--size",
            str(n),
        ]
        procs[k] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
        assert procs[k].stdout is not None and procs[k].stdout.readline().strip() == "ready", k
    got: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for i in range(rounds):
        for k in list(procs) if i % 2 == 0 else list(reversed(procs)):
            p = procs[k]
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("r\n")
            p.stdin.flush()
            got[k].append(json.loads(p.stdout.readline()))
    print(f"{n}x20 uncached, C accelerator, CPU time per request (other: {other}):")
    _report(got, "other", "this", ("stream", "exec", "median"))
    for p in procs.values():
        assert p.stdin is not None
        p.stdin.close()
        p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=10)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--against", type=Path)
    p.add_argument("--cpu", default="1")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker is not None:
        worker(a.worker, a.size)
    elif a.against is not None:
        against(a.against, a.size, a.rounds, a.cpu)
    else:
        in_process(a.size, a.rounds)


if __name__ == "__main__":
    main()
