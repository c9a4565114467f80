"""Publish -> pull -> enforce on a real S3 store (SeaweedFS), through the real command line.

The publisher's key writes (``polc publish`` in the end-to-end test, ``publish()`` through a
real ``S3Store`` elsewhere); agents (``polc run --source``, ``polc pull``,
``PolicyAgent(source=...)``) read with the read-only reader's key, through a recording proxy
where requests are counted by key and status; SeaweedFS's own counters confirm the idle cycles
are 304s. Keys are revoked and rotated at the store itself (its S3 configuration, reloaded on
SIGHUP).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from polc.runtime.agent import PolicyAgent
from polc.runtime.fleet.publish import publish as fleet_publish
from polc.runtime.fleet.s3 import S3Store

from support.agent import wait_for
from support.fleet import PLATFORM, PUBLISHER, art, make_trust, write_trust_file
from support.seaweed import RecordingProxy
from support.sidecar import sidecar, until  # noqa: F401 - the sidecar fixture

pytestmark = pytest.mark.seaweedfs

PULL = 0.5
V1 = {"_global": art("_global", "g.example"), "tenant.acme": art("tenant.acme", "a1.example"),
      "tenant.globex": art("tenant.globex", "x1.example")}  # fmt: skip
V2 = dict(V1, **{"tenant.acme": art("tenant.acme", "a2.example")})
ACME_A1 = {"module": "tenant.acme", "capability": "network.outbound", "args": ["a1.example", 443]}
ACME_A2 = dict(ACME_A1, args=["a2.example", 443])


def polc(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "polc", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip


def write_set(directory, artifacts: dict[str, bytes]):
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.bin"):
        old.unlink()
    for module, data in artifacts.items():
        (directory / f"{module}.bin").write_bytes(data)
    return directory


@pytest.fixture
def prefix(request) -> str:
    return "e2e-" + request.node.name.removeprefix("test_").replace("_", "-")[:50]


@pytest.fixture
def proxy(seaweedfs):
    p = RecordingProxy(seaweedfs.endpoint, seaweedfs.bucket)
    yield p
    p.close()


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "publisher.key").write_bytes(PUBLISHER.private_pem())
    return tmp_path / "publisher.key"


def publish(seaweedfs, src, url: str, key, tmp_path, *extra: str) -> dict:
    env = {k: v for k, v in seaweedfs.env(seaweedfs.publisher, home=tmp_path).items() if not k.startswith("POLC_")}
    r = polc("publish", str(src), "--to", url, "--sign", str(key), "--format", "json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def set_aws(mp, env: dict[str, str]) -> None:
    """Only these AWS settings in this process (no ~/.aws, nothing inherited)."""
    for name in [n for n in os.environ if n.startswith("AWS_") and n not in env]:
        mp.delenv(name)
    for name, value in env.items():
        if name.startswith("AWS_"):
            mp.setenv(name, value)


def publisher(seaweedfs, url: str, tmp_path):
    """Publish in this process through an S3Store made with the publisher's key (its client keeps
    that key, whatever this process signs with afterwards): ``publish(src[, signer])``."""
    with pytest.MonkeyPatch.context() as mp:
        set_aws(mp, seaweedfs.env(seaweedfs.publisher, home=tmp_path))
        store = S3Store(url)

    def run(src, signer=PUBLISHER):
        return fleet_publish(src, store, signer=signer)

    return run


def objects_fetched(proxy: RecordingProxy) -> list[str]:
    return [s.key for s in proxy.requests("GET") if "/objects/" in s.key]


def test_publish_pull_enforce_through_the_cli_and_a_running_agent(seaweedfs, proxy, sidecar, keys, prefix, tmp_path):  # noqa: F811
    url = seaweedfs.url(prefix)
    src = write_set(tmp_path / "artifacts", V1)
    first = publish(seaweedfs, src, url, keys, tmp_path, "--set", "prod")
    assert first["revision"] == 1 and sorted(first["uploaded"]) == sorted(V1)
    listed = seaweedfs.client().list_objects_v2(Bucket=seaweedfs.bucket, Prefix=prefix + "/")["Contents"]
    assert {o["Key"] for o in listed} == {f"{prefix}/manifest.json"} | {
        f"{prefix}/objects/{d}.bin" for d in _digests(V1).values()}

    trust = write_trust_file(tmp_path / "trust.toml")
    env = seaweedfs.env(seaweedfs.reader, home=tmp_path)  # the agent's read-only key; endpoint: the proxy
    sc = sidecar().start(tmp_path / "mirror", "--source", url, "--endpoint", proxy.endpoint, "--pull-interval",
                         str(PULL), "--trust", str(trust), env=env)  # fmt: skip
    assert sc.check(ACME_A1)["allowed"] is True and sc.check(ACME_A2)["allowed"] is False
    assert sorted(objects_fetched(proxy)) == sorted(f"{prefix}/objects/{d}.bin" for d in _digests(V1).values())

    # idle: only conditional GETs of the manifest, answered 304 by the store itself
    until(lambda: len([s for s in proxy.requests() if s.status == 304]) >= 2, deadline=15, what="idle cycles")
    proxy.clear()
    before = seaweedfs.request_counts()
    until(lambda: len(proxy.requests()) >= 3, deadline=15, what="three idle cycles")
    idle = proxy.requests()
    after = seaweedfs.request_counts()
    assert all((s.method, s.key, s.status, s.conditional) == ("GET", f"{prefix}/manifest.json", 304, True) for s in idle)
    assert after[("GET", "304")] - before[("GET", "304")] >= 3
    assert after[("GET", "200")] == before[("GET", "200")]

    # a change: published by the CLI, enforced within the pull interval + 1 s, one object fetched
    write_set(src, V2)
    proxy.clear()
    second = publish(seaweedfs, src, url, keys, tmp_path)
    published = time.monotonic()
    assert second["revision"] == 2 and second["uploaded"] == ["tenant.acme"]
    until(lambda: sc.check(ACME_A2)["allowed"], deadline=PULL * 1.2 + 1.0, what="the change enforced")
    assert time.monotonic() - published <= PULL * 1.2 + 1.0
    assert sc.check(ACME_A1)["allowed"] is False
    assert objects_fetched(proxy) == [f"{prefix}/objects/{_digests(V2)['tenant.acme']}.bin"]
    status, body = sc.json("GET", "/v1/status")
    assert status == 200 and body["source"]["revision"] == 2 and body["source"]["url"] == url

    # polc pull --once into another mirror (through a proxy of its own): the same set, then an
    # unchanged cycle is one conditional GET answered 304
    mirror = tmp_path / "pulled"
    own = RecordingProxy(seaweedfs.endpoint, seaweedfs.bucket)
    try:
        pull = ("pull", url, "-o", str(mirror), "--trust", str(trust), "--once", "--endpoint", own.endpoint)
        r = polc(*pull, env=env)
        assert r.returncode == 0, r.stderr
        assert "revision 2 of set 'prod' in force" in r.stdout
        assert {p.name for p in mirror.glob("*.bin")} == {f"{m}.bin" for m in V2}
        assert all((mirror / f"{m}.bin").read_bytes() == data for m, data in V2.items())
        assert len(objects_fetched(own)) == len(V2)
        own.clear()
        r = polc(*pull, env=env)
        assert r.returncode == 0, r.stderr
        assert [(s.key, s.status, s.conditional) for s in own.requests()] == [(f"{prefix}/manifest.json", 304, True)]
    finally:
        own.close()


def _digests(artifacts: dict[str, bytes]) -> dict[str, str]:
    import hashlib

    return {m: hashlib.sha256(data).hexdigest() for m, data in artifacts.items()}


def test_a_wrong_key_keeps_the_last_good_set_with_the_reason(seaweedfs, sidecar, prefix, tmp_path):  # noqa: F811
    url = seaweedfs.url(prefix)
    publisher(seaweedfs, url, tmp_path)(write_set(tmp_path / "artifacts", V1))
    trust = write_trust_file(tmp_path / "trust.toml")
    mirror = tmp_path / "mirror"
    args = ("--source", url, "--pull-interval", str(PULL), "--trust", str(trust))
    good = sidecar().start(mirror, *args, env=seaweedfs.env(seaweedfs.reader, home=tmp_path))
    assert good.check(ACME_A1)["allowed"] is True
    good.signal(signal.SIGTERM)
    assert good.wait_exit(30) == 0

    # the store no longer accepts the agent's key (rotated or revoked there): a restart enforces what is on disk
    wrong = dict(seaweedfs.env(seaweedfs.reader, home=tmp_path), AWS_SECRET_ACCESS_KEY="revoked-secret")
    sc = sidecar().start(mirror, *args, env=wrong)
    assert sc.check(ACME_A1)["allowed"] is True
    until(lambda: sc.json("GET", "/v1/status")[1]["source"]["consecutive_failures"] >= 2, deadline=20, what="failures")
    src = sc.json("GET", "/v1/status")[1]["source"]
    assert src["revision"] == 1 and src["last_error_reason"] == "forbidden"
    assert "SignatureDoesNotMatch" in src["last_error"] and f"{url}/manifest.json" in src["last_error"]
    m = sc.metrics()
    assert m['polc_source_last_error{reason="forbidden"}'] == 1 and m["polc_source_revision"] == 1
    assert sc.check(ACME_A1)["allowed"] is True


def test_a_key_revoked_at_the_store_keeps_a_running_agent_on_its_set(seaweedfs, monkeypatch, prefix, tmp_path):
    url = seaweedfs.url(prefix)
    src = write_set(tmp_path / "artifacts", V1)
    publish = publisher(seaweedfs, url, tmp_path)
    publish(src)
    use_reader(monkeypatch, seaweedfs, tmp_path)
    agent = PolicyAgent(str(tmp_path / "mirror"), trust=make_trust(), source=url, pull_interval=0.2).start()
    try:
        ok = lambda host: agent.check("tenant.acme", "network.outbound", host, 443).allowed  # noqa: E731
        assert ok("a1.example")
        with seaweedfs.revoked(seaweedfs.reader):  # the store rotates the agent's secret
            write_set(src, V2)
            publish(src)  # a change the agent cannot read
            wait_for(lambda: agent.status()["source"]["consecutive_failures"] >= 2, timeout=20)
            src_status = agent.status()["source"]
            assert src_status["last_error_reason"] == "forbidden" and src_status["revision"] == 1
            assert "SignatureDoesNotMatch" in src_status["last_error"]
            assert ok("a1.example") and not ok("a2.example")
        wait_for(lambda: ok("a2.example"), timeout=20)  # the key works again: the agent converges
        # the pull's outcome is recorded right after its switch (status() takes no lock)
        wait_for(lambda: agent.status()["source"]["consecutive_failures"] == 0, timeout=20)
        assert not ok("a1.example")
    finally:
        agent.stop()


def test_a_key_rotated_in_the_credentials_file_is_used_without_a_restart(seaweedfs, monkeypatch, prefix, tmp_path):
    url = seaweedfs.url(prefix)
    src = write_set(tmp_path / "artifacts", V1)
    publish = publisher(seaweedfs, url, tmp_path)
    publish(src)
    use_reader(monkeypatch, seaweedfs, tmp_path)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    credentials = tmp_path / "credentials"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))

    def write_credentials(secret: str) -> None:
        tmp = credentials.with_name(".credentials.tmp")
        tmp.write_text(f"[default]\naws_access_key_id = {seaweedfs.reader.access_key}\naws_secret_access_key = {secret}\n")
        os.replace(tmp, credentials)

    write_credentials(seaweedfs.reader.secret_key)
    agent = PolicyAgent(str(tmp_path / "mirror"), trust=make_trust(), source=url, pull_interval=0.2).start()
    try:
        ok = lambda host: agent.check("tenant.acme", "network.outbound", host, 443).allowed  # noqa: E731
        assert ok("a1.example")
        new_secret = "rotated-" + seaweedfs.reader.secret_key[::-1]
        with seaweedfs.revoked(seaweedfs.reader, secret=new_secret):  # the store has the new secret
            write_set(src, V2)
            publish(src)
            wait_for(lambda: agent.status()["source"]["last_error_reason"] == "forbidden", timeout=20)
            assert ok("a1.example") and not ok("a2.example")
            write_credentials(new_secret)  # and now the agent's credentials file has it too
            wait_for(lambda: ok("a2.example"), timeout=20)
            wait_for(lambda: agent.status()["source"]["consecutive_failures"] == 0, timeout=20)
    finally:
        agent.stop()


def use_reader(monkeypatch, seaweedfs, tmp_path) -> None:
    """This process signs as the read-only reader, with no other AWS setting."""
    set_aws(monkeypatch, seaweedfs.env(seaweedfs.reader, home=tmp_path))


def test_store_failures_keep_the_set_in_a_running_agent(seaweedfs, proxy, monkeypatch, prefix, tmp_path):
    """In process: NoSuchKey for a changed object, a 503 from the endpoint, a body cut short."""
    url = seaweedfs.url(prefix)
    src = write_set(tmp_path / "artifacts", V1)
    publish = publisher(seaweedfs, url, tmp_path)
    publish(src)
    use_reader(monkeypatch, seaweedfs, tmp_path)
    agent = PolicyAgent(str(tmp_path / "mirror"), trust=make_trust(), source=url, endpoint=proxy.endpoint,
                        pull_interval=60, reload=False).start()  # fmt: skip
    try:
        ok = lambda host: agent.check("tenant.acme", "network.outbound", host, 443).allowed  # noqa: E731
        assert ok("a1.example")

        write_set(src, V2)
        publish(src)
        changed = f"{prefix}/objects/{_digests(V2)['tenant.acme']}.bin"
        seaweedfs.client().delete_object(Bucket=seaweedfs.bucket, Key=changed)
        result = agent.pull_now()
        assert result.outcome == "failed" and result.reason == "object missing", result
        assert "NoSuchKey" in result.error and changed in result.error
        assert ok("a1.example") and not ok("a2.example") and agent.status()["source"]["revision"] == 1

        seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key=changed, Body=V2["tenant.acme"])
        for fault, reason in ((503, "server error"), ("truncate", "partial download"), ("close", "unreachable")):
            proxy.fault = fault
            result = agent.pull_now()
            assert result.outcome == "failed" and result.reason == reason, result
            assert ok("a1.example") and agent.status()["source"]["revision"] == 1
        assert agent.status()["source"]["consecutive_failures"] == 4
        proxy.fault = None
        result = agent.pull_now()
        assert result.outcome != "failed", result
        assert ok("a2.example") and not ok("a1.example") and agent.status()["source"]["revision"] == 2
        wait_for(lambda: agent.status()["source"]["consecutive_failures"] == 0, timeout=5)
    finally:
        agent.stop()


def test_a_manifest_signed_without_manifest_scope_is_refused_from_s3(seaweedfs, monkeypatch, prefix, tmp_path):
    url = seaweedfs.url(prefix)
    publisher(seaweedfs, url, tmp_path)(write_set(tmp_path / "artifacts", V1), signer=PLATFORM)
    trust = write_trust_file(tmp_path / "trust.toml")
    env = seaweedfs.env(seaweedfs.reader, home=tmp_path)
    r = polc("pull", url, "-o", str(tmp_path / "mirror"), "--trust", str(trust), "--once", env=env)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "may not sign manifests" in r.stderr
    assert not list((tmp_path / "mirror").glob("*.bin"))
