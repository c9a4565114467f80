"""`polc run` against hostile clients, over real sockets to a real `polc run` subprocess:
cross-site and rebinding requests, bearer tokens, clients that drip or never read,
more connections than allowed, and a missing `server` extra.

No timing assertions: every test waits on a condition with a generous deadline, and
the server's own counters (/metrics) say which limit closed a connection.
"""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.sidecar import (
    ACME_OK,
    until,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX sockets and signals")

CLOSE_DEADLINE = 30.0  # seconds a limit of 1 s gets to close a connection on a loaded machine
TOKEN = "0123456789abcdef0123456789abcdef"


def _rejected(s, reason: str) -> float:
    return s.metrics().get(f'polc_http_connections_rejected_total{{reason="{reason}"}}', 0)


def _connect(s) -> socket.socket:
    return socket.create_connection(("127.0.0.1", s.port), timeout=10)


def _read_until_closed(sock: socket.socket, deadline: float = CLOSE_DEADLINE) -> bytes:
    """Everything the server sends until it closes (EOF or reset); fails if it never does."""
    sock.settimeout(deadline)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data
    except TimeoutError:
        pytest.fail(f"connection still open after {deadline}s; received {data[:200]!r}")


def _drip(sock: socket.socket, byte: bytes, every: float = 0.2, deadline: float = CLOSE_DEADLINE) -> bytes:
    """Send ``byte`` every ``every`` seconds until the server answers or closes; return what it sent."""
    end = time.monotonic() + deadline
    sent = 0
    while time.monotonic() < end:
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            return _read_until_closed(sock)
        try:
            sock.sendall(byte)
        except (BrokenPipeError, ConnectionResetError):
            return _read_until_closed(sock)
        sent += 1
    pytest.fail(f"the server kept a dripping client for {deadline}s ({sent} bytes sent, one every {every}s)")


# --------------------------------------------------------------------------- browsers and rebinding


def test_a_cross_site_simple_post_does_not_reload(sidecar, policy_dir):
    # What a page on evil.example can make a browser on this host send, with no preflight.
    s = sidecar().start(policy_dir, "--no-reload")
    before = s.metrics()
    status, _, _ = s.request(
        "POST",
        "/policy/reload",
        raw=b"x=1",
        headers={"content-type": "text/plain", "origin": "http://evil.example"},
    )
    assert status == 403
    status, _, body = s.request("POST", "/policy/reload", raw=b"x=1", headers={"content-type": "text/plain"})
    assert status == 415 and b"application/json" in body
    status, _, _ = s.request("POST", "/v1/check", raw=json.dumps(ACME_OK).encode(), headers={"content-type": None})
    assert status == 415
    after = s.metrics()
    assert after['polc_reloads_total{status="ok"}'] == before['polc_reloads_total{status="ok"}']
    assert 'polc_http_requests_total{handler="reload",code="200"}' not in after
    # The documented way works.
    assert s.json("POST", "/policy/reload")[0] == 200


def test_a_rebinding_host_is_421(sidecar, policy_dir):
    s = sidecar().start(policy_dir, "--no-reload", "--allow-host", "sidecar.internal")
    status, _, body = s.request("GET", "/v1/status", headers={"host": "evil.example"})
    assert status == 421 and b"evil.example" in body
    assert s.request("GET", "/v1/status", headers={"host": f"localhost:{s.port}"})[0] == 200
    assert s.request("GET", "/v1/status", headers={"host": f"127.0.0.1:{s.port}"})[0] == 200
    assert s.request("GET", "/v1/status", headers={"host": "sidecar.internal"})[0] == 200


def test_allow_origin_lets_one_page_in(sidecar, policy_dir):
    s = sidecar().start(policy_dir, "--no-reload", "--allow-origin", "http://localhost:3000")
    status, headers, _ = s.request("POST", "/v1/check", ACME_OK, headers={"origin": "http://localhost:3000"})
    assert status == 200 and headers["access-control-allow-origin"] == "http://localhost:3000"
    assert s.request("POST", "/v1/check", ACME_OK, headers={"origin": "http://localhost:3001"})[0] == 403


@pytest.mark.parametrize("bad", [("--allow-origin", "null"), ("--allow-origin", "http://x/p"), ("--allow-host", "a b"), ("--header-timeout", "nan"), ("--body-timeout", "0")])
def test_bad_access_options_are_usage_errors(policy_dir, bad):
    proc = subprocess.run(
        [sys.executable, "-m", "polc", "run", str(policy_dir), "--listen", "127.0.0.1:0", *bad],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert bad[0] in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- bearer token


def _token_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def test_token_file_guards_every_endpoint_but_healthz(sidecar, policy_dir, tmp_path):
    path = _token_file(tmp_path, TOKEN + "\n")
    s = sidecar().start(policy_dir, "--no-reload", "--token-file", str(path))
    for method, path_, body in (("POST", "/v1/check", ACME_OK), ("POST", "/policy/reload", None), ("GET", "/v1/status", None), ("GET", "/metrics", None)):
        status, headers, _ = s.request(method, path_, body)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer"), path_
        status, _, _ = s.request(method, path_, body, headers={"authorization": "Bearer nope"})
        assert status == 401, path_
    assert s.request("GET", "/healthz")[0] == 200
    s.token = TOKEN
    assert s.check(ACME_OK)["allowed"] is True
    assert s.json("POST", "/policy/reload")[0] == 200
    # The start-up hint shows how to send it.
    s.wait_stderr(f'-H "authorization: Bearer $(cat {tmp_path / "token"})"')


def test_token_file_from_the_environment(sidecar, policy_dir, tmp_path):
    path = _token_file(tmp_path, TOKEN)
    s = sidecar().start(policy_dir, "--no-reload", env={"POLC_TOKEN_FILE": str(path)})
    assert s.request("GET", "/v1/status")[0] == 401
    s.token = TOKEN
    assert s.request("GET", "/v1/status")[0] == 200


@pytest.mark.parametrize(
    "how, message",
    [
        ("empty-file", "is empty"),
        ("blank-file", "is empty"),
        ("empty-env", "POLC_TOKEN_FILE is empty"),
        ("blank-env", "POLC_TOKEN_FILE is empty"),
        ("missing-file", "cannot read token file"),
        ("spaces", "visible ASCII"),
        ("empty-option", "--token-file is empty"),
    ],
)
def test_a_token_that_would_let_everyone_in_is_exit_2(policy_dir, tmp_path, how, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLC_")}
    args: list[str] = []
    if how in ("empty-file", "blank-file", "spaces"):
        text = {"empty-file": "", "blank-file": " \n\n", "spaces": "two words\n"}[how]
        args = ["--token-file", str(_token_file(tmp_path, text))]
    elif how in ("empty-env", "blank-env"):
        env["POLC_TOKEN_FILE"] = "" if how == "empty-env" else "  "
    elif how == "missing-file":
        args = ["--token-file", str(tmp_path / "nope")]
    else:
        args = ["--token-file", ""]
    proc = subprocess.run(
        [sys.executable, "-m", "polc", "run", str(policy_dir), "--listen", "127.0.0.1:0", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and "listening on" not in proc.stderr


# --------------------------------------------------------------------------- slow clients


def test_a_connection_that_drips_its_headers_is_closed(sidecar, policy_dir):
    s = sidecar().start(policy_dir, "--no-reload", "--header-timeout", "1")
    with _connect(s) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ")
        answer = _drip(sock, b"a")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert _rejected(s, "header_timeout") == 1
    assert s.check(ACME_OK)["allowed"] is True


def test_a_connection_that_sends_nothing_is_closed(sidecar, policy_dir):
    s = sidecar().start(policy_dir, "--no-reload", "--header-timeout", "1")
    with _connect(s) as sock:
        answer = _read_until_closed(sock)
    assert answer == b""  # closed without an answer: it asked nothing
    assert _rejected(s, "header_timeout") == 1


def test_a_body_that_drips_is_cut_off_with_408(sidecar, policy_dir):
    s = sidecar().start(policy_dir, "--no-reload", "--body-timeout", "1")
    with _connect(s) as sock:
        sock.sendall(
            b"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500\r\n\r\n{"
        )
        answer = _drip(sock, b" ")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"request body not received within 1s" in answer
    assert _rejected(s, "body_timeout") == 1
    assert s.check(ACME_OK)["allowed"] is True


def test_headers_larger_than_the_limit_are_431(sidecar, policy_dir):
    s = sidecar().start(policy_dir, "--no-reload")
    with _connect(s) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for _ in range(64):  # 64 x 4 KiB: past the 64 KiB limit, far from the 200 MB the parser took
                sock.sendall(b"X-Big: " + b"b" * 4096 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_until_closed(sock)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert _rejected(s, "headers_too_large") == 1
    # Big but legal headers still work.
    assert s.request("GET", "/healthz", headers={"x-fine": "f" * 8000})[0] == 200


def test_a_client_that_stops_reading_is_dropped(sidecar, policy_dir):
    s = sidecar().start(policy_dir, "--no-reload", "--body-timeout", "1")
    batch = json.dumps({"requests": [ACME_OK] * 1000}).encode()
    request = (
        b"POST /v1/check/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(batch)).encode() + b"\r\n\r\n" + batch
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.settimeout(CLOSE_DEADLINE)
    sock.connect(("127.0.0.1", s.port))
    errors: list[BaseException] = []

    def pipeline() -> None:  # about 40 answers of 190 kB each, none of them read
        try:
            for _ in range(40):
                sock.sendall(request)
        except OSError as exc:
            errors.append(exc)

    sender = threading.Thread(target=pipeline, daemon=True)
    sender.start()
    try:
        until(lambda: _rejected(s, "send_timeout") >= 1, CLOSE_DEADLINE, "the stalled connection dropped")
    finally:
        sock.close()
        sender.join(CLOSE_DEADLINE)
    assert s.check(ACME_OK)["allowed"] is True


# --------------------------------------------------------------------------- connection limit


def test_connections_beyond_the_limit_get_503_while_the_others_keep_working(sidecar, policy_dir):
    s = sidecar().start(policy_dir, "--no-reload", "--max-connections", "3", "--header-timeout", "120")
    # Only the connection asking is open (the health probes' are closed).
    until(lambda: s.metrics()["polc_http_connections"] == 1, 10, "earlier connections closed")
    held = [_connect(s) for _ in range(3)]  # connected, nothing sent yet: each holds a slot
    try:
        extra = _connect(s)  # accepted after the three (the backlog is first in, first out)
        with extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = _read_until_closed(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"too many connections" in answer and b"retry-after: 1" in answer

        # The three already open are served.
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for sock in held:
            sock.settimeout(10)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()

    # Once they are gone, new connections are served again.
    def served() -> bool:
        try:
            return s.request("GET", "/healthz", timeout=5)[0] == 200
        except OSError:
            return False

    until(served, 10, "a new connection served")
    assert _rejected(s, "connection_limit") >= 1


# --------------------------------------------------------------------------- without the server extra


@pytest.mark.parametrize("missing", ["uvicorn", "httptools"])
def test_without_the_server_extra_polc_run_says_what_to_install(policy_dir, tmp_path, missing):
    # A package of that name that cannot be imported, first on the path.
    stub = tmp_path / "stub" / missing
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{missing}'\", name={missing!r})\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLC_")}
    env["PYTHONPATH"] = str(tmp_path / "stub")
    proc = subprocess.run(
        [sys.executable, "-m", "polc", "run", str(policy_dir), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'polc[server]'" in proc.stderr and missing in proc.stderr
    assert "Traceback" not in proc.stderr


def test_blocked_import_of_uvicorn_is_reported_too(policy_dir):
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from polc.cli import cli\n"
        f"cli(['run', {str(policy_dir)!r}, '--listen', '127.0.0.1:0'], prog_name='polc')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'polc[server]'" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- mounted in another ASGI app


def test_mounted_under_a_prefix_in_a_host_app_served_by_uvicorn(policy_dir):
    uvicorn = pytest.importorskip("uvicorn")
    from polc import server
    from polc.runtime import PolicyAgent

    agent = PolicyAgent(str(policy_dir), reload=False).start()
    polc_app = server.DecisionApp(agent)

    async def host_app(scope, receive, send):  # a router of our own: /polc/... -> polc
        if scope["type"] == "http" and scope["path"].startswith("/polc/"):
            await polc_app(dict(scope, root_path=scope.get("root_path", "") + "/polc"), receive, send)
            return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
            await send({"type": "http.response.body", "body": b"host"})

    sock = server.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(host_app, lifespan="off", log_config=None, access_log=False)
    srv = uvicorn.Server(config)
    srv.install_signal_handlers = lambda: None  # older uvicorn
    srv.capture_signals = __import__("contextlib").nullcontext  # newer uvicorn: not the main thread anyway
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    import http.client

    def get(method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            headers = {"content-type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    try:
        until(lambda: srv.started, 10, "uvicorn started")
        status, body = get("POST", "/polc/v1/check", json.dumps(ACME_OK))
        assert status == 200 and json.loads(body)["allowed"] is True
        assert get("GET", "/polc/healthz")[0] == 200
        assert get("GET", "/polc/v1/status?module=tenant.acme")[0] == 200
        assert get("GET", "/elsewhere") == (200, b"host")
    finally:
        srv.should_exit = True
        thread.join(10)
        agent.stop()
