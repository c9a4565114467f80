"""Loading in the background: the agent answers before every artifact is linked.

Real files, the real loader thread. Where a test needs the loader not to have
reached a module yet, it holds the loader at its first call (``load_order``,
before it examines anything) with an Event; everything else runs as shipped.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polc.runtime import PolicyAgent, PolicyLoadError
from polc.runtime import agent as agent_mod
from polc.runtime.reload import loading as loading_mod

from support.agent import artifact_bytes, rewrite_in_place, wait_for, write_artifact

HOUR = 3600.0
GLOBAL = [("deny", "network.outbound", ("*.evil.com",)), ("entitle", "threads.create", ())]


def module_rules(i: int) -> list:
    return [
        ("entitle", "network.outbound", (f"*.m{i}.example", 443)),
        ("deny", "fs.read", (f"secret{i}", "**")),
        ("entitle", "fs.read", ("*", f"data/{i}/**")),
    ]


def tree(d: Path, n: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_artifact(d, f"tenant.m{i}", module_rules(i))
    write_artifact(d, "_global", GLOBAL)
    return d


def requests(n: int) -> list[tuple]:
    out = []
    for i in range(n):
        m = f"tenant.m{i}"
        out += [
            (m, "network.outbound", f"api.m{i}.example", 443),
            (m, "network.outbound", f"api.m{i}.example", 80),
            (m, "network.outbound", "x.evil.com", 443),
            (m, "fs.read", f"secret{i}", "a/b"),
            (m, "fs.read", "cfg", f"data/{i}/x"),
            (m, "threads.create"),
            (m, "process.exec", "ls"),
        ]
    return out


def same(d1, d2) -> bool:
    return (d1.allowed, d1.effect, d1.reason, d1.rule, d1.module, d1.revision, d1.audit) == (
        d2.allowed,
        d2.effect,
        d2.reason,
        d2.rule,
        d2.module,
        d2.revision,
        d2.audit,
    )


@pytest.fixture
def held(monkeypatch):
    """Hold every loader at its start until ``release.set()``."""
    release = threading.Event()
    real = agent_mod.load_order

    def waiting(*a, **kw):
        assert release.wait(30), "the test never released the loader"
        return real(*a, **kw)

    monkeypatch.setattr(agent_mod, "load_order", waiting)
    yield release
    release.set()


@pytest.fixture
def agents():
    started: list[PolicyAgent] = []

    def make(directory, **kw) -> PolicyAgent:
        kw.setdefault("reload_interval", HOUR)
        a = PolicyAgent(directory, **kw).start()
        started.append(a)
        return a

    yield make
    for a in started:
        a.stop()
        a.wait_loaded(30)


# -- answering before everything is linked ----------------------------------------------


def test_check_of_a_module_not_linked_yet_is_decided_right(tmp_path, agents, held):
    d = tree(tmp_path / "p", 40)
    full = agents(d, background_load=False)
    lazy = agents(d, background_load=True)
    assert lazy.ready
    assert lazy.status()["loading"] == {"done": 0, "total": 40, "text": "loading 0 of 40"}
    assert lazy.snapshot.modules == {}  # nothing but _global linked
    for req in requests(40):
        assert same(lazy.check(*req), full.check(*req)), req
    table = lazy._poller.loading
    assert table is not None and table.examined == 40  # each linked on the spot, once
    held.set()
    assert lazy.wait_loaded(30)
    assert lazy.status()["loading"] is None
    assert lazy.snapshot.pending is None and len(lazy.snapshot.modules) == 40
    for req in requests(40):
        assert same(lazy.check(*req), full.check(*req)), req


def test_status_counts_while_loading_and_modules_checked_go_first(tmp_path, agents, held):
    d = tree(tmp_path / "p", 30)
    a = agents(d, background_load=True)
    events = []
    a.subscribe(events.append)
    a.check("tenant.m17", "threads.create")
    a.check("tenant.m3", "threads.create")
    held.set()
    assert a.wait_loaded(30)
    loaded = [e.module for e in events if e.kind == "loaded"]
    assert loaded[:2] == ["tenant.m17", "tenant.m3"]  # most recently asked for first
    assert sorted(loaded) == sorted(f"tenant.m{i}" for i in range(30))
    mods = a.status()["modules"]
    assert all(m["last_error"] is None and m["rules"] == 3 for n, m in mods.items() if n != "_global")
    assert mods["_global"]["rules"] == 2


def test_order_without_use_is_newest_first(tmp_path):
    d = tree(tmp_path / "p", 5)
    names = sorted(p.name for p in d.glob("tenant.*.bin"))
    for i, name in enumerate(names):  # m0 oldest ... m4 newest
        os.utime(d / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    assert loading_mod.load_order(str(d), names) == list(reversed(names))


def test_corrupt_artifact_met_in_the_background_keeps_global_only(tmp_path, agents, caplog):
    d = tree(tmp_path / "p", 20)
    bad = d / "tenant.m5.bin"
    data = bytearray(bad.read_bytes())
    data[-3] ^= 0x10
    bad.write_bytes(bytes(data))
    events = []
    a = PolicyAgent(d, reload_interval=HOUR, background_load=True)
    a.subscribe(events.append)
    a.start()
    try:
        assert a.wait_loaded(30)
        status = a.status()["modules"]["tenant.m5"]
        assert status["revision"] is None and "checksum mismatch" in status["last_error"]
        assert any(e.kind == "failed" and e.module == "tenant.m5" for e in events)
        # _global only: its entitle holds, the module's own never does
        assert a.check("tenant.m5", "threads.create")
        d5 = a.check("tenant.m5", "network.outbound", "api.m5.example", 443)
        assert not d5 and d5.reason == "no entitlement"
        assert a.check("tenant.m6", "network.outbound", "api.m6.example", 443)
        assert any("tenant.m5 gets _global rules only" in r.getMessage() for r in caplog.records)
    finally:
        a.stop()


def test_corrupt_artifact_checked_on_the_spot_is_never_used(tmp_path, agents, held):
    d = tree(tmp_path / "p", 10)
    # a valid artifact for another module under this name: verification refuses it
    (d / "tenant.m2.bin").write_bytes(artifact_bytes("tenant.other", [("entitle", "network.outbound", ())]))
    a = agents(d, background_load=True)
    d2 = a.check("tenant.m2", "network.outbound", "anything.example", 443)
    assert not d2 and d2.reason == "no entitlement" and d2.revision is None
    held.set()
    assert a.wait_loaded(30)
    assert "tenant.other" in (a.status()["modules"]["tenant.m2"]["last_error"] or "")
    assert same(a.check("tenant.m2", "network.outbound", "anything.example", 443), d2)


def test_strict_still_fails_start_up(tmp_path):
    d = tree(tmp_path / "p", 20)
    (d / "tenant.m9.bin").write_bytes(b"not an artifact")
    a = PolicyAgent(d, reload=False, strict=True, background_load=True)
    with pytest.raises(PolicyLoadError, match="tenant.m9"):
        a.start()
    assert not a.ready


def test_strict_loads_whole_before_answering(tmp_path, held):
    d = tree(tmp_path / "p", 20)
    with PolicyAgent(d, reload=False, strict=True, background_load=True) as a:
        assert a.status()["loading"] is None and a._loader is None
        assert len(a.snapshot.modules) == 20 and a.snapshot.pending is None


def test_small_trees_load_whole_unless_asked(tmp_path, agents, monkeypatch, held):
    d = tree(tmp_path / "p", 12)
    assert agents(d).status()["loading"] is None  # at most BACKGROUND_MIN: whole, as before
    monkeypatch.setattr(agent_mod, "BACKGROUND_MIN", 10)
    assert agents(d).status()["loading"]["total"] == 12


def test_reload_off_still_loads_in_the_background(tmp_path, agents):
    d = tree(tmp_path / "p", 25)
    a = agents(d, reload=False, background_load=True)
    assert a._thread is None and a._watcher is None
    assert a.wait_loaded(30) and len(a.snapshot.modules) == 25


# -- changes while loading -------------------------------------------------------------------


def test_change_to_a_module_checked_before_the_loader_reached_it(tmp_path, agents, held):
    """Linked on the spot, then rewritten: the event waits for the loader's commit, then reloads."""
    d = tree(tmp_path / "p", 10)
    a = agents(d, background_load=True)
    req = ("tenant.m4", "network.outbound", "api.m4.example", 443)
    assert a.check(*req)
    rewrite_in_place(d / "tenant.m4.bin", artifact_bytes("tenant.m4", [("deny", "network.outbound", ())]))
    wait_for(lambda: "tenant.m4.bin" in a._poller.deferred)
    assert a.check(*req)  # the snapshot in force keeps the policy it linked
    held.set()
    wait_for(lambda: not a.check(*req), timeout=30)


