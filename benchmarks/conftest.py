"""Shared fixtures of the benchmark suite and the figure recorder.

Run with ``make bench`` (or ``.venv/bin/python -m pytest benchmarks``). Every
figure a benchmark measures is recorded with :func:`record`; at the end of
the session they are written to ``benchmarks/results/latest.json`` and
printed as a table with each bar and met / not met (``report.py``).

``POLC_BENCH_SCALE=small`` shrinks the 10,000-module trees to 2,000 modules
and the round counts, for a quick run on a busy machine; the figures say
which size they were measured at.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import report  # noqa: E402
from common import BIG_N, RESULTS, SCALE, SMALL, _figures, _meta, record, workload  # noqa: E402,F401


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("polc-bench")


_trees: dict = {}


@pytest.fixture(scope="session")
def tree(bench_root):
    """tree(n, k) -> (workload, src_dir, policy_dir, made_by); built once per session."""
    import polc_side

    def get(n: int, k: int):
        if (n, k) not in _trees:
            wl = workload(n, k, 1000 if n <= 1000 else 0)
            t0 = time.perf_counter()
            src, out, how = polc_side.build_tree(wl, bench_root / f"n{n}-k{k}")
            _meta.setdefault("trees", {})[f"{n}x{k}"] = {"made_by": how, "seconds": round(time.perf_counter() - t0, 2)}
            _trees[(n, k)] = (wl, src, out, how)
        return _trees[(n, k)]

    return get


def pytest_configure(config):
    config.addinivalue_line("markers", "guard_installed: installs the guard (for good); runs after every other benchmark")
    _meta.update(
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        scale=SCALE,
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        nproc=os.cpu_count(),
        cpu=_cpu_model(),
        command="make bench" if os.environ.get("POLC_BENCH_VIA_MAKE") else " ".join(["pytest"] + sys.argv[1:]),
    )


def pytest_collection_modifyitems(session, config, items):
    # An audit hook cannot be removed: benchmarks that install the guard run last, so the
    # guard never weighs on another benchmark (benchmarks/test_guard.py). The sort is stable.
    items.sort(key=lambda item: item.get_closest_marker("guard_installed") is not None)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pytest_sessionfinish(session, exitstatus):
    if not _figures:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = {"meta": _meta, "figures": _figures, "exitstatus": int(exitstatus)}
    RESULTS.write_text(json.dumps(data, indent=1, default=str))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _figures:
        return
    data = {"meta": _meta, "figures": _figures}
    terminalreporter.write_sep("=", "polc benchmark figures and their bars")
    terminalreporter.write_line(report.render_text(data))
    terminalreporter.write_line(f"results: {RESULTS}; write docs with: python benchmarks/report.py --write docs/benchmarks.md")
