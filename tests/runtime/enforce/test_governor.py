"""Snapshot.governor: which security module governs a Python module, by dotted name."""

from __future__ import annotations

import logging

import pytest

from polc.runtime.enforce import Snapshot, link
from polc.runtime.enforce.snapshot import CONFLICT_PREFIX, FAULTS
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes

NET = [("entitle", "network.outbound", ("*.acme.com", 443))]


def linked(module, rules=NET, **kw):
    return link(read_artifact(artifact_bytes(module, rules, **kw), expected_module=module))


def snap(*names: str, glob: bool = True) -> Snapshot:
    return Snapshot({n: linked(n) for n in names}, linked("_global", []) if glob else None)


def test_own_name_and_dotted_submodules():
    s = snap("vendorlib", "tenant.acme")
    assert s.governor("vendorlib") == "vendorlib"
    assert s.governor("vendorlib.http") == "vendorlib"
    assert s.governor("vendorlib.http.pool") == "vendorlib"
    assert s.governor("tenant.acme") == "tenant.acme"
    assert s.governor("tenant.acme.api") == "tenant.acme"


def test_prefix_needs_the_dot():
    s = snap("vendorlib")
    assert s.governor("vendorlibx") is None
    assert s.governor("vendorlib_ext") is None
    assert s.governor("xvendorlib") is None
    assert s.governor("vendor") is None  # a parent is not governed by its child's module
    s = snap("tenant.acme")
    assert s.governor("tenant") is None
    assert s.governor("tenant.acmex") is None


def test_longest_match_wins():
    s = snap("vendorlib", "vendorlib.http", "vendorlib.http.pool.native")
    assert s.governor("vendorlib") == "vendorlib"
    assert s.governor("vendorlib.auth") == "vendorlib"
    assert s.governor("vendorlib.http") == "vendorlib.http"
    assert s.governor("vendorlib.http.pool") == "vendorlib.http"
    assert s.governor("vendorlib.http.pool.native") == "vendorlib.http.pool.native"
    assert s.governor("vendorlib.http.pool.native.x") == "vendorlib.http.pool.native"
    assert s.governor("vendorlib.httpx") == "vendorlib"


def test_global_never_governs_by_name():
    s = snap("vendorlib")
    assert s.governor("_global") is None
    assert s.governor("_global.sub") is None
    # even when _global is (wrongly) handed over among the modules, it is the global module only
    g = linked("_global", [])
    s = Snapshot({"_global": g, "vendorlib": linked("vendorlib")}, g)
    assert s.governor("_global") is None and s.governor("vendorlib.x") == "vendorlib"


def test_nothing_governs_the_rest():
    s = snap("vendorlib")
    for name in ("__main__", "json", "os.path", "", ".", "vendorlib.", ".vendorlib", "a..b"):
        expected = "vendorlib" if name == "vendorlib." else None
        assert s.governor(name) == expected, name
    assert snap().governor("vendorlib") is None


def test_not_a_string():
    s = snap("vendorlib")
    assert s.governor(None) is None  # type: ignore[arg-type]
    assert s.governor(b"vendorlib") is None  # type: ignore[arg-type]
    assert s.governor(["vendorlib"]) is None  # type: ignore[arg-type]

    class Sneaky(str):
        def __hash__(self):  # pragma: no cover - must never run
            raise AssertionError("hash ran")

        def __eq__(self, other):  # pragma: no cover - must never run
            raise AssertionError("eq ran")

    assert s.governor(Sneaky("vendorlib.http")) == "vendorlib"


def test_each_snapshot_has_its_own_table():
    s1 = snap("vendorlib")
    assert s1.governor("vendorlib.x") == "vendorlib"
    s2 = s1.replace([linked("vendorlib.x")])
    assert s2.governor("vendorlib.x.y") == "vendorlib.x"
    assert s1.governor("vendorlib.x.y") == "vendorlib"  # the old snapshot is untouched
    s3 = s2.replace(removed=["vendorlib"])
    assert s3.governor("vendorlib.y") is None
    assert s3.governor("vendorlib.x") == "vendorlib.x"


def test_the_table_is_built_once_per_snapshot():
    s = snap("vendorlib")
    assert s.governor("vendorlib.a") == "vendorlib"
    table = s._claims
    assert table is not None
    assert s.governor("vendorlib.b") == "vendorlib"
    assert s._claims is table


def test_governed_module_checks_with_its_rules():
    s = snap("vendorlib")
    g = s.governor("vendorlib.client")
    assert g == "vendorlib"
    assert s.check(g, "network.outbound", "api.acme.com", 443).allowed
    assert not s.check(g, "network.outbound", "api.evil.com", 443).allowed


def test_conflict_marker_is_denied_for_every_capability(caplog):
    # no two modules have one name in a snapshot, so build the conflict through the marker directly:
    # check() on a marker denies whatever the capability, without consulting any module
    s = snap("vendorlib")
    FAULTS.reset()
    with caplog.at_level(logging.WARNING, logger="polc"):
        d = s.check(CONFLICT_PREFIX + "vendorlib", "network.outbound", "api.acme.com", 443)
    assert not d.allowed and d.effect == "deny"
    assert d.reason.startswith("package vendorlib is claimed by")
    assert not s.check(CONFLICT_PREFIX + "x", "no.such.capability").allowed


@pytest.mark.parametrize("name", ["vendorlib", "a.b.c.d.e.f.g.h"])
def test_unavailable_snapshot_still_answers_governor(name):
    s = Snapshot({name: linked(name)}, None, unavailable="policy unavailable: _global failed")
    assert s.governor(name + ".sub") == name
    assert not s.check(name, "network.outbound", "api.acme.com", 443).allowed


