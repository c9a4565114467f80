"""The guard's cost, side by side with and without it in one run (docs/guard.md, docs/benchmarks.md).

Every figure is CPU time of the calling thread (``time.thread_time``). The
``without`` benchmarks run first; then one session fixture installs the guard
(it cannot be removed: these benchmarks are moved to the end of the session,
benchmarks/conftest.py) and the ``with`` ones run the same functions. A
governed package ``benchvendor`` (in a ``site-packages`` directory, governed by
its own module) and the benchmark module itself (ungoverned) make the calls.
The import figure and the reload figure use their own processes / the live
agent. Run: ``.venv/bin/python -m pytest benchmarks/test_guard.py -p no:cacheprovider``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from common import SMALL, record

pytestmark = pytest.mark.benchmark(timer=time.thread_time, disable_gc=True)

DEPTH = 10
ROUNDS = 15 if SMALL else 40
VENDOR = textwrap.dedent('''
    import socket, subprocess, sys

    def deep(n, fn, *args):
        if n:
            return deep(n - 1, fn, *args)
        return fn(*args)

    def read(path):
        with open(path) as f:
            return f.read(100)

    def connect(address):
        s = socket.socket()
        try:
            s.connect(address)
        finally:
            s.close()

    def run(argv):
        return subprocess.run(argv).returncode

    def event():
        sys.audit("polc.bench.ignored")
''')
POLICY = textwrap.dedent('''
    security module benchvendor {{
        entitle module to fs.read("data", "**");
        entitle module to network.outbound("127.0.0.0/8", *);
        entitle module to process.exec("true");
    }}
''')
POLICY_DENY = POLICY.replace("security module benchvendor {{", "security module benchvendor {{\n    deny module to fs.read;")
GLOBAL = "security module _global { }\n"

# the service side: the same functions in this (ungoverned) module


def deep(n, fn, *args):
    if n:
        return deep(n - 1, fn, *args)
    return fn(*args)


def read(path):
    with open(path) as f:
        return f.read(100)


def event():
    sys.audit("polc.bench.ignored")


_without: dict[str, float] = {}


def _compile(src: Path, out: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "polc", "compile", str(src), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard-bench")
    site = root / "site-packages" / "benchvendor"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text(VENDOR)
    base = root / "app"
    (base / "data").mkdir(parents=True)
    (base / "data" / "file.txt").write_text("x" * 100)
    for name, text in (("allow", POLICY), ("deny", POLICY_DENY)):
        src = root / f"src-{name}"
        src.mkdir()
        (src / "benchvendor.pol").write_text(text.format())
        (src / "_global.pol").write_text(GLOBAL)
        _compile(src, root / f"policies-{name}")
    live = root / "policies"
    shutil.copytree(root / "policies-allow", live)
    sys.path.insert(0, str(root / "site-packages"))
    import benchvendor

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(512)
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield {"root": root, "base": base, "vendor": benchvendor, "file": str(base / "data" / "file.txt"),
           "address": server.getsockname(), "live": live}  # fmt: skip
    stop.set()
    server.close()


@pytest.fixture(scope="module")
def guarded(world):
    from polc.runtime import PolicyAgent

    agent = PolicyAgent(str(world["live"]), reload_interval=0.1).start()
    agent.guard(base=str(world["base"]))
    return agent


def _cases(world):
    v = world["vendor"]
    f = world["file"]
    a = world["address"]
    return {
        "ignored-event": (event, ()),
        "open-governed": (v.deep, (DEPTH, v.read, f)),
        "open-ungoverned": (deep, (DEPTH, read, f)),
        "connect-governed": (v.deep, (DEPTH, v.connect, a)),
        "subprocess-governed": (v.deep, (DEPTH, v.run, ["true"])),
        "walk-governed-60": (v.deep, (60, v.read, f)),
    }


_ITER = {"ignored-event": 20000, "open-governed": 2000, "open-ungoverned": 2000, "connect-governed": 300,
         "subprocess-governed": 3, "walk-governed-60": 1000}  # fmt: skip
NAMES = list(_ITER)


def _measure(benchmark, world, name) -> float:
    fn, args = _cases(world)[name]
    n = _ITER[name]

    def loop():
        for _ in range(n):
            fn(*args)

    rounds = max(5, ROUNDS // (4 if name == "subprocess-governed" else 1))
    benchmark.pedantic(loop, rounds=rounds, iterations=1, warmup_rounds=1)
    return benchmark.stats.stats.median / n


@pytest.mark.parametrize("name", NAMES)
def test_without_guard(benchmark, world, name):
    _without[name] = _measure(benchmark, world, name)


_BARS = {
    "open-governed": (1.5, f"open() + read(100) from a governed package {DEPTH} frames deep, with / without"),
    "open-ungoverned": (1.1, f"open() + read(100) from ungoverned code {DEPTH} frames deep, with / without"),
    "connect-governed": (1.3, "loopback socket() + connect() + close() from a governed package, with / without"),
    "subprocess-governed": (1.1, "subprocess.run(['true']) from a governed package, with / without"),
}


@pytest.mark.guard_installed
@pytest.mark.parametrize("name", NAMES)
def test_with_guard(benchmark, world, guarded, name):
    with_ = _measure(benchmark, world, name)
    without = _without.get(name)
    if without is None:
        pytest.skip("the run without the guard did not run in this session")
    _with[name] = with_
    if name == "ignored-event":
        record("guard.ignored-event", "an audit event the guard does not handle, added", (with_ - without) * 1e9, "ns",
               bar=300, note=f"{without * 1e9:.0f} ns without the guard")  # fmt: skip
    elif name in _BARS:
        bar, title = _BARS[name]
        record(f"guard.{name}", title, round(with_ / without, 3), "x", bar=bar,
               note=f"{without * 1e6:.2f} us -> {with_ * 1e6:.2f} us")  # fmt: skip
    if name == "walk-governed-60" and "open-governed" in _with:
        per_frame = (_with["walk-governed-60"] - _without["walk-governed-60"]
                     - (_with["open-governed"] - _without["open-governed"])) / (60 - DEPTH)  # fmt: skip
        record("guard.per-frame", "stack attribution, added per governed frame crossed", per_frame * 1e6, "us",
               bar=0.25, note="(added at 60 frames - added at 10) / 50")  # fmt: skip


_with: dict[str, float] = {}


@pytest.mark.guard_installed
def test_drop_to_enforce(world, guarded):
    """A recompiled policy is enforced on the first operation after the swap: time from the new artifact
    landing to the first denied operation, with the agent polling every 0.1 s."""
    from polc.runtime import PolicyDenied

    v = world["vendor"]
    live = world["live"] / "benchvendor.bin"
    times = []
    for i in range(4 if SMALL else 8):
        variant = "deny" if i % 2 == 0 else "allow"
        tmp = live.with_suffix(".tmp")
        shutil.copyfile(world["root"] / f"policies-{variant}" / "benchvendor.bin", tmp)
        t0 = time.monotonic()
        os.replace(tmp, live)
        deadline = t0 + 5
        while time.monotonic() < deadline:
            try:
                v.read(world["file"])
                denied = False
            except PolicyDenied:
                denied = True
            if denied == (variant == "deny"):
                break
            time.sleep(0.0005)
        else:
            raise AssertionError("the new policy was not enforced within 5 s")
        times.append(time.monotonic() - t0)
    record("guard.drop-to-enforce", "new artifact written -> first operation decided by it (interval 0.1 s)",
           max(times) * 1000, "ms", bar=150, note=f"median {statistics.median(times) * 1000:.0f} ms over {len(times)} swaps")  # fmt: skip


def _stdlib_modules(count: int) -> list[str]:
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "pydoc_data", "lib2to3",
            "ensurepip", "venv", "msilib", "winreg", "winsound", "_winapi", "nt", "_msi", "_overlapped", "msvcrt",
            "_tkinter", "readline", "curses", "_curses", "_curses_panel", "dbm", "xxlimited", "xxlimited_35"}  # fmt: skip
    names = [n for n in sorted(sys.stdlib_module_names) if n not in skip and not n.startswith("_test")]
    probe = "import importlib, json, sys, warnings\nwarnings.simplefilter('ignore')\nok=[]\n" \
            "for n in json.loads(sys.argv[1]):\n    try: importlib.import_module(n); ok.append(n)\n    except Exception: pass\n" \
            "print(json.dumps(ok))"  # fmt: skip
    r = subprocess.run([sys.executable, "-c", probe, json.dumps(names)], capture_output=True, text=True, timeout=120)
    ok = json.loads(r.stdout.splitlines()[-1])
    return ok[:count]


def test_import_200_stdlib_modules(world):
    """CPU time of importing 200 standard-library modules in a fresh interpreter that runs an agent,
    with and without the guard installed (each its own process, asked in turn): what the hook costs
    the import system. Also: the start-up of ``python -c pass`` under polc guard's boot module."""
    from polc.runtime.guard import launch

    names = _stdlib_modules(200)
    assert len(names) == 200
    live = str(world["live"])
    code = ("import sys, time, warnings\nwarnings.simplefilter('ignore')\n"
            "from polc.runtime import PolicyAgent\n"
            "import polc.runtime.guard.events, polc.runtime.guard.wrappers  # what the guard imports, in both\n"
            f"agent = PolicyAgent({live!r}, reload_interval=0).start()\n"
            f"if sys.argv[1] == 'on': agent.guard(base={str(world['base'])!r})\n"
            "t = time.thread_time()\n"
            + "".join(f"import {n}\n" for n in names) + "print(time.thread_time() - t)")  # fmt: skip
    plain_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", launch.CONFIG_VAR)}
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(3 if SMALL else 7):
        for mode in ("off", "on"):
            r = subprocess.run([sys.executable, "-c", code, mode], env=plain_env, capture_output=True, text=True,
                               timeout=120, cwd=world["base"])  # fmt: skip
            assert r.returncode == 0, r.stderr
            runs[mode].append(float(r.stdout.splitlines()[-1]))
    without, with_ = statistics.median(runs["off"]), statistics.median(runs["on"])
    record("guard.import-200", "importing 200 standard-library modules, with / without the guard", round(with_ / without, 3),
           "x", bar=1.15, note=f"{without * 1000:.0f} ms -> {with_ * 1000:.0f} ms CPU; both processes run an agent")  # fmt: skip

    # start-up as polc guard runs a program: the boot module (agent + guard) before `pass`
    boot = Path(launch.__file__).parent / "boot"
    config = launch.encode_config({"policy_dir": live, "reload_interval": 0.0, "roots": {}, "mode": "enforce",
                                   "observe": None, "unlisted": "allow", "base": str(world["base"])})  # fmt: skip
    guard_env = dict(plain_env, PYTHONPATH=str(boot), **{launch.CONFIG_VAR: config})
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(3 if SMALL else 7):
        for mode, env in (("off", plain_env), ("on", guard_env)):
            before = os.times()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True, timeout=60, cwd=world["base"])
            after = os.times()
            times[mode].append(after.children_user + after.children_system - before.children_user - before.children_system)
    record("guard.startup", "python -c pass: start-up CPU under polc guard's boot module (agent + guard) / plain",
           round(statistics.median(times["on"]) / statistics.median(times["off"]), 2), "x",
           note=f"{statistics.median(times['off']) * 1000:.0f} ms -> {statistics.median(times['on']) * 1000:.0f} ms")  # fmt: skip


