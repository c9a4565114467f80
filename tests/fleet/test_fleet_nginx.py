"""The same pull cycle against a real nginx (Debian's nginx-light), serving the directory publish writes.

nginx's ETag is the mtime in seconds and the size: a same-size rewrite within one second keeps it.
Digest-named objects are never rewritten, so that is harmless for them; for the manifest, publish
moves the new file's mtime a second past the old one's, and the test shows both halves. Skipped
(and said so) where nginx is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from polc.runtime.agent import PolicyAgent
from polc.runtime.fleet.origin import FileStore, HttpOrigin
from polc.runtime.fleet.puller import Puller

from support.agent import wait_for
from support.fleet import Site, art, closing
from support.sidecar import free_port

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
pytestmark = [pytest.mark.nginx, pytest.mark.skipif(NGINX is None, reason="nginx is not installed (nginx-light)")]

CONF = """\
{user}worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    log_format counted '$request_uri $status "$http_if_none_match"';
    access_log {d}/access.log counted;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /policies/ {{ alias {www}/; }}
    }}
}}
"""

V1 = {"_global": art("_global", "g.example"), "tenant.acme": art("tenant.acme", "a1.example")}
V2 = dict(V1, **{"tenant.acme": art("tenant.acme", "a2.example")})


class Nginx:
    def __init__(self, root: Path, www: Path) -> None:
        self.dir = root
        root.mkdir()
        self.port = free_port()
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the test's 0700 temp dirs
        (root / "nginx.conf").write_text(CONF.format(user=user, d=root, port=self.port, www=www))
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(root / "nginx.conf"), "-p", str(root), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_for(self._up, timeout=20)
        self.seen = 0

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {self.proc.stderr.read().decode()}")
        try:
            HttpOrigin(self.url).fetch("none")
        except Exception as exc:
            return "not found" in str(exc)
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/policies"

    def take(self) -> list[tuple[str, int, str]]:
        """The requests logged since the last call: (uri, status, If-None-Match)."""
        log = self.dir / "access.log"
        deadline = time.monotonic() + 5
        lines = log.read_text().splitlines() if log.exists() else []
        while time.monotonic() < deadline and len(lines) == self.seen:
            time.sleep(0.02)  # nginx writes the line after answering
            lines = log.read_text().splitlines()
        out = []
        for line in lines[self.seen :]:
            m = re.fullmatch(r'(\S+) (\d+) "(.*)"', line)
            assert m, line
            out.append((m[1], int(m[2]), m[3]))
        self.seen = len(lines)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def nginx(site: Site, tmp_path):
    server = Nginx(tmp_path / "nginx", site.www)
    yield server
    server.stop()


def test_publish_pull_enforce_through_nginx(site: Site, nginx: Nginx, trust, tmp_path):
    site.publish(V1, set_name="prod")
    agent = PolicyAgent(str(tmp_path / "mirror"), trust=trust, source=nginx.url, pull_interval=1.0, reload=False)
    try:
        agent.start()
        assert agent.check("tenant.acme", "network.outbound", "a1.example", 443).allowed
        wait_for(lambda: agent.status()["source"]["pulls"]["unchanged"] >= 1, timeout=10)
        idle = [r for r in nginx.take() if r[0].endswith("manifest.json")][-1]
        assert idle[1] == 304 and idle[2] not in ("", "-")  # a conditional GET answered 304
        site.publish(V2)
        wait_for(lambda: agent.check("tenant.acme", "network.outbound", "a2.example", 443).allowed, timeout=2.0)
    finally:
        agent.stop()


def test_only_changed_objects_and_one_304_per_idle_cycle(site: Site, nginx: Nginx, trust, tmp_path):
    site.publish(V1)
    puller = closing(Puller(nginx.url, str(tmp_path / "mirror"), trust=trust))
    assert puller.cycle().outcome == "switched"
    assert sum("/objects/" in r[0] for r in nginx.take()) == 2
    assert puller.cycle().outcome == "unchanged"
    (req,) = nginx.take()
    assert req[0] == "/policies/manifest.json" and req[1] == 304
    site.publish(V2)
    assert puller.cycle().fetched == ("tenant.acme",)
    reqs = nginx.take()
    assert [r[1] for r in reqs] == [200, 200] and sum("/objects/" in r[0] for r in reqs) == 1


def test_nginx_keeps_the_etag_of_a_same_size_rewrite_within_a_second_and_publish_avoids_it(site: Site, nginx: Nginx):
    origin = closing_origin(nginx.url)
    a = site.www / "a.json"
    # the hazard: other bytes of the same size, the mtime in the same second -> nginx's old ETag
    a.write_bytes(b'{"revision":1}')
    mtime = a.stat().st_mtime_ns
    first = origin.fetch("a.json").etag
    a.write_bytes(b'{"revision":2}')
    os.utime(a, ns=(mtime, mtime))  # as when the rewrite lands within the same second
    stale = origin.fetch("a.json", first)
    assert stale.status == 304 and stale.body is None  # bytes the client never saw, answered "not modified"
    # what publish does: a rewrite within the second gets an mtime a second past the old file's
    store = FileStore(site.url)
    store.put("b.json", b'{"revision":1}', "application/json")
    tag = origin.fetch("b.json").etag
    store.put("b.json", b'{"revision":2}', "application/json")
    got = origin.fetch("b.json", tag)
    assert got.status == 200 and got.body == b'{"revision":2}' and got.etag != tag
    origin.close()


def closing_origin(url: str) -> HttpOrigin:
    return closing(HttpOrigin(url))


def test_same_size_manifests_published_within_a_second_both_reach_the_agent(site: Site, nginx: Nginx, trust, tmp_path):
    puller = closing(Puller(nginx.url, str(tmp_path / "mirror"), trust=trust))
    site.publish(V1, revision=1)
    assert puller.cycle().revision == 1
    site.publish(V2, revision=2)  # the same sizes: one digit, same-length hosts
    assert (site.www / "manifest.json").stat().st_size == len(
        (tmp_path / "mirror" / ".polc-fleet" / "manifest.json").read_bytes()
    )
    result = puller.cycle()
    assert result.outcome == "switched" and result.revision == 2
