"""The enforcer: decision semantics (docs/design.md), indexing, the decision cache."""

from __future__ import annotations

import decimal
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polc.runtime import patterns
from polc.runtime.catalog import Capability, Param
from polc.runtime.enforce import Decision, Snapshot, link, normalize
from polc.runtime.enforce.index import HOST_INDEX
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes


def linked(module, rules, **kw):
    return link(read_artifact(artifact_bytes(module, rules, **kw), expected_module=module))


def snap(modules: dict, glob=None, **kw) -> Snapshot:
    mods = {name: linked(name, rules) for name, rules in modules.items()}
    g = linked("_global", glob) if glob is not None else None
    return Snapshot(mods, g, **kw)


ACME = [
    ("entitle", "network.outbound", ("*.acme.com", 443)),
    ("entitle", "network.outbound", ("api.partner.com", 443)),
    ("entitle", "fs.read", ("tenants/acme", "**")),
    ("deny", "process.exec", ()),
]
GLOBAL = [
    ("deny", "network.outbound", ("evil.example.com",)),
    ("deny", "network.outbound", ("10.0.0.0/8",)),
    ("entitle", "threads.create", ()),
]


@pytest.fixture
def s():
    return snap({"tenant.acme": ACME}, GLOBAL)


def test_entitle_allows_and_reports_rule(s):
    d = s.check("tenant.acme", "network.outbound", "api.acme.com", 443)
    assert d and d.allowed and d.effect == "allow" and not d.audit
    assert d.rule == "src/tenant.acme.pol:2:5"
    assert d.module == "tenant.acme"
    assert d.revision == s.modules["tenant.acme"].revision
    assert d.reason == "entitled by tenant.acme"


def test_star_is_exactly_one_label(s):
    assert not s.check("tenant.acme", "network.outbound", "a.b.acme.com", 443)
    assert not s.check("tenant.acme", "network.outbound", "acme.com", 443)
    assert s.check("tenant.acme", "network.outbound", "API.Acme.COM.", 443)


def test_no_entitlement_is_deny(s):
    d = s.check("tenant.acme", "network.outbound", "api.acme.com", 80)
    assert not d and d.effect == "deny" and d.reason == "no entitlement" and d.rule is None
    assert d.revision == s.modules["tenant.acme"].revision


def test_global_deny_overrides_module_entitle():
    s = snap({"m": [("entitle", "network.outbound", ())]}, GLOBAL)
    d = s.check("m", "network.outbound", "evil.example.com", 443)
    assert not d and d.reason == "denied by _global" and d.rule == "src/_global.pol:2:5"
    assert d.revision == s.glob.revision
    assert s.check("m", "network.outbound", "good.example.com", 443)
    assert not s.check("m", "network.outbound", "10.2.3.4", 443)
    assert s.check("m", "network.outbound", "11.2.3.4", 443)


def test_module_deny_overrides_global_entitle():
    s = snap({"m": [("deny", "threads.create", ())]}, GLOBAL)
    assert not s.check("m", "threads.create")
    assert s.check("other", "threads.create")


def test_unknown_module_gets_global_only(s):
    d = s.check("tenant.nobody", "threads.create")
    assert d and d.reason == "entitled by _global"
    d = s.check("tenant.nobody", "network.outbound", "api.acme.com", 443)
    assert not d and d.reason == "no entitlement" and d.revision is None


def test_first_deny_in_source_order_across_index_buckets():
    rules = [
        ("deny", "network.outbound", ("*", 22)),  # rest bucket, index 0
        ("deny", "network.outbound", ("**.acme.com",)),  # wildn bucket, index 1
        ("deny", "network.outbound", ("*.acme.com",)),  # wild1 bucket, index 2
        ("deny", "network.outbound", ("x.acme.com",)),  # exact bucket, index 3
    ]
    s = snap({"m": rules})
    assert s.check("m", "network.outbound", "x.acme.com", 22).rule.endswith(":2:5")
    assert s.check("m", "network.outbound", "x.acme.com", 23).rule.endswith(":3:5")
    rules.reverse()
    s = snap({"m": rules})
    assert s.check("m", "network.outbound", "x.acme.com", 22).rule.endswith(":2:5")
    assert s.check("m", "network.outbound", "y.acme.com", 22).rule.endswith(":3:5")
    assert s.check("m", "network.outbound", "a.y.acme.com", 22).rule.endswith(":4:5")


