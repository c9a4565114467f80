"""``make bench-scale``: the scaling figures at 1,000 / 10,000 / 100,000 modules, each with its target.

    .venv/bin/python benchmarks/scale/run.py                       # every figure, this checkout
    .venv/bin/python benchmarks/scale/run.py --sizes 1000,10000    # smaller trees only
    .venv/bin/python benchmarks/scale/run.py --against ../base/.venv/bin/python
                                                                   # the same figures for another
                                                                   # checkout, side by side, in one run
    .venv/bin/python benchmarks/scale/run.py --only check,compile  # some groups only

The trees are built once and cached (benchmarks/scale/tree.py). Every figure
is measured in a fresh interpreter of the checkout measured
(benchmarks/scale/probe.py); with ``--against``, each figure is measured for
both checkouts back to back, so the two columns share the machine's load.
CPU time (``time.process_time``, or the children's user + system time for a
``polc compile``) is the figure where wall time would mostly measure the other
jobs on a shared machine; the wall time is in the note. Results go to
``benchmarks/results/scale.json`` (``--json`` to move them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import tree as trees  # noqa: E402

GROUPS = ("startup", "drop", "compile", "check")
PROBE = str(HERE / "probe.py")


class Figure:
    def __init__(self, key: str, title: str, unit: str, target: float | None, op: str = "<=") -> None:
        self.key, self.title, self.unit, self.target, self.op = key, title, unit, target, op
        self.values: dict[str, float] = {}
        self.notes: dict[str, str] = {}

    def met(self, label: str) -> str:
        v = self.values.get(label)
        if self.target is None or v is None:
            return ""
        ok = v <= self.target if self.op == "<=" else v >= self.target
        return "MET" if ok else "NOT MET"


class Run:
    def __init__(self, pythons: dict[str, str]) -> None:
        self.pythons = pythons  # label -> interpreter
        self.figures: list[Figure] = []
        self._by_key: dict[str, Figure] = {}

    def fig(self, key: str, title: str, unit: str, target: float | None = None, op: str = "<=") -> Figure:
        f = self._by_key.get(key)
        if f is None:
            f = self._by_key[key] = Figure(key, title, unit, target, op)
            self.figures.append(f)
        return f

    def put(self, key: str, title: str, unit: str, label: str, value: float, note: str = "",
            target: float | None = None, op: str = "<=") -> None:
        f = self.fig(key, title, unit, target, op)
        f.values[label] = value
        if note:
            f.notes[label] = note
        print(f"  [{label}] {title}: {fmt(value, unit)} {f.met(label)} {note}", flush=True)

    def table(self) -> str:
        labels = list(self.pythons)
        head = "| figure | target | " + " | ".join(f"{lab} | status" for lab in labels) + " | note |"
        sep = "|---|---|" + "---:|---|" * len(labels) + "---|"
        rows = [head, sep]
        for f in self.figures:
            tgt = "" if f.target is None else f"{f.op} {fmt(f.target, f.unit)}"
            cells = []
            for lab in labels:
                v = f.values.get(lab)
                cells.append(("" if v is None else fmt(v, f.unit)) + " | " + f.met(lab))
            note = "; ".join(f"{lab}: {n}" if len(labels) > 1 else n for lab, n in f.notes.items())
            rows.append(f"| {f.title} | {tgt} | " + " | ".join(cells) + f" | {note} |")
        return "\n".join(rows)

    def to_json(self) -> dict:
        return {
            "pythons": self.pythons,
            "figures": [
                {"key": f.key, "title": f.title, "unit": f.unit, "target": f.target, "op": f.op,
                 "values": f.values, "notes": f.notes, "status": {lab: f.met(lab) for lab in f.values}}
                for f in self.figures
            ],
        }


def fmt(v: float, unit: str) -> str:
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.3g}"
    return f"{s} {unit}".strip()


def probe(python: str, *args: str, timeout: float = 3600) -> dict:
    res = subprocess.run([python, PROBE, *args], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"probe {args[0]} failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def child_run(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, children's CPU seconds, result) of one command."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), res


def compile_cmd(python: str, src: Path, out: Path, jobs: int) -> list[str]:
    return [python, "-m", "polc", "compile", str(src), "-o", str(out), "-j", str(jobs), "-q"]


# --------------------------------------------------------------------------


def run_startup(run: Run, size: int) -> None:
    t = trees.build(f"n{size}")
    for label, py in run.pythons.items():
        d = probe(py, "agent", "--dir", str(t.policies), "--n", str(size), "--pairs", str(t.pairs))
        n = d["artifacts"]
        run.put(f"startup.first.{size}", f"start-up to first answer, {n:,} artifacts (CPU)", "s", label,
                d["first_cpu"], f"wall {d['first_wall']:.2f} s", target=1.0)
        run.put(f"startup.linked.{size}", f"start-up to every artifact linked, per artifact, {n:,} artifacts (CPU)",
                "ms", label, d["linked_cpu"] / n * 1e3,
                f"{d['linked_cpu']:.2f} s CPU, {d['linked_wall']:.2f} s wall", target=0.25)
        per = (d["rss_checked"] - d["rss_base"]) / size
        run.put(f"memory.per_module.{size}",
                f"memory per resident 20-rule module, every (module, capability) pair checked, {size:,} modules",
                "KB", label, per / 1024,
                f"{(d['rss_checked'] - d['rss_base']) / 2**20:,.0f} MB in all, "
                f"{(d['rss_linked'] - d['rss_base']) / 2**20:,.0f} MB before the checks; {d['pairs']:,} pairs",
                target=3.0)
        if size >= 100_000:
            run.put(f"memory.total.{size}", f"resident memory of {size:,} modules (RSS growth)", "MB", label,
                    (d["rss_checked"] - d["rss_base"]) / 2**20, target=400.0)
        run.put(f"poll.ratio.{size}", f"idle reload_now() / bare os.stat sweep, {n:,} artifacts", "x", label,
                d["poll_ms"] / d["stat_ms"], f"medians of {d['rounds']}: {d['poll_ms']:.1f} / {d['stat_ms']:.1f} ms",
                target=1.5)


def run_drop(run: Run, size: int, interval: float, drops: int) -> None:
    t = trees.build(f"n{size}")
    for label, py in run.pythons.items():
        live = trees.link_copy(t, trees.CACHE / "live" / f"{label}-n{size}")
        try:
            d = probe(py, "drop", "--dir", str(live), "--n", str(size), "--interval", str(interval),
                      "--drops", str(drops))
            results = [d]
            if d["mode"] == "inotify":  # the polling path too, the stat sweep alone
                results.append(probe(py, "drop", "--dir", str(live), "--n", str(size), "--interval",
                                     str(interval), "--drops", str(drops), "--no-inotify"))
        finally:
            shutil.rmtree(live, ignore_errors=True)
        for d in results:
            mode = d["mode"]
            lat = sorted(d["latencies"])
            run.put(f"poll.idle_cpu.{mode}.{size}",
                    f"idle CPU of an agent ({mode}, interval {interval:g} s), {size + 1:,} artifacts",
                    "ms/s", label, d["idle_cpu_per_s"] * 1e3)
            note = f"median {statistics.median(lat) * 1e3:.0f} ms, worst {lat[-1] * 1e3:.0f} ms"
            if mode == "inotify":
                run.put(f"drop.inotify.{size}",
                        f"drop-to-enforce with inotify, worst of {len(lat)}, a thread saturating check(), "
                        f"{size + 1:,} artifacts", "ms", label, lat[-1] * 1e3, note, target=50.0)
            else:
                run.put(f"drop.poll.{size}",
                        f"drop-to-enforce polling, minus the interval ({interval:g} s), worst of {len(lat)}, "
                        f"a thread saturating check(), {size + 1:,} artifacts", "ms", label,
                        (lat[-1] - interval) * 1e3, note, target=50.0)


def run_compile(run: Run, sizes: list[int]) -> None:
    for size in sizes:
        t = trees.build(f"n{size}")
        for label, py in run.pythons.items():
            before = {e.name: e.stat().st_mtime_ns for e in os.scandir(t.policies)}
            walls, cpus = [], []
            for _ in range(2 if size >= 100_000 else 3):
                wall, cpu, res = child_run(compile_cmd(py, t.src, t.policies, 2))
                if res.returncode != 0:
                    raise RuntimeError(res.stderr[-4000:])
                walls.append(wall)
                cpus.append(cpu)
            after = {e.name: e.stat().st_mtime_ns for e in os.scandir(t.policies)}
            changed = [k for k in before if k.endswith(".bin") and after.get(k) != before[k]]
            assert not changed, f"a no-op recompile touched {len(changed)} artifacts, e.g. {changed[:3]}"
            run.put(f"compile.noop.{size}", f"no-op recompile of {size + 1:,} sources, -j 2 (CPU)", "s", label,
                    min(cpus), f"wall {min(walls):.2f} s", target=5.0 if size >= 100_000 else None)
    t = trees.build("n10000")
    scratch = trees.CACHE / "cold"
    for label, py in run.pythons.items():
        times: dict[int, list[float]] = {1: [], 2: []}
        cpus: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(2):
            for jobs in (1, 2):
                shutil.rmtree(scratch, ignore_errors=True)
                wall, cpu, res = child_run(compile_cmd(py, t.src, scratch, jobs))
                if res.returncode != 0:
                    raise RuntimeError(res.stderr[-4000:])
                times[jobs].append(wall)
                cpus[jobs].append(cpu)
        shutil.rmtree(scratch, ignore_errors=True)
        j1, j2 = min(times[1]), min(times[2])
        run.put("compile.j2", "polc compile -j 2 / -j 1 speed-up, cold 10,001-source tree (wall)", "x", label,
                j1 / j2, f"-j 1 {j1:.1f} s, -j 2 {j2:.1f} s wall (best of 2); CPU {min(cpus[1]):.1f} / "
                f"{min(cpus[2]):.1f} s; load average {os.getloadavg()[0]:.1f}", target=1.7, op=">=")


def run_check(run: Run) -> None:
    t10, t1000, tg = trees.build("n10"), trees.build("n1000"), trees.build("globs")
    first = True
    for label, py in run.pythons.items():
        args = ["check", "--t10", str(t10.policies), "--t1000", str(t1000.policies), "--globs", str(tg.policies)]
        d = probe(py, *args, *(["--peers"] if first else []))
        for size in ("10x20", "1000x20"):
            f = d[size]
            run.put(f"check.uncached.{size}", f"check uncached, N x K = {size}, median request", "us", label,
                    f["uncached_median"], f"p90 {f['uncached_p90']:.2f} us, stream mean {f['uncached_mean']:.2f} us",
                    target=0.55)
            run.put(f"check.cached.{size}", f"check cached, N x K = {size}, median request", "us", label,
                    f["cached_median"], f"stream mean {f['cached_mean']:.2f} us", target=0.3)
            peers = {k[5:-5]: v for k, v in f.items() if k.startswith("peer_")}
            if peers:
                best = min(peers, key=peers.get)
                run.peer = getattr(run, "peer", {})
                run.peer[size] = (best, peers[best])
            if getattr(run, "peer", {}).get(size):
                best, mean = run.peer[size]
                run.put(f"check.peer.{size}", f"best peer ({best}) / polc uncached, N x K = {size} (stream means)",
                        "x", label, mean / f["uncached_mean"], f"{best} {mean:.1f} us", target=100.0, op=">=")
        g = d["globs"]
        run.put("check.globs", f"check uncached, {trees.GLOB_RULES:,} path-glob rules under one root, median request",
                "us", label, g["uncached_median"], f"p90 {g['uncached_p90']:.2f} us, stream mean "
                f"{g['uncached_mean']:.2f} us", target=2.0)
        run.put("check.loop", "timing loop + call of a no-op, per request", "us", label, d["loop_overhead"],
                "included in every check figure")
        first = False


def render(data: dict) -> str:
    """The Markdown table of a results file (what docs/benchmarks.md shows)."""
    run = Run(data["pythons"])
    for f in data["figures"]:
        fig = run.fig(f["key"], f["title"], f["unit"], f["target"], f["op"])
        fig.values.update(f["values"])
        fig.notes.update(f["notes"])
    head = f"Measured {data['started']} to {data['finished']}, {data['nproc']} CPUs; command: `{data['command']}`"
    return head + "\n\n" + run.table()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--only", default=",".join(GROUPS), help="comma-separated: " + ", ".join(GROUPS))
    p.add_argument("--against", help="the Python of another checkout, measured side by side")
    p.add_argument("--label", default="this", help="this checkout's column")
    p.add_argument("--against-label", default="before")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval of the drop figure")
    p.add_argument("--drops", type=int, default=6)
    p.add_argument("--json", default=str(HERE.parent / "results" / "scale.json"))
    p.add_argument("--render", metavar="JSON", help="print the table of an earlier run's results and exit")
    a = p.parse_args()
    if a.render:
        print(render(json.loads(Path(a.render).read_text())))
        return
    sizes = [int(s) for s in a.sizes.split(",") if s]
    only = set(a.only.split(","))
    pythons = {}
    if a.against:
        pythons[a.against_label] = a.against
    pythons[a.label] = sys.executable
    run = Run(pythons)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    for size in sizes:  # build every tree first: the figures then measure nothing but themselves
        trees.build(f"n{size}")
    if "check" in only:
        print("== check", flush=True)
        run_check(run)
    if "compile" in only:
        print("== compile", flush=True)
        run_compile(run, sizes)
    if "startup" in only:
        for size in sizes:
            print(f"== start-up, memory, idle poll: {size:,}", flush=True)
            run_startup(run, size)
    if "drop" in only:
        for size in sizes:
            print(f"== drop-to-enforce: {size:,}", flush=True)
            run_drop(run, size, a.interval, a.drops)
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = run.to_json()
    data.update(started=started, finished=time.strftime("%Y-%m-%d %H:%M:%S"), nproc=os.cpu_count(),
                command=" ".join([os.path.relpath(sys.executable), *sys.argv]))
    out.write_text(json.dumps(data, indent=1))
    print()
    print(f"Measured {started}, {os.cpu_count()} CPUs; command: {data['command']}")
    print(run.table())
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
