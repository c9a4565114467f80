"""start() after stop(): the poller comes back, and it is the poller that reloads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from polc.runtime import PolicyAgent

from support.agent import wait_for, write_artifact

INTERVAL = 0.05
DEADLINE = 10.0
PARTNER = ("tenant.acme", "network.outbound", "api.partner.com", 443)


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    write_artifact(d, "tenant.acme", [("entitle", "network.outbound", ("*.acme.com", 443))])
    write_artifact(d, "_global", [])
    return d


def reloaders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "polc-reloader" and t.is_alive()]


def test_start_after_stop_restarts_the_poller(pdir):
    agent = PolicyAgent(pdir, reload_interval=INTERVAL)
    seen: list[tuple[str, str]] = []
    agent.subscribe(lambda e: seen.append((e.kind, threading.current_thread().name)))
    before = len(reloaders())
    try:
        agent.start()
        first = agent._thread
        agent.stop()
        assert first is not None and not first.is_alive()
        assert len(reloaders()) == before

        agent.start()
        second = agent._thread
        assert second is not None and second is not first and second.is_alive()
        assert len(reloaders()) == before + 1
        assert agent.start() is agent and agent._thread is second  # a running poller is left alone

        assert not agent.check(*PARTNER)
        write_artifact(pdir, "tenant.acme", [("entitle", "network.outbound", ("api.partner.com", 443))])
        wait_for(lambda: agent.check(*PARTNER), timeout=DEADLINE)
        # the event follows the swap (subscribers hear of a snapshot once it is in force)
        wait_for(lambda: any(kind == "reloaded" for kind, _ in seen), timeout=DEADLINE)
        assert ("reloaded", "polc-reloader") in seen  # the poller found it, nobody else looked
    finally:
        agent.stop()
    assert len(reloaders()) == before


def test_many_stop_start_cycles_leave_one_poller(pdir):
    before = len(reloaders())
    agent = PolicyAgent(pdir, reload_interval=INTERVAL)
    try:
        for _ in range(5):
            agent.start()
            agent.stop()
        agent.start()
        assert len(reloaders()) == before + 1
        write_artifact(pdir, "tenant.acme", [("entitle", "network.outbound", ("api.partner.com", 443))])
        wait_for(lambda: agent.check(*PARTNER), timeout=DEADLINE)
    finally:
        agent.stop()
    wait_for(lambda: len(reloaders()) == before, timeout=DEADLINE)


def test_stop_from_a_subscriber_then_start_again(pdir):
    # stop() on the poller thread itself cannot join it; the poller still
    # ends, and start() afterwards runs a new one.
    agent = PolicyAgent(pdir, reload_interval=INTERVAL)
    stopped = threading.Event()

    def stop_on_first(event):
        if event.kind == "reloaded" and not stopped.is_set():
            assert threading.current_thread() is agent._thread
            stopped.set()
            agent.stop()

    unsubscribe = agent.subscribe(stop_on_first)
    try:
        agent.start()
        old = agent._thread
        write_artifact(pdir, "tenant.acme", [])
        assert stopped.wait(DEADLINE)
        wait_for(lambda: not old.is_alive(), timeout=DEADLINE)
        unsubscribe()
        agent.start()
        assert agent._thread is not old and agent._thread.is_alive()
        write_artifact(pdir, "tenant.acme", [("entitle", "network.outbound", ("api.partner.com", 443))])
        wait_for(lambda: agent.check(*PARTNER), timeout=DEADLINE)
    finally:
        agent.stop()


def test_reload_off_start_after_stop_starts_no_thread(pdir):
    before = len(reloaders())
    agent = PolicyAgent(pdir, reload=False)
    agent.start()
    agent.stop()
    agent.start()
    assert agent._thread is None and len(reloaders()) == before
