"""Fleet distribution: 1,000 simulated agents pulling one manifest from one origin.

Each agent is an asyncio task in this one process with a keep-alive loopback
connection of its own: a random start offset within one interval, then a GET
of ``manifest.json`` with ``If-None-Match`` every 5 s with +-20 % jitter, at
most ``CONCURRENCY`` requests in flight at once (what a real agent does per
cycle when nothing changed; docs/fleet.md). Against each origin, in a process
of its own:

    http.server  Python's threading HTTP server with ETags (the baseline)
    nginx        Debian's nginx-light, one worker, when installed
    seaweedfs    SeaweedFS's S3 API, every request signed (SigV4) as an agent's is
    nginx-cache  nginx with proxy_cache in front of SeaweedFS (the caching tier of
                 docs/fleet-operations.md): what reaches the store behind it, too

Measured per origin, in a steady window after every agent has its first copy:
origin requests/s, the origin's CPU (utime + stime from /proc/PID/stat before
and after the window; % of one core, and per request), then a changed manifest
is published and the time until each agent has it: p50 / p99 propagation.

Opt-in (it takes about 75 s and loads both cores): ``POLC_BENCH_FLEET=1``::

    POLC_BENCH_FLEET=1 .venv/bin/python -m pytest benchmarks/test_fleet.py -q -s
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fleet_origins import NginxCache, NginxOrigin, PythonOrigin, cpu_seconds, nginx_binary

from common import record

pytestmark = pytest.mark.skipif(not os.environ.get("POLC_BENCH_FLEET"),
                                reason="opt-in: POLC_BENCH_FLEET=1 (about 75 s, 1,000 simulated agents)")  # fmt: skip

AGENTS = int(os.environ.get("POLC_BENCH_FLEET_AGENTS", "1000"))
INTERVAL = 5.0
JITTER = 0.2
CONCURRENCY = 200
WARMUP = INTERVAL + 0.5  # every agent has made its first (200) request (its start offset is within one interval)
WINDOW = 4.0  # the steady window: conditional GETs answered 304
IDLE = 1.5  # the origin's CPU with no agent at all, measured first
PROPAGATION_DEADLINE = INTERVAL * (1 + JITTER) * 2
REPO = Path(__file__).resolve().parent.parent


def manifest_bytes(revision: int, modules: int = 100) -> bytes:
    """A manifest-sized JSON document (100 modules; a new revision changes its size too, so
    nginx's mtime-seconds-plus-size ETag changes even within one second)."""
    doc = {
        "format": 1, "set": "bench", "revision": revision, "issued": "2026-01-01T00:00:00Z",
        "modules": {f"tenant.m{i:04d}": {"object": f"objects/{i:064x}.bin", "sha256": f"{i:064x}",
                                         "size": 1000 + i, "signer": "0123456789abcdef"} for i in range(modules)},
        "pad": "x" * revision,
    }  # fmt: skip
    return json.dumps(doc, sort_keys=True).encode()


@dataclass
class Target:
    """Where the agents GET from, and how a request is signed (S3) or not (plain HTTP)."""

    host: str
    port: int
    path: str
    sign: Any = None  # (method, url, headers) -> headers


@dataclass
class Stats:
    answers: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, status)
    errors: list[str] = field(default_factory=list)
    first_new: dict[int, float] = field(default_factory=dict)  # agent -> when it had the new manifest


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    if status not in (204, 304):
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
    return status, headers, body


async def agent(i: int, target: Target, stats: Stats, sem: asyncio.Semaphore, stop: asyncio.Event,
                change: dict[str, Any], rng: random.Random) -> None:  # fmt: skip
    etag: str | None = None
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    await asyncio.sleep(rng.uniform(0, INTERVAL))  # the random start offset
    while not stop.is_set():
        async with sem:
            try:
                if conn is None:
                    conn = await asyncio.open_connection(target.host, target.port)
                reader, writer = conn
                headers = {"Host": f"{target.host}:{target.port}", "Accept-Encoding": "identity"}
                if etag is not None:
                    headers["If-None-Match"] = etag
                if target.sign is not None:
                    headers = target.sign("GET", f"http://{target.host}:{target.port}{target.path}", headers)
                request = f"GET {target.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                writer.write(request.encode("latin-1"))
                status, got, _ = await _read_response(reader)
                now = time.monotonic()
                stats.answers.append((now, status))
                if status == 200:
                    etag = got.get("etag", etag)
                elif status != 304:
                    stats.errors.append(f"HTTP {status}")
                if status == 200 and now >= change.get("at", float("inf")) and etag != change["old"]:
                    stats.first_new.setdefault(i, now)
                if got.get("connection", "").lower() == "close":
                    writer.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                stats.errors.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn[1].close()
                conn = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), INTERVAL * rng.uniform(1 - JITTER, 1 + JITTER))
    if conn is not None:
        conn[1].close()


