"""The bounded memo helper behind every process-wide memo of the decision engine."""

from __future__ import annotations

import importlib

from polc.runtime.enforce import deciders, index, matchers, normalize, plan
from polc.runtime.enforce.memo import Memo, put_bounded


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
