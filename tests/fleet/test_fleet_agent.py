"""A running PolicyAgent with a source: a published change is enforced within the pull interval
plus one second, idle cycles are 304s, failures keep the set in force, and a restart with the
origin down enforces the last good set. Waits are conditions with deadlines."""

from __future__ import annotations

import time

import pytest

from polc.runtime.agent import PolicyAgent
from polc.runtime.errors import ConfigError
from polc.runtime.fleet.puller import PullLoop
from polc.runtime.signing import TrustConfig

from support.agent import wait_for
from support.fleet import PLATFORM, OriginServer, Site, art

PULL = 1.0

V1 = {"_global": art("_global", "g.example"), "tenant.acme": art("tenant.acme", "a1.example")}
V2 = dict(V1, **{"tenant.acme": art("tenant.acme", "a2.example")})


def ok(agent: PolicyAgent, host: str) -> bool:
    return agent.check("tenant.acme", "network.outbound", host, 443).allowed


@pytest.fixture
def agents():
    made: list[PolicyAgent] = []

    def make(*args, **kw) -> PolicyAgent:
        agent = PolicyAgent(*args, **kw)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()


def test_a_published_change_is_enforced_within_the_pull_interval_plus_one_second(
    site: Site, origin: OriginServer, trust, tmp_path, agents
):
    site.publish(V1, set_name="prod")
    # reload=False: no directory poller at all, so only the pull's own reload can show the change
    agent = agents(str(tmp_path / "mirror"), trust=trust, source=origin.url, pull_interval=PULL, reload=False)
    agent.start()  # an empty directory: the first pull runs before the first load
    assert ok(agent, "a1.example") and not ok(agent, "a2.example")
    assert agent.status()["source"]["revision"] == 1
    wait_for(lambda: agent.status()["source"]["pulls"]["unchanged"] >= 1, timeout=PULL * 1.2 + 5)
    origin.take()

    site.publish(V2)
    published = time.monotonic()
    wait_for(lambda: ok(agent, "a2.example"), timeout=PULL + 1.0, interval=0.005)
    elapsed = time.monotonic() - published
    assert elapsed <= PULL + 1.0
    assert not ok(agent, "a1.example")
    wait_for(lambda: agent.status()["source"]["revision"] == 2, timeout=1.0)
    fetched = [r.path for r in origin.take() if "/objects/" in r.path]
    assert len(fetched) == 1 and fetched[0].endswith(".bin")  # only tenant.acme's new object


def test_idle_cycles_of_a_running_agent_are_conditional_gets_answered_304(site, origin, trust, tmp_path, agents):
    site.publish(V1)
    agent = agents(str(tmp_path / "mirror"), trust=trust, source=origin.url, pull_interval=0.1).start()
    origin.take()
    wait_for(lambda: agent.status()["source"]["pulls"]["unchanged"] >= 5, timeout=10)
    reqs = origin.take()
    assert reqs and all(r.path.endswith("/manifest.json") and r.status == 304 and r.if_none_match for r in reqs)


def test_failures_keep_the_set_and_say_why_in_status(site, origin, trust, tmp_path, agents):
    site.publish(V1)
    agent = agents(str(tmp_path / "mirror"), trust=trust, source=origin.url, pull_interval=0.1).start()
    site.publish(V2, signer=PLATFORM)  # no manifest scope
    wait_for(lambda: agent.status()["source"]["consecutive_failures"] >= 2, timeout=10)
    src = agent.status()["source"]
    assert src["last_error_reason"] == "bad manifest signature" and "may not sign manifests" in src["last_error"]
    assert src["revision"] == 1 and ok(agent, "a1.example") and not ok(agent, "a2.example")
    origin.faults["manifest.json"] = 503
    wait_for(lambda: agent.status()["source"]["last_error_reason"] == "server error", timeout=10)
    assert ok(agent, "a1.example")
    origin.faults.clear()
    site.publish(V2)
    wait_for(lambda: ok(agent, "a2.example"), timeout=10)
    # The pull's outcome is recorded right after its switch (status() takes no lock).
    wait_for(lambda: agent.status()["source"]["consecutive_failures"] == 0, timeout=10)
    src = agent.status()["source"]
    assert src["consecutive_failures"] == 0 and src["last_error"] is None and src["last_success"]


