"""Change detection through inotify: real files, the real poller thread, no polling to hide behind.

Every agent here has a reload interval and a safety-net sweep of an hour
(unless a test is about the sweep), so a change that is enforced within the
test's deadline was found through inotify. The ConfigMap layout is built the
way the kubelet updates a volume: a new timestamped directory, a ``..data_tmp``
symlink renamed over ``..data``, the old directory removed.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

from polc.runtime import PolicyAgent
from polc.runtime.reload import inotify as inotify_mod

from support.agent import artifact_bytes, rewrite_in_place, wait_for, write_artifact

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only")

HOUR = 3600.0
ALLOW = [("entitle", "network.outbound", ("api.acme.com", 443))]
DENY = [("deny", "network.outbound", ())]
REQ = ("tenant.acme", "network.outbound", "api.acme.com", 443)


def inotify_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                n += 1
        except OSError:
            pass
    return n


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    write_artifact(d, "tenant.acme", ALLOW)
    write_artifact(d, "_global", [])
    return d


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
        assert a._thread is None or not a._thread.is_alive()


def watching(agent: PolicyAgent) -> bool:
    return agent.status()["watch"]["mode"] == "inotify"


# -- the changes ---------------------------------------------------------------------


def test_create_is_seen_without_polling(pdir, agents):
    a = agents(pdir)
    assert watching(a) and a.status()["watch"]["sweep_interval"] == HOUR
    assert not a.check("tenant.new", "threads.create")
    write_artifact(pdir, "tenant.new", [("entitle", "threads.create", ())])
    wait_for(lambda: a.check("tenant.new", "threads.create"))
    assert a.status()["modules"]["tenant.new"]["rules"] == 1


def test_delete_is_seen_and_keeps_the_policy(pdir, agents):
    a = agents(pdir)
    events = []
    a.subscribe(events.append)
    (pdir / "tenant.acme.bin").unlink()
    wait_for(lambda: any(e.kind == "removed" and e.module == "tenant.acme" for e in events))
    assert a.check(*REQ)  # the last policy loaded stays
    assert "file removed" in a.status()["modules"]["tenant.acme"]["last_error"]


def test_rename_over_is_seen(pdir, agents):
    a = agents(pdir)
    assert a.check(*REQ)
    write_artifact(pdir, "tenant.acme", DENY)  # stage + rename over
    wait_for(lambda: not a.check(*REQ))
    write_artifact(pdir, "tenant.acme", ALLOW)
    wait_for(lambda: a.check(*REQ))


def test_in_place_rewrite_is_seen_on_close(pdir, agents):
    a = agents(pdir)
    path = pdir / "tenant.acme.bin"
    ino = path.stat().st_ino
    rewrite_in_place(path, artifact_bytes("tenant.acme", DENY))
    assert path.stat().st_ino == ino
    wait_for(lambda: not a.check(*REQ))


def test_bad_file_keeps_previous_then_recovers(pdir, agents):
    a = agents(pdir)
    path = pdir / "tenant.acme.bin"
    good = path.read_bytes()
    rewrite_in_place(path, good[:-5])
    wait_for(lambda: (a.status()["modules"]["tenant.acme"]["last_error"] or "").startswith("truncated"))
    assert a.check(*REQ)
    rewrite_in_place(path, good)
    wait_for(lambda: a.status()["modules"]["tenant.acme"]["last_error"] is None)


# -- the ConfigMap layout ---------------------------------------------------------------


def configmap(root: Path, version: str, files: dict[str, bytes]) -> Path:
    """The first version of a ConfigMap volume: ``..<version>/``, ``..data``, one symlink per key."""
    d = root / "cm"
    d.mkdir()
    data = d / f"..{version}"
    data.mkdir()
    for name, content in files.items():
        (data / name).write_bytes(content)
    os.symlink(f"..{version}", d / "..data")
    for name in files:
        os.symlink(f"..data/{name}", d / name)
    return d


def configmap_update(d: Path, version: str, files: dict[str, bytes]) -> None:
    """What the kubelet does on an update: new directory, ``..data`` swapped by rename, old removed."""
    old = os.readlink(d / "..data")
    data = d / f"..{version}"
    data.mkdir()
    for name, content in files.items():
        (data / name).write_bytes(content)
    os.symlink(f"..{version}", d / "..data_tmp")
    os.rename(d / "..data_tmp", d / "..data")
    for name in files:
        if not (d / name).is_symlink():
            os.symlink(f"..data/{name}", d / name)
    shutil.rmtree(d / old)


def test_data_swap_is_seen(tmp_path, agents):
    d = configmap(tmp_path, "2026_01", {"tenant.acme.bin": artifact_bytes("tenant.acme", ALLOW)})
    a = agents(d)
    assert watching(a) and a.check(*REQ)
    configmap_update(d, "2026_02", {"tenant.acme.bin": artifact_bytes("tenant.acme", DENY)})
    wait_for(lambda: not a.check(*REQ))
    # a key added by a later update: a new symlink in the directory
    configmap_update(
        d,
        "2026_03",
        {
            "tenant.acme.bin": artifact_bytes("tenant.acme", ALLOW),
            "tenant.new.bin": artifact_bytes("tenant.new", [("entitle", "threads.create", ())]),
        },
    )
    wait_for(lambda: a.check(*REQ) and a.check("tenant.new", "threads.create"))


def test_rewrite_inside_the_data_target_is_seen(tmp_path, agents):
    d = configmap(tmp_path, "2026_01", {"tenant.acme.bin": artifact_bytes("tenant.acme", ALLOW)})
    a = agents(d)
    configmap_update(d, "2026_02", {"tenant.acme.bin": artifact_bytes("tenant.acme", ALLOW)})
    wait_for(lambda: a._watcher is not None and a._watcher.data_target == str(d / "..2026_02"))
    # not how the kubelet works, but how a hand-edited volume does: the watch follows ..data
    rewrite_in_place(d / "..2026_02" / "tenant.acme.bin", artifact_bytes("tenant.acme", DENY))
    wait_for(lambda: not a.check(*REQ))


# -- the directory replaced ----------------------------------------------------------------


def test_directory_renamed_over_rearms(pdir, agents):
    a = agents(pdir)
    new = pdir.parent / "policies.new"
    new.mkdir()
    write_artifact(new, "tenant.acme", DENY)
    os.rename(pdir, pdir.parent / "policies.old")
    os.rename(new, pdir)
    wait_for(lambda: not a.check(*REQ))
    # the watch follows the new directory: a later drop into it is seen too
    write_artifact(pdir, "tenant.new", [("entitle", "threads.create", ())])
    wait_for(lambda: a.check("tenant.new", "threads.create"))
    # and a change in the old one is not
    write_artifact(pdir.parent / "policies.old", "tenant.other", [("entitle", "threads.create", ())])
    assert a._watcher is not None and a._watcher.still_armed()
    assert not a.check("tenant.other", "threads.create")


def test_directory_removed_and_recreated_rearms(pdir, agents):
    a = agents(pdir)
    shutil.rmtree(pdir)
    wait_for(lambda: a.status()["directory_error"] is not None)
    assert a.check(*REQ)  # everything loaded stays in force
    pdir.mkdir()
    write_artifact(pdir, "tenant.acme", DENY)
    wait_for(lambda: not a.check(*REQ))
    assert a.status()["directory_error"] is None
    write_artifact(pdir, "tenant.new", [("entitle", "threads.create", ())])
    wait_for(lambda: a.check("tenant.new", "threads.create"))


def test_symlinked_directory_swapped_rearms(tmp_path, agents):
    v1 = tmp_path / "v1"
    v2 = tmp_path / "v2"
    for d, rules in ((v1, ALLOW), (v2, DENY)):
        d.mkdir()
        write_artifact(d, "tenant.acme", rules)
    link = tmp_path / "current"
    os.symlink("v1", link)
    a = agents(link)
    assert a.check(*REQ)
    os.symlink("v2", tmp_path / "current.tmp")
    os.rename(tmp_path / "current.tmp", link)  # ln -sfn, atomically
    wait_for(lambda: not a.check(*REQ))
    write_artifact(v2, "tenant.new", [("entitle", "threads.create", ())])
    wait_for(lambda: a.check("tenant.new", "threads.create"))


# -- what inotify does not report: the safety net -------------------------------------------


def test_missed_event_is_caught_by_the_safety_net(pdir, agents):
    """A write through a descriptor that stays open sends no close-after-write: only the sweep sees it."""
    a = agents(pdir, sweep_interval=0.3)
    steps = []
    orig = a._poller.run_step

    def counting(initial=False, **kw):
        steps.append(1)
        return orig(initial, **kw)

    a._poller.run_step = counting  # type: ignore[method-assign]
    # files written this instant are re-examined while their stat is racy: wait that out
    wait_for(lambda: not a._poller.recheck)
    path = pdir / "tenant.acme.bin"
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, artifact_bytes("tenant.acme", DENY))
        wait_for(lambda: not a.check(*REQ), timeout=10)
        assert steps  # a full step found it, not an event
    finally:
        os.close(fd)


def test_change_outside_the_watched_directories_is_caught_by_the_safety_net(tmp_path, agents):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "acme.bin"
    target.write_bytes(artifact_bytes("tenant.acme", ALLOW))
    d = tmp_path / "policies"
    d.mkdir()
    os.symlink(target, d / "tenant.acme.bin")
    a = agents(d, sweep_interval=0.3)
    assert a.check(*REQ)
    rewrite_in_place(target, artifact_bytes("tenant.acme", DENY))
    wait_for(lambda: not a.check(*REQ), timeout=10)


def test_queue_overflow_falls_back_to_a_full_step(pdir, agents):
    """More events than the kernel queues (fs.inotify.max_queued_events) while the poller is held:
    the events after the overflow are lost, and the drop among them is found by the full step."""
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    except (OSError, ValueError):
        pytest.skip("max_queued_events unknown")
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to overflow in a test")
    a = agents(pdir)
    noise = [pdir / ".noise-a", pdir / ".noise-b"]
    for p in noise:
        p.write_bytes(b"")
    with a._lock:  # the poller thread blocks at its next step, after reading what is queued now
        write_artifact(pdir, "tenant.first", [("entitle", "threads.create", ())])
        wait_for(lambda: a._lock_owner is None and a._watcher is not None and _blocked(a))
        for i in range(limit + 10):  # alternating names: the kernel merges only identical neighbours
            os.utime(noise[i & 1])
        write_artifact(pdir, "tenant.late", [("entitle", "threads.create", ())])
    wait_for(lambda: a.check("tenant.late", "threads.create"), timeout=10)
    assert a.check("tenant.first", "threads.create")


def _blocked(agent: PolicyAgent) -> bool:
    """True once the poller thread waits for the step lock (it read the first event)."""
    thread = agent._thread
    if thread is None:
        return False
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "_poll":
            return True
        frame = frame.f_back
    return False


# -- fallbacks -------------------------------------------------------------------------------

_EXHAUST = r"""
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while True:
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        break
    fds.append(fd)