# -- with real artifacts that carry governs (format 1.2), through the agent


def test_governs_names_bind_with_the_longest_match(tmp_path):
    from polc.runtime import PolicyAgent

    from support.agent import write_artifact

    d = tmp_path / "p"
    d.mkdir()
    write_artifact(d, "com.vendor.library", NET, governs=["vendorlib", "vendorlib_ext"])
    write_artifact(d, "com.vendor.http", [], governs=["vendorlib.http"])
    write_artifact(d, "_global", [])
    with PolicyAgent(d, reload=False) as agent:
        s = agent.snapshot
        assert s.governor("vendorlib") == "com.vendor.library"
        assert s.governor("vendorlib.client") == "com.vendor.library"
        assert s.governor("vendorlib_ext.native") == "com.vendor.library"
        assert s.governor("vendorlib.http") == "com.vendor.http"
        assert s.governor("vendorlib.http.pool") == "com.vendor.http"
        assert s.governor("vendorlibx") is None
        assert s.governor("com.vendor.library") == "com.vendor.library"  # its own name still binds
        assert s.conflicts == {}
        assert agent.check(s.governor("vendorlib.client"), "network.outbound", "api.acme.com", 443).allowed


@pytest.mark.parametrize("second", ["governs", "by name"])
def test_a_package_claimed_twice_at_run_time_is_denied_whole(tmp_path, caplog, second):
    """Tenants drop artifacts one by one: a second claim on a package (by governs, or a module named
    like the package) is not arbitrated -- every operation the package does is denied until one goes."""
    from polc.runtime import PolicyAgent, PolicyDenied

    from support.agent import write_artifact

    d = tmp_path / "p"
    d.mkdir()
    write_artifact(d, "com.vendor.library", NET, governs=["vendorlib"])
    write_artifact(d, "tenant.globex", NET)
    write_artifact(d, "_global", [])
    with PolicyAgent(d, reload_interval=0) as agent:
        assert agent.snapshot.governor("vendorlib.client") == "com.vendor.library"
        if second == "governs":
            write_artifact(d, "tenant.evil", [("entitle", "network.outbound", ())], governs=["vendorlib"])
            claimants = ("com.vendor.library", "tenant.evil")
        else:
            write_artifact(d, "vendorlib", [("entitle", "network.outbound", ())])
            claimants = ("com.vendor.library", "vendorlib")
        agent.reload_now()
        s = agent.snapshot
        FAULTS.reset()
        with caplog.at_level(logging.WARNING, logger="polc"):
            g = s.governor("vendorlib.client")
        assert g == CONFLICT_PREFIX + "vendorlib"
        assert s.conflicts == {"vendorlib": claimants}
        assert f"package vendorlib is claimed by {claimants[0]} and {claimants[1]}" in caplog.text
        d1 = agent.check(g, "network.outbound", "api.acme.com", 443)
        assert not d1.allowed and d1.reason == f"package vendorlib is claimed by {claimants[0]} and {claimants[1]}"
        with pytest.raises(PolicyDenied, match="is claimed by"):
            agent.require(g, "network.outbound", "api.acme.com", 443)
        # other modules are untouched
        assert s.governor("tenant.globex") == "tenant.globex"
        assert agent.check("tenant.globex", "network.outbound", "api.acme.com", 443).allowed
        # a removed artifact's last policy stays in force (docs/runtime.md), and so does its claim:
        # the conflict ends when an artifact in force stops claiming the package
        if second == "governs":
            write_artifact(d, "tenant.evil", [])  # its new policy claims nothing
            expected = "com.vendor.library"
        else:
            write_artifact(d, "com.vendor.library", NET)  # the vendor's module gives the name up
            expected = "vendorlib"
        agent.reload_now()
        assert agent.snapshot.governor("vendorlib.client") == expected
        assert agent.snapshot.conflicts == {}


def test_three_claimants_and_an_own_name_all_conflict(tmp_path):
    from support.agent import artifact_bytes

    def gov(name, governs):
        return link(read_artifact(artifact_bytes(name, [], governs=governs), expected_module=name))

    s = Snapshot({
        "a": gov("a", ["pkg", "solo"]),
        "b": gov("b", ["pkg"]),
        "c": gov("c", ["pkg", "d"]),
        "d": gov("d", []),
    })
    assert s.governor("pkg.x") == CONFLICT_PREFIX + "pkg"
    assert s.governor("d.y") == CONFLICT_PREFIX + "d"
    assert s.governor("solo") == "a"
    assert s.conflicts == {"pkg": ("a", "b", "c"), "d": ("c", "d")}
    assert s.check(s.governor("pkg"), "threads.create").reason == "package pkg is claimed by a, b and c"


def test_status_lists_claim_conflicts(tmp_path):
    import json

    from polc.runtime import PolicyAgent

    from support.agent import write_artifact

    d = tmp_path / "p"
    d.mkdir()
    write_artifact(d, "com.vendor.library", NET, governs=["vendorlib"])
    write_artifact(d, "_global", [])
    with PolicyAgent(d, reload=False) as agent:
        assert agent.status()["claim_conflicts"] == {}
    write_artifact(d, "tenant.evil", [], governs=["vendorlib", "x"])
    with PolicyAgent(d, reload=False) as agent:
        st = agent.status()
        assert st["claim_conflicts"] == {"vendorlib": ["com.vendor.library", "tenant.evil"]}
        json.dumps(st)
