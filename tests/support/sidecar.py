"""The `polc run` end-to-end harness shared by tests/cli/test_run*.py: compiled artifacts, a
real `polc run` subprocess on a free loopback port, a real HTTP client (http.client).

Every wait has a deadline; every subprocess is killed in teardown.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

START_DEADLINE = 20.0  # seconds for a cold interpreter to load and listen (2 shared cores)

GLOBAL = """\
security module _global {
    deny module to process.exec("rm");
}
"""

ACME_V1 = """\
// tenant.acme, first revision
security module tenant.acme {
    entitle module to network.outbound("*.acme.com", 443);
    deny module to process.exec;
}
"""

ACME_V2 = """\
// tenant.acme, second revision: the partner API is allowed too
security module tenant.acme {
    entitle module to network.outbound("*.acme.com", 443);
    entitle module to network.outbound("api.partner.com", 443);
    deny module to process.exec;
}
"""

GLOBEX_AUDIT = """\
security module tenant.globex {
    mode audit;
    entitle module to network.outbound("*.globex.com", 443);
}
"""

ACME_OK = {"module": "tenant.acme", "capability": "network.outbound", "args": ["api.acme.com", 443]}
PARTNER = {"module": "tenant.acme", "capability": "network.outbound", "args": ["api.partner.com", 443]}


# --------------------------------------------------------------------------- artifacts


def _compile(src: Path, out: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "polc", "compile", str(src), "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """Compiled artifacts: {"_global", "acme_v1", "acme_v2", "globex"} -> .bin path."""
    base = tmp_path_factory.mktemp("artifacts")
    sets = {"v1": {"_global": GLOBAL, "tenant.acme": ACME_V1, "tenant.globex": GLOBEX_AUDIT}, "v2": {"tenant.acme": ACME_V2}}
    for name, files in sets.items():
        src = base / f"src-{name}"
        src.mkdir()
        for module, text in files.items():
            (src / f"{module}.pol").write_text(text)
        _compile(src, base / name)
    out = {
        "_global": base / "v1" / "_global.bin",
        "acme_v1": base / "v1" / "tenant.acme.bin",
        "globex": base / "v1" / "tenant.globex.bin",
        "acme_v2": base / "v2" / "tenant.acme.bin",
    }
    for path in out.values():
        assert path.is_file(), path
    assert out["acme_v1"].read_bytes() != out["acme_v2"].read_bytes()
    return out


@pytest.fixture
def policy_dir(tmp_path, artifacts) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    for key in ("_global", "acme_v1", "globex"):
        shutil.copyfile(artifacts[key], d / artifacts[key].name)
    return d


def drop(src: Path | bytes, dest: Path) -> None:
    """Drop an artifact the way a CI pipeline should: write aside, then rename over."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(src if isinstance(src, bytes) else src.read_bytes())
    os.replace(tmp, dest)


def corrupt(data: bytes) -> bytes:
    """Flip one payload byte: the header's SHA-256 no longer matches."""
    i = 56 + (len(data) - 56) // 2
    return data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :]


# --------------------------------------------------------------------------- the sidecar under test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Output:
    """What a subprocess writes to a pipe, read continuously by a thread.

    Tests wait on ``wait_for`` (a condition with a deadline) instead of reading a
    file at some moment: the process prints in its own time, and on a loaded
    machine "after /healthz answered" does not mean "after the start-up lines".
    """

    def __init__(self, pipe):
        self._buf = bytearray()
        self._eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(pipe,), name="sidecar-stderr", daemon=True)
        self._thread.start()

    def _pump(self, pipe) -> None:
        fd = pipe.fileno()
        try:
            while True:
                chunk = os.read(fd, 65536)
                with self._cond:
                    if not chunk:
                        break
                    self._buf += chunk
                    self._cond.notify_all()
        finally:
            pipe.close()
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return self._buf.decode(errors="replace")

    def wait_for(self, needle: str, deadline: float = 10.0) -> str:
        """Wait until ``needle`` was written (or the pipe closed); fail with what was written if not."""
        with self._cond:
            self._cond.wait_for(lambda: needle.encode() in self._buf or self._eof, timeout=deadline)
            text = self._buf.decode(errors="replace")
        if needle not in text:
            pytest.fail(f"{needle!r} not written within {deadline}s; stderr was:\n{text}")
        return text

    def wait_eof(self, deadline: float = 10.0) -> str:
        """Everything the process wrote, once it closed the pipe (it exited)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._eof, timeout=deadline):
                pytest.fail(f"stderr not closed within {deadline}s")
            return self._buf.decode(errors="replace")


class Sidecar:
    """One `polc run` subprocess on a free loopback port; stderr read by an ``Output`` thread."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.err: Output | None = None
        self.token: str | None = None  # sent as a bearer token when set

    def start(
        self,
        policy_dir: Path | None,
        *args: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        python_flags=(),
        entry=("-m", "polc"),
    ):
        self.port = free_port()
        cmd = [sys.executable, *python_flags, *entry, "run"]
        if policy_dir is not None:
            cmd.append(str(policy_dir))
        cmd += ["--listen", f"127.0.0.1:{self.port}", *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("POLC_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=full_env)
        self.err = Output(self.proc.stderr)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, deadline: float = START_DEADLINE) -> None:
        end = time.monotonic() + deadline
        last: Any = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"polc run exited with {self.proc.returncode}:\n{self.err.wait_eof()}")
            try:
                status, _, _ = self.request("GET", "/healthz", timeout=1)
                if status == 200:
                    return
                last = status
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        pytest.fail(f"/healthz not 200 within {deadline}s (last: {last!r}):\n{self.stderr()}")

    def stderr(self) -> str:
        """What the process has written so far (for messages; to test output, wait_stderr)."""
        return self.err.text()

    def wait_stderr(self, needle: str, deadline: float = 10.0) -> str:
        return self.err.wait_for(needle, deadline)

    def stderr_at_exit(self, deadline: float = 10.0) -> str:
        return self.err.wait_eof(deadline)

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, headers=None, timeout: float = 5):
        """One request on a new connection. A POST says Content-Type: application/json
        unless ``headers`` name one (pass ``{"content-type": None}`` to send none)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            hdrs = {k.lower(): v for k, v in (headers or {}).items()}
            if method == "POST":
                hdrs.setdefault("content-type", "application/json")
            if self.token is not None:
                hdrs.setdefault("authorization", f"Bearer {self.token}")
            hdrs = {k: v for k, v in hdrs.items() if v is not None}
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, dict(resp.getheaders()), payload
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, **kw) -> tuple[int, Any]:
        status, headers, payload = self.request(method, path, body, **kw)
        if path == "/metrics":
            return status, payload.decode()
        assert headers.get("content-type") == "application/json", headers
        return status, json.loads(payload)

    def check(self, req: dict) -> dict:
        status, body = self.json("POST", "/v1/check", req)
        assert status == 200, body
        return body

    def metrics(self) -> dict[str, float]:
        status, text = self.json("GET", "/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.err is not None:
            self.err.wait_eof()


@pytest.fixture
def sidecar(tmp_path):
    procs: list[Sidecar] = []

    def make() -> Sidecar:
        s = Sidecar(tmp_path)
        procs.append(s)
        return s

    yield make
    for s in procs:
        s.kill()


def until(predicate, deadline: float = 10.0, what: str = "condition"):
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"{what} not reached within {deadline}s")
        time.sleep(0.05)