print(len(fds), ctypes.get_errno(), flush=True)
# Other processes of this user may close an instance meanwhile: take it too,
# until the test closes stdin (the agent must find none left).
done = threading.Event()
def keep_taking():
    while not done.is_set():
        fd = libc.inotify_init1(os.O_CLOEXEC)
        if fd >= 0:
            fds.append(fd)
        else:
            time.sleep(0.0005)
threading.Thread(target=keep_taking, daemon=True).start()
sys.stdin.read()
done.set()
"""


def test_instance_limit_reached_falls_back_to_polling_with_a_warning(pdir, agents, caplog):
    """The limit is reached for real: a subprocess of this user takes every inotify instance
    (fs.inotify.max_user_instances) and holds them while the agent starts."""
    import errno
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", _EXHAUST], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        count, err = map(int, proc.stdout.readline().split())
        assert err == errno.EMFILE, f"inotify_init1 failed with errno {err} after {count} instances"
        events = []
        a = PolicyAgent(pdir, reload_interval=0.05)
        a.subscribe(events.append)
        a.start()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    try:
        watch = a.status()["watch"]
        assert watch["mode"] == "poll"
        assert "max_user_instances" in watch["reason"] and "polling every 0.05s" in watch["reason"]
        assert [e.kind for e in events if e.module is None] == ["watch"]
        assert "max_user_instances" in (events[0].reason or "")
        assert any("change detection" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
        # and polling still enforces drops
        write_artifact(pdir, "tenant.acme", DENY)
        wait_for(lambda: not a.check(*REQ))
    finally:
        a.stop()


class _FailingAdds:
    """libc's inotify calls, with inotify_add_watch failing ENOSPC once told to (injected:
    fs.inotify.max_user_watches is shared by every process of the user, too many to exhaust)."""

    def __init__(self, real) -> None:
        self.real = real
        self.init1 = real.init1
        self.rm_watch = real.rm_watch
        self.fail = False

    def add_watch(self, fd, path, mask):
        if self.fail:
            import ctypes
            import errno

            ctypes.set_errno(errno.ENOSPC)
            return -1
        return self.real.add_watch(fd, path, mask)


def test_watch_limit_reached_on_rearm_falls_back_to_polling(pdir, agents, monkeypatch):
    fake = _FailingAdds(inotify_mod._get_libc())
    monkeypatch.setattr(inotify_mod, "_libc", fake)
    events = []
    a = PolicyAgent(pdir, reload_interval=0.05)
    a.subscribe(events.append)
    a.start()
    try:
        assert watching(a)
        fake.fail = True
        new = pdir.parent / "policies.new"
        new.mkdir()
        write_artifact(new, "tenant.acme", DENY)
        os.rename(pdir, pdir.parent / "policies.old")
        os.rename(new, pdir)  # the re-arm needs a new watch: ENOSPC
        wait_for(lambda: a.status()["watch"]["mode"] == "poll")
        assert "max_user_watches" in a.status()["watch"]["reason"]
        assert any(e.kind == "watch" and "max_user_watches" in (e.reason or "") for e in events)
        wait_for(lambda: not a.check(*REQ))  # found by polling now
        write_artifact(pdir, "tenant.acme", ALLOW)
        wait_for(lambda: a.check(*REQ))
    finally:
        a.stop()


def test_network_filesystem_falls_back_to_polling(pdir, agents, monkeypatch):
    monkeypatch.setattr(inotify_mod, "filesystem_kind", lambda path: "nfs")
    a = agents(pdir, reload_interval=0.05)
    watch = a.status()["watch"]
    assert watch["mode"] == "poll" and "nfs" in watch["reason"]
    write_artifact(pdir, "tenant.acme", DENY)
    wait_for(lambda: not a.check(*REQ))


def test_filesystem_kind_of_a_local_directory_is_none(tmp_path):
    assert inotify_mod.filesystem_kind(str(tmp_path)) is None  # ext4/tmpfs/overlay here


# -- turned off --------------------------------------------------------------------------------


def test_reload_off_means_no_watcher_at_all(pdir):
    before = inotify_fds()
    with PolicyAgent(pdir, reload=False) as a:
        assert a._thread is None and a._watcher is None
        assert a.status()["watch"] == {"mode": "off", "reason": "reloading off", "sweep_interval": None}
        assert inotify_fds() == before
        assert threading.active_count() >= 1


def test_inotify_turned_off_polls(pdir, agents):
    before = inotify_fds()
    a = agents(pdir, reload_interval=0.05, inotify=False)
    assert a.status()["watch"]["mode"] == "poll" and a._watcher is None
    assert inotify_fds() == before
    write_artifact(pdir, "tenant.acme", DENY)
    wait_for(lambda: not a.check(*REQ))


def test_watcher_is_released_on_stop(pdir):
    before = inotify_fds()
    a = PolicyAgent(pdir, reload_interval=HOUR).start()
    assert inotify_fds() == before + 1
    a.stop()
    assert inotify_fds() == before
    a.start()  # resumes with a new watch, catching up on what changed meanwhile
    try:
        assert inotify_fds() == before + 1
        write_artifact(pdir, "tenant.acme", DENY)
        wait_for(lambda: not a.check(*REQ))
    finally:
        a.stop()


def test_change_while_stopped_is_caught_on_resume(pdir):
    a = PolicyAgent(pdir, reload_interval=HOUR).start()
    a.stop()
    write_artifact(pdir, "tenant.acme", DENY)
    a.start()
    try:
        wait_for(lambda: not a.check(*REQ))
    finally:
        a.stop()


@pytest.mark.parametrize("value", ["", " ", "maybe", "2", "inotify"])
def test_hostile_polc_inotify_is_an_error(pdir, monkeypatch, value):
    monkeypatch.setenv("POLC_INOTIFY", value)
    with pytest.raises(ValueError, match="POLC_INOTIFY="):
        PolicyAgent(pdir)


@pytest.mark.parametrize("value", ["off", "0", "false", " NO\n"])
def test_polc_inotify_off(pdir, monkeypatch, value):
    monkeypatch.setenv("POLC_INOTIFY", value)
    a = PolicyAgent(pdir, reload_interval=HOUR)
    assert a.inotify is False


@pytest.mark.parametrize("value", ["", "soon", "-1", "nan", "inf", "0", "0.001", "1e30"])
def test_hostile_polc_sweep_interval_is_an_error(pdir, monkeypatch, value):
    monkeypatch.setenv("POLC_SWEEP_INTERVAL", value)
    with pytest.raises(ValueError, match="POLC_SWEEP_INTERVAL="):
        PolicyAgent(pdir)


def test_sweep_interval_default_and_argument(pdir, monkeypatch):
    monkeypatch.delenv("POLC_SWEEP_INTERVAL", raising=False)
    assert PolicyAgent(pdir).sweep_interval == 60.0
    assert PolicyAgent(pdir, reload_interval=120).sweep_interval == 120.0
    assert PolicyAgent(pdir, sweep_interval=5).sweep_interval == 5.0
    monkeypatch.setenv("POLC_SWEEP_INTERVAL", "7.5")
    assert PolicyAgent(pdir).sweep_interval == 7.5
    with pytest.raises(ValueError, match="sweep_interval"):
        PolicyAgent(pdir, sweep_interval=0)
    with pytest.raises(ValueError, match="inotify="):
        PolicyAgent(pdir, inotify="yes")  # type: ignore[arg-type]


def test_a_sweep_interval_of_centuries_waits_without_overflow(pdir, agents):
    import threading as _t

    a = agents(pdir, sweep_interval=_t.TIMEOUT_MAX)
    assert watching(a)
    write_artifact(pdir, "tenant.acme", DENY)
    wait_for(lambda: not a.check(*REQ))
    assert a._thread is not None and a._thread.is_alive()
