"""The path index (SEGMENTS / LAST_SEGMENT buckets) decides exactly as a plain scan would.

Tables of at least ``PATH_INDEX_MIN`` rules may index a path argument by its
literal first segments or its literal last segment. Random rule sets large
enough to be indexed, under one root or a few, are decided by the snapshot
(the fused decider), by the plan's sequential evaluation, and by a reference
written here: every rule in tier order (denies of ``_global``, of the module,
entitles of the module, of ``_global``), first match in source order, each
path tested with ``patterns.path_matcher`` (the regex matcher, no index).
A lone ``"*"`` in a rule spec is ANY (tests/support/agent.py).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from polc.runtime import patterns
from polc.runtime.enforce import Snapshot, link
from polc.runtime.enforce.index import PATH_INDEX, PATH_INDEX_MIN
from polc.runtime.enforce.plan import Plan
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes

SEGS = ["a", "b", "ab", "c.log", "*", "?", "a*", "*.log", "**"]
REQ_SEGS = ["a", "b", "ab", "c.log", "x.log", "abc", "q"]
ROOTS = ["r", "s", "*"]

glob_st = st.lists(st.sampled_from(SEGS), min_size=1, max_size=4).map("/".join).filter(
    lambda g: "**/**" not in g
)
rule_st = st.tuples(st.sampled_from(["deny", "entitle", "entitle"]), st.sampled_from(ROOTS), glob_st)
path_st = st.lists(st.sampled_from(REQ_SEGS), min_size=0, max_size=5).map("/".join)


def _link(name, rules):
    spec = [(effect, "fs.read", (root, glob)) for effect, root, glob in rules]
    return link(read_artifact(artifact_bytes(name, spec), expected_module=name))


def _matches(glob, path):
    return patterns.path_matcher(patterns.compile_path(glob))(path)


def _reference(glob_rules, mod_rules, root, path, module):
    """(allowed, rule location) by scanning every rule with the regex matcher."""

    def first(rules, effect):
        for i, (e, r, g) in enumerate(rules):
            if e == effect and (r == "*" or r == root) and (g == "*" or _matches(g, path)):
                return i
        return None

    for name, rules, effect in (("_global", glob_rules, "deny"), (module, mod_rules, "deny"),
                                (module, mod_rules, "entitle"), ("_global", glob_rules, "entitle")):
        i = first(rules, effect)
        if i is not None:
            return effect == "entitle", f"src/{name}.pol:{i + 2}:5"
    return False, None


@settings(max_examples=60, deadline=None)
@given(
    glob_rules=st.lists(rule_st, min_size=0, max_size=6),
    mod_rules=st.lists(rule_st, min_size=PATH_INDEX_MIN, max_size=60),
    requests=st.lists(st.tuples(st.sampled_from(["r", "s", "t"]), path_st), min_size=1, max_size=25),
)
def test_path_index_decides_as_a_scan(glob_rules, mod_rules, requests):
    g = _link("_global", glob_rules)
    m = _link("tenant.t", mod_rules)
    snap = Snapshot({"tenant.t": m}, g, cache_size=0)
    plan = Plan("tenant.t", "fs.read", m, g)
    for root, path in requests:
        want = _reference(glob_rules, mod_rules, root, path, "tenant.t")
        d = snap.check("tenant.t", "fs.read", root, path)
        assert (d.allowed, d.rule) == want, (root, path)
        s = plan.decide((root, path))
        assert (s.allowed, s.rule) == want, (root, path)


def test_ten_thousand_globs_under_one_root_are_indexed_and_fused():
    rules = [("entitle", "r", f"d{i}/**") for i in range(2000)]
    rules += [("entitle", "r", f"logs/l{i}/*.log") for i in range(2000)]
    rules += [("deny", "r", f"reports/*/s{i}.csv") for i in range(2000)]
    rules += [("entitle", "r", f"cache/c{i}/**/index.json") for i in range(2000)]
    rules += [("entitle", "r", "**/x.txt"), ("entitle", "r", "**")]
    g = _link("_global", [("deny", "*", "**/.ssh/**"), ("deny", "etc", "shadow")])
    m = _link("tenant.t", rules)
    plan = Plan("tenant.t", "fs.read", m, g)
    assert plan.fn != plan.decide  # fused, _global's tables scanned from their flat copies
    entitles = m.tables["fs.read"][1]
    assert entitles is not None and entitles.kind == PATH_INDEX
    # no bucket holds more than a few rules: the 2,000 "logs/..." rules are keyed by their
    # second segment, the 2,000 "reports/*/..." ones by their last
    assert max(len(b) for b in entitles.wildn.values()) <= 2
    snap = Snapshot({"tenant.t": m}, g, cache_size=0)
    cases = [
        ("d17/a/b", "src/tenant.t.pol:19:5", True),
        ("logs/l5/x.log", "src/tenant.t.pol:2007:5", True),
        ("logs/l5/sub/x.log", "src/tenant.t.pol:8003:5", True),  # only "**" matches
        ("reports/q/s9.csv", "src/tenant.t.pol:4011:5", False),
        ("cache/c3/a/b/index.json", "src/tenant.t.pol:6005:5", True),
        ("d17/.ssh/id", "src/_global.pol:2:5", False),
        ("z/x.txt", "src/tenant.t.pol:8002:5", True),
    ]
    for path, rule, allowed in cases:
        d = snap.check("tenant.t", "fs.read", "r", path)
        assert (d.allowed, d.rule) == (allowed, rule), path
        assert plan.decide(("r", path)) == d
    assert not snap.check("tenant.t", "fs.read", "other", "d17/a").allowed