def test_restart_with_the_origin_down_enforces_the_last_good_set(site, origin, trust, tmp_path, agents):
    directory = str(tmp_path / "mirror")
    site.publish(V1)
    first = agents(directory, trust=trust, source=origin.url, pull_interval=0.2).start()
    site.publish(V2)
    wait_for(lambda: ok(first, "a2.example"), timeout=10)
    first.stop()
    origin.stop()

    again = agents(directory, trust=trust, source=origin.url, pull_interval=0.1)
    again.start()
    assert ok(again, "a2.example") and not ok(again, "a1.example")  # what is on disk, at once
    assert again.status()["source"]["revision"] == 2
    wait_for(lambda: again.status()["source"]["consecutive_failures"] >= 1, timeout=10)
    src = again.status()["source"]
    assert src["last_error_reason"] == "unreachable" and src["revision"] == 2
    assert ok(again, "a2.example")


def test_first_start_with_the_origin_down_serves_nothing_and_says_why(origin, trust, tmp_path, agents):
    origin.stop()
    agent = agents(str(tmp_path / "mirror"), trust=trust, source=origin.url, pull_interval=5).start()
    assert agent.check("tenant.acme", "network.outbound", "a1.example", 443).reason == "no entitlement"
    assert agent.status()["source"]["last_error_reason"] == "unreachable"


def test_a_replayed_set_is_refused_by_a_running_agent(site, origin, trust, tmp_path, agents):
    site.publish(V1)
    old = site.snapshot()
    agent = agents(str(tmp_path / "mirror"), trust=trust, source=origin.url, pull_interval=0.1).start()
    site.publish(V2)
    wait_for(lambda: ok(agent, "a2.example"), timeout=10)
    site.restore(old)
    wait_for(lambda: agent.status()["source"]["last_error_reason"] == "rollback", timeout=10)
    assert agent.status()["source"]["last_error"] == "rollback: revision 1 is below 2 already accepted"
    assert ok(agent, "a2.example") and not ok(agent, "a1.example")


# --------------------------------------------------------------------------- configuration


def test_source_needs_a_trust_with_a_manifest_key(site, tmp_path):
    with pytest.raises(ConfigError, match="needs a trust configuration"):
        PolicyAgent(str(tmp_path / "m"), source=site.url)
    no_manifest_key = TrustConfig([TrustConfig.key(PLATFORM, ["**"])])
    with pytest.raises(ConfigError, match="lists no key with manifest = true"):
        PolicyAgent(str(tmp_path / "m"), source=site.url, trust=no_manifest_key)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("POLC_SOURCE", "", "POLC_SOURCE='': set but empty"),
        ("POLC_SOURCE", "   ", "set but empty"),
        ("POLC_SOURCE", " http://h/p", "leading or trailing whitespace"),
        ("POLC_SOURCE", "http://h/p\n", "leading or trailing whitespace"),
        ("POLC_SOURCE", "http://h/a b", "no spaces or control characters"),
        ("POLC_SOURCE", "/srv/policies", "expected a URL"),
        ("POLC_SOURCE", "gopher://h/p", "unsupported URL scheme"),
        ("POLC_PULL_INTERVAL", "", "POLC_PULL_INTERVAL='': set but empty"),
        ("POLC_PULL_INTERVAL", "0", "must be above 0"),
        ("POLC_PULL_INTERVAL", "soon", "expected a number of seconds"),
        ("POLC_SOURCE_ENDPOINT", "", "POLC_SOURCE_ENDPOINT='': set but empty"),
        ("POLC_SOURCE_ENDPOINT", "http://s3.local", "applies to s3:// URLs only"),
    ],
)
def test_source_variables_are_read_as_hostile(monkeypatch, site, trust, tmp_path, name, value, message):
    monkeypatch.setenv("POLC_SOURCE", "http://127.0.0.1:9/policies")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        PolicyAgent(str(tmp_path / "m"), trust=trust)


