"""``polc publish``, ``polc pull`` and ``polc run --source`` as subprocesses: exit statuses, what
they print, ``/v1/status`` and ``/metrics`` of a pulling sidecar, and a real disk full (a small
tmpfs mounted in a private mount namespace)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.fleet import PLATFORM, PUBLISHER, Site, art, write_trust_file
from support.sidecar import Output, sidecar, until  # noqa: F401 - the sidecar fixture

V1 = {"_global": art("_global", "g.example"), "tenant.acme": art("tenant.acme", "a1.example")}
V2 = dict(V1, **{"tenant.acme": art("tenant.acme", "a2.example")})
REPO = Path(__file__).resolve().parents[2]


def polc(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("POLC_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "polc", *args], capture_output=True, text=True, env=full, timeout=timeout
    )


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "publisher.key").write_bytes(PUBLISHER.private_pem())
    (tmp_path / "platform.key").write_bytes(PLATFORM.private_pem())
    return tmp_path


def write_set(directory: Path, artifacts: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.bin"):
        old.unlink()
    for module, data in artifacts.items():
        (directory / f"{module}.bin").write_bytes(data)
    return directory


def test_publish_prints_what_it_did_and_refuses_what_it_must(site: Site, keys, tmp_path):
    src = write_set(tmp_path / "a", V1)
    r = polc("publish", str(src), "--to", site.url, "--sign", str(keys / "publisher.key"), "--set", "prod")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"published set 'prod' revision 1 to {site.url}: 2 object(s) uploaded, 0 already present"
    write_set(src, V2)
    r = polc("publish", str(src), "--to", str(site.www), "--sign", str(keys / "publisher.key"), "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["revision"] == 2 and doc["uploaded"] == ["tenant.acme"] and doc["skipped"] == ["_global"]
    assert doc["manifest_key"] == PUBLISHER.key_id

    r = polc("publish", str(src), "--to", site.url, "--sign", str(keys / "publisher.key"), "--revision", "2")
    assert r.returncode == 1 and "revision 2 is not above 2 found" in r.stderr
    r = polc("publish", str(src), "--to", site.url)
    assert r.returncode == 2 and "publish needs --sign" in r.stderr
    r = polc("publish", str(src), "--to", "http://127.0.0.1:9/x", "--sign", str(keys / "publisher.key"))
    assert r.returncode == 2 and "read-only" in r.stderr
    r = polc("publish", str(tmp_path / "nowhere"), "--to", site.url, "--sign", str(keys / "publisher.key"))
    assert r.returncode == 2 and "cannot list the artifact directory" in r.stderr


def test_pull_once_exit_statuses(site: Site, origin, keys, tmp_path):
    trust = write_trust_file(tmp_path / "trust.toml")
    mirror = tmp_path / "mirror"
    site.publish(V1, set_name="prod")
    old = site.snapshot()
    r = polc("pull", origin.url, "-o", str(mirror), "--trust", str(trust), "--once")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"revision 1 of set 'prod' in force in {mirror} (switched, 2 object(s) fetched)"
    r = polc("pull", origin.url, "-o", str(mirror), "--once", "--format", "json", env={"POLC_TRUST_FILE": str(trust)})
    assert r.returncode == 0 and json.loads(r.stdout)["outcome"] == "unchanged"
    site.publish(V2)
    assert polc("pull", origin.url, "-o", str(mirror), "--trust", str(trust), "--once").returncode == 0
    site.restore(old)
    r = polc("pull", origin.url, "-o", str(mirror), "--trust", str(trust), "--once")
    assert r.returncode == 1 and "rollback: revision 1 is below 2 already accepted" in r.stderr
    origin.faults["manifest.json"] = 503
    r = polc("pull", origin.url, "-o", str(mirror), "--trust", str(trust), "--once")
    assert r.returncode == 2 and "server error (HTTP 503)" in r.stderr
    r = polc("pull", origin.url, "-o", str(mirror), "--once")
    assert r.returncode == 2 and "pull needs a trust file" in r.stderr
    r = polc("pull", origin.url, "-o", str(mirror), "--once", env={"POLC_TRUST_FILE": ""})
    assert r.returncode == 2 and "POLC_TRUST_FILE=''" in r.stderr


def test_pull_runs_until_sigterm_and_follows_changes(site: Site, origin, tmp_path):
    trust = write_trust_file(tmp_path / "trust.toml")
    mirror = tmp_path / "mirror"
    site.publish(V1)
    full = {k: v for k, v in os.environ.items() if not k.startswith("POLC_")}
    cmd = [sys.executable, "-m", "polc", "pull", origin.url, "-o", str(mirror), "--trust", str(trust),
           "--interval", "0.2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full)
    out, err = Output(proc.stdout), Output(proc.stderr)
    try:
        out.wait_for("revision 1 of set", deadline=20)
        site.publish(V2)
        out.wait_for("revision 2 of set", deadline=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert (mirror / "tenant.acme.bin").read_bytes() == V2["tenant.acme"]
    assert "pulling" in err.wait_eof()


def test_polc_run_source_reports_in_status_and_metrics(site: Site, origin, tmp_path, sidecar):  # noqa: F811
    trust = write_trust_file(tmp_path / "trust.toml")
    site.publish(V1, set_name="prod")
    mirror = tmp_path / "mirror"
    sc = sidecar().start(mirror, "--source", origin.url, "--pull-interval", "0.2", "--trust", str(trust))
    check = {"module": "tenant.acme", "capability": "network.outbound", "args": ["a1.example", 443]}
    assert sc.check(check)["allowed"] is True
    status, body = sc.json("GET", "/v1/status")
    assert status == 200 and body["source"]["url"] == origin.url and body["source"]["revision"] == 1
    origin.faults["manifest.json"] = 503
    until(lambda: sc.json("GET", "/v1/status")[1]["source"]["consecutive_failures"] >= 2, what="failures")
    src = sc.json("GET", "/v1/status")[1]["source"]
    assert src["last_error_reason"] == "server error" and "HTTP 503" in src["last_error"]
    m = sc.metrics()
    assert m["polc_source_revision"] == 1
    assert m["polc_source_consecutive_failures"] >= 2
    assert m['polc_source_last_error{reason="server error"}'] == 1
    assert m[f'polc_source_info{{url="{origin.url}"}}'] == 0
    assert m["polc_source_last_success_timestamp_seconds"] > 0
    assert sc.check(check)["allowed"] is True  # the set in force stays
    origin.faults.clear()
    site.publish(V2)
    until(lambda: sc.json("GET", "/v1/status")[1]["source"]["revision"] == 2, what="revision 2")
    assert sc.check(dict(check, args=["a2.example", 443]))["allowed"] is True
    m = sc.metrics()
    assert m[f'polc_source_info{{url="{origin.url}"}}'] == 1 and m["polc_source_consecutive_failures"] == 0


def test_polc_run_reads_polc_source_strictly(tmp_path, sidecar):  # noqa: F811
    trust = write_trust_file(tmp_path / "trust.toml")
    sc = sidecar().start(tmp_path / "m", "--trust", str(trust), env={"POLC_SOURCE": ""}, wait=False)
    assert sc.wait_exit(30) == 2
    assert "POLC_SOURCE='': set but empty" in sc.stderr_at_exit()
    sc = sidecar().start(tmp_path / "m", "--source", "file:///nonexistent-dir", wait=False)
    assert sc.wait_exit(30) == 2
    assert "needs a trust configuration" in sc.stderr_at_exit()


# --------------------------------------------------------------------------- disk full, for real

DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys
    sys.path.insert(0, {tests!r})
    mirror = {mirror!r}
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", mirror], check=True)
    from support.fleet import Site, art, make_trust
    from polc.runtime.agent import PolicyAgent
    from pathlib import Path
    site = Site(Path({root!r}))
    small = {{"_global": art("_global", "g.example"), "tenant.acme": art("tenant.acme", "a1.example")}}
    site.publish(small, set_name="prod")
    agent = PolicyAgent(mirror, trust=make_trust(), source=site.url, pull_interval=60, reload=False).start()
    before = agent.check("tenant.acme", "network.outbound", "a1.example", 443).allowed
    site.publish(dict(small, **{{"tenant.acme": art("tenant.acme", "a2.example", extra=3000)}}))  # ~120 KB
    result = agent.pull_now()
    print(json.dumps({{
        "before": before,
        "outcome": result.outcome, "reason": result.reason, "error": result.error,
        "after_old": agent.check("tenant.acme", "network.outbound", "a1.example", 443).allowed,
        "after_new": agent.check("tenant.acme", "network.outbound", "a2.example", 443).allowed,
        "status": agent.status()["source"],
        "debris": sorted(p.name for p in Path(mirror).iterdir()),
    }}))
    agent.stop()
    """
)


def test_disk_full_keeps_the_previous_set(tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed: no private mount namespace for a small tmpfs")
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    script = DISK_FULL_SCRIPT.format(tests=str(REPO / "tests"), mirror=str(mirror), root=str(tmp_path / "site"))
    r = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if r.returncode != 0 and "mount" in r.stderr and "permission denied" in r.stderr.lower():
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["before"] is True
    assert doc["outcome"] == "failed" and doc["reason"] == "disk full", doc
    assert "No space left on device" in doc["error"]
    assert doc["after_old"] is True and doc["after_new"] is False
    assert doc["status"]["revision"] == 1 and doc["status"]["last_error_reason"] == "disk full"
    assert [n for n in doc["debris"] if n.startswith("..set-")] == [
        n for n in doc["debris"] if n.startswith("..set-1-")
    ]