def test_ip_literals_match_only_cidr_rules():
    s = snap({"m": [("entitle", "network.outbound", ("*",)), ("deny", "network.outbound", ("**",))]})
    assert not s.check("m", "network.outbound", "a.com", 1)  # ** denies names
    assert s.check("m", "network.outbound", "1.2.3.4", 1)  # ...but not addresses
    assert s.check("m", "network.outbound", "::1", 1)
    s = snap({"m": [("entitle", "network.outbound", ("2001:db8::/32", (8000, 8999)))]})
    assert s.check("m", "network.outbound", "2001:db8::5", 8080)
    assert s.check("m", "network.outbound", "[2001:db8::5]", 8080)
    assert not s.check("m", "network.outbound", "2001:db9::5", 8080)
    assert not s.check("m", "network.outbound", "2001:db8::5", 9000)


def test_paths_are_normalised_and_escapes_denied(s):
    ok = ["a/b", "a/./b", "a//b", "a/../b", "x/y/../z", ""]
    for p in ok:
        assert s.check("tenant.acme", "fs.read", "tenants/acme", p), p
    for p in ["../x", "a/../../x", "/etc/passwd", "a\0b"]:
        d = s.check("tenant.acme", "fs.read", "tenants/acme", p)
        assert not d and d.reason.startswith("invalid argument 'path' of fs.read"), (p, d)
    assert not s.check("tenant.acme", "fs.read", "tenants/other", "a")


def test_path_globs():
    s = snap({"m": [("entitle", "fs.read", ("r", "logs/**/*.txt")), ("entitle", "fs.read", ("r", "a/?"))]})
    assert s.check("m", "fs.read", "r", "logs/a.txt")
    assert s.check("m", "fs.read", "r", "logs/x/y/a.txt")
    assert not s.check("m", "fs.read", "r", "logs/x/y/a.txt/b")
    assert s.check("m", "fs.read", "r", "a/b")
    assert not s.check("m", "fs.read", "r", "a/bc")


@pytest.mark.parametrize(
    "cap, args, reason",
    [
        ("network.inbound", (), "unknown capability 'network.inbound'"),
        ("network.outbound", ("a.com",), "wrong arity: network.outbound takes 2 arguments, got 1"),
        ("threads.create", (1,), "wrong arity: threads.create takes 0 arguments, got 1"),
        ("network.outbound", ("a.com", 70000), "invalid argument 'port' of network.outbound: port 70000 out of range"),
        ("network.outbound", ("a.com", True), "invalid argument 'port' of network.outbound: expected a port"),
        ("network.outbound", ("a.com", 443.0), "invalid argument 'port' of network.outbound: expected a port"),
        ("network.outbound", ("a.com", "443"), "invalid argument 'port'"),
        ("network.outbound", ("bad host!", 443), "invalid argument 'host' of network.outbound: malformed host"),
        ("network.outbound", (None, 443), "invalid argument 'host'"),
        ("fs.read", (b"x", "a"), "invalid argument 'root' of fs.read: expected a string"),
    ],
)
def test_bad_requests_are_denied_with_a_reason(s, cap, args, reason):
    d = s.check("tenant.acme", cap, *args)
    assert not d and d.effect == "deny" and d.rule is None
    assert d.reason.startswith(reason), d.reason


