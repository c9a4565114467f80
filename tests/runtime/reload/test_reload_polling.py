"""Polling without inotify: the directory's stat every tick, its raw listing compared
with the last one (reload/dirlist.py), and the full sweep only when due."""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from pathlib import Path

import pytest

from polc.runtime import PolicyAgent
from polc.runtime.reload import dirlist
from polc.runtime.reload import poller as poller_mod
from polc.runtime.reload.filestate import RACY_FINE_NS
from polc.runtime.reload.poller import Poller

from support.agent import artifact_bytes, rewrite_in_place, wait_for, write_artifact

ALLOW = [("entitle", "network.outbound", ("api.acme.com", 443))]
DENY = [("deny", "network.outbound", ())]
REQ = ("tenant.acme", "network.outbound", "api.acme.com", 443)
HAVE_GETDENTS = sys.platform.startswith("linux") and dirlist.read_raw(".") is not None


def settle(*paths: Path) -> None:
    """Wait until the paths' last changes are too old to be racy (their stat can be trusted)."""
    newest = max(os.stat(p).st_ctime_ns for p in paths)
    wait_for(lambda: time.time_ns() - newest > 2 * RACY_FINE_NS, timeout=10)


def tree(d: Path, n: int = 5) -> Poller:
    """``n`` settled artifacts (tenant.acme allows REQ), loaded, with the sweep kept from running."""
    write_artifact(d, "tenant.acme", ALLOW)
    for i in range(1, n):
        write_artifact(d, f"tenant.t{i}", ALLOW)
    settle(d, *d.iterdir())
    poller = Poller(str(d), trust=None, cache_size=100, publish=lambda snap: None)
    poller.run_step(initial=True)
    assert poller.recheck == [] and not poller.dir_racy
    poller.run_tick(3600.0)
    poller.next_sweep = float("inf")  # only the directory's stat, never the sweep
    return poller


@pytest.fixture
def no_scandir(monkeypatch):
    """Fail any listing of the directory whole: the change must come from the raw listing."""
    if not HAVE_GETDENTS:
        pytest.skip("getdents64 is not available: every listing is whole")

    def refuse(path):
        raise AssertionError("listed whole with os.scandir")

    monkeypatch.setattr(poller_mod.os, "scandir", refuse)


def test_create_rename_over_and_delete_are_seen_by_a_tick(tmp_path, no_scandir):
    poller = tree(tmp_path)
    assert poller.raw_listing is not None and poller.snapshot.check(*REQ)

    write_artifact(tmp_path, "tenant.new", ALLOW)
    _events, result = poller.run_tick(3600.0)
    assert result.changed == ["tenant.new"]

    write_artifact(tmp_path, "tenant.acme", DENY)  # write a temporary file, rename it over
    _events, result = poller.run_tick(3600.0)
    assert result.changed == ["tenant.acme"] and not poller.snapshot.check(*REQ)

    os.unlink(tmp_path / "tenant.t2.bin")
    _events, result = poller.run_tick(3600.0)
    assert result.removed == ["tenant.t2"] and "tenant.t2.bin" not in poller.names
    assert poller.names == sorted(n for n in os.listdir(tmp_path) if n.endswith(".bin"))

    _events, result = poller.run_tick(3600.0)  # nothing changed since
    assert result.to_dict() == {"changed": [], "removed": [], "failed": []}


def test_an_in_place_rewrite_is_left_to_the_sweep(tmp_path):
    poller = tree(tmp_path)
    path = tmp_path / "tenant.acme.bin"
    rewrite_in_place(path, artifact_bytes("tenant.acme", DENY))  # the directory does not change
    _events, result = poller.run_tick(3600.0)
    assert result.changed == [] and poller.snapshot.check(*REQ)
    poller.next_sweep = 0.0  # the sweep is due
    before = time.monotonic()
    _events, result = poller.run_tick(3600.0)
    assert result.changed == ["tenant.acme"] and not poller.snapshot.check(*REQ)
    assert poller.next_sweep > before  # and the next one is scheduled after it


def test_the_sweep_cadence_follows_its_cost_and_the_cap(tmp_path):
    poller = tree(tmp_path)
    poller.next_sweep = 0.0
    poller.run_tick(3600.0)
    small = poller.next_sweep - time.monotonic()
    assert small < 60.0  # five files: the sweep is cheap, due again long before the cap
    poller.next_sweep = 0.0
    poller.run_tick(0.0)
    assert poller.next_sweep <= time.monotonic()  # the cap wins: due on every tick


def test_a_change_in_the_same_tick_as_the_listing_is_caught(tmp_path):
    poller = tree(tmp_path)
    write_artifact(tmp_path, "tenant.acme", DENY)
    st = os.stat(tmp_path)
    # As if the last listing had seen the directory's new stat but not the change
    # (both within one timestamp tick): trusted, the stat hides the change ...
    poller.dir_key = (st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev)
    poller.dir_racy = False
    _events, result = poller.run_tick(3600.0)
    assert result.changed == [] and poller.snapshot.check(*REQ)
    # ... so a stat that recent is not trusted: the directory is listed again.
    poller.dir_racy = True
    _events, result = poller.run_tick(3600.0)
    assert result.changed == ["tenant.acme"] and not poller.snapshot.check(*REQ)