_AB_COUNTS = {"ignored-event": 20000, "open-governed": 2000, "walk-governed-60": 2000, "open-ungoverned": 2000,
              "connect-governed": 300, "subprocess-governed": 20}  # fmt: skip


def _ab_processes(world) -> dict[str, list[str] | dict[str, str]]:
    """The interleaved processes: without the guard, with its C hook, with its pure-Python hook, and,
    when GUARD_AB_AGAINST names another checkout's interpreter (``../base/.venv/bin/python``), with
    that checkout's guard: its ratios come out of the same run."""
    here = Path(__file__).parent
    args = [str(world["root"]), *map(str, world["address"])]
    env = {k: v for k, v in os.environ.items() if k != "POLC_GUARD_ACCEL"}
    procs: dict[str, list[str] | dict[str, str]] = {
        "off": [sys.executable, str(here / "guard_ab.py"), args[0], "off", *args[1:]],
        "on": [sys.executable, str(here / "guard_ab.py"), args[0], "on", *args[1:]],
        "on-python": [sys.executable, str(here / "guard_ab.py"), args[0], "on", *args[1:]],
    }
    envs = {"off": env, "on": env, "on-python": {**env, "POLC_GUARD_ACCEL": "0"}}
    other = os.environ.get("GUARD_AB_AGAINST")
    if other:
        checkout = Path(other).absolute().parents[2]  # not resolved: a venv's python is a symlink
        procs["against"] = [other, str(checkout / "benchmarks" / "guard_ab.py"), args[0], "on", *args[1:]]
        envs["against"] = env
    return {"argv": procs, "env": envs}  # type: ignore[dict-item]