def test_check_never_raises_on_garbage(s):
    weird = [[], {}, object(), float("nan"), 2**200, -1, "\udcff", "x" * 10_000, ("a",), None]
    for m in ["tenant.acme", None, 3, ["x"], "x" * 1000]:
        for cap in ["network.outbound", "fs.read", None, ["x"], ""]:
            for a in weird:
                for args in [(a,), (a, a), ("a.com", a), (a, 443)]:
                    d = s.check(m, cap, *args)
                    assert isinstance(d, Decision) and not d.allowed


def test_bool_and_float_never_hit_an_int_cache_entry():
    s = snap({"m": [("entitle", "network.listen", (1,)), ("entitle", "env.read", ("HOME",))]})
    assert s.check("m", "network.listen", 1)
    assert s.check("m", "network.listen", 1)  # cached
    assert not s.check("m", "network.listen", True)
    assert not s.check("m", "network.listen", 1.0)
    assert not s.check("m", "network.listen", decimal.Decimal(1))
    # and the reverse order: a cached refusal of True must not refuse 1
    s = snap({"m": [("entitle", "network.listen", (1,))]})
    assert not s.check("m", "network.listen", True)
    assert s.check("m", "network.listen", 1)


def test_int_subclasses_and_str_subclasses_are_accepted():
    import enum

    class Port(enum.IntEnum):
        HTTPS = 443

    class S(str):
        pass

    s = snap({"m": [("entitle", "network.outbound", ("a.com", 443))]})
    assert s.check("m", "network.outbound", "a.com", Port.HTTPS)
    assert s.check(S("m"), S("network.outbound"), S("a.com"), 443)


def test_unhashable_args_are_decided_without_cache():
    s = snap({"m": [("entitle", "network.outbound", ())]})
    d = s.check("m", "network.outbound", ["a.com"], 443)
    assert not d and "host" in d.reason


def test_cache_is_bounded_and_optional():
    s = snap({"m": [("entitle", "network.listen", ((0, 65535),))]}, cache_size=10)
    for port in range(100):
        assert s.check("m", "network.listen", port)
        assert len(s._cache) <= 10
    s0 = snap({"m": [("entitle", "network.listen", ((0, 65535),))]}, cache_size=0)
    assert s0.check("m", "network.listen", 5) and not s0._cache


def test_audit_mode_reports_and_logs_would_deny(caplog):
    m = linked("m", [("deny", "process.exec", ("rm*",)), ("entitle", "env.read", ("HOME",))], mode="audit")
    s = Snapshot({"m": m}, None)
    with caplog.at_level(logging.INFO, logger="polc"):
        for _ in range(3):  # miss, then cache hits: logged every time
            d = s.check("m", "process.exec", "rm -rf /")
            assert d.allowed and bool(d) and d.effect == "deny" and d.audit
            assert d.reason == "denied by m" and d.rule.endswith(":2:5")
        d2 = s.check("m", "env.read", "PATH")
        assert d2.allowed and d2.audit and d2.reason == "no entitlement"
        d3 = s.check("m", "env.read", "HOME")
        assert d3.allowed and not d3.audit
    would = [r for r in caplog.records if "would deny" in r.getMessage()]
    assert len(would) == 4
    # a request error is not a policy decision: not audited
    assert not s.check("m", "env.read", 3).allowed


def test_audit_is_decided_by_the_artifact_that_decided():
    g = linked("_global", [("deny", "network.outbound", ("evil.com",))])  # enforce
    m = linked("m", [("entitle", "network.outbound", ())], mode="audit")
    s = Snapshot({"m": m}, g)
    d = s.check("m", "network.outbound", "evil.com", 1)
    assert not d.allowed and not d.audit  # _global enforces its deny
    ga = linked("_global", [("entitle", "threads.create", ())], mode="audit")
    s = Snapshot({}, ga)
    d = s.check("nobody", "env.read", "X")  # no module artifact: _global's mode
    assert d.allowed and d.audit and d.revision is None


