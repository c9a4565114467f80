"""State shared by the benchmark modules: scale, the figure recorder, cached workloads."""

from __future__ import annotations

import os
from pathlib import Path

from workload import generate

HERE = Path(__file__).resolve().parent
SCALE = os.environ.get("POLC_BENCH_SCALE", "full")
SMALL = SCALE == "small"
BIG_N = 2000 if SMALL else 10000
RESULTS = Path(os.environ.get("POLC_BENCH_RESULTS", HERE / "results" / "latest.json"))

_figures: list[dict] = []
_meta: dict = {}


def record(key: str, title: str, value: float, unit: str, *, bar: float | None = None,
           op: str = "<=", note: str = "", **extra) -> None:
    """Record one figure; ``bar``/``op`` give its speed bar (docs/benchmarks.md), if any."""
    fig = {"key": key, "title": title, "value": value, "unit": unit, "bar": bar, "op": op, "note": note}
    fig.update(extra)
    _figures[:] = [f for f in _figures if f["key"] != key]
    _figures.append(fig)


def meta(**kw) -> None:
    _meta.update(kw)


_workloads: dict = {}


def workload(n: int, k: int, n_requests: int = 1000):
    key = (n, k, n_requests)
    if key not in _workloads:
        _workloads[key] = generate(n, k, n_requests=n_requests)
    return _workloads[key]


