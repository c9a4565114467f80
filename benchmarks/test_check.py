"""check() latency, polc cached and uncached, next to the peers on the same workload.

Before anything is timed, every engine answers every request of the stream
and is compared with the reference evaluator (and polc's deciding rule with
the reference's deciding rule): any disagreement fails the benchmark.

A figure is the median over rounds of the mean time per check over the whole
request stream (1,000 mixed requests for polc; a prefix of it for the slow
peers), the Python loop that issues the calls included.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import polc_side
from common import SMALL, record, workload
from peers import available_peers
from reference import Reference

SIZES = [(10, 20), (1000, 20), (10, 1000)]
# polc-uncached-pure: the uncached check on the pure-Python path (POLC_ACCEL=0's), beside the
# C accelerator's (polc-uncached, when it is built) in the same run
ENGINES = ["polc-cached", "polc-uncached", "polc-uncached-pure", "dict-loop", "cedar", "casbin"]
BAR_UNCACHED = {(10, 20): 3.0, (1000, 20): 3.0, (10, 1000): 5.0}

_setups: dict = {}


def _agree(name: str, check, wl, ref_answers) -> None:
    bad = []
    for req, (allowed, _where) in zip(wl.requests, ref_answers):
        got = bool(check(req.module, req.cap, req.args))
        if got != allowed:
            bad.append((req, allowed, got))
    assert not bad, f"{name} disagrees with the reference on {len(bad)} of {len(wl.requests)} requests, e.g. {bad[:5]}"


def _agree_polc(agent, wl, ref_answers) -> None:
    bad = []
    for req, (allowed, where) in zip(wl.requests, ref_answers):
        d = agent.check(req.module, req.cap, *req.args)
        got_where = polc_side.rule_line(d.rule)
        exp_where = None if where is None else (f"{where[0]}.pol", where[1])
        if bool(d) != allowed or d.allowed != allowed or got_where != exp_where:
            bad.append((req, (allowed, exp_where), (d.allowed, got_where, d.reason)))
    assert not bad, f"polc disagrees with the reference on {len(bad)} of {len(wl.requests)} requests, e.g. {bad[:5]}"


def _pure_python(agent):
    """An engine deciding as ``agent`` on the pure-Python path (None when that is the agent's own)."""
    try:
        from polc.runtime.enforce import Snapshot
    except ImportError:
        return None
    s = agent.snapshot
    if not getattr(s, "accelerated", False):
        return None
    pure = Snapshot(s.modules, s.glob, cache_size=0, pending=s.pending, accel=False)
    return SimpleNamespace(check=pure.check)


@pytest.fixture(scope="module")
def setups(tree):
    def get(size):
        if size in _setups:
            return _setups[size]
        n, k = size
        wl = workload(n, k)
        ref = Reference(wl)
        answers = [ref.decide(*r.as_tuple()) for r in wl.requests]
        engines = {"dict-loop": ref.check}
        if polc_side.have_runtime():
            _wl, _src, out, _how = tree(n, k)
            cached = polc_side.make_agent(out, cache=True)
            _agree_polc(cached, wl, answers)
            engines["polc-cached"] = cached
            try:
                uncached = polc_side.make_agent(out, cache=False)
            except RuntimeError:
                uncached = None
            if uncached is not None:
                _agree_polc(uncached, wl, answers)
                engines["polc-uncached"] = uncached
                pure = _pure_python(uncached)
                if pure is not None:
                    _agree_polc(pure, wl, answers)
                    engines["polc-uncached-pure"] = pure
        for name, cls in available_peers().items():
            eng = cls(wl)
            _agree(name, eng.check, wl, answers)
            engines[name] = eng.check
        _setups[size] = (wl, engines)
        return _setups[size]

    yield get
    for _wl, engines in _setups.values():
        for name in ("polc-cached", "polc-uncached"):
            if name in engines and hasattr(engines[name], "stop"):
                engines[name].stop()


def _batch(engine: str, k: int, n_req: int) -> int:
    if engine in ("cedar", "casbin"):
        return 50 if k >= 1000 else 200
    return n_req


def _rounds(engine: str, k: int) -> int:
    if engine in ("cedar", "casbin"):
        return 3 if (SMALL or k >= 1000) else 7
    return 15 if SMALL else 41


@pytest.mark.parametrize("size", SIZES, ids=[f"{n}x{k}" for n, k in SIZES])
@pytest.mark.parametrize("engine", ENGINES)
def test_check_latency(benchmark, setups, engine, size):
    wl, engines = setups(size)
    if engine not in engines:
        pytest.skip(f"{engine} not available (runtime or peer extra not installed, or no cache_size)")
    n, k = size
    reqs = [r.as_tuple() for r in wl.requests[: _batch(engine, k, len(wl.requests))]]
    if engine.startswith("polc"):
        check = engines[engine].check

        def run():
            for m, c, a in reqs:
                check(m, c, *a)
    else:
        check = engines[engine]

        def run():
            for m, c, a in reqs:
                check(m, c, a)

    benchmark.group = f"check {n}x{k}"
    benchmark.pedantic(run, rounds=_rounds(engine, k), iterations=1, warmup_rounds=1)
    per_check_us = benchmark.stats.stats.median / len(reqs) * 1e6
    if not engine.startswith("polc"):
        record(f"check.{engine}.{n}x{k}", f"check {engine}, N x K = {n}x{k} (stream mean)", per_check_us, "us",
               note=f"{len(reqs)} requests/round")
        return
    # The bar is on the median check: time each request on its own (mean of
    # REPS calls, loop included) and take the median over the stream.
    bar = 1.0 if engine == "polc-cached" else BAR_UNCACHED[size]
    med, p90 = _per_request(check, reqs)
    record(f"check.{engine}.{n}x{k}.median", f"check {engine}, N x K = {n}x{k}, median request", med, "us", bar=bar,
           note=f"p90 {p90:.2f} us")
    record(f"check.{engine}.{n}x{k}", f"check {engine}, N x K = {n}x{k} (stream mean)", per_check_us, "us")


REPS = 20


def _per_request(check, reqs) -> tuple[float, float]:
    import time

    per = []
    clock = time.perf_counter
    rng = range(REPS)
    for m, c, a in reqs:
        t0 = clock()
        for _ in rng:
            check(m, c, *a)
        per.append((clock() - t0) / REPS * 1e6)
    per.sort()
    return per[len(per) // 2], per[int(len(per) * 0.9)]


def test_loop_overhead(benchmark):
    """What the timing loop itself costs per request (a no-op callee), for reading the figures."""
    wl = workload(10, 20)
    reqs = [r.as_tuple() for r in wl.requests]

    def noop(m, c, *a):
        return None

    def run():
        for m, c, a in reqs:
            noop(m, c, *a)

    benchmark.pedantic(run, rounds=21, iterations=1, warmup_rounds=1)
    record("check.loop-overhead", "timing loop + call of a no-op, per request", benchmark.stats.stats.median / len(reqs) * 1e6, "us",
           note="included in every check figure")