def test_declared_capability_and_signature_conflict():
    tool = Capability("tool.call", (Param("server", "string"), Param("tool", "string")))
    other = Capability("tool.call", (Param("n", "int"),))
    g = link(read_artifact(artifact_bytes("_global", [("deny", "tool.call", ("evil",))], caps={"tool.call": tool}), expected_module="_global"))
    m = link(read_artifact(artifact_bytes("m", [("entitle", "tool.call", ("mcp-*", "search"))], caps={"tool.call": tool}), expected_module="m"))
    s = Snapshot({"m": m}, g)
    assert s.check("m", "tool.call", "mcp-1", "search")
    assert not s.check("m", "tool.call", "evil", "search")
    assert not s.check("nobody", "tool.call", "mcp-1", "search")  # signature from _global
    assert s.check("nobody", "tool.call", "mcp-1", "search").reason == "no entitlement"
    bad = link(read_artifact(artifact_bytes("bad", [("entitle", "tool.call", (1,))], caps={"tool.call": other}), expected_module="bad"))
    s = Snapshot({"bad": bad}, g)
    d = s.check("bad", "tool.call", 1)
    assert not d and "declared as" in d.reason


def test_unavailable_snapshot_denies_everything():
    s = Snapshot({}, None, unavailable="_global.bin failed to load: checksum mismatch")
    d = s.check("m", "threads.create")
    assert not d and d.reason.startswith("_global.bin failed")


def test_decision_is_immutable_and_serialisable(s):
    d = s.check("tenant.acme", "network.outbound", "api.acme.com", 443)
    with pytest.raises(AttributeError):
        d.allowed = False  # type: ignore[misc]
    assert d.to_dict() == {
        "allowed": True,
        "effect": "allow",
        "reason": "entitled by tenant.acme",
        "rule": "src/tenant.acme.pol:2:5",
        "module": "tenant.acme",
        "revision": d.revision,
        "audit": False,
    }
    assert d == s.decide_uncached("tenant.acme", "network.outbound", "api.acme.com", 443)


def test_indexed_table_does_not_scan():
    rules = [("entitle", "network.outbound", (f"h{i}.example.com", 443)) for i in range(1000)]
    rules += [("entitle", "network.outbound", (f"*.d{i}.com", (8000, 8999))) for i in range(1000)]
    m = linked("m", rules)
    ent = m.tables["network.outbound"][1]
    assert ent.kind == HOST_INDEX and not ent.rest
    s = Snapshot({"m": m}, None)
    assert s.check("m", "network.outbound", "h999.example.com", 443).rule.endswith(":1001:5")
    assert s.check("m", "network.outbound", "x.d7.com", 8080).rule.endswith(f":{1000 + 7 + 2}:5")
    assert not s.check("m", "network.outbound", "x.d7.com", 443)


DNSISH = st.text(alphabet="abcAZ09-_.*/: []", max_size=20)


@settings(max_examples=400, deadline=None)
@given(st.one_of(DNSISH, st.from_regex(r"[a-z0-9]{1,5}(\.[a-z0-9]{1,5}){0,3}\.?", fullmatch=True)))
def test_fast_host_normalisation_equals_patterns(value):
    normalize.HOST_MEMO.clear()
    normalize.HOST_BAD.clear()
    try:
        expected = patterns.normalize_host(value)
    except ValueError:
        with pytest.raises(ValueError):
            normalize.norm_host(value)
        return
    assert normalize.norm_host(value) == expected
    assert normalize.norm_host(value) == expected  # memoised


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab./\0*", max_size=12))
def test_fast_path_normalisation_equals_patterns(value):
    normalize.PATH_MEMO.clear()
    normalize.PATH_BAD.clear()
    try:
        expected = patterns.normalize_path(value)
    except ValueError:
        with pytest.raises(ValueError):
            normalize.norm_path(value)
        return
    assert normalize.norm_path(value) == expected
    assert normalize.norm_path(value) == expected
