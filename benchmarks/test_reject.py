"""What a thread calling check() sees while the agent rejects hostile drops.

An agent polls a two-module directory every 20 ms while a thread calls
``check()`` in a loop and records the time between consecutive calls. The
artifact of ``tenant.acme`` is replaced with ``write_atomic`` by a hostile
one -- a valid header and digest around 12 MiB of tiny containers (arrays of
empty maps, of nils, or nested arrays; within the reader's limits, so they
are refused for what they hold) -- and, once status() reports the failure,
by the good one again. Figures: the longest gap the checking thread saw
while drops were rejected, the same on the idle agent over as long a time
(the floor: switch interval, garbage collection, the machine), and how much
the process's peak RSS grew. The old reader built every object of the
payload at once: about 80 times the file (a 12 MiB drop took an agent from
46 MB to 1 GB) while holding the GIL for up to 1.4 s.
"""

from __future__ import annotations

import gc
import resource
import struct
import threading
import time

import pytest

import polc_side
from common import SMALL, record
from workload import Module, Rule

pytestmark = pytest.mark.skipif(not polc_side.have_runtime(), reason="polc.runtime.agent not available yet")

REQUEST = ("tenant.acme", "network.outbound", "api.acme.com", 443)
DROPS = 2 if SMALL else 4


def _hostile(element: bytes, count: int) -> bytes:
    """tenant.acme's payload with ``code`` = ``count`` copies of ``element``; header and digest valid."""
    import hashlib

    import msgpack

    from polc.runtime.format.header import MAGIC
    from polc.runtime.format.opcodes import PAYLOAD_KEYS

    good = {
        "module": "tenant.acme", "mode": "enforce", "compiler": "bench", "source": "tenant.acme.pol",
        "source_digest": "0" * 64, "consts": [],
        # a two-parameter capability: code may then hold 300,000 instructions
        "caps": [["network.outbound", [["host", "host"], ["port", "port"]]]],
    }
    parts = [bytes([0x80 | len(PAYLOAD_KEYS)])]
    for key in PAYLOAD_KEYS:
        parts.append(msgpack.packb(key))
        parts.append(b"\xdd" + struct.pack(">I", count) + element * count if key == "code" else msgpack.packb(good[key]))
    body = b"".join(parts)
    digest = hashlib.sha256(MAGIC + struct.pack(">HH", 1, 0) + body).digest()
    return struct.pack(">8sHHIII32s", MAGIC, 1, 0, 0, len(body), 0, digest) + body


# 290,000 elements: under the count the limits allow for code, so each drop
# is refused for its contents (about 12.5 MB each).
SHAPES = {
    "empty maps": b"\x93" + (b"\x9d" + b"\x80" * 13) * 3,
    "nils": b"\x93" + (b"\x9d" + b"\xc0" * 13) * 3,
    "nested arrays": b"\x93" + (b"\x91" * 13 + b"\xc0") * 3,
}


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_check_latency_while_hostile_drops_are_rejected(bench_root):
    from polc.runtime.format.writer import write_atomic

    live = bench_root / "reject"
    live.mkdir(exist_ok=True)
    rule = Rule("entitle", "network.outbound", (("host", "*.acme.com"), ("port", 443, 443)), 0, line=3)
    good = polc_side.artifact_bytes(Module("tenant.acme", [rule]), bench_root / "reject-staging")
    write_atomic(live / "tenant.acme.bin", good)
    drops = {name: _hostile(element, 290_000) for name, element in SHAPES.items()}
    agent = polc_side.make_agent(live, reload_interval=0.02)
    assert agent.check(*REQUEST)
    gaps: list[float] = []
    window = [False]
    stop = threading.Event()

    def checking():
        check = agent.check
        last = time.perf_counter()
        worst_idle = worst_busy = 0.0
        while not stop.is_set():
            for _ in range(100):
                check(*REQUEST)
            now = time.perf_counter()
            gap = now - last
            last = now
            if window[0]:
                worst_busy = max(worst_busy, gap)
            else:
                worst_idle = max(worst_idle, gap)
        gaps[:] = [worst_idle, worst_busy]

    def module_error():
        return agent.status()["modules"]["tenant.acme"]["last_error"]

    def wait(predicate, timeout=120.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "the agent did not get there in time"
            time.sleep(0.005)

    gc.collect()
    rss_before = _max_rss_mb()
    worker = threading.Thread(target=checking, daemon=True)
    worker.start()
    try:
        time.sleep(0.5)  # the idle floor first
        t0 = time.perf_counter()
        reasons = set()
        window[0] = True
        for _ in range(DROPS):
            for data in drops.values():
                write_atomic(live / "tenant.acme.bin", data)
                wait(module_error)
                reasons.add(module_error())
                assert agent.check(*REQUEST)  # the previous policy stays
                write_atomic(live / "tenant.acme.bin", good)
                wait(lambda: module_error() is None)
        window[0] = False
        busy_for = time.perf_counter() - t0
        time.sleep(min(busy_for, 2.0))  # the idle floor again
    finally:
        stop.set()
        worker.join(30)
        agent.stop()
    worst_idle, worst_busy = gaps
    rss_growth = _max_rss_mb() - rss_before
    # refused for what they hold, not for a count in a header
    assert all(r.startswith("malformed payload: code[0]") for r in reasons), reasons
    size = max(len(d) for d in drops.values())
    record("reject.gap", f"longest gap between check() calls while {DROPS * len(drops)} hostile drops of "
           f"{size / 2**20:.1f} MiB are rejected (poll 20 ms)", worst_busy * 1e3, "ms",
           note=f"idle agent, same thread: {worst_idle * 1e3:.1f} ms")
    record("reject.rss", "growth of the process's peak RSS over those drops", rss_growth, "MB",
           note=f"drops of {size / 2**20:.1f} MiB each")
