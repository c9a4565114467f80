"""Snapshot.governor: which security module governs a Python module (the guard asks per frame module).

Figures: one lookup in a snapshot of BIG_N modules (each with a governs name), for a name six
levels deep that a module governs and one that none does; and building the table, once per
snapshot, on the first lookup. The guard caches the answer per module name, so the lookup is
paid once per name and snapshot; the table once per reload.
"""

from __future__ import annotations

import time

from polc.runtime.enforce import Snapshot, link
from polc.runtime.format import encode
from polc.runtime.format.reader import read_artifact
from polc.runtime.format.writer import pack_artifact

from common import BIG_N, SMALL, record


def _snapshot(n: int) -> Snapshot:
    mods = {}
    for i in range(n):
        name = f"tenant.t{i}"
        payload = encode.build_payload(
            module=name, mode="enforce", compiler="bench", source=f"{name}.pol", source_digest="0" * 64,
            rules=[], governs=[f"pkg{i}", f"pkg{i}_ext"],
        )
        mods[name] = link(read_artifact(pack_artifact(payload, verify=False)))
    return Snapshot(mods)


def test_governor_lookup(benchmark):
    snap = _snapshot(BIG_N)
    deep = "pkg7.http.pool.native.impl.fast"
    assert snap.governor(deep) == "tenant.t7"
    assert snap.governor("json.decoder.scanner.x.y.z") is None

    def lookups():
        g = snap.governor
        for _ in range(1000):
            g(deep)

    benchmark.group = "governor"
    benchmark.pedantic(lookups, rounds=10 if SMALL else 30, iterations=1, warmup_rounds=2)
    record("governor.hit", f"Snapshot.governor, name 6 levels deep, governed, {BIG_N:,} modules",
           benchmark.stats.stats.median * 1e6 / 1000, "us", bar=None)

    g = snap.governor
    t0 = time.process_time()
    for _ in range(100_000):
        g("json.decoder.scanner.x.y.z")
    miss = (time.process_time() - t0) * 1e6 / 100_000
    record("governor.miss", f"Snapshot.governor, name 6 levels deep, ungoverned, {BIG_N:,} modules", miss, "us")

    builds = []
    for _ in range(3 if SMALL else 5):
        fresh = snap.replace()
        t0 = time.process_time()
        fresh.governor("x")
        builds.append(time.process_time() - t0)
    record("governor.table", f"the governor table of {BIG_N:,} modules (2 governs names each), built on first use",
           sorted(builds)[len(builds) // 2] * 1e3, "ms")
