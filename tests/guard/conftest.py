"""Fixtures of the guard's tests: the test package tree in a scratch directory with compiled
policies, loopback servers (helpers in tests/support/guard.py)."""

from __future__ import annotations

import ctypes.util
import os
import shutil
import threading
from pathlib import Path

import pytest

from support.guard import TREE, CountingServer, compile_policies


@pytest.fixture(autouse=True, params=["C", "Python"])
def guard_hook(request, monkeypatch) -> str:
    """Every test of the guard runs with each hook (runtime/guard/accel.py): the C one, which the
    install builds, and the pure-Python one. The children inherit the choice from the environment."""
    monkeypatch.setenv("POLC_GUARD_ACCEL", "1" if request.param == "C" else "0")
    return request.param


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