async def simulate(target: Target, pids: list[int], publish: Any, current_etag: Any,
                   behind: dict[str, Any] | None = None) -> dict[str, float]:  # fmt: skip
    """Run the fleet against ``target`` (served by ``pids``). ``behind``: name -> probe (a
    cumulative count, read before and after the window) for what sits behind a cache."""
    behind = behind or {}
    # the origin's own background work (SeaweedFS heartbeats between its parts), subtracted below
    idle0, i0 = cpu_seconds(pids), time.monotonic()
    await asyncio.sleep(IDLE)
    idle_rate = (cpu_seconds(pids) - idle0) / (time.monotonic() - i0)
    stats = Stats()
    stop = asyncio.Event()
    sem = asyncio.Semaphore(CONCURRENCY)
    change: dict[str, Any] = {}  # "old": the ETag before the change, "at": when it was published
    rng = random.Random(14)
    start = time.monotonic()
    tasks = [asyncio.create_task(agent(i, target, stats, sem, stop, change, rng)) for i in range(AGENTS)]
    await asyncio.sleep(WARMUP)
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    behind0 = {k: probe() for k, probe in behind.items()}
    await asyncio.sleep(WINDOW)
    cpu1, t1 = cpu_seconds(pids), time.monotonic()
    behind1 = {k: probe() for k, probe in behind.items()}
    change["old"] = await asyncio.to_thread(current_etag)
    published = time.monotonic()
    change["at"] = published
    await asyncio.to_thread(publish)
    deadline = published + PROPAGATION_DEADLINE
    while len(stats.first_new) < AGENTS and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)
    window = [s for t, s in stats.answers if t0 <= t < t1]
    delays = sorted(t - published for t in stats.first_new.values())
    q = statistics.quantiles(delays, n=100, method="inclusive") if len(delays) >= 2 else [float("nan")] * 99
    return {
        "agents": AGENTS,
        "requests_per_s": len(window) / (t1 - t0),
        "not_modified_share": sum(1 for s in window if s == 304) / max(1, len(window)),
        "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "idle_cpu_pct": 100 * idle_rate,
        "cpu_us_per_request": 1e6 * max(0.0, cpu1 - cpu0 - idle_rate * (t1 - t0)) / max(1, len(window)),
        "p50_s": q[49],
        "p99_s": q[98],
        "converged": len(stats.first_new),
        "errors": len(stats.errors),
        "first_error": stats.errors[0] if stats.errors else "",
        "seconds": time.monotonic() - start,
        **{f"{k}_per_s": (behind1[k] - behind0[k]) / (t1 - t0) for k in behind},
    }


def _report(name: str, got: dict[str, Any]) -> None:
    note = f"{AGENTS} agents, {INTERVAL:g} s poll +-{JITTER:.0%}, {CONCURRENCY} in flight at most; loopback"
    record(f"fleet.{name}.requests_per_s", f"fleet: {name} origin requests/s", got["requests_per_s"], "req/s", note=note)
    record(f"fleet.{name}.cpu_pct", f"fleet: {name} origin CPU", got["cpu_pct"], "% of a core", note=note)
    record(f"fleet.{name}.idle_cpu_pct", f"fleet: {name} origin CPU with no agent", got["idle_cpu_pct"], "% of a core",
           note="its own background work")  # fmt: skip
    record(f"fleet.{name}.cpu_us", f"fleet: {name} origin CPU per request, idle subtracted", got["cpu_us_per_request"],
           "us", note=note)  # fmt: skip
    record(f"fleet.{name}.p50", f"fleet: {name} propagation p50", got["p50_s"], "s", note=note)
    record(f"fleet.{name}.p99", f"fleet: {name} propagation p99", got["p99_s"], "s", note=note)
    print(f"\nfleet {name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in got.items()))


def _check(got: dict[str, Any]) -> None:
    # what makes the figures meaningful: the steady window was idle (304s), every agent converged
    assert got["converged"] == AGENTS, got
    assert got["not_modified_share"] > 0.95, got
    assert got["errors"] == 0, got


def _file_origin_run(tmp_path: Path, make_origin: Any, name: str) -> None:
    www = tmp_path / "www"
    (www / "prod").mkdir(parents=True)
    www.chmod(0o755)
    manifest = www / "prod" / "manifest.json"
    manifest.write_bytes(manifest_bytes(1))
    origin = make_origin(www)
    try:
        import http.client

        def publish() -> None:
            tmp = manifest.with_name(".manifest.json.tmp")
            tmp.write_bytes(manifest_bytes(2))
            os.replace(tmp, manifest)

        def current_etag() -> str:
            conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=10)
            conn.request("GET", "/prod/manifest.json")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return resp.getheader("ETag") or ""

        target = Target("127.0.0.1", origin.port, "/prod/manifest.json")
        got = asyncio.run(simulate(target, origin.pids(), publish, current_etag))
    finally:
        origin.close()
    _report(name, got)
    _check(got)


