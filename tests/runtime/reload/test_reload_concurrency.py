"""1,000 swaps of the artifact set under four reader threads: every decision is
the old policy's or the new policy's answer, and no check raises."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from polc.runtime import PolicyAgent

from support.agent import artifact_bytes

SWAPS = 1000

# Two complete policy sets; each request's answer differs between them, and
# mixing one set's _global with the other's module gives yet other answers.
SET_A = {
    "_global": [("deny", "network.outbound", ("evil.com",)), ("entitle", "threads.create", ())],
    "tenant.acme": [("entitle", "network.outbound", ("*.acme.com", 443)), ("deny", "fs.read", ("secrets",))],
    "tenant.globex": [("entitle", "fs.read", ("data", "**"))],
}
SET_B = {
    "_global": [("deny", "network.outbound", ("*.acme.com",)), ("deny", "threads.create", ())],
    "tenant.acme": [("entitle", "network.outbound", ("evil.com",)), ("entitle", "fs.read", ("secrets", "**"))],
    "tenant.globex": [("deny", "fs.read", ("data", "x/**")), ("entitle", "fs.read", ("data", "**"))],
}
REQUESTS = [
    ("tenant.acme", "network.outbound", "api.acme.com", 443),
    ("tenant.acme", "network.outbound", "evil.com", 443),
    ("tenant.acme", "fs.read", "secrets", "k"),
    ("tenant.acme", "threads.create"),
    ("tenant.globex", "fs.read", "data", "x/y"),
    ("tenant.globex", "fs.read", "data", "a"),
    ("tenant.other", "threads.create"),
    ("tenant.acme", "network.outbound", "api.acme.com", 70000),
]


@pytest.mark.slow
def test_readers_see_old_or_new_policy_across_1000_swaps(tmp_path: Path):
    live = tmp_path / "policies"
    live.mkdir()
    staged = {}
    for tag, policy in (("a", SET_A), ("b", SET_B)):
        d = tmp_path / tag
        d.mkdir()
        for module, rules in policy.items():
            (d / f"{module}.bin").write_bytes(artifact_bytes(module, rules))
        staged[tag] = d

    def install(tag: str) -> None:
        for module in SET_A:
            tmp = live / f".{module}.tmp"
            os.link(staged[tag] / f"{module}.bin", tmp)
            os.replace(tmp, live / f"{module}.bin")

    install("a")
    agent = PolicyAgent(live, reload=False).start()
    answers_a = {r: agent.snapshot.decide_uncached(*r) for r in REQUESTS}
    install("b")
    assert agent.reload_now().changed
    answers_b = {r: agent.snapshot.decide_uncached(*r) for r in REQUESTS}
    for r in REQUESTS[:-1]:
        assert answers_a[r] != answers_b[r], r  # every request tells the sets apart
    allowed = {r: {answers_a[r], answers_b[r]} for r in REQUESTS}

    stop = threading.Event()
    problems: list[object] = []
    counts = [0] * 2

    def reader(k: int) -> None:
        n = 0
        try:
            while not stop.is_set():
                for r in REQUESTS:
                    d = agent.check(*r)
                    if d not in allowed[r]:
                        problems.append((r, d))
                n += 1
        except BaseException as exc:  # pragma: no cover - what we look for
            problems.append(exc)
        counts[k] = n

    # Readers spin in pure Python; a short switch interval lets the swapping
    # thread get the GIL back after each file operation (the GIL convoy of docs/runtime.md).
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    threads = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    try:
        for t in threads:
            t.start()
        start = time.monotonic()
        swaps = 0
        for i in range(SWAPS):
            install("a" if i % 2 == 0 else "b")
            result = agent.reload_now()
            assert sorted(result.changed) == sorted(SET_A), result
            assert not result.failed
            swaps += 1
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(old_interval)
    assert swaps == SWAPS
    assert not problems, problems[:5]
    assert all(c > 0 for c in counts), counts
    assert elapsed < 300, elapsed  # a GIL convoy would stall far longer (35 s here on a quiet 2-core VM)
