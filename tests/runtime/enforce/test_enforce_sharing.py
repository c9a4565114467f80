"""Equal tables are one object between modules (link.py); decisions still name their own module.

A table keeps nothing of the module its rules come from, so two modules with
equal rules share it; the deciding rule's module, file:line:col, revision and
mode must still be each module's own, in decisions and in explain output.
"""

from __future__ import annotations

from polc.runtime.enforce import Snapshot, link
from polc.runtime.enforce.explain import explain
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes

RULES = [
    ("entitle", "network.outbound", ("*.shared.example.com", 443)),
    ("deny", "network.outbound", ("admin.shared.example.com",)),
    ("entitle", "network.outbound", ("api.shared.example.com", 8000)),
    ("entitle", "fs.read", ("data", "**")),
    ("deny", "fs.read", ("data", "secret/**")),
    ("entitle", "process.exec", ("git*",)),
]


def _read(module: str, rules, **kw):
    return read_artifact(artifact_bytes(module, rules, **kw), expected_module=module)


def _pair():
    a_art = _read("tenant.a", RULES, source="src/a/tenant.a.pol")
    b_art = _read("tenant.b", RULES, source="src/other/b.pol", mode="audit")
    a, b = link(a_art), link(b_art)
    return a_art, b_art, a, b


def test_equal_tables_are_shared_between_modules():
    _, _, a, b = _pair()
    assert a.tables.keys() == b.tables.keys()
    for cap in a.tables:
        for ta, tb in zip(a.tables[cap], b.tables[cap], strict=True):
            assert ta is tb  # one object: what the sharing saves
    assert a.caps is b.caps
    assert a.revision != b.revision


def test_shared_tables_decide_with_each_modules_own_name_location_and_mode():
    _, _, a, b = _pair()
    s = Snapshot({"tenant.a": a, "tenant.b": b}, None)
    da = s.check("tenant.a", "network.outbound", "x.shared.example.com", 443)
    db = s.check("tenant.b", "network.outbound", "x.shared.example.com", 443)
    assert da.allowed and db.allowed
    assert (da.module, da.rule, da.reason, da.revision) == (
        "tenant.a", "src/a/tenant.a.pol:2:5", "entitled by tenant.a", a.revision,
    )
    assert (db.module, db.rule, db.reason, db.revision) == (
        "tenant.b", "src/other/b.pol:2:5", "entitled by tenant.b", b.revision,
    )
    # the same deny rule: enforced for a, only audited for b (its mode, not the table's)
    da = s.check("tenant.a", "network.outbound", "admin.shared.example.com", 443)
    db = s.check("tenant.b", "network.outbound", "admin.shared.example.com", 443)
    assert not da.allowed and not da.audit and da.rule == "src/a/tenant.a.pol:3:5"
    assert db.allowed and db.audit and db.effect == "deny" and db.rule == "src/other/b.pol:3:5"
    assert da.module == "tenant.a" and db.module == "tenant.b"
    for mod, src in (("tenant.a", "src/a/tenant.a.pol"), ("tenant.b", "src/other/b.pol")):
        d = s.check(mod, "fs.read", "data", "secret/k")
        assert d.rule == f"{src}:6:5" and d.reason == f"denied by {mod}"
        d = s.check(mod, "process.exec", "git")
        assert d.allowed and d.rule == f"{src}:7:5"


def test_a_module_equal_to_global_keeps_its_tier():
    """_global's rules equal to a module's are a different table (another tier); a module
    without rules of its own is decided by _global's, named as _global's."""
    glob = link(_read("_global", RULES, source="src/_global.pol"))
    _, _, a, _ = _pair()
    assert glob.tables["network.outbound"][1] is not a.tables["network.outbound"][1]
    s = Snapshot({"tenant.a": a}, glob)
    d = s.check("tenant.a", "network.outbound", "admin.shared.example.com", 443)
    assert not d.allowed and d.rule == "src/_global.pol:3:5" and d.reason == "denied by _global"
    d = s.check("tenant.a", "network.outbound", "x.shared.example.com", 443)
    assert d.allowed and d.rule == "src/a/tenant.a.pol:2:5" and d.module == "tenant.a"
    d = s.check("tenant.c", "network.outbound", "x.shared.example.com", 443)
    assert d.allowed and d.rule == "src/_global.pol:2:5" and d.module == "tenant.c"
    assert d.reason == "entitled by _global"


def test_explain_names_each_modules_own_rules():
    a_art, b_art, a, b = _pair()
    s = Snapshot({"tenant.a": a, "tenant.b": b}, None)
    programs = {"tenant.a": a_art, "tenant.b": b_art}
    for mod, src in (("tenant.a", "src/a/tenant.a.pol"), ("tenant.b", "src/other/b.pol")):
        ex = explain(programs, s, mod, "network.outbound", "api.shared.example.com", 8000)
        assert ex.agrees
        assert ex.decision.rule == ex.expected_rule == f"{src}:4:5"
        assert ex.decision.module == mod
        assert {r.module for r in ex.rules} == {mod}
        assert all(r.location.startswith(src + ":") for r in ex.rules)
