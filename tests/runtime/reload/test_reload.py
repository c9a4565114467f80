"""Failure behaviour of the reloader (docs/runtime.md), with real files
and the real polling thread at a short interval.

These agents poll (``inotify=False``): the steps are counted, and the
polling path is what runs wherever inotify cannot (tests/runtime/reload/
test_inotify*.py cover the same changes woken by inotify)."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from polc.runtime import PolicyAgent, PolicyLoadError
from polc.runtime.reload import filestate as filestate_mod
from polc.runtime.reload import outcomes as outcomes_mod
from polc.runtime.reload import poller as poller_mod
from polc.runtime.reload import switch as switch_mod
from polc.runtime.reload.outcomes import NewPolicy

from support.agent import artifact_bytes, rewrite_in_place, wait_for, write_artifact

INTERVAL = 0.05

ALLOW = [("entitle", "network.outbound", ("api.acme.com", 443))]
DENY = [("deny", "network.outbound", ()), ("entitle", "fs.read", ("cfg", "**"))]
GLOBEX = [("entitle", "network.outbound", ("api.globex.com", 443))]
REQ = ("tenant.acme", "network.outbound", "api.acme.com", 443)


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    write_artifact(d, "tenant.acme", ALLOW)
    write_artifact(d, "tenant.globex", GLOBEX)
    return d


@pytest.fixture
def agents():
    started: list[PolicyAgent] = []

    def make(directory, **kw) -> PolicyAgent:
        kw.setdefault("reload_interval", INTERVAL)
        kw.setdefault("inotify", False)
        a = PolicyAgent(directory, **kw).start()
        started.append(a)
        return a

    yield make
    for a in started:
        a.stop()
        assert a._thread is None or not a._thread.is_alive()


def warnings_about(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def cycles(agent: PolicyAgent, n: int = 3) -> None:
    """Wait until the poller has completed at least ``n`` more steps."""
    seen = []
    orig = agent._poller.run_step

    def counting(initial):
        out = orig(initial)
        seen.append(1)
        return out

    agent._poller.run_step = counting  # type: ignore[method-assign]
    try:
        wait_for(lambda: len(seen) >= n, timeout=5)
    finally:
        del agent._poller.run_step


def test_poller_thread_is_named_daemon_and_stops(pdir, agents):
    a = agents(pdir)
    t = a._thread
    assert t is not None and t.name == "polc-reloader" and t.daemon and t.is_alive()
    a.stop()
    assert not t.is_alive()
    a.stop()  # idempotent
    assert a.check(*REQ)  # checks keep working after stop


def test_new_file_is_loaded(pdir, agents):
    a = agents(pdir)
    assert not a.check("tenant.new", "threads.create")
    write_artifact(pdir, "tenant.new", [("entitle", "threads.create", ())])
    wait_for(lambda: a.check("tenant.new", "threads.create"))
    assert a.status()["modules"]["tenant.new"]["rules"] == 1


def test_changed_file_reloads_that_module_only(pdir, agents):
    a = agents(pdir)
    globex_before = a.snapshot.modules["tenant.globex"]
    assert a.check(*REQ)
    write_artifact(pdir, "tenant.acme", DENY)
    wait_for(lambda: not a.check(*REQ))
    assert a.snapshot.modules["tenant.globex"] is globex_before  # not relinked
    assert a.check("tenant.globex", "network.outbound", "api.globex.com", 443)


def test_same_content_rewrite_swaps_nothing(pdir, agents):
    a = agents(pdir)
    before = a.snapshot
    data = (pdir / "tenant.acme.bin").read_bytes()
    (pdir / "tenant.acme.bin").unlink()
    (pdir / "tenant.acme.bin").write_bytes(data)  # new inode, new times, same bytes
    cycles(a)
    assert a.snapshot is before
    assert a.status()["modules"]["tenant.acme"]["last_error"] is None


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("bitflip", "checksum mismatch"),
        ("truncate", "truncated"),
        ("version", "newer than this polc supports"),
        ("garbage", "not a polc artifact"),
        ("empty", "truncated"),
    ],
)
def test_bad_file_keeps_previous_and_warns_once(pdir, agents, caplog, damage, reason):
    caplog.set_level(logging.INFO, logger="polc")
    a = agents(pdir)
    rev = a.snapshot.modules["tenant.acme"].revision
    path = pdir / "tenant.acme.bin"
    data = bytearray(artifact_bytes("tenant.acme", DENY))
    if damage == "bitflip":
        data[-3] ^= 0x10
    elif damage == "truncate":
        data = data[: len(data) - 7]
    elif damage == "version":
        data[8:10] = (2).to_bytes(2, "big")
    elif damage == "garbage":
        data = bytearray(b"not an artifact at all" * 4)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    wait_for(lambda: a.status()["modules"]["tenant.acme"]["last_error"])
    cycles(a, 4)
    st = a.status()["modules"]["tenant.acme"]
    assert reason in st["last_error"]
    assert st["revision"] == rev
    assert a.check(*REQ)  # previous policy still decides
    warned = warnings_about(caplog, "reload failed, keeping previous: tenant.acme.bin")
    assert len(warned) == 1, warned
    assert reason in warned[0]
    # retried when the file changes again: a good artifact loads
    write_artifact(pdir, "tenant.acme", DENY)
    wait_for(lambda: not a.check(*REQ))
    assert a.status()["modules"]["tenant.acme"]["last_error"] is None


def test_wrong_module_name_is_refused(pdir, agents, caplog):
    a = agents(pdir)
    # tenant.globex's valid artifact dropped as tenant.acme.bin
    (pdir / "tenant.acme.bin").write_bytes(artifact_bytes("tenant.globex", [("entitle", "network.outbound", ())]))
    wait_for(lambda: a.status()["modules"]["tenant.acme"]["last_error"])
    assert "tenant.globex" in a.status()["modules"]["tenant.acme"]["last_error"]
    assert a.check(*REQ)
    assert not a.check("tenant.acme", "network.outbound", "other.com", 443)


def test_unreadable_file_directory_in_its_place(pdir, agents, caplog):
    a = agents(pdir)
    path = pdir / "tenant.acme.bin"
    path.unlink()
    path.mkdir()
    wait_for(lambda: (a.status()["modules"]["tenant.acme"]["last_error"] or "").startswith("cannot read"))
    assert a.check(*REQ)
    cycles(a)
    assert len(warnings_about(caplog, "tenant.acme.bin")) == 1
    path.rmdir()
    write_artifact(pdir, "tenant.acme", DENY)
    wait_for(lambda: not a.check(*REQ))


def test_unreadable_file_dangling_symlink(pdir, agents, caplog):
    a = agents(pdir)
    path = pdir / "tenant.acme.bin"
    target = pdir.parent / "elsewhere.bin"
    path.unlink()
    path.symlink_to(target)  # dangling
    wait_for(lambda: a.status()["modules"]["tenant.acme"]["last_error"])
    assert "cannot read" in a.status()["modules"]["tenant.acme"]["last_error"]
    assert a.check(*REQ)
    cycles(a)
    assert len(warnings_about(caplog, "tenant.acme.bin")) == 1
    target.write_bytes(artifact_bytes("tenant.acme", DENY))  # the link now resolves
    wait_for(lambda: not a.check(*REQ))


def test_deleted_file_keeps_previous_and_warns(pdir, agents, caplog):
    a = agents(pdir)
    events = []
    a.subscribe(events.append)
    (pdir / "tenant.acme.bin").unlink()
    wait_for(lambda: a.status()["modules"]["tenant.acme"]["last_error"])
    cycles(a)
    assert a.check(*REQ)
    assert "removed" in a.status()["modules"]["tenant.acme"]["last_error"]
    assert len(warnings_about(caplog, "tenant.acme.bin removed")) == 1
    assert [(e.kind, e.module) for e in events] == [("removed", "tenant.acme")]
    # the same file back: nothing to swap, the error clears
    before = a.snapshot
    write_artifact(pdir, "tenant.acme", ALLOW)
    wait_for(lambda: a.status()["modules"]["tenant.acme"]["last_error"] is None)
    assert a.snapshot is before


def test_directory_gone_keeps_everything_and_recovers(pdir, agents, caplog):
    a = agents(pdir)
    saved = pdir.parent / "saved"
    shutil.move(pdir, saved)
    wait_for(lambda: a.status()["directory_error"])
    cycles(a)
    assert a.check(*REQ)
    assert a.check("tenant.globex", "network.outbound", "api.globex.com", 443)
    assert len(warnings_about(caplog, "policy directory unavailable")) == 1
    assert a._thread.is_alive()
    # recreated, with a changed policy
    shutil.move(saved, pdir)
    write_artifact(pdir, "tenant.acme", DENY)
    wait_for(lambda: not a.check(*REQ))
    assert a.status()["directory_error"] is None
    assert a.check("tenant.globex", "network.outbound", "api.globex.com", 443)


def test_startup_with_bad_artifact_falls_back_to_global(pdir, agents):
    write_artifact(pdir, "_global", [("entitle", "threads.create", ())])
    (pdir / "tenant.acme.bin").write_bytes(b"\x89POLC\r\n\x1a" + b"\0" * 10)
    a = agents(pdir)
    st = a.status()
    assert st["ready"]
    assert st["modules"]["tenant.acme"]["revision"] is None
    assert "truncated" in st["modules"]["tenant.acme"]["last_error"]
    assert not a.check(*REQ)  # no entitlements of its own (fail closed)
    assert a.check("tenant.acme", "threads.create")  # _global's still apply
    # a good file later is picked up
    write_artifact(pdir, "tenant.acme", ALLOW)
    wait_for(lambda: a.check(*REQ))


def test_startup_with_bad_global_denies_everything(pdir, agents):
    (pdir / "_global.bin").write_bytes(b"junk")
    a = agents(pdir)
    d = a.check(*REQ)
    assert not d and "_global.bin failed to load" in d.reason
    assert a.status()["unavailable"]
    write_artifact(pdir, "_global", [])
    wait_for(lambda: a.check(*REQ))


def test_strict_startup_fails_listing_every_bad_file(pdir):
    (pdir / "tenant.acme.bin").write_bytes(b"junk")
    (pdir / "tenant.globex.bin").write_bytes(artifact_bytes("tenant.acme", ALLOW))
    a = PolicyAgent(pdir, reload_interval=INTERVAL, strict=True)
    with pytest.raises(PolicyLoadError) as err:
        a.start()
    files = sorted(f.file for f in err.value.failures)
    assert files == ["tenant.acme.bin", "tenant.globex.bin"]
    assert "tenant.acme.bin" in str(err.value) and "tenant.globex.bin" in str(err.value)
    assert a._thread is None and not a.ready
    assert not a.check("tenant.globex", "network.outbound", "api.globex.com", 443)
    # fixed: a second start succeeds
    write_artifact(pdir, "tenant.acme", ALLOW)
    write_artifact(pdir, "tenant.globex", GLOBEX)
    a.start()
    try:
        assert a.ready and a.check(*REQ)
    finally:
        a.stop()


def test_strict_startup_fails_without_directory(tmp_path):
    with pytest.raises(PolicyLoadError, match="policy directory unavailable"):
        PolicyAgent(tmp_path / "missing", reload=False, strict=True).start()


def test_same_size_rewrite_within_one_timestamp_tick(pdir, agents):
    a = agents(pdir)
    path = pdir / "tenant.acme.bin"
    old = path.read_bytes()
    new = artifact_bytes("tenant.acme", [("entitle", "network.outbound", ("api.acme.com", 444))])
    assert len(new) == len(old)
    st = path.stat()
    rewrite_in_place(path, new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # identical mtime_ns and size, same inode
    assert (path.stat().st_mtime_ns, path.stat().st_size, path.stat().st_ino) == (
        st.st_mtime_ns,
        st.st_size,
        st.st_ino,
    )
    wait_for(lambda: not a.check(*REQ))
    assert a.check("tenant.acme", "network.outbound", "api.acme.com", 444)


def test_same_tick_rewrite_racing_the_poll_is_seen(tmp_path):
    """Rewrites right after a step (same ctime tick possible) are caught by the racy re-read."""
    d = tmp_path / "p"
    d.mkdir()
    a = PolicyAgent(d, reload=False).start()
    path = d / "tenant.acme.bin"
    variants = [artifact_bytes("tenant.acme", [("entitle", "network.listen", (p,))]) for p in (1000, 2000)]
    assert len(variants[0]) == len(variants[1])
    path.write_bytes(variants[0])
    a.reload_now()
    for i in range(50):
        want = 2000 if i % 2 == 0 else 1000
        st = path.stat()
        rewrite_in_place(path, variants[i % 2 == 0])
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        a.reload_now()
        assert a.check("tenant.acme", "network.listen", want), i


def test_mtime_set_backwards_is_a_change(pdir, agents):
    a = agents(pdir)
    path = pdir / "tenant.acme.bin"
    path.write_bytes(artifact_bytes("tenant.acme", DENY))
    os.utime(path, (1_000_000, 1_000_000))  # 1970: older than the loaded file
    wait_for(lambda: not a.check(*REQ))


def test_replacement_by_rename(pdir, agents):
    a = agents(pdir)
    tmp = pdir / ".tenant.acme.bin.tmp"  # dot-names are never loaded
    tmp.write_bytes(artifact_bytes("tenant.acme", DENY))
    cycles(a)
    assert a.check(*REQ) and "tenant.acme.bin.tmp" not in str(a.status())
    os.replace(tmp, pdir / "tenant.acme.bin")
    wait_for(lambda: not a.check(*REQ))


def test_kubernetes_data_symlink_swap(tmp_path, agents):
    d = tmp_path / "configmap"
    d.mkdir()

    def version(name: str, rules) -> None:
        v = d / name
        v.mkdir()
        (v / "tenant.acme.bin").write_bytes(artifact_bytes("tenant.acme", rules))
        (v / "tenant.globex.bin").write_bytes(artifact_bytes("tenant.globex", GLOBEX))

    version("..2026_01_01_00_00_00.1", ALLOW)
    os.symlink("..2026_01_01_00_00_00.1", d / "..data")
    for name in ("tenant.acme.bin", "tenant.globex.bin"):
        os.symlink(f"..data/{name}", d / name)
    a = agents(d)
    assert a.check(*REQ)
    assert sorted(a.status()["modules"]) == ["tenant.acme", "tenant.globex"]
    globex = a.snapshot.modules["tenant.globex"]
    version("..2026_01_01_00_05_00.2", DENY)
    os.symlink("..2026_01_01_00_05_00.2", d / "..data_tmp")
    os.replace(d / "..data_tmp", d / "..data")  # the atomic swap kubelet does
    shutil.rmtree(d / "..2026_01_01_00_00_00.1")
    wait_for(lambda: not a.check(*REQ))
    assert a.check("tenant.acme", "fs.read", "cfg", "x")
    assert a.snapshot.modules["tenant.globex"] is globex  # same bytes: not relinked


def test_exception_in_one_poll_is_survived(pdir, agents, caplog, monkeypatch):
    a = agents(pdir)
    calls = {"n": 0}
    real = outcomes_mod._reader.read_artifact_bytes

    def flaky(path):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return real(path)

    monkeypatch.setattr(outcomes_mod._reader, "read_artifact_bytes", flaky)
    write_artifact(pdir, "tenant.acme", DENY)
    wait_for(lambda: not a.check(*REQ))
    assert calls["n"] >= 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "reload step failed" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert a._thread.is_alive()


def test_exception_in_listing_is_survived(pdir, agents, caplog, monkeypatch):
    # The directory is listed with getdents64 (reload/dirlist.py) where libc
    # has it, else with os.scandir: the first listing of either kind raises.
    a = agents(pdir)
    state = {"armed": True}

    def arm(real):
        def boom(*args):
            if state.pop("armed", False):
                raise MemoryError("injected")  # not an OSError: the loop's own net
            return real(*args)

        return boom

    monkeypatch.setattr(poller_mod.os, "scandir", arm(os.scandir))
    monkeypatch.setattr(poller_mod.dirlist, "read_raw", arm(poller_mod.dirlist.read_raw))
    write_artifact(pdir, "tenant.new", [("entitle", "threads.create", ())])
    wait_for(lambda: a.check("tenant.new", "threads.create"))
    assert not state


def test_failed_subscriber_does_not_break_the_poller(pdir, agents, caplog):
    a = agents(pdir)
    good = []

    def bad(event):
        raise ValueError("subscriber bug")

    a.subscribe(bad)
    a.subscribe(good.append)
    write_artifact(pdir, "tenant.acme", DENY)
    wait_for(lambda: good)
    assert good[0].kind == "reloaded" and good[0].module == "tenant.acme" and good[0].rules == 2
    write_artifact(pdir, "tenant.acme", ALLOW)
    wait_for(lambda: len(good) >= 2)
    assert any("subscriber" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_reload_now_is_serialised_with_the_poller(pdir, agents):
    a = agents(pdir, reload_interval=0.001)
    errors = []

    def hammer():
        try:
            for _ in range(200):
                a.reload_now()
        except Exception as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(20):
        write_artifact(pdir, "tenant.acme", DENY if i % 2 == 0 else ALLOW)
    for t in threads:
        t.join()
    assert not errors
    a.reload_now()
    assert a.check(*REQ)  # the last write (ALLOW) is in force


def test_racy_reread_catches_rewrite_with_identical_stat(tmp_path, monkeypatch):
    """If a rewrite leaves (mtime, size, ino, ctime) identical — same tick, coarse clock —
    the file changed too recently to be trusted is re-read on the next step."""
    from types import SimpleNamespace

    d = tmp_path / "p"
    d.mkdir()
    path = d / "tenant.acme.bin"
    variants = [artifact_bytes("tenant.acme", [("entitle", "network.listen", (p,))]) for p in (1000, 2000)]
    path.write_bytes(variants[0])
    frozen_ns = time.time_ns() // 10**9 * 10**9  # whole seconds: a coarse clock (RACY_NS window)
    real_stat = os.stat

    def frozen_stat(p, *args, **kw):
        st = real_stat(p, *args, **kw)
        if str(p).endswith(".bin"):
            return SimpleNamespace(
                st_mode=st.st_mode, st_ino=st.st_ino, st_dev=st.st_dev, st_size=st.st_size,
                st_mtime_ns=frozen_ns, st_ctime_ns=frozen_ns,
            )
        return st

    monkeypatch.setattr(poller_mod.os, "stat", frozen_stat)
    a = PolicyAgent(d, reload=False).start()
    assert a.check("tenant.acme", "network.listen", 1000)
    rewrite_in_place(path, variants[1])
    a.reload_now()
    assert a.check("tenant.acme", "network.listen", 2000)
    # once the stat is old enough to trust, an unchanged key means no read at all
    monkeypatch.setattr(filestate_mod, "RACY_NS", -(10**19))
    a.reload_now()  # re-read once more (still marked racy), now trusted
    reads = []
    real_read = outcomes_mod._reader.read_artifact_bytes
    monkeypatch.setattr(outcomes_mod._reader, "read_artifact_bytes", lambda p: reads.append(p) or real_read(p))
    a.reload_now()
    a.reload_now()
    assert reads == []


def test_atomic_drop_is_published_before_the_per_file_sweep(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    for i in range(30):
        write_artifact(d, f"tenant.m{i}", ALLOW)
    a = PolicyAgent(d, reload=False).start()
    commits = []
    real = a._poller.commit

    def spy(outcomes, gone, initial):
        commits.append(sorted(o.module for o in outcomes if isinstance(o, NewPolicy)))
        return real(outcomes, gone, initial)

    a._poller.commit = spy  # type: ignore[method-assign]
    write_artifact(d, "tenant.m3", DENY)  # write_atomic: a new inode renamed over the old name
    write_artifact(d, "tenant.new", ALLOW)
    rewrite_in_place(d / "tenant.m7.bin", artifact_bytes("tenant.m7", DENY))  # only the sweep sees this
    result = a.reload_now()
    assert sorted(result.changed) == ["tenant.m3", "tenant.m7", "tenant.new"]
    assert commits[0] == ["tenant.m3", "tenant.new"]  # the directory-level changes, first
    assert commits[-1] == ["tenant.m7"]


def test_racy_window_follows_the_timestamp_granularity():
    from types import SimpleNamespace

    now = time.time_ns() // 10**9 * 10**9 + 500_000_123

    def st(ctime_ns):
        return SimpleNamespace(st_ctime_ns=ctime_ns)

    fine, coarse = filestate_mod.RACY_FINE_NS, filestate_mod.RACY_NS
    assert fine < coarse
    # fine timestamps (sub-millisecond digits): the short window
    assert filestate_mod.is_racy(st(now - fine + 1_001), now)
    assert not filestate_mod.is_racy(st(now - fine - 1_001), now)
    # whole seconds or whole milliseconds: the clock may be coarse, the long window
    assert filestate_mod.is_racy(st(now // 10**9 * 10**9 - coarse + 10**9), now)
    assert filestate_mod.is_racy(st(now - fine - 1_000_000 - 123), now)  # ms-aligned, 51 ms old
    assert not filestate_mod.is_racy(st((now - coarse) // 10**9 * 10**9 - 10**9), now)
    # a ctime in the future (clock skew) is racy either way
    assert filestate_mod.is_racy(st(now + 10**9 + 1), now) and filestate_mod.is_racy(st(now + 10**9), now)


@pytest.mark.parametrize("age_ms, fine, reread", [(100, True, False), (100, False, True), (10, True, True)])
def test_racy_reread_depends_on_age_and_granularity(tmp_path, monkeypatch, age_ms, fine, reread):
    """An unchanged file is re-read only while its ctime is inside the window its granularity gives."""
    from types import SimpleNamespace

    d = tmp_path / "p"
    d.mkdir()
    path = write_artifact(d, "tenant.acme", ALLOW)
    real_stat = os.stat
    state = {}

    def stamped_stat(p, *args, **kw):
        st = real_stat(p, *args, **kw)
        if str(p).endswith(".bin"):
            return SimpleNamespace(
                st_mode=st.st_mode, st_ino=st.st_ino, st_dev=st.st_dev, st_size=st.st_size,
                st_mtime_ns=state["ctime"], st_ctime_ns=state["ctime"],
            )
        return st

    now = time.time_ns()
    monkeypatch.setattr(poller_mod.time, "time_ns", lambda: now)  # the agent's clock stands still

    def set_age():
        ctime = now - age_ms * 1_000_000
        state["ctime"] = ctime // 1_000_000 * 1_000_000 + (777 if fine else 0)

    monkeypatch.setattr(poller_mod.os, "stat", stamped_stat)
    set_age()
    a = PolicyAgent(d, reload=False).start()
    a.reload_now()
    reads = []
    real_read = outcomes_mod._reader.read_artifact_bytes
    monkeypatch.setattr(outcomes_mod._reader, "read_artifact_bytes", lambda p: reads.append(p) or real_read(p))
    set_age()  # the same stat as recorded, as old as the parameter says
    a._poller.files["tenant.acme.bin"].key = (state["ctime"], path.stat().st_size, path.stat().st_ino, state["ctime"])
    a._poller.files["tenant.acme.bin"].racy = True  # recorded while it was fresh
    a._poller.rebuild_sweep()
    a.reload_now()  # re-read once: it was racy when recorded
    assert len(reads) == 1
    a.reload_now()
    assert len(reads) == (2 if reread else 1)


def test_drop_during_a_long_sweep_is_published_before_the_sweep_ends(tmp_path, monkeypatch):
    """The sweep looks at the directory between chunks: an atomic drop landing
    mid-sweep is enforced while the sweep still runs."""
    d = tmp_path / "p"
    d.mkdir()
    n = poller_mod.SWEEP_CHUNK * 5
    for i in range(n):
        write_artifact(d, f"tenant.m{i:03d}", ALLOW)
    a = PolicyAgent(d, reload=False).start()
    time.sleep(0.05)  # later changes of the directory get a new timestamp tick
    a.reload_now()
    monkeypatch.setattr(poller_mod, "SWEEP_DIR_CHECK_S", 0.0)  # look at every chunk boundary
    real_stat = os.stat
    seen = {"bin": 0, "enforced_at": None, "new_at": None}
    dropped_at = poller_mod.SWEEP_CHUNK // 2

    def stat(p, *args, **kw):
        if str(p).endswith(".bin"):
            seen["bin"] += 1
            k = seen["bin"]
            if k == dropped_at:
                write_artifact(d, "tenant.m001", DENY)  # renamed over an existing name
                write_artifact(d, "tenant.zzz", [("entitle", "threads.create", ())])  # a new name
            elif k > dropped_at:
                if seen["enforced_at"] is None and not a.check("tenant.m001", *REQ[1:]):
                    seen["enforced_at"] = k
                if seen["new_at"] is None and a.check("tenant.zzz", "threads.create"):
                    seen["new_at"] = k
        return real_stat(p, *args, **kw)

    monkeypatch.setattr(poller_mod.os, "stat", stat)
    result = a.reload_now()
    assert sorted(result.changed) == ["tenant.m001", "tenant.zzz"]
    assert seen["bin"] >= n  # the sweep went on to the end
    # published at the next chunk boundary, long before the sweep ended
    assert seen["enforced_at"] is not None and seen["enforced_at"] <= 2 * poller_mod.SWEEP_CHUNK + 2
    assert seen["new_at"] is not None and seen["new_at"] <= 2 * poller_mod.SWEEP_CHUNK + 2
    assert not a.check("tenant.m001", *REQ[1:]) and a.check("tenant.zzz", "threads.create")
    a.reload_now()  # nothing left over
    assert a.reload_now().to_dict() == {"changed": [], "removed": [], "failed": []}


def test_deletion_during_a_sweep_is_a_removal_not_an_unreadable_file(tmp_path, monkeypatch, caplog):
    d = tmp_path / "p"
    d.mkdir()
    n = poller_mod.SWEEP_CHUNK * 3
    for i in range(n):
        write_artifact(d, f"tenant.m{i:03d}", ALLOW)
    a = PolicyAgent(d, reload=False).start()
    time.sleep(0.05)  # later changes of the directory get a new timestamp tick
    a.reload_now()
    monkeypatch.setattr(poller_mod, "SWEEP_DIR_CHECK_S", 0.0)
    real_stat = os.stat
    count = {"bin": 0}
    victim = d / f"tenant.m{n - 1:03d}.bin"  # swept last

    def stat(p, *args, **kw):
        if str(p).endswith(".bin"):
            count["bin"] += 1
            if count["bin"] == 3:
                victim.unlink()
        return real_stat(p, *args, **kw)

    monkeypatch.setattr(poller_mod.os, "stat", stat)
    result = a.reload_now()
    assert result.removed == [f"tenant.m{n - 1:03d}"] and result.failed == []
    assert warnings_about(caplog, "removed, keeping previous") and not warnings_about(caplog, "cannot read")


def test_poll_step_lowers_the_switch_interval_and_restores_it(pdir, monkeypatch):
    import sys

    a = PolicyAgent(pdir, reload=False).start()
    b = PolicyAgent(pdir, reload=False).start()
    before = sys.getswitchinterval()
    assert before > switch_mod.POLL_SWITCH_INTERVAL
    during = []
    real_stat = os.stat

    def stat(p, *args, **kw):
        during.append(sys.getswitchinterval())
        return real_stat(p, *args, **kw)

    monkeypatch.setattr(poller_mod.os, "stat", stat)
    a.reload_now()
    assert during and all(abs(v - switch_mod.POLL_SWITCH_INTERVAL) < 1e-6 for v in during)
    assert sys.getswitchinterval() == before

    # steps of two agents overlapping on two threads: restored when the last one leaves
    inside, release = threading.Event(), threading.Event()

    def slow_stat(p, *args, **kw):
        if threading.current_thread().name == "slow":
            inside.set()
            release.wait(5)
        return real_stat(p, *args, **kw)

    monkeypatch.setattr(poller_mod.os, "stat", slow_stat)
    t = threading.Thread(target=a.reload_now, name="slow")
    t.start()
    assert inside.wait(5)
    b.reload_now()  # enters and leaves while a's step is still running
    assert abs(sys.getswitchinterval() - switch_mod.POLL_SWITCH_INTERVAL) < 1e-6
    release.set()
    t.join(5)
    assert sys.getswitchinterval() == before

    # someone else changes the interval during a step: theirs stays
    def meddling_stat(p, *args, **kw):
        sys.setswitchinterval(0.002)
        return real_stat(p, *args, **kw)

    monkeypatch.setattr(poller_mod.os, "stat", meddling_stat)
    try:
        a.reload_now()
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)

    # switched off: left alone
    monkeypatch.setattr(switch_mod, "POLL_SWITCH_INTERVAL", None)
    monkeypatch.setattr(poller_mod.os, "stat", stat)
    during.clear()
    a.reload_now()
    assert during and all(v == before for v in during)


def test_sweep_lists_stay_equal_to_a_rebuild(tmp_path):
    """After every kind of change, the incrementally updated sweep and re-check
    lists equal the ones rebuilt from scratch."""
    d = tmp_path / "p"
    d.mkdir()
    for i in range(20):
        write_artifact(d, f"tenant.m{i:02d}", ALLOW)
    a = PolicyAgent(d, reload=False).start()

    def check_lists():
        sweep, recheck = a._poller.sweep, sorted(a._poller.recheck)
        a._poller.rebuild_sweep()
        assert sweep == a._poller.sweep and recheck == sorted(a._poller.recheck)
        assert [e[0] for e in sweep] == sorted(e[0] for e in sweep)
        assert set(e[0] for e in sweep) | set(recheck) == set(a._poller.files)

    check_lists()
    changes = [
        lambda: write_artifact(d, "tenant.m05", DENY),
        lambda: write_artifact(d, "tenant.a00", ALLOW),  # new, sorts first
        lambda: write_artifact(d, "tenant.z99", ALLOW),  # new, sorts last
        lambda: (d / "tenant.m07.bin").unlink(),
        lambda: (d / "tenant.m08.bin").write_bytes(b"garbage"),
        lambda: os.symlink("nowhere", d / "tenant.m50.bin"),  # unreadable: re-checked
        lambda: rewrite_in_place(d / "tenant.m09.bin", artifact_bytes("tenant.m09", DENY)),
        lambda: (d / "tenant.m50.bin").unlink(),
    ]
    for change in changes:
        change()
        a.reload_now()
        check_lists()
        a._poller.files = {n: s for n, s in a._poller.files.items()}  # no aliasing tricks: plain state
        for st in a._poller.files.values():
            st.racy = False  # as if time passed
        a._poller.rebuild_sweep()
        a.reload_now()
        check_lists()


def test_file_that_cannot_be_statted_does_not_break_directory_changes(pdir, monkeypatch, caplog):
    """A name whose stat fails (recorded as an error, not a stat key) is examined
    again when the directory changes, and the step goes on to the other names."""
    a = PolicyAgent(pdir, reload=False).start()
    real_stat = os.stat

    def stat(p, *args, **kw):
        if str(p).endswith("tenant.globex.bin"):
            raise PermissionError(13, "Permission denied", str(p))
        return real_stat(p, *args, **kw)

    monkeypatch.setattr(poller_mod.os, "stat", stat)
    write_artifact(pdir, "tenant.new", [("entitle", "threads.create", ())])
    first = a.reload_now()
    assert first.changed == ["tenant.new"]
    assert [(f.module, f.reason) for f in first.failed] == [("tenant.globex", "cannot read: Permission denied")]
    write_artifact(pdir, "tenant.acme", DENY)  # the directory changes again
    second = a.reload_now()
    assert second.changed == ["tenant.acme"] and second.failed == []  # warned once per file state
    assert not a.check(*REQ) and a.check("tenant.new", "threads.create")
    assert a.check("tenant.globex", "network.outbound", "api.globex.com", 443)  # previous policy kept
    assert len(warnings_about(caplog, "tenant.globex.bin: cannot read")) == 1
    monkeypatch.setattr(poller_mod.os, "stat", real_stat)
    assert a.reload_now().failed == [] and a.status()["modules"]["tenant.globex"]["last_error"] is None
