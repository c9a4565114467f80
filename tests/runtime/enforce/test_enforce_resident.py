"""A budget of linked modules (runtime/enforce/resident.py): the rest held as verified bytes.

A tree compiled by the real compiler is loaded twice, by an agent that keeps
every module linked and by one with a budget of a few modules; every request
(allowed, denied, audit, malformed, unknown capability) gets equal Decisions
from both, in shuffled orders that evict and re-link modules over and over,
through ``check`` (what ``agent.check`` is, the C accelerator included where
it is built) and uncached. Eviction runs against concurrent checks on real
threads; a file rewritten on disk is never what a re-link reads; the
agent's option and ``status()["linked"]`` say what they promise.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from polc.compiler import compile_source
from polc.runtime import PolicyAgent
from polc.runtime.agent import PolicyAgent as _Agent
from polc.runtime.enforce import Snapshot, link
from polc.runtime.enforce.resident import DEFAULT_LINKED_BUDGET, Residency
from polc.runtime.errors import ConfigError
from polc.runtime.format.reader import read_artifact

from support.agent import wait_for

HOUR = 3600.0
N = 40

GLOBAL_SRC = """security module _global {
    deny module to network.outbound("169.254.0.0/16");
    deny module to process.exec("/bin/sh");
    deny module to fs.read("*", "**/.ssh/**");
    entitle module to network.outbound("dns.internal", 53);
}
"""


def module_src(i: int) -> str:
    mode = "    mode audit;\n" if i % 7 == 3 else ""
    return (
        f"security module tenant.m{i} {{\n{mode}"
        f'    entitle module to network.outbound("api{i}.example.com", 443);\n'
        f'    entitle module to network.outbound("*.svc{i % 5}.example.com", 8000..8100);\n'
        f'    deny module to network.outbound("bad{i}.example.com");\n'
        f'    entitle module to fs.read("data{i % 3}", "reports/*/r{i}.csv");\n'
        f'    entitle module to fs.read("cfg", "app{i}/**");\n'
        f'    deny module to fs.read("cfg", "app{i}/secret/**");\n'
        f'    entitle module to process.exec("git*");\n'
        f'    deny module to process.exec("rm{i}");\n'
        f'    entitle module to env.read("APP{i}_*");\n'
        "}\n"
    )


def compiled_tree(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    sources = {"_global": GLOBAL_SRC, **{f"tenant.m{i}": module_src(i) for i in range(N)}}
    for name, text in sources.items():
        result = compile_source(text, f"{name}.pol")
        ((art_name, data),) = result.artifacts
        (d / f"{art_name}.bin").write_bytes(data)
    return d


def requests() -> list[tuple]:
    out: list[tuple] = []
    for i in range(N):
        m = f"tenant.m{i}"
        out += [
            (m, "network.outbound", f"api{i}.example.com", 443),
            (m, "network.outbound", f"api{i}.example.com", 80),
            (m, "network.outbound", f"x.svc{i % 5}.example.com", 8050),
            (m, "network.outbound", f"bad{i}.example.com", 443),
            (m, "network.outbound", "169.254.1.1", 80),
            (m, "network.outbound", "dns.internal", 53),
            (m, "fs.read", f"data{i % 3}", f"reports/2026/r{i}.csv"),
            (m, "fs.read", "cfg", f"app{i}/a/b.txt"),
            (m, "fs.read", "cfg", f"app{i}/secret/k"),
            (m, "fs.read", "cfg", "x/.ssh/id"),
            (m, "process.exec", "git-upload-pack"),
            (m, "process.exec", f"rm{i}"),
            (m, "process.exec", "/bin/sh"),
            (m, "env.read", f"APP{i}_HOME"),
            (m, "env.read", "HOME"),
            (m, "network.outbound", "api.example.com"),  # wrong arity
            (m, "network.outbound", 5, 443),  # bad argument
            (m, "no.such.capability", "x"),
        ]
    out.append(("tenant.unknown", "network.outbound", "dns.internal", 53))
    return out


def key(d) -> tuple:
    return (d.allowed, d.effect, d.reason, d.rule, d.module, d.revision, d.audit)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return compiled_tree(tmp_path_factory.mktemp("resident") / "policies")


def started(d: Path, **kw) -> PolicyAgent:
    agent = PolicyAgent(d, reload_interval=HOUR, background_load=False, inotify=False, **kw)
    agent.start()
    return agent


def test_decisions_equal_a_fully_linked_snapshot(tree):
    full = started(tree, linked_budget=0)
    small = started(tree, linked_budget=3)
    try:
        reqs = requests()
        expected = {r: key(full.check(*r)) for r in reqs}
        rng = random.Random(7)
        for rnd in range(4):
            order = reqs[:]
            rng.shuffle(order)
            for r in order:
                assert key(small.check(*r)) == expected[r], (rnd, r)
                assert key(small._snapshot.decide_uncached(*r)) == expected[r], (rnd, r)
        st = small.status()["linked"]
        assert st["budget"] == 3
        assert st["evictions"] > 0 and st["relinks"] > 0
        assert st["linked"] <= 3 + 1  # _global is never evicted
        assert st["linked"] + st["compact"] == N + 1
        assert full.status()["linked"] == {
            "budget": None,
            "linked": N + 1,
            "compact": 0,
            "evictions": 0,
            "relinks": 0,
        }
        # an evicted module's plans of its capabilities are gone from the snapshot: nothing
        # holds its tables (a plan of a capability it has no rule for holds _global's only)
        snap = small._snapshot
        evicted = [m for m in snap.modules.values() if not m.linked]
        assert len(evicted) >= N - 3
        for m in evicted:
            assert m.caps and not any((m.name, cap) in snap._plans for cap in m.caps)
        # held deflated once the residency has its dictionary (the first ~8 KB of payloads)
        assert sum(m._packed is not None and m._payload is None for m in evicted) >= N - 20
    finally:
        full.stop()
        small.stop()


def test_relink_reads_the_verified_bytes_never_the_file(tree, tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    for p in tree.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    agent = started(d, linked_budget=1)
    try:
        before = key(agent.check("tenant.m1", "network.outbound", "api1.example.com", 443))
        assert before[0] is True
        for i in range(2, 6):  # evict tenant.m1
            agent.check(f"tenant.m{i}", "network.outbound", "x", 1)
        assert not agent._snapshot.modules["tenant.m1"].linked
        # the file now holds a valid artifact that denies; no reload has run
        src = module_src(1).replace('entitle module to network.outbound("api1', 'deny module to network.outbound("api1')
        ((_name, data),) = compile_source(src, "tenant.m1.pol").artifacts
        (d / "tenant.m1.bin").write_bytes(data)
        agent._snapshot._cache.clear()
        assert key(agent.check("tenant.m1", "network.outbound", "api1.example.com", 443)) == before
        assert agent._snapshot.modules["tenant.m1"].linked  # linked again, from the bytes held
        agent.reload_now()  # the reloader verifies the change and swaps it in
        assert agent.check("tenant.m1", "network.outbound", "api1.example.com", 443).allowed is False
    finally:
        agent.stop()


def test_eviction_against_concurrent_checks(tree):
    full = started(tree, linked_budget=0)
    small = started(tree, linked_budget=2)
    try:
        reqs = requests()
        expected = {r: key(full.check(*r)) for r in reqs}
        errors: list[object] = []
        start = threading.Barrier(5)

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            order = reqs * 3
            rng.shuffle(order)
            try:
                start.wait(30)
                snap = small._snapshot
                for r in order:
                    # uncached, so every check runs a plan, and most build one (evicting others)
                    got = key(snap.decide_uncached(*r))
                    if got != expected[r]:
                        errors.append((r, got, expected[r]))
                    got = key(small.check(*r))
                    if got != expected[r]:
                        errors.append((r, got, expected[r]))
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            assert not t.is_alive()
        assert errors == []
        st = small.status()["linked"]
        assert st["evictions"] > 100 and st["relinks"] > 100
        assert st["linked"] <= 2 + 1
    finally:
        full.stop()
        small.stop()


def test_residency_order_and_snapshot_plans(tree):
    r = Residency(2)
    data = {i: (tree / f"tenant.m{i}.bin").read_bytes() for i in range(4)}
    mods = {i: link(read_artifact(data[i], expected_module=f"tenant.m{i}"), data[i], r) for i in range(4)}
    glob = link(read_artifact((tree / "_global.bin").read_bytes()), (tree / "_global.bin").read_bytes(), r)
    assert not glob.compact and glob.linked  # _global: never held compact
    assert [m.linked for m in mods.values()] == [False, False, True, True]
    snap = Snapshot({m.name: m for m in mods.values()}, glob, residency=r)
    assert snap.check("tenant.m0", "network.outbound", "api0.example.com", 443).allowed  # re-links m0, evicts m2
    assert [m.linked for m in mods.values()] == [True, False, False, True]
    assert ("tenant.m0", "network.outbound") in snap._plans
    mods[3].tables  # noqa: B018 - a use: m3 is now the most recent
    snap.check("tenant.m1", "fs.read", "cfg", "app1/x")  # re-links m1, evicts m0 (not m3)
    assert [m.linked for m in mods.values()] == [False, True, False, True]
    assert ("tenant.m0", "network.outbound") not in snap._plans  # dropped with m0's tables
    assert r.linked == 2 and r.relinks == 2
    with pytest.raises(ValueError):
        Residency(0)


def test_option_and_environment(tree, monkeypatch):
    monkeypatch.delenv("POLC_LINKED_BUDGET", raising=False)
    assert _Agent(tree, reload_interval=HOUR).linked_budget == DEFAULT_LINKED_BUDGET
    assert _Agent(tree, reload_interval=HOUR, linked_budget=0)._poller.residency is None
    monkeypatch.setenv("POLC_LINKED_BUDGET", "17")
    assert _Agent(tree, reload_interval=HOUR)._poller.residency.budget == 17
    assert _Agent(tree, reload_interval=HOUR, linked_budget=5).linked_budget == 5
    for bad in ("", " ", "-1", "1.5", "many"):
        monkeypatch.setenv("POLC_LINKED_BUDGET", bad)
        with pytest.raises(ConfigError, match="POLC_LINKED_BUDGET"):
            _Agent(tree, reload_interval=HOUR)
    monkeypatch.delenv("POLC_LINKED_BUDGET")
    for bad_arg in (-1, 1.5, True, "x"):
        with pytest.raises(ConfigError, match="linked_budget"):
            _Agent(tree, reload_interval=HOUR, linked_budget=bad_arg)


def test_fork_child_relinks(tree):
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    agent = started(tree, linked_budget=2)
    try:
        for i in range(6):
            agent.check(f"tenant.m{i}", "network.outbound", f"api{i}.example.com", 443)
        r = agent._poller.residency
        r._lock.acquire()  # as if a check thread of the parent held it at the fork
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = agent.check("tenant.m0", "network.outbound", "api0.example.com", 443).allowed
            os._exit(0 if ok else 1)
        r._lock.release()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        agent.stop()


def test_background_load_with_a_budget(tree):
    agent = PolicyAgent(tree, reload_interval=HOUR, background_load=True, linked_budget=4)
    agent.start()
    try:
        assert agent.check("tenant.m5", "network.outbound", "api5.example.com", 443).allowed
        agent.wait_loaded(60)
        wait_for(lambda: agent.status()["loading"] is None, 30)
        st = agent.status()["linked"]
        assert st["linked"] + st["compact"] == N + 1 and st["linked"] <= 5
        assert agent.check("tenant.m0", "network.outbound", "api0.example.com", 443).allowed
    finally:
        agent.stop()
