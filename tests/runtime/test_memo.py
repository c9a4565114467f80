"""The bounded memo helper (runtime/memo.py) behind every process-wide memo of the runtime."""

from __future__ import annotations

import importlib

from polc.runtime.enforce import deciders, index, matchers, normalize, plan
from polc.runtime.memo import Memo, put_bounded


def test_a_memo_is_cleared_whole_when_full_and_its_getter_survives():
    seen = []
    m: Memo[int, str] = Memo("test", 3, on_clear=lambda d: seen.append(sorted(d)))
    get = m.get
    for i in range(3):
        assert m.put(i, str(i)) == str(i)
    assert get(2) == "2" and len(m) == 3
    m.put(3, "3")  # full: cleared whole, then stored
    assert seen == [[0, 1, 2]] and len(m) == 1
    assert get(3) == "3" and get(0) is None and get(0, "x") == "x"  # the bound getter reads the same dict
    m.clear()
    assert get(3) is None and seen[-1] == [3]


def test_intern_returns_one_shared_object():
    m: Memo[tuple[int, ...], tuple[int, ...]] = Memo("tuples", 10)
    a = tuple([1, 2])
    b = tuple([1, 2])
    assert a is not b
    assert m.intern(a) is a and m.intern(b) is a


def test_put_bounded_keeps_its_pinned_entry():
    d = {-1: "none"}
    for i in range(4):
        put_bounded(d, 3, i, "x", keep=-1)
    assert d == {-1: "none", 2: "x", 3: "x"}


def test_the_memos_keep_their_bounds():
    assert normalize.HOST_MEMO.limit == normalize.PATH_MEMO.limit == 65536
    assert normalize.HOST_BAD.limit == normalize.PATH_BAD.limit == 65536
    assert index._SUFFIXES.limit == plan._REASONS.limit == 65536
    assert index.ENTRIES.limit == index.BUCKETS.limit == 1 << 16
    for m in (matchers._MATCHERS, matchers._CHECKS, index._INDEX_KEYS, index._RANKS, index._SPLITS,
              plan._SHARED, normalize._NORMALIZERS_OF, importlib.import_module("polc.runtime.enforce.link")._TYPES):
        assert m.limit == 1 << 13, m
    assert deciders._CODES.limit == 256
    assert plan.DECISIONS_MAX == 4096


def test_the_verifier_and_patterns_memos_are_memos_with_their_old_bounds():
    """The format's and the pattern module's process-wide memos are the same helper, at the sizes they had."""
    from polc.runtime import patterns
    from polc.runtime.format import arguments, verify

    assert arguments._VALID_ARGS.limit == arguments._VALID_COMMAND_ARGS.limit == 1 << 16
    assert verify._VALID_CAPS.limit == 1 << 10
    assert patterns._resolved.limit == 4096 and patterns._PATH_SPLIT.limit == 64
    for m in (arguments._VALID_ARGS, arguments._VALID_COMMAND_ARGS, verify._VALID_CAPS, patterns._resolved):
        assert isinstance(m, Memo), m


def test_the_memo_helper_imports_nothing_of_polc():
    """So the format (the verifier) may use it without importing the decision engine, and the reverse."""
    import ast
    from pathlib import Path

    import polc.runtime.memo as memo

    tree = ast.parse(Path(memo.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert all(not m or not m.startswith(("polc", ".")) for m in imported), imported
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
