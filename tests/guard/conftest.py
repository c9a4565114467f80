"""Fixtures of the guard's tests: the test package tree in a scratch directory, compiled
policies, and loopback HTTP servers that count the connections they accept."""

from __future__ import annotations

import ctypes.util
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

TREE = Path(__file__).parent / "tree"
POLC = [sys.executable, "-m", "polc"]


class CountingServer(http.server.ThreadingHTTPServer):
    """An HTTP server that answers 'hello from PORT' and counts every connection it accepts."""

    daemon_threads = True

    def __init__(self, host: str) -> None:
        self.connections = 0
        self._count_lock = threading.Lock()
        super().__init__((host, 0), _Handler)

    def verify_request(self, request, client_address) -> bool:
        with self._count_lock:
            self.connections += 1
        return True


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server_factory():
    servers = []

    def make(host: str = "127.0.0.1") -> CountingServer:
        server = CountingServer(host)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def compile_policies(src: Path, out: Path) -> None:
    r = subprocess.run([*POLC, "compile", str(src), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/app (the service, its data, the base directory), tmp/site-packages, tmp/policies-src, tmp/policies."""
    shutil.copytree(TREE / "app", tmp_path / "app")
    shutil.copytree(TREE / "site-packages", tmp_path / "site-packages")
    shutil.copytree(TREE / "policies-src", tmp_path / "policies-src")
    app = tmp_path / "app"
    (app / "data" / "public").mkdir(parents=True)
    (app / "data" / "out").mkdir()
    (app / "data" / "allowed.txt").write_text("allowed data")
    (app / "data" / "public" / "note.txt").write_text("public note")
    (app / "secret.txt").write_text("the secret")
    os.symlink("../secret.txt", app / "data" / "link-to-secret")
    (tmp_path / "outside" / "data").mkdir(parents=True)
    (tmp_path / "outside" / "data" / "allowed.txt").write_text("outside, not allowed")
    compile_policies(tmp_path / "policies-src", tmp_path / "policies")
    return tmp_path


@pytest.fixture(scope="session")
def libm() -> str:
    name = ctypes.util.find_library("m")
    assert name, "no libm on this machine"
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"):
        if os.path.exists(os.path.join(d, name)):
            return os.path.realpath(os.path.join(d, name))
    return name


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("POLC_GUARD_CONFIG", None)
    env["POLC_TEST_SECRET"] = "hunter2"
    env.update(extra)
    return env
