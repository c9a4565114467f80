"""POLC_* environment variables: set means configured, and configuration that
cannot be understood is an error naming the variable, never the default.

The trap: a template that expands to nothing (``POLC_TRUST_FILE=${TRUST}``)
leaves a variable set but empty. Read as "unset", an empty POLC_TRUST_FILE
turned signature checking off and unsigned artifacts loaded. Each variable is
tried in a PolicyAgent in-process and through a real ``polc run`` subprocess,
which must exit 2 before it serves anything.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polc.runtime import PolicyAgent

from support.agent import write_artifact

VARS = (
    "POLC_POLICY_DIR",
    "POLC_RELOAD",
    "POLC_RELOAD_INTERVAL",
    "POLC_TRUST_FILE",
    "POLC_LISTEN",
    "POLC_INOTIFY",
    "POLC_SWEEP_INTERVAL",
)
BLANKS = ["", " ", "\t", "\n", "  \r\n"]
EXIT_DEADLINE = 30.0  # a polc run that does not exit by then has started serving
START_DEADLINE = 20.0


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    """A directory of unsigned artifacts: any trust configuration refuses them all."""
    d = tmp_path / "policies"
    d.mkdir()
    write_artifact(d, "tenant.acme", [("entitle", "network.outbound", ("*.acme.com", 443))])
    write_artifact(d, "_global", [])
    return d


def allowed(agent: PolicyAgent) -> bool:
    return bool(agent.check("tenant.acme", "network.outbound", "api.acme.com", 443))


# -- PolicyAgent, in-process ------------------------------------------------------------


@pytest.mark.parametrize("blank", BLANKS)
def test_blank_trust_file_is_an_error_not_no_trust(pdir, monkeypatch, blank):
    monkeypatch.setenv("POLC_TRUST_FILE", blank)
    with pytest.raises(ValueError, match=r"POLC_TRUST_FILE=.*set but empty"):
        PolicyAgent(pdir, reload=False)


def test_trust_file_with_surrounding_whitespace_is_an_error(pdir, tmp_path, monkeypatch):
    tf = tmp_path / "trust.toml"
    tf.write_text("")  # never read: the name is refused first
    monkeypatch.setenv("POLC_TRUST_FILE", f"{tf}\n")
    with pytest.raises(ValueError, match="POLC_TRUST_FILE=.*leading or trailing whitespace"):
        PolicyAgent(pdir, reload=False)


def test_unset_trust_file_means_no_trust(pdir):
    with PolicyAgent(pdir, reload=False) as agent:
        assert agent.trust is None and allowed(agent)


@pytest.mark.parametrize("blank", BLANKS)
def test_blank_policy_dir_is_an_error(monkeypatch, blank):
    monkeypatch.setenv("POLC_POLICY_DIR", blank)
    with pytest.raises(ValueError, match=r"POLC_POLICY_DIR=.*set but empty"):
        PolicyAgent()


def test_policy_dir_with_surrounding_whitespace_is_an_error(pdir, monkeypatch):
    monkeypatch.setenv("POLC_POLICY_DIR", f" {pdir}")
    with pytest.raises(ValueError, match="POLC_POLICY_DIR=.*leading or trailing whitespace"):
        PolicyAgent()


@pytest.mark.parametrize("value", BLANKS + ["maybe", "2", "enabled", "truee"])
def test_bad_reload_flag_is_an_error(pdir, monkeypatch, value):
    monkeypatch.setenv("POLC_RELOAD", value)
    with pytest.raises(ValueError, match=r"POLC_RELOAD="):
        PolicyAgent(pdir)


@pytest.mark.parametrize(
    "value", BLANKS + ["nan", "NaN", "inf", "-inf", "infinity", "1e400", "-1", "-0.5", "1e12", "soon", "5s", "0x10"]
)
def test_bad_reload_interval_is_an_error(pdir, monkeypatch, value):
    monkeypatch.setenv("POLC_RELOAD_INTERVAL", value)
    with pytest.raises(ValueError, match=r"POLC_RELOAD_INTERVAL="):
        PolicyAgent(pdir)


def test_good_values_still_parse(pdir, monkeypatch):
    monkeypatch.setenv("POLC_POLICY_DIR", str(pdir))
    monkeypatch.setenv("POLC_RELOAD", " Off\n")
    monkeypatch.setenv("POLC_RELOAD_INTERVAL", " 0.25 ")
    a = PolicyAgent()
    assert (a.policy_dir, a.reload, a.reload_interval) == (str(pdir), False, 0.25)


def test_an_interval_no_thread_can_wait_for_is_refused(pdir):
    # Event.wait(1e12) raises OverflowError: the poller thread would die on
    # its first wait and the agent would never reload again.
    with pytest.raises(ValueError, match="reload_interval=.*at most"):
        PolicyAgent(pdir, reload_interval=1e12)


@pytest.mark.parametrize("value", ["", "  "])
def test_blank_arguments_are_errors(pdir, value):
    with pytest.raises(ValueError, match="trust=.*empty path"):
        PolicyAgent(pdir, trust=value)
    with pytest.raises(ValueError, match="policy_dir=.*empty path"):
        PolicyAgent(value)


@pytest.mark.parametrize("value", [False, 0, object()])
def test_a_trust_argument_that_is_not_trust_is_an_error(pdir, value):
    with pytest.raises(TypeError, match="trust="):
        PolicyAgent(pdir, trust=value)


def test_arguments_win_and_leave_the_variable_unread(pdir, monkeypatch):
    # A blank variable is an error only where it is consulted.
    monkeypatch.setenv("POLC_RELOAD", "")
    monkeypatch.setenv("POLC_RELOAD_INTERVAL", "")
    monkeypatch.setenv("POLC_POLICY_DIR", "")
    a = PolicyAgent(pdir, reload=True, reload_interval=1)
    assert (a.reload, a.reload_interval) == (True, 1.0)


# -- polc run, a real subprocess ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def polc_run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("POLC_")}
    base.update(env)
    try:
        return subprocess.run(
            [sys.executable, "-m", "polc", "run", *args],
            capture_output=True,
            text=True,
            env=base,
            timeout=EXIT_DEADLINE,
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed it
        pytest.fail(f"polc run did not exit within {EXIT_DEADLINE}s: it started serving\n{exc.stderr!r}")


CASES = [
    ("POLC_TRUST_FILE", ""),
    ("POLC_TRUST_FILE", " "),
    ("POLC_POLICY_DIR", ""),
    ("POLC_POLICY_DIR", "  "),
    ("POLC_RELOAD", ""),
    ("POLC_RELOAD", "maybe"),
    ("POLC_RELOAD_INTERVAL", ""),
    ("POLC_RELOAD_INTERVAL", "nan"),
    ("POLC_RELOAD_INTERVAL", "inf"),
    ("POLC_RELOAD_INTERVAL", "-1"),
    ("POLC_LISTEN", ""),
    ("POLC_LISTEN", " "),
    ("POLC_LISTEN", "localhost:http"),
    ("POLC_INOTIFY", ""),
    ("POLC_INOTIFY", "maybe"),
    ("POLC_SWEEP_INTERVAL", " "),
    ("POLC_SWEEP_INTERVAL", "0"),
    ("POLC_SWEEP_INTERVAL", "nan"),
]


@pytest.mark.parametrize("name, value", CASES)
def test_polc_run_exits_2_before_serving(pdir, name, value):
    port = free_port()
    args = [] if name == "POLC_POLICY_DIR" else [str(pdir)]
    if name != "POLC_LISTEN":
        args += ["--listen", f"127.0.0.1:{port}"]
    proc = polc_run(args, {name: value})
    assert proc.returncode == 2, proc.stderr
    assert f"{name}={value!r}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "listening on" not in proc.stderr  # it never served
    if name != "POLC_LISTEN":
        with socket.socket() as s:  # and never bound its port
            s.bind(("127.0.0.1", port))


def test_polc_run_reads_listen_and_policy_dir_from_the_environment(pdir, tmp_path):
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("POLC_")}
    base.update({"POLC_POLICY_DIR": str(pdir), "POLC_LISTEN": f"127.0.0.1:{port}", "POLC_RELOAD": "off"})
    err = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115 - the subprocess writes it until the test ends
    proc = subprocess.Popen([sys.executable, "-m", "polc", "run"], stdout=subprocess.DEVNULL, stderr=err, env=base)
    try:
        end = time.monotonic() + START_DEADLINE
        status = None
        while time.monotonic() < end and proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        assert status == 200, (tmp_path / "stderr.txt").read_text()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        err.close()
