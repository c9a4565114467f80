"""PolicyDenied, PolicyAgent.require and the @agent.requires decorator, on real artifacts in a directory."""

from __future__ import annotations

import asyncio
import copy
import logging
import pickle
import urllib.error
from pathlib import Path

import pytest

import polc.runtime
from polc.runtime import Decision, PolicyAgent, PolicyDenied
from polc.runtime.errors import PolcError

from support.agent import write_artifact

ACME = [
    ("entitle", "network.outbound", ("*.acme.com", 443)),
    ("entitle", "fs.read", ("config", "**")),
    ("deny", "fs.read", ("config", "secret/**")),
]


@pytest.fixture
def agent(tmp_path: Path):
    d = tmp_path / "policies"
    d.mkdir()
    write_artifact(d, "tenant.acme", ACME)
    write_artifact(d, "tenant.audited", [("deny", "process.exec", ())], mode="audit")
    write_artifact(d, "_global", [("deny", "network.outbound", ("*.evil.com",))], source="policies-src/_global.pol")
    with PolicyAgent(d, reload=False) as a:
        yield a


def test_exported_lazily_from_polc_runtime():
    assert "PolicyDenied" in polc.runtime.__all__
    assert "PolicyDenied" in dir(polc.runtime)
    assert polc.runtime.PolicyDenied is PolicyDenied
    assert issubclass(PolicyDenied, PolcError)
    assert issubclass(PolicyDenied, PermissionError)


def test_require_returns_the_decision_when_allowed(agent):
    d = agent.require("tenant.acme", "network.outbound", "api.acme.com", 443)
    assert type(d) is Decision and d.allowed and d.effect == "allow"


def test_require_raises_on_a_deny_rule_with_every_attribute(agent):
    with pytest.raises(PolicyDenied) as info:
        agent.require("tenant.acme", "network.outbound", "api.evil.com", 443)
    e = info.value
    assert str(e) == (
        "polc: tenant.acme may not network.outbound('api.evil.com', 443): denied by policies-src/_global.pol:2:5"
    )
    assert e.decision == agent.check("tenant.acme", "network.outbound", "api.evil.com", 443)
    assert e.decision.allowed is False and e.decision.rule == "policies-src/_global.pol:2:5"
    assert (e.package, e.module, e.capability, e.args, e.site) == (
        None,
        "tenant.acme",
        "network.outbound",
        ("api.evil.com", 443),
        None,
    )
    assert e.errno == 13
    assert isinstance(e, PermissionError) and isinstance(e, OSError)


def test_require_raises_on_no_entitlement_with_the_reason(agent):
    with pytest.raises(PolicyDenied, match=r"^polc: tenant\.acme may not process\.exec\('/bin/sh'\): no entitlement$"):
        agent.require("tenant.acme", "process.exec", "/bin/sh")


def test_audit_mode_deny_does_not_raise_and_is_logged(agent, caplog):
    with caplog.at_level(logging.INFO, logger="polc"):
        d = agent.require("tenant.audited", "process.exec", "/bin/true")
    assert d.allowed and d.audit and d.effect == "deny"
    assert "would deny tenant.audited process.exec" in caplog.text


def test_message_with_package_and_site():
    d = Decision(False, "deny", "denied by _global", "policies-src/_global.pol:5:5", "com.vendor.library", "r")
    e = PolicyDenied(
        d, "com.vendor.library", "network.outbound", ("api.evil.com", 443), package="vendorlib",
        site="vendorlib/client.py:42",
    )
    assert str(e) == (
        "polc: vendorlib may not network.outbound('api.evil.com', 443): "
        "denied by policies-src/_global.pol:5:5 (vendorlib/client.py:42)"
    )
    assert e.message == str(e)
    # survives pickling (multiprocessing, concurrent.futures) and copying
    for clone in (pickle.loads(pickle.dumps(e)), copy.copy(e)):
        assert type(clone) is PolicyDenied and str(clone) == str(e)
        assert (clone.decision, clone.package, clone.module, clone.capability, clone.args, clone.site) == (
            d, "vendorlib", "com.vendor.library", "network.outbound", ("api.evil.com", 443), "vendorlib/client.py:42",
        )


