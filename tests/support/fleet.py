"""Helpers of the fleet tests (tests/fleet/): keys and a trust configuration, signed artifacts, a publishing
site (an artifact directory and the directory it publishes to), and a real HTTP origin.

The origin is Python's ``http.server`` (threaded, HTTP/1.1 keep-alive, on its own port)
serving the published directory with strong ETags and ``If-None-Match``; it counts every
request and can be told to misbehave: answer a status (503, 403), drop the connection,
cut a body short, or answer 304 without an ETag.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from polc.runtime.fleet.origin import file_url, open_store
from polc.runtime.fleet.publish import PublishResult, publish
from polc.runtime.signing import SigningKey, TrustConfig, sign_artifact

from support.agent import artifact_bytes

PUBLISHER = SigningKey.from_seed(b"\x51" * 32, "publisher")  # manifest = true, no modules
PLATFORM = SigningKey.from_seed(b"\x11" * 32, "platform")  # _global, tenant.*
ACME = SigningKey.from_seed(b"\x21" * 32, "acme-ci")  # tenant.acme only
STRANGER = SigningKey.from_seed(b"\x31" * 32, "stranger")  # not trusted at all


def make_trust() -> TrustConfig:
    return TrustConfig(
        [
            TrustConfig.key(PUBLISHER, [], manifest=True),
            TrustConfig.key(PLATFORM, ["_global", "tenant.*"]),
            TrustConfig.key(ACME, ["tenant.acme"]),
        ]
    )


TRUST_TOML = """\
[[key]]
name = "publisher"
public_key = "{publisher}"
manifest = true

[[key]]
name = "platform"
public_key = "{platform}"
modules = ["_global", "tenant.*"]

[[key]]
name = "acme-ci"
public_key = "{acme}"
modules = ["tenant.acme"]
"""


def write_trust_file(path: Path) -> Path:
    path.write_text(
        TRUST_TOML.format(
            publisher=PUBLISHER.public_key_b64, platform=PLATFORM.public_key_b64, acme=ACME.public_key_b64
        )
    )
    return path


def art(module: str, host: str, key: SigningKey | None = PLATFORM, *, extra: int = 0) -> bytes:
    """A signed artifact of ``module`` entitling network.outbound(host, 443) (and ``extra`` filler rules)."""
    rules = [("entitle", "network.outbound", [host, 443])]
    rules += [("entitle", "network.outbound", [f"filler{i}.example", 443]) for i in range(extra)]
    data = artifact_bytes(module, rules)
    return sign_artifact(data, key) if key is not None else data


@dataclass
class Site:
    """An artifact directory and the directory it is published into (served by the origin)."""

    root: Path
    src: Path = field(init=False)
    www: Path = field(init=False)

    def __post_init__(self) -> None:
        self.src = self.root / "artifacts"
        self.www = self.root / "www"
        self.src.mkdir(parents=True)
        self.www.mkdir()

    @property
    def url(self) -> str:
        return file_url(self.www)

    def publish(self, artifacts: dict[str, bytes], *, signer: SigningKey = PUBLISHER, **kw) -> PublishResult:
        for old in self.src.glob("*.bin"):
            old.unlink()
        for module, data in artifacts.items():
            (self.src / f"{module}.bin").write_bytes(data)
        return publish(self.src, open_store(self.url), signer=signer, **kw)

    def snapshot(self) -> dict[str, bytes]:
        """Every published file's bytes (to replay them later)."""
        return {str(p.relative_to(self.www)): p.read_bytes() for p in self.www.rglob("*") if p.is_file()}

    def restore(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            (self.www / name).parent.mkdir(parents=True, exist_ok=True)
            (self.www / name).write_bytes(data)


# --------------------------------------------------------------------------- the HTTP origin


_OPEN: list = []  # pullers of the running test, closed by the fixture in tests/fleet/conftest.py


def closing(puller):
    """Register a puller to be closed after the test (its origin's kept-alive connection)."""
    _OPEN.append(puller)
    return puller


def close_all() -> None:
    while _OPEN:
        _OPEN.pop().close()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a dropped connection is the point
        pass


@dataclass
class Request:
    path: str
    if_none_match: str | None
    status: int | None = None  # what was answered (None: dropped)


class OriginServer:
    """A threaded ``http.server`` over a directory, with ETags, counts and injectable faults."""

    def __init__(self, root: Path, prefix: str = "/policies") -> None:
        self.root = root
        self.prefix = prefix
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        # path suffix ("manifest.json", "objects/", "" for all) -> fault: an int status,
        # "drop", "truncate", "304-no-etag"
        self.faults: dict[str, object] = {}
        self.connections: set[socket.socket] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server.connections.add(self.connection)

            def finish(self) -> None:
                with server.lock:
                    server.connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                req = Request(self.path, self.headers.get("If-None-Match"))
                with server.lock:
                    server.requests.append(req)
                    fault = server.fault_for(self.path)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(fault, int):
                    body = b"injected failure\n"
                    req.status = fault
                    self.send_response(fault)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if not self.path.startswith(server.prefix + "/"):
                    return self._status(req, 404)
                rel = self.path[len(server.prefix) + 1 :]
                path = (server.root / rel).resolve()
                if server.root.resolve() not in path.parents or not path.is_file():
                    return self._status(req, 404)
                data = path.read_bytes()
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                if req.if_none_match == etag:
                    req.status = 304
                    self.send_response(304)
                    if fault != "304-no-etag":
                        self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                req.status = 200
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncate":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            def _status(self, req: Request, code: int) -> None:
                req.status = code
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name="test-origin", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def fault_for(self, path: str) -> object:
        rel = path[len(self.prefix) + 1 :] if path.startswith(self.prefix + "/") else path
        for suffix, fault in self.faults.items():
            if rel.startswith(suffix):
                return fault
        return None

    def take(self) -> list[Request]:
        """The requests so far, and forget them."""
        with self.lock:
            out, self.requests = self.requests, []
        return out

    def stop(self) -> None:
        """Down for real: no new connections, and the kept-alive ones closed."""
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