def test_a_fresh_directory_stat_is_racy_and_listed_again(tmp_path):
    poller = tree(tmp_path)
    write_artifact(tmp_path, "tenant.new", ALLOW)
    poller.run_tick(3600.0)
    assert poller.dir_racy  # changed just now: the next tick lists it again
    listed = []
    real = dirlist.read_raw
    poller_mod.dirlist.read_raw = lambda *a: listed.append(1) or real(*a)  # type: ignore[assignment]
    try:
        poller.run_tick(3600.0)
    finally:
        poller_mod.dirlist.read_raw = real  # type: ignore[assignment]
    assert listed == [1]


def test_a_data_swap_is_seen_without_inotify(tmp_path):
    d = tmp_path / "cm"
    (d / "..v1").mkdir(parents=True)
    (d / "..v1" / "tenant.acme.bin").write_bytes(artifact_bytes("tenant.acme", ALLOW))
    os.symlink("..v1", d / "..data")
    os.symlink("..data/tenant.acme.bin", d / "tenant.acme.bin")
    a = PolicyAgent(d, reload_interval=0.02, inotify=False).start()
    try:
        assert a.status()["watch"]["mode"] == "poll" and a.check(*REQ)
        wait_for(lambda: a._poller.raw_listing is not None or not HAVE_GETDENTS)
        (d / "..v2").mkdir()
        (d / "..v2" / "tenant.acme.bin").write_bytes(artifact_bytes("tenant.acme", DENY))
        os.symlink("..v2", d / "..data_tmp")
        os.rename(d / "..data_tmp", d / "..data")
        shutil.rmtree(d / "..v1")
        wait_for(lambda: not a.check(*REQ))
    finally:
        a.stop()


def test_an_agent_polling_enforces_drops_between_sweeps(tmp_path):
    write_artifact(tmp_path, "tenant.acme", ALLOW)
    a = PolicyAgent(tmp_path, reload_interval=0.02, inotify=False).start()
    try:
        a._poller.sweep_cap = 3600.0
        a._poller.next_sweep = float("inf")  # ticks only, from here
        for rules, want in ((DENY, False), (ALLOW, True), (DENY, False)):
            write_artifact(tmp_path, "tenant.acme", rules)
            wait_for(lambda want=want: bool(a.check(*REQ)) is want)
    finally:
        a.stop()


# -- the raw listing itself ----------------------------------------------------------


def _parse_whole(raw: bytes) -> tuple[dict[str, dirlist.Entry], list[int]]:
    entries: dict[str, dirlist.Entry] = {}
    offsets: list[int] = []
    assert dirlist._records(raw, 0, len(raw), entries, offsets) == len(raw)
    return entries, offsets


@pytest.mark.skipif(not HAVE_GETDENTS, reason="getdents64 is not available")
def test_diff_finds_exactly_what_changed(tmp_path):
    rng = random.Random(7)
    names = [f"tenant.m{i}{'.x' * rng.randrange(12)}.bin" for i in range(400)]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    raw = dirlist.read_raw(str(tmp_path))
    assert raw is not None
    listing = dirlist.mark(raw)
    assert listing is not None and listing.marks[-1] == len(raw)
    live = set(names)
    serial = 0
    for _round in range(40):
        for _ in range(rng.choice((1, 1, 2, 5, 30))):
            op = rng.random()
            if op < 0.4 or not live:  # a new name
                serial += 1
                name = f"new{serial}.{'y' * rng.randrange(9)}.bin"
                (tmp_path / name).write_bytes(b"n")
                live.add(name)
            elif op < 0.8:  # renamed over
                name = rng.choice(sorted(live))
                (tmp_path / ".tmp").write_bytes(b"r")
                os.replace(tmp_path / ".tmp", tmp_path / name)
            else:
                name = rng.choice(sorted(live))
                os.unlink(tmp_path / name)
                live.discard(name)
        raw2 = dirlist.read_raw(str(tmp_path))
        assert raw2 is not None
        before, _ = _parse_whole(listing.raw)
        after, offsets = _parse_whole(raw2)
        found = dirlist.diff(listing, raw2)
        assert found is not None
        new_listing, olds, news = found
        # every record outside the regions is the same in both listings ...
        assert {k: v for k, v in before.items() if k not in olds} == {k: v for k, v in after.items() if k not in news}
        # ... the regions hold every change, and agree with the listings
        assert all(after[k] == v for k, v in news.items()) and all(before[k] == v for k, v in olds.items())
        assert {n for n in after if n.endswith(".bin")} == live
        assert {e.name: e.inode() for e in os.scandir(tmp_path) if e.name.endswith(".bin")} == {
            n: ino for n, (ino, _t) in after.items() if n.endswith(".bin")
        }
        # the new marks start records
        assert set(new_listing.marks) <= set(offsets) | {len(raw2)} and new_listing.marks[-1] == len(raw2)
        listing = new_listing


def test_diff_refuses_records_that_do_not_parse():
    raw = bytes(24)  # a record of length 0
    listing = dirlist.Listing(b"", [0])
    assert dirlist.diff(listing, raw) is None
    assert dirlist.mark(b"\x01" * 30) is None
