"""The origins the fleet benchmark pulls from, each in a process of its own (its CPU is read
from /proc): Python's ``http.server`` with ETags (the baseline), nginx (when installed) and
SeaweedFS (from tests/support/seaweed.py).

Run as a script, this module *is* the ``http.server`` origin::

    python benchmarks/fleet_origins.py ROOT PORT

It serves the files under ROOT with an ETag of the file's mtime (ns) and size
and answers ``If-None-Match`` with 304, on a threading server with HTTP/1.1
keep-alive, one thread per connection: what a Python service would do.
"""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """``pid`` and its direct children (nginx's master and workers)."""
    out = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def wait_answering(port: int, path: str, proc: subprocess.Popen[bytes], what: str) -> None:
    end = time.monotonic() + START_DEADLINE
    last: object = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status < 500:
                return
            last = status
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer within {START_DEADLINE}s: {last!r}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop the process group we started (each server runs in a session of its own)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(15)


class PythonOrigin:
    """This file run as a script: ``http.server`` with ETags."""

    name = "http.server"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, __file__, str(root), str(self.port)],
                                     stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        wait_answering(self.port, "/", self.proc, self.name)

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def close(self) -> None:
        stop(self.proc)


NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    types {{ application/json json; application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port};
        root {www};
        etag on;
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


class NginxOrigin:
    """nginx (Debian's nginx-light) serving the same directory: one worker, access log off."""

    name = "nginx"

    def __init__(self, root: Path, www: Path, binary: str) -> None:
        self.port = free_port()
        conf = root / "nginx.conf"
        user = "user root root;" if os.geteuid() == 0 else ""  # the worker reads the test's private tree
        conf.write_text(NGINX_CONF.format(user=user, root=root, port=self.port, www=www))
        with open(root / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(root)], stdin=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)  # fmt: skip
        wait_answering(self.port, "/", self.proc, self.name)

    def pids(self) -> list[int]:
        return children(self.proc.pid)

    def close(self) -> None:
        stop(self.proc, signal.SIGQUIT)


CACHE_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    proxy_cache_path {root}/cache levels=1:2 keys_zone=polc:1m max_size=256m inactive=1h use_temp_path=off;
    upstream store {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://store;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache polc;
            proxy_cache_key $uri;
            proxy_cache_lock on;
            proxy_cache_revalidate on;
            proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;
            # the manifest: revalidated with the store at most once a second (the store's
            # "Cache-Control: no-cache" is for caches that would keep it longer)
            proxy_ignore_headers Cache-Control Expires;
            proxy_cache_valid 200 1s;
        }}
    }}
}}
"""


class NginxCache:
    """nginx as a caching tier in front of an S3 endpoint (docs/fleet-operations.md)."""

    name = "nginx-cache"

    def __init__(self, root: Path, binary: str, upstream: int, probe: str) -> None:
        self.port = free_port()
        for d in ("tmp-body", "tmp-proxy", "tmp-fastcgi", "tmp-uwsgi", "tmp-scgi", "cache"):
            (root / d).mkdir(exist_ok=True)
        conf = root / "nginx.conf"
        user = "user root root;" if os.geteuid() == 0 else ""
        conf.write_text(CACHE_CONF.format(user=user, root=root, port=self.port, upstream=upstream))
        with open(root / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(root)], stdin=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)  # fmt: skip
        wait_answering(self.port, probe, self.proc, self.name)

    def pids(self) -> list[int]:
        return children(self.proc.pid)

    def close(self) -> None:
        stop(self.proc, signal.SIGQUIT)


# --------------------------------------------------------------------------- the script: http.server with ETags


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = Path(".")

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        rel = self.path.split("?", 1)[0].lstrip("/")
        path = (self.root / rel).resolve()
        if self.root not in path.parents or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        st = path.stat()
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main(argv: list[str]) -> None:
    root, port = Path(argv[1]).resolve(), int(argv[2])
    _Handler.root = root
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    server.request_queue_size = 1024
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
