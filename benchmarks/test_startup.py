"""Start-up: time to the first decision, and total verify-and-link time per artifact.

Each figure comes from a fresh process (``startup_probe.py``) over a cached
tree of 20-rule artifacts (``startup_tree.py``), once loading in the
background (the agent answers as soon as ``_global`` is in; a module asked
for is linked on the spot) and once loading whole before answering (as
``strict`` does). Sizes: ``POLC_BENCH_STARTUP_SIZES`` (comma-separated;
default 1,000 and the suite's big size), e.g. ``POLC_BENCH_STARTUP_SIZES=100000``.
Loading whole is measured up to ``POLC_BENCH_STARTUP_WHOLE_MAX`` artifacts
(default 10,000: beyond, it is only the per-artifact figure again, slower).

Bars: the first answer within 1 s (set for 100,000 artifacts); verify and
link <= 0.25 ms of CPU per 20-rule artifact (the process's CPU time for
the whole load divided by the artifacts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import startup_tree

import polc_side
from common import BIG_N, record

pytestmark = pytest.mark.skipif(not polc_side.have_runtime(), reason="polc.runtime.agent not available yet")

HERE = Path(__file__).resolve().parent
SIZES = [int(s) for s in os.environ.get("POLC_BENCH_STARTUP_SIZES", f"1000,{BIG_N}").split(",") if s.strip()]
WHOLE_MAX = int(os.environ.get("POLC_BENCH_STARTUP_WHOLE_MAX", "10000"))


def probe(directory: Path, how: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "startup_probe.py"), str(directory), how],
        capture_output=True, text=True, timeout=3600, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n", SIZES)
def test_startup(n):
    d = startup_tree.build(n)
    bg = probe(d, "background")
    assert bg["failed"] == 0 and bg["n"] == n
    record(f"startup.first.background.{n}", f"start-up to the first decision, {n:,} artifacts, background loading",
           bg["first_s"], "s", bar=1.0,
           note=f"start() {bg['start_s'] * 1e3:.0f} ms; all linked after {bg['all_s']:.1f} s; "
                f"import {bg['import_s'] * 1e3:.0f} ms (not counted)")
    record(f"startup.link.background.{n}", f"verify + link CPU per 20-rule artifact, {n:,} artifacts, background",
           bg["cpu_s"] / n * 1e3, "ms", bar=0.25,
           note=f"process CPU {bg['cpu_s']:.1f} s for the whole load")
    if n <= WHOLE_MAX:
        whole = probe(d, "whole")
        record(f"startup.first.whole.{n}", f"start-up to the first decision, {n:,} artifacts, loading whole first",
               whole["first_s"], "s",
               note=f"CPU {whole['cpu_s']:.1f} s, {whole['cpu_s'] / n * 1e3:.2f} ms per artifact")