def test_new_file_while_loading_is_loaded(tmp_path, agents, held):
    d = tree(tmp_path / "p", 10)
    a = agents(d, background_load=True)
    write_artifact(d, "tenant.new", [("entitle", "process.exec", ("ls",))])
    wait_for(lambda: a.check("tenant.new", "process.exec", "ls"))
    assert a.status()["loading"]["done"] == 0


def test_decisions_never_flip_during_the_load(tmp_path, agents):
    """A thread checks while the loader links and the whole snapshot swaps in: every
    request gets one decision throughout, the one of a snapshot linked whole."""
    n = 120
    d = tree(tmp_path / "p", n)
    full = agents(d, background_load=False)
    reqs = requests(n)
    want = {r: full.check(*r) for r in reqs}
    a = agents(d, background_load=True)
    bad: list = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            for r in reqs:
                if not same(a.check(*r), want[r]):
                    bad.append(r)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        assert a.wait_loaded(60)
    finally:
        stop.set()
        t.join()
    assert not bad, bad[:5]


# -- property: a snapshot loading gives the decisions of one linked whole -----------------------

HOSTS = ["a.example", "b.example", "*.example", "*.evil.com", "10.0.0.0/8"]
CAPS = ["network.outbound", "fs.read", "threads.create"]

rule = st.one_of(
    st.tuples(st.sampled_from(["entitle", "deny"]), st.just("network.outbound"),
              st.tuples(st.sampled_from(HOSTS), st.sampled_from([443, 80, (1, 1024)]))),
    st.tuples(st.sampled_from(["entitle", "deny"]), st.just("fs.read"),
              st.tuples(st.sampled_from(["cfg", "*", "s?"]), st.sampled_from(["**", "a/*", "a/b"]))),
    st.tuples(st.sampled_from(["entitle", "deny"]), st.just("threads.create"), st.just(())),
)
policy_set = st.lists(st.lists(rule, max_size=6), min_size=1, max_size=6)
request = st.one_of(
    st.tuples(st.just("network.outbound"), st.sampled_from(["a.example", "x.evil.com", "10.1.2.3", "c.org"]),
              st.sampled_from([443, 80, 8080])),
    st.tuples(st.just("fs.read"), st.sampled_from(["cfg", "s1", "zz"]), st.sampled_from(["a/b", "a/c", "q"])),
    st.tuples(st.just("threads.create")),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy_set, st.lists(rule, max_size=4), st.booleans(), st.lists(st.tuples(st.integers(0, 6), request), max_size=30))
