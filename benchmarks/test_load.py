"""load + verify + link of one 1,000-rule artifact (bar: <= 5 ms)."""

from __future__ import annotations

import pytest

import polc_side
from common import SMALL, record


def test_load_verify_link_1000_rules(benchmark, tree):
    if not _runtime_linkable():
        pytest.skip("polc.runtime.enforce.link not available yet")
    wl, _src, out, _how = tree(10, 1000)
    path = out / "tenant.m0.bin"
    n_rules = len(wl.modules["tenant.m0"].rules)
    assert n_rules == 1000
    linked = polc_side.load_and_link(path)
    assert linked is not None
    benchmark.group = "load"
    benchmark.pedantic(polc_side.load_and_link, args=(path,), rounds=15 if SMALL else 51, iterations=1, warmup_rounds=2)
    record("load.1000", f"load + verify + link, one artifact of {n_rules} rules ({path.stat().st_size:,} bytes)",
           benchmark.stats.stats.median * 1e3, "ms", bar=5.0)


def _runtime_linkable() -> bool:
    try:
        from polc.runtime.enforce import link  # noqa: F401
        from polc.runtime.format.reader import read_artifact_file  # noqa: F401
    except ImportError:
        return False
    return True
