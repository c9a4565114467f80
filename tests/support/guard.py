"""Helpers of the guard's tests (tests/guard/): loopback HTTP servers that count the connections they
accept, compiling the test tree's policies with the real compiler, the environment of a child."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

from support import REPO

TREE = REPO / "tests" / "guard" / "tree"
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


def compile_policies(src: Path, out: Path) -> None:
    r = subprocess.run([*POLC, "compile", str(src), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child under test: no guard configuration inherited, a secret to protect."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("POLC_GUARD_CONFIG", None)
    env["POLC_TEST_SECRET"] = "hunter2"
    env.update(extra)
    return env