def test_fleet_http_server(tmp_path):
    _file_origin_run(tmp_path, lambda www: PythonOrigin(www), "http.server")


def test_fleet_nginx(tmp_path):
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx not installed (Debian: apt-get install nginx-light)")
    root = tmp_path / "nginx"
    root.mkdir()
    for d in ("tmp-body", "tmp-proxy", "tmp-fastcgi", "tmp-uwsgi", "tmp-scgi"):
        (root / d).mkdir()
    _file_origin_run(tmp_path, lambda www: NginxOrigin(root, www, binary), "nginx")


def test_fleet_seaweedfs(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from support.seaweed import start_seaweed
    finally:
        sys.path.remove(str(REPO / "tests"))
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    server = start_seaweed(tmp_path)
    try:
        client = server.client()
        key = "prod/manifest.json"
        client.put_object(Bucket=server.bucket, Key=key, Body=manifest_bytes(1))
        signer = S3SigV4Auth(Credentials(server.reader.access_key, server.reader.secret_key), "s3", "us-east-1")

        def sign(method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
            request = AWSRequest(method=method, url=url, headers={k: v for k, v in headers.items() if k != "Host"})
            signer.add_auth(request)
            out = {"Host": headers["Host"]}
            out.update((k, v) for k, v in request.headers.items())
            return out

        def publish() -> None:
            client.put_object(Bucket=server.bucket, Key=key, Body=manifest_bytes(2))

        def current_etag() -> str:
            return str(client.head_object(Bucket=server.bucket, Key=key)["ETag"])

        target = Target("127.0.0.1", server.ports["s3.port"], f"/{server.bucket}/{key}", sign)
        got = asyncio.run(simulate(target, [server.pid], publish, current_etag))
    finally:
        server.stop()
    _report("seaweedfs", got)
    _check(got)


def test_fleet_nginx_cache_in_front_of_seaweedfs(tmp_path):
    """The caching tier of docs/fleet-operations.md: agents -> nginx (proxy_cache, the manifest
    revalidated at most once a second) -> SeaweedFS. The cache answers the agents' If-None-Match
    itself; the store sees about one conditional GET a second, whatever the fleet's size."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx not installed (Debian: apt-get install nginx-light)")
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from support.seaweed import start_seaweed
    finally:
        sys.path.remove(str(REPO / "tests"))
    server = start_seaweed(tmp_path / "s3", anonymous_read=True)  # the cache reads unsigned; agents never reach it
    root = tmp_path / "nginx"
    root.mkdir()
    try:
        client = server.client()
        key = "prod/manifest.json"
        client.put_object(Bucket=server.bucket, Key=key, Body=manifest_bytes(1))
        cache = NginxCache(root, binary, server.ports["s3.port"], f"/{server.bucket}/{key}")
        try:

            def publish() -> None:
                client.put_object(Bucket=server.bucket, Key=key, Body=manifest_bytes(2))

            def current_etag() -> str:
                return str(client.head_object(Bucket=server.bucket, Key=key)["ETag"])

            def store_gets() -> float:
                counts = server.request_counts()
                return float(sum(n for (kind, _), n in counts.items() if kind == "GET"))

            def store_cpu() -> float:
                return server.cpu_seconds()

            target = Target("127.0.0.1", cache.port, f"/{server.bucket}/{key}")
            got = asyncio.run(simulate(target, cache.pids(), publish, current_etag,
                                       {"store_requests": store_gets, "store_cpu": store_cpu}))  # fmt: skip
        finally:
            cache.close()
    finally:
        server.stop()
    got["store_cpu_pct"] = 100 * got.pop("store_cpu_per_s")
    _report("nginx-cache", got)
    note = f"{AGENTS} agents at the cache; the store behind it"
    record("fleet.nginx-cache.store_requests_per_s", "fleet: SeaweedFS behind the nginx cache, requests/s",
           got["store_requests_per_s"], "req/s", note=note)  # fmt: skip
    record("fleet.nginx-cache.store_cpu_pct", "fleet: SeaweedFS behind the nginx cache, CPU",
           got["store_cpu_pct"], "% of a core", note=note)  # fmt: skip
    _check(got)
    assert got["store_requests_per_s"] < 5, got  # the cache, not the store, answered the fleet
