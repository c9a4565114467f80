"""Compile throughput end to end vs the bare Lark LALR parse, and the no-op recompile.

* ``polc compile SRC -o OUT -j 1`` of 1,000 sources x 20 rules (+ _global) in
  a subprocess, wall time, interpreter start-up included: rules/s per core
  (bar >= 10,000) and its ratio to a bare LALR parse of the same sources with
  the same grammar (bar <= 2.5x);
* ``-j`` = every core, for information;
* a second ``polc compile`` over the 10,000-source tree, everything up to
  date (bar <= 2 s), which must leave every artifact untouched.
"""

from __future__ import annotations

import os
import shutil

import pytest

import polc_side
from common import BIG_N, SMALL, record, workload

_times: dict = {}

pytestmark = pytest.mark.skipif(not polc_side.have_compiler(), reason="polc compile not installed yet")


@pytest.fixture(scope="module")
def sources(bench_root):
    wl = workload(1000, 20, 0)
    src = bench_root / "compile-src"
    if not src.exists():
        wl.write_sources(src)
    return wl, src


def _compile_rounds(benchmark, bench_root, src, jobs, rounds):
    n = [0]

    def setup():
        n[0] += 1
        out = bench_root / f"compile-out-j{jobs}-{n[0]}"
        shutil.rmtree(out, ignore_errors=True)
        return (src, out), {"jobs": jobs}

    def run(src, out, jobs):
        _dt, res = polc_side.polc_compile(src, out, jobs=jobs)
        assert res.returncode == 0, res.stderr[-4000:]

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    return benchmark.stats.stats.median


def test_compile_throughput_one_core(benchmark, bench_root, sources):
    wl, src = sources
    benchmark.group = "compile"
    t = _compile_rounds(benchmark, bench_root, src, 1, 2 if SMALL else 3)
    _times["compile"] = t
    record("compile.rules_per_s", f"polc compile -j 1, {wl.n_modules + 1} sources / {wl.rule_count:,} rules, end to end",
           wl.rule_count / t, "rules/s", bar=10000.0, op=">=", note=f"{t:.2f} s wall incl. start-up")


def test_compile_throughput_all_cores(benchmark, bench_root, sources):
    wl, src = sources
    jobs = os.cpu_count() or 1
    benchmark.group = "compile"
    t = _compile_rounds(benchmark, bench_root, src, jobs, 2)
    record("compile.rules_per_s.all_cores", f"polc compile -j {jobs}, same sources", wl.rule_count / t, "rules/s",
           note=f"{t:.2f} s wall")


def test_bare_lark_parse(benchmark, sources):
    from lark import Lark

    from polc.compiler.parser import grammar_text

    wl, src = sources
    texts = [p.read_text() for p in sorted(src.glob("*.pol"))]
    parser = Lark(grammar_text(), parser="lalr", lexer="contextual", maybe_placeholders=True)

    def parse_all():
        for t in texts:
            parser.parse(t)

    benchmark.group = "compile"
    benchmark.pedantic(parse_all, rounds=3, iterations=1, warmup_rounds=1)
    t = benchmark.stats.stats.median
    _times["parse"] = t
    record("parse.rules_per_s", "bare Lark LALR parse of the same sources (tree built, GC on)", wl.rule_count / t,
           "rules/s", note=f"{t:.2f} s in-process")
    if "compile" in _times:
        record("compile.vs_parse", "compile end to end / bare Lark parse (time ratio)", _times["compile"] / t, "x", bar=2.5)


def test_noop_recompile(benchmark, tree):
    wl, src, out, how = tree(BIG_N, 20)
    assert how == "polc compile"
    # the artifacts (the up-to-date manifest beside them may be rewritten: it is a cache)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    jobs = os.cpu_count() or 1

    def run():
        _dt, res = polc_side.polc_compile(src, out, jobs=jobs)
        assert res.returncode == 0, res.stderr[-4000:]

    benchmark.group = "compile"
    benchmark.pedantic(run, rounds=3, iterations=1)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    assert after == before, "a no-op recompile touched artifacts"
    record("compile.noop", f"no-op recompile of {BIG_N + 1:,} sources (all up to date), -j {jobs}",
           benchmark.stats.stats.median, "s", bar=2.0)