def test_lazy_decisions_equal_whole(tmp_path_factory, mods, glob_rules, audit, reqs):
    d = tmp_path_factory.mktemp("p")
    for i, rules in enumerate(mods):
        write_artifact(d, f"t.m{i}", rules, mode="audit" if audit and i == 0 else "enforce")
    write_artifact(d, "_global", glob_rules)
    gate = threading.Event()
    real = agent_mod.load_order
    agent_mod.load_order = lambda *a, **kw: (gate.wait(30), real(*a, **kw))[1]  # type: ignore[assignment]
    try:
        whole = PolicyAgent(d, reload=False, background_load=False).start()
        lazy = PolicyAgent(d, reload=False, background_load=True).start()
        assert lazy.snapshot.pending is not None
        for i, (cap, *args) in reqs:
            m = f"t.m{i}"  # t.m6 never exists: _global only, in both
            assert same(lazy.check(m, cap, *args), whole.check(m, cap, *args))
            assert same(lazy.snapshot.decide_uncached(m, cap, *args), whole.snapshot.decide_uncached(m, cap, *args))
        gate.set()
        assert lazy.wait_loaded(30)
        for i, (cap, *args) in reqs:
            m = f"t.m{i}"
            assert same(lazy.check(m, cap, *args), whole.check(m, cap, *args))
    finally:
        gate.set()
        agent_mod.load_order = real  # type: ignore[assignment]


