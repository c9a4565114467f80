"""A forked child reloads: os.fork() children and gunicorn --preload workers.

A child inherits the parent's agent but none of its threads. Each test forks
for real; the parent changes an artifact after the fork and the child must
enforce it within a deadline, reporting back through a pipe. The gunicorn
test runs a real pre-fork server whose app creates its agent at import.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from polc.runtime import PolicyAgent
from polc.runtime.reload import fork as fork_mod
from polc.runtime.reload import switch as switch_mod

from support.agent import wait_for, write_artifact

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python 3.12+ warns that forking a process with threads may deadlock;
    # making that safe for the agent's own locks is what is tested here.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

INTERVAL = 0.05
CHILD_DEADLINE = 15.0  # the child gives up after this
PARENT_DEADLINE = 40.0  # the parent stops waiting for the child after this
V1 = [("entitle", "network.outbound", ("*.acme.com", 443))]
V2 = [("entitle", "network.outbound", ("*.acme.com", 443)), ("entitle", "network.outbound", ("api.partner.com", 443))]
PARTNER = ("tenant.acme", "network.outbound", "api.partner.com", 443)


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    write_artifact(d, "tenant.acme", V1)
    write_artifact(d, "_global", [])
    return d


def fork_child(body) -> tuple[int, int]:
    """Fork; the child runs ``body(write)`` and exits, never returning into pytest.

    ``write(dict)`` sends one JSON line to the parent. Returns (pid, read fd).
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(r)

            def write(msg: dict) -> None:
                os.write(w, (json.dumps(msg) + "\n").encode())

            body(write)
        except BaseException as exc:  # report anything, then leave without running pytest's teardown
            with contextlib.suppress(BaseException):
                os.write(w, (json.dumps({"error": repr(exc)}) + "\n").encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def read_messages(pid: int, r: int, deadline: float = PARENT_DEADLINE) -> list[dict]:
    """Everything the child wrote until it exited (killed past ``deadline``)."""
    end = time.monotonic() + deadline
    buf = b""
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"child {pid} still running after {deadline}s; it said: {buf!r}")
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                buf += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return [json.loads(line) for line in buf.decode().splitlines()]


def until(predicate, deadline: float = CHILD_DEADLINE) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def reloader_alive() -> bool:
    return any(t.name == "polc-reloader" and t.is_alive() for t in threading.enumerate())


def test_forked_child_enforces_an_artifact_written_after_the_fork(pdir):
    agent = PolicyAgent(pdir, reload_interval=INTERVAL).start()
    events: list[str] = []
    agent.subscribe(lambda e: events.append(f"{e.kind} {e.module}"))
    go_r, go_w = os.pipe()  # the parent says when the new artifact is in place
    try:
        assert not agent.check(*PARTNER)

        def child(write):
            os.close(go_w)
            write({"poller": reloader_alive(), "before": bool(agent.check(*PARTNER))})
            select.select([go_r], [], [], CHILD_DEADLINE)
            ok = until(lambda: bool(agent.check(*PARTNER)))
            # the child's own poller did it, and the child's subscribers heard it
            # (events are delivered after the snapshot they describe is published)
            until(lambda: "reloaded tenant.acme" in events)
            thread = agent._thread
            write({"enforced": ok, "thread": thread.name if thread else None, "events": list(events)})

        pid, r = fork_child(child)
        os.close(go_r)
        write_artifact(pdir, "tenant.acme", V2)
        os.write(go_w, b"x")
        wait_for(lambda: agent.check(*PARTNER), timeout=CHILD_DEADLINE)  # the parent too
        first, second = read_messages(pid, r)
        assert first == {"poller": True, "before": False}, first
        assert second["enforced"] is True, second
        assert second["thread"] == "polc-reloader"
        assert "reloaded tenant.acme" in second["events"]
    finally:
        os.close(go_w)
        agent.stop()


def test_a_stopped_agent_stays_stopped_in_the_child(pdir):
    agent = PolicyAgent(pdir, reload_interval=INTERVAL).start()
    agent.stop()
    off = PolicyAgent(pdir, reload=False).start()

    def child(write):
        write({"threads": [t.name for t in threading.enumerate() if t.name == "polc-reloader"],
               "agent": agent._thread is None, "off": off._thread is None})

    [msg] = read_messages(*fork_child(child))
    assert msg == {"threads": [], "agent": True, "off": True}