def test_source_from_the_environment(monkeypatch, site, trust, tmp_path, agents):
    site.publish(V1)
    monkeypatch.setenv("POLC_SOURCE", site.url)
    monkeypatch.setenv("POLC_PULL_INTERVAL", "0.5")
    agent = agents(str(tmp_path / "m"), trust=trust).start()
    assert agent.source == site.url and agent.pull_interval == 0.5 and ok(agent, "a1.example")


def test_s3_without_boto3_names_the_extra(trust, tmp_path, monkeypatch):
    # boto3 is in the test extra, so its absence is made certain: a None entry in
    # sys.modules makes every `import boto3` raise ImportError.
    import sys

    from polc.runtime.errors import OriginError

    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(OriginError, match=r"pip install 'polc\[s3\]'"):
        PolicyAgent(str(tmp_path / "m"), trust=trust, source="s3://bucket/prefix")


# --------------------------------------------------------------------------- the loop's timing


def test_pull_loop_jitter_and_backoff_stay_in_their_bounds():
    import random

    loop = PullLoop(lambda: None, 5.0, rng=random.Random(7), max_backoff=60)  # type: ignore[arg-type,return-value]
    ok_delays = [loop.next_delay(True) for _ in range(2000)]
    assert 4.0 <= min(ok_delays) < 4.2 and 5.8 < max(ok_delays) <= 6.0  # +-20 %, both ends reached
    backoff = [loop.next_delay(False) for _ in range(8)]
    ceilings = [min(60, 5.0 * 2**n) for n in range(1, 9)]
    assert all(c / 2 <= d <= c for d, c in zip(backoff, ceilings, strict=True))
    assert backoff[-1] <= 60 and loop.failures == 8
    assert 4.0 <= loop.next_delay(True) <= 6.0 and loop.failures == 0  # a success resets the backoff


def test_pull_loop_starts_at_a_random_offset():
    import random
    import threading

    started = []
    done = threading.Event()

    def cycle():
        started.append(time.monotonic())
        done.set()
        from polc.runtime.fleet.puller import CycleResult

        return CycleResult("unchanged", None)

    offsets = []
    for seed in range(3):
        loop = PullLoop(cycle, 0.5, rng=random.Random(seed))
        expected = random.Random(seed).uniform(0, 0.5)
        t0 = time.monotonic()
        done.clear()
        loop.start()
        assert done.wait(10)
        loop.stop()
        offsets.append((started[-1] - t0, expected))
    for measured, expected in offsets:
        assert measured >= expected - 0.01  # never earlier than drawn
    assert len({round(e, 3) for _, e in offsets}) == 3  # a different offset per agent


def test_the_runtime_does_not_import_the_fleet_package(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\nfrom polc.runtime import PolicyAgent\n"
        f"PolicyAgent({str(tmp_path)!r}, reload=False).start().check('m', 'threads.create')\n"
        "print(sorted(m for m in sys.modules if m.startswith('polc.runtime.fleet') or m in ('http.client', 'boto3')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_module_dropped_from_the_set_keeps_its_policy_in_a_running_agent(site, origin, trust, tmp_path, agents):
    site.publish(dict(V1, **{"tenant.globex": art("tenant.globex", "x.example")}))
    agent = agents(str(tmp_path / "mirror"), trust=trust, source=origin.url, pull_interval=0.1).start()
    assert agent.check("tenant.globex", "network.outbound", "x.example", 443).allowed
    site.publish(V1)
    wait_for(lambda: agent.status()["source"]["revision"] == 2, timeout=10)
    assert not (tmp_path / "mirror" / "tenant.globex.bin").exists()
    assert agent.check("tenant.globex", "network.outbound", "x.example", 443).allowed  # as for any deleted artifact
    assert agent.status()["modules"]["tenant.globex"]["last_error"]
    fresh = PolicyAgent(str(tmp_path / "mirror"), trust=trust, reload=False).start()
    assert not fresh.check("tenant.globex", "network.outbound", "x.example", 443).allowed
