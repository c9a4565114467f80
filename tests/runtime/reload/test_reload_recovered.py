"""The ``recovered`` event: a module whose error clears says so.

An alert raised on ``failed`` (or ``removed``) must be able to clear: every
module that had an error and has none any more gets exactly one
``recovered``, in order after the event that raised it, whether the same
policy came back or a new one loaded. status(), /v1/status and /metrics say
the same thing at every stage.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from polc.runtime import PolicyAgent, ReloadEvent

from support.agent import wait_for, write_artifact

ACME_V1 = [("entitle", "network.outbound", ("*.acme.com", 443))]
ACME_V2 = [("entitle", "network.outbound", ("*.acme.com", 443)), ("entitle", "network.outbound", ("api.partner.com", 443))]
OK = ("tenant.acme", "network.outbound", "api.acme.com", 443)
DEADLINE = 10.0


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    write_artifact(d, "tenant.acme", ACME_V1)
    write_artifact(d, "_global", [])
    return d


def drop(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def corrupt(data: bytes) -> bytes:
    i = len(data) - 3
    return data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :]


class Recorder:
    def __init__(self, agent: PolicyAgent) -> None:
        self.events: list[ReloadEvent] = []
        agent.subscribe(self.events.append)

    def kinds(self, module: str = "tenant.acme") -> list[str]:
        return [e.kind for e in self.events if e.module == module]


def test_same_policy_back_after_a_failure(pdir):
    good = (pdir / "tenant.acme.bin").read_bytes()
    with PolicyAgent(pdir, reload=False) as agent:
        rec = Recorder(agent)
        rev = agent.status()["modules"]["tenant.acme"]["revision"]
        drop(pdir / "tenant.acme.bin", corrupt(good))
        agent.reload_now()
        assert agent.status()["modules"]["tenant.acme"]["last_error"]
        drop(pdir / "tenant.acme.bin", good)
        agent.reload_now()
        assert rec.kinds() == ["failed", "recovered"]
        event = rec.events[-1]
        assert (event.module, event.file, event.reason, event.revision, event.rules) == (
            "tenant.acme", "tenant.acme.bin", None, rev, 1,
        )
        assert agent.status()["modules"]["tenant.acme"]["last_error"] is None
        assert agent.check(*OK)
        agent.reload_now()  # nothing changed: nothing more is said
        assert rec.kinds() == ["failed", "recovered"]


def test_new_policy_after_a_failure_reloads_and_recovers(pdir):
    with PolicyAgent(pdir, reload=False) as agent:
        rec = Recorder(agent)
        drop(pdir / "tenant.acme.bin", b"junk")
        agent.reload_now()
        write_artifact(pdir, "tenant.acme", ACME_V2)
        agent.reload_now()
        assert rec.kinds() == ["failed", "reloaded", "recovered"]
        assert rec.events[-1].revision == rec.events[-2].revision == agent.status()["modules"]["tenant.acme"]["revision"]


def test_a_healthy_reload_sends_no_recovered(pdir):
    with PolicyAgent(pdir, reload=False) as agent:
        rec = Recorder(agent)
        write_artifact(pdir, "tenant.acme", ACME_V2)
        agent.reload_now()
        assert rec.kinds() == ["reloaded"]


def test_file_back_after_removal(pdir):
    good = (pdir / "tenant.acme.bin").read_bytes()
    with PolicyAgent(pdir, reload=False) as agent:
        rec = Recorder(agent)
        (pdir / "tenant.acme.bin").unlink()
        agent.reload_now()
        assert agent.status()["modules"]["tenant.acme"]["last_error"].startswith("file removed")
        drop(pdir / "tenant.acme.bin", good)
        agent.reload_now()
        assert rec.kinds() == ["removed", "recovered"]
        assert agent.status()["modules"]["tenant.acme"]["last_error"] is None


def test_module_that_never_loaded(pdir):
    (pdir / "tenant.new.bin").write_bytes(b"junk")
    with PolicyAgent(pdir, reload=False) as agent:
        rec = Recorder(agent)  # after start: the start-up failure is in status only
        assert agent.status()["modules"]["tenant.new"]["last_error"]
        write_artifact(pdir, "tenant.new", ACME_V1)
        agent.reload_now()
        assert rec.kinds("tenant.new") == ["loaded", "recovered"]
        drop(pdir / "tenant.new.bin", b"junk again")
        (pdir / "tenant.other.bin").write_bytes(b"junk")
        agent.reload_now()
        assert rec.kinds("tenant.other") == ["failed"]
        # The bad file of a module that never loaded is deleted: nothing of it
        # is left to fail, and its alert must clear too.
        (pdir / "tenant.other.bin").unlink()
        agent.reload_now()
        assert rec.kinds("tenant.other") == ["failed", "recovered"]
        last = rec.events[-1]
        assert (last.revision, last.rules) == (None, 0)
        assert "tenant.other" not in agent.status()["modules"]


def test_the_poller_sends_recovered(pdir):
    good = (pdir / "tenant.acme.bin").read_bytes()
    with PolicyAgent(pdir, reload_interval=0.05) as agent:
        rec = Recorder(agent)
        drop(pdir / "tenant.acme.bin", corrupt(good))
        wait_for(lambda: "failed" in rec.kinds(), timeout=DEADLINE)
        drop(pdir / "tenant.acme.bin", good)
        wait_for(lambda: rec.kinds() == ["failed", "recovered"], timeout=DEADLINE)


def test_recovered_never_overtakes_failed(pdir):
    """Two threads reloading at once deliver events in the order they were committed.

    Thread A commits ``failed`` and is still delivering it (its subscriber is
    slow) when thread B commits ``recovered``. Delivered per thread, B's
    event came first and the alert stayed raised for ever.
    """
    good = (pdir / "tenant.acme.bin").read_bytes()
    agent = PolicyAgent(pdir, reload=False).start()
    delivered: list[str] = []
    in_failed = threading.Event()
    b_committed = threading.Event()

    def slow(event: ReloadEvent) -> None:
        if event.kind == "failed":
            in_failed.set()
            b_committed.wait(DEADLINE)  # B commits while A is still in here
        delivered.append(event.kind)

    class CommitSeen(logging.Handler):
        def emit(self, record):
            if "recovered" in record.getMessage():
                b_committed.set()

    handler = CommitSeen(logging.INFO)
    log = logging.getLogger("polc")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    agent.subscribe(slow)
    try:
        drop(pdir / "tenant.acme.bin", corrupt(good))
        a = threading.Thread(target=agent.reload_now)
        a.start()
        assert in_failed.wait(DEADLINE)
        drop(pdir / "tenant.acme.bin", good)
        agent.reload_now()  # thread B: returns once its events are delivered
        assert b_committed.is_set()
        assert delivered == ["failed", "recovered"]
        a.join(DEADLINE)
        assert not a.is_alive()
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        b_committed.set()
        agent.stop()


def test_a_subscriber_that_reloads_gets_its_events_after_its_own(pdir):
    good = (pdir / "tenant.acme.bin").read_bytes()
    agent = PolicyAgent(pdir, reload=False).start()
    seen: list[str] = []

    def fix_on_failure(event: ReloadEvent) -> None:
        seen.append(event.kind)
        if event.kind == "failed":
            drop(pdir / "tenant.acme.bin", good)
            agent.reload_now()  # re-entrant: must not deadlock
            seen.append("returned")

    agent.subscribe(fix_on_failure)
    drop(pdir / "tenant.acme.bin", corrupt(good))
    agent.reload_now()
    assert seen == ["failed", "returned", "recovered"]


# -- the sidecar: /v1/status and /metrics --------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metrics(port: int) -> dict[str, float]:
    status, body = get(port, "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def views(port: int) -> tuple[str | None, float]:
    status, body = get(port, "/v1/status")
    assert status == 200
    return json.loads(body)["modules"]["tenant.acme"]["last_error"], metrics(port)["polc_module_errors"]


def test_sidecar_status_and_metrics_agree_through_recovery(pdir, tmp_path):
    good = (pdir / "tenant.acme.bin").read_bytes()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLC_")}
    err = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115 - the subprocess writes it until the test ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "polc", "run", str(pdir), "--listen", f"127.0.0.1:{port}", "--reload-interval", "0.05"],
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=env,
    )

    def up():
        if proc.poll() is not None:
            pytest.fail(f"polc run exited {proc.returncode}: {(tmp_path / 'stderr.txt').read_text()}")
        try:
            return get(port, "/healthz")[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=20.0, interval=0.05)
        assert views(port) == (None, 0)
        drop(pdir / "tenant.acme.bin", corrupt(good))
        wait_for(lambda: views(port)[0] is not None, timeout=DEADLINE)
        error, gauge = views(port)
        assert error and gauge == 1
        drop(pdir / "tenant.acme.bin", good)
        wait_for(lambda: views(port)[0] is None, timeout=DEADLINE)
        assert views(port) == (None, 0)
        text = (tmp_path / "stderr.txt").read_text()
        assert "tenant.acme recovered" in text
    finally:
        proc.kill()
        proc.wait(timeout=10)
        err.close()


def test_status_is_recorded_before_the_snapshot_is_published(pdir):
    """A reader who sees the new decision sees its status too, never the old error.

    At the moment the poller hands a snapshot to the agent, the status it will
    answer with must already describe that snapshot: the restored module has no
    error any more. (Under load a test once saw check() decide by the restored
    file while status() still held the truncation error.)
    """
    agent = PolicyAgent(pdir, reload_interval=None).start()
    try:
        poller = agent._poller
        seen: list[object] = []
        publish = poller._on_publish

        def spy(snapshot):
            module = snapshot.modules.get("tenant.acme")
            seen.append((module.revision if module else None, poller.status_modules["tenant.acme"]["last_error"],
                         poller.status_modules["tenant.acme"]["revision"]))
            publish(snapshot)

        poller._on_publish = spy
        (pdir / "tenant.acme.bin").write_bytes(b"")
        agent.reload_now()
        assert agent.status()["modules"]["tenant.acme"]["last_error"]
        write_artifact(pdir, "tenant.acme", ACME_V2)
        agent.reload_now()
        assert seen, "the restored module was never published"
        revision, error, status_revision = seen[-1]
        assert error is None
        assert status_revision == revision
        assert agent.check("tenant.acme", "network.outbound", "api.partner.com", 443)
    finally:
        agent.stop()