def test_fork_during_a_step_on_another_thread(pdir, monkeypatch):
    """A step stuck on another thread at the fork: the child must neither
    deadlock on the step lock nor keep the lowered switch interval."""
    monkeypatch.setattr(fork_mod, "FORK_STEP_WAIT_S", 0.2)
    if switch_mod.POLL_SWITCH_INTERVAL is None:
        pytest.skip("switch interval not lowered in this configuration")
    original_interval = sys.getswitchinterval()
    agent = PolicyAgent(pdir, reload=False).start()
    parent = os.getpid()
    in_step = threading.Event()
    release = threading.Event()
    real_step = agent._poller.run_step

    def stuck_step(initial):
        if os.getpid() == parent and not release.is_set():
            in_step.set()
            release.wait(PARENT_DEADLINE)  # a hung filesystem, say
        return real_step(initial)

    agent._poller.run_step = stuck_step  # type: ignore[method-assign]
    t = threading.Thread(target=agent.reload_now)
    t.start()
    try:
        assert in_step.wait(10)
        assert sys.getswitchinterval() < original_interval  # lowered by the stuck step

        def child(write):
            write({"interval": sys.getswitchinterval()})
            result = {}
            done = threading.Event()

            def reload():
                result["changed"] = agent.reload_now().changed
                done.set()

            threading.Thread(target=reload, daemon=True).start()
            write({"reloaded": done.wait(CHILD_DEADLINE), "changed": result.get("changed"),
                   "enforced": bool(agent.check(*PARTNER)), "status": agent.status()["modules"]["tenant.acme"]})

        write_artifact(pdir, "tenant.acme", V2)
        pid, r = fork_child(child)
        first, second = read_messages(pid, r)
        assert first["interval"] == original_interval
        assert second["reloaded"] is True, second
        assert second["enforced"] is True and second["changed"] == ["tenant.acme"]
        assert second["status"]["last_error"] is None and second["status"]["revision"]
    finally:
        release.set()
        t.join(10)
        del agent._poller.run_step
    assert agent.check(*PARTNER)  # the parent's step went on once released
    assert sys.getswitchinterval() == original_interval


def test_fork_waits_for_a_step_to_finish(pdir):
    """A step running at the fork is waited for, so the child starts from whole state."""
    agent = PolicyAgent(pdir, reload=False).start()
    parent = os.getpid()
    in_step = threading.Event()
    release = threading.Event()
    real_step = agent._poller.run_step

    def slow_step(initial):
        if os.getpid() == parent and not release.is_set():
            in_step.set()
            release.wait(PARENT_DEADLINE)
        return real_step(initial)

    agent._poller.run_step = slow_step  # type: ignore[method-assign]
    write_artifact(pdir, "tenant.acme", V2)
    t = threading.Thread(target=agent.reload_now)
    t.start()
    try:
        assert in_step.wait(10)
        # fork() blocks in its before-handler until the step ends: let it end soon.
        threading.Timer(0.3, release.set).start()

        def child(write):
            write({"enforced": bool(agent.check(*PARTNER)),
                   "revision": agent.status()["modules"]["tenant.acme"]["revision"],
                   "unchanged": agent.reload_now().changed == []})

        pid, r = fork_child(child)
        [msg] = read_messages(pid, r)
        assert release.is_set()  # the fork happened after the step
        assert msg["enforced"] is True and msg["unchanged"] is True, msg
    finally:
        release.set()
        t.join(10)
        del agent._poller.run_step


# -- gunicorn --preload --------------------------------------------------------------

APP = '''\
import json
import os

from polc.runtime import PolicyAgent

AGENT = PolicyAgent(os.environ["APP_POLICY_DIR"], reload_interval=0.05).start()


def app(environ, start_response):
    d = AGENT.check("tenant.acme", "network.outbound", "api.partner.com", 443)
    body = json.dumps({"pid": os.getpid(), "allowed": bool(d), "revision": d.revision}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(port: int) -> dict | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            return json.loads(resp.read()) if resp.status == 200 else None
        finally:
            conn.close()
    except OSError:
        return None


def test_gunicorn_preload_workers_reload(pdir, tmp_path):
    try:
        import gunicorn.config
    except ImportError:
        pytest.skip("gunicorn cannot be imported (pip install gunicorn, or the 'test' extra)")
    (tmp_path / "polc_fork_app.py").write_text(APP)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLC_")}
    env["APP_POLICY_DIR"] = str(pdir)
    cmd = [sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "-b", f"127.0.0.1:{port}",
           "--chdir", str(tmp_path), "--graceful-timeout", "5"]
    if hasattr(gunicorn.config, "ControlSocketDisable"):  # 25.1+: no socket in $HOME shared by runs
        cmd.append("--no-control-socket")
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - gunicorn writes it until the test ends
    proc = subprocess.Popen([*cmd, "polc_fork_app:app"], stdout=log, stderr=subprocess.STDOUT, env=env)

    def output() -> str:
        log.flush()
        return (tmp_path / "gunicorn.log").read_text(errors="replace")

    def workers_saying(allowed: bool, deadline: float) -> set[int]:
        """Request until two distinct worker pids answered ``allowed`` (or the deadline)."""
        pids: set[int] = set()
        end = time.monotonic() + deadline
        while time.monotonic() < end and len(pids) < 2:
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited {proc.returncode}:\n{output()}")
            answer = ask(port)
            if answer is None:
                time.sleep(0.05)
                continue
            if answer["allowed"] is allowed:
                pids.add(answer["pid"])
            else:
                pids.discard(answer["pid"])
        return pids

    try:
        before = workers_saying(False, 30.0)
        assert len(before) == 2 and proc.pid not in before, output()
        write_artifact(pdir, "tenant.acme", V2)
        after = workers_saying(True, 30.0)
        assert after == before, f"workers enforcing the new artifact: {after} of {before}\n{output()}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