def test_message_quotes_hostile_arguments_safely():
    class Loud:
        def __repr__(self) -> str:  # pragma: no cover - must never run
            raise AssertionError("repr ran")

    d = Decision(False, "deny", "no entitlement", None, "m")
    e = PolicyDenied(d, "m", "x.y", ("a" * 1000, Loud(), 10**200, *range(10)))
    text = str(e)
    assert "'" + "a" * 200 + "'..." in text and "<Loud>" in text and "<int of 665 bits>" in text
    assert text.endswith(", ...): no entitlement")


def test_wrapped_by_urllib_as_the_reason(agent):
    # a client that wraps OSError carries the denial as its reason
    try:
        try:
            agent.require("tenant.acme", "network.outbound", "x.evil.com", 443)
        except OSError as err:
            raise urllib.error.URLError(err) from err
    except urllib.error.URLError as wrapped:
        assert isinstance(wrapped.reason, PolicyDenied)
        assert wrapped.reason.capability == "network.outbound"


def test_requires_static_arguments(agent):
    calls = []

    @agent.requires("tenant.acme", "network.outbound", "api.acme.com", 443)
    def ok(x):
        calls.append(x)
        return x * 2

    @agent.requires("tenant.acme", "network.outbound", "api.evil.com", 443)
    def bad(x):  # pragma: no cover - must never run
        calls.append(x)

    assert ok(21) == 42 and ok.__name__ == "ok"
    with pytest.raises(PolicyDenied, match="api.evil.com"):
        bad(1)
    assert calls == [21]


def test_requires_computed_arguments_bound_by_name(agent):
    opened = []

    @agent.requires(lambda tenant, **_: tenant, "fs.read", "config", lambda path, **_: path)
    def load(tenant, path, *, encoding="utf-8"):
        opened.append((tenant, path, encoding))
        return path

    assert load("tenant.acme", "app.toml") == "app.toml"
    assert load(path="db.toml", tenant="tenant.acme", encoding="latin-1") == "db.toml"
    with pytest.raises(PolicyDenied) as info:
        load("tenant.acme", "secret/key.pem")
    assert info.value.args == ("config", "secret/key.pem")
    assert info.value.module == "tenant.acme"
    with pytest.raises(PolicyDenied, match="^polc: tenant.globex may not fs.read"):
        load("tenant.globex", "app.toml")
    assert opened == [("tenant.acme", "app.toml", "utf-8"), ("tenant.acme", "db.toml", "latin-1")]


def test_requires_on_a_coroutine_function_checks_before_it_runs(agent):
    ran = []

    @agent.requires("tenant.acme", "network.outbound", lambda host, **_: host, 443)
    async def fetch(host):
        ran.append(host)
        return host

    assert asyncio.run(fetch("api.acme.com")) == "api.acme.com"
    with pytest.raises(PolicyDenied):
        asyncio.run(fetch("api.evil.com"))
    assert ran == ["api.acme.com"]


def test_requires_sees_reloads(agent, tmp_path):
    @agent.requires("tenant.acme", "network.outbound", "api.acme.com", 443)
    def call():
        return "done"

    assert call() == "done"
    write_artifact(tmp_path / "policies", "tenant.acme", [("deny", "network.outbound", ())])
    agent.reload_now()
    with pytest.raises(PolicyDenied, match="denied by src/tenant.acme.pol:2:5"):
        call()


def test_requires_rejects_a_capability_that_is_not_a_string(agent):
    with pytest.raises(TypeError, match="capability must be a string"):
        agent.requires("tenant.acme", None, 1)  # type: ignore[arg-type]