def test_interleaved_with_and_without(world):
    """The same figures from fresh processes, one unguarded and the others guarded, asked in turn
    (15 bursts each): the load of a shared machine weighs on all alike. No pytest stack under the
    calls. The recorded figure is the installed default (the C hook where it is built); the
    pure-Python hook's (and GUARD_AB_AGAINST's) ratios are printed beside it."""
    spec = _ab_processes(world)
    procs = {}
    for mode, argv in spec["argv"].items():  # type: ignore[union-attr]
        procs[mode] = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       cwd=world["base"], env=spec["env"][mode])  # type: ignore[index]  # fmt: skip
    lines = []
    added10: dict[str, list[float]] = {}  # per mode, the time each burst of open-governed added
    try:
        for name, count in _AB_COUNTS.items():
            ratios: dict[str, list[float]] = {mode: [] for mode in procs}
            times: dict[str, list[float]] = {mode: [] for mode in procs}
            for _ in range(5 if SMALL else 15):
                per = {}
                for mode, proc in procs.items():
                    proc.stdin.write(f"{name} {count}\n")
                    proc.stdin.flush()
                    per[mode] = float(proc.stdout.readline())
                for mode in procs:
                    ratios[mode].append(per[mode] / per["off"])
                    times[mode].append(per[mode])
            med = {mode: statistics.median(times[mode]) for mode in procs}
            off, on = med["off"], med["on"]
            if name == "walk-governed-60":  # per frame: (added at 60 frames - added at 10) / 50, per burst
                added = {mode: [times[mode][i] - times["off"][i] for i in range(len(times["off"]))] for mode in procs}
                per = {mode: (statistics.median(added[mode]) - statistics.median(added10[mode])) / (60 - DEPTH)
                       for mode in procs if mode != "off"}  # fmt: skip
                record("guard.ab.per-frame", "stack attribution, added per governed frame crossed (interleaved processes)",
                       per["on"] * 1e6, "us", bar=0.25, note="(added at 60 frames - added at 10) / 50")  # fmt: skip
                lines.append("per-frame: " + "; ".join(f"{m} {v * 1e9:.0f} ns" for m, v in per.items()))
                continue
            if name == "open-governed":
                added10.update({mode: [times[mode][i] - times["off"][i] for i in range(len(times["off"]))] for mode in procs})
            if name == "ignored-event":
                record("guard.ab.ignored-event", "an ignored audit event, added (interleaved processes)",
                       (on - off) * 1e9, "ns", bar=300, note=f"{off * 1e9:.0f} ns without")  # fmt: skip
                shown = {mode: f"+{(med[mode] - off) * 1e9:.0f} ns" for mode in procs if mode != "off"}
            else:
                bar, title = _BARS[name]
                record(f"guard.ab.{name}", title + " (interleaved processes)", round(statistics.median(ratios["on"]), 3),
                       "x", bar=bar, note=f"{off * 1e6:.2f} us -> {on * 1e6:.2f} us")  # fmt: skip
                shown = {mode: f"{statistics.median(ratios[mode]):.2f}x ({med[mode] * 1e6:.2f} us)"
                         for mode in procs if mode != "off"}  # fmt: skip
            lines.append(f"{name}: off {off * 1e6:.3f} us; " + "; ".join(f"{m} {v}" for m, v in shown.items()))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
            proc.stdout.close()
    print("\n" + "\n".join(lines))