def test_polling_sees_changes_to_modules_the_loader_committed(tmp_path, agents):
    """Loader batches leave the sweep list to be rebuilt once; polling must still cover them
    (tenant.m3 is among the oldest files: in a late batch, not the first 64)."""
    d = tree(tmp_path / "p", 150)
    a = agents(d, background_load=True, inotify=False, reload_interval=0.05)
    assert a.wait_loaded(30)
    req = ("tenant.m3", "network.outbound", "api.m3.example", 443)
    assert a.check(*req)
    wait_for(lambda: not a._poller.recheck)  # racy stats settled: only the sweep can find what follows
    rewrite_in_place(d / "tenant.m3.bin", artifact_bytes("tenant.m3", [("deny", "network.outbound", ())]))
    wait_for(lambda: not a.check(*req))


def test_artifact_permissions_are_still_checked_when_loading_in_the_background(tmp_path, agents, caplog):
    d = tree(tmp_path / "p", 30)
    os.chmod(d, 0o755)
    os.chmod(d / "tenant.m3.bin", 0o666)
    a = agents(d, background_load=True)
    assert a.wait_loaded(30)
    wait_for(lambda: any("tenant.m3.bin: writable by group and others" in r.getMessage() for r in caplog.records))


def test_strict_refuses_unsafe_artifact_permissions_before_answering(tmp_path):
    d = tree(tmp_path / "p", 30)
    os.chmod(d, 0o755)
    os.chmod(d / "tenant.m3.bin", 0o666)
    with pytest.raises(PolicyLoadError, match="unsafe permissions"):
        PolicyAgent(d, reload=False, strict=True, background_load=True).start()


# -- the collector paused while linking in bulk ------------------------------------------------


def test_collector_is_paused_during_the_load_and_enabled_after(tmp_path, agents, held):
    import gc

    d = tree(tmp_path / "p", 20)
    assert gc.isenabled()
    a = agents(d, background_load=True)
    wait_for(lambda: a._loader is not None and not gc.isenabled())  # the loader holds the pause
    held.set()
    assert a.wait_loaded(30)
    wait_for(lambda: a._loader is None)
    assert gc.isenabled()
    agents(d, background_load=False)  # whole: paused inside start() only
    assert gc.isenabled()
    with pytest.raises(PolicyLoadError):
        (d / "tenant.m1.bin").write_bytes(b"junk")
        PolicyAgent(d, reload=False, strict=True).start()
    assert gc.isenabled()


def test_collector_disabled_by_the_application_stays_disabled(tmp_path, agents):
    import gc

    d = tree(tmp_path / "p", 20)
    gc.disable()
    try:
        a = agents(d, background_load=True)
        assert a.wait_loaded(30)
        wait_for(lambda: a._loader is None)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_governor_counts_the_claims_of_modules_not_linked_yet(tmp_path, agents, held):
    """A pending module's governs claim is the set's: governor() never answers "no one"
    for a package a module not linked yet claims (that would leave it unchecked)."""
    d = tree(tmp_path / "p", 10)
    write_artifact(d, "com.vendor", [("entitle", "threads.create", ())], governs=["vendorlib"])
    a = agents(d, background_load=True)
    assert a.snapshot.pending is not None and "com.vendor" not in a.snapshot.modules
    assert a.snapshot.governor("vendorlib.http") == "com.vendor"
    assert a.snapshot.governor("tenant.m4.sub") == "tenant.m4"  # own names too
    assert a.status()["claim_conflicts"] == {}
    held.set()
    assert a.wait_loaded(30)
    assert a.snapshot.governor("vendorlib.http") == "com.vendor"
