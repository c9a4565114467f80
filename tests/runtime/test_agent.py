"""PolicyAgent's public API: configuration, lifecycle, status, events."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from polc.runtime import Decision, PolicyAgent, ReloadEvent, ReloadFailure, ReloadResult
from polc.runtime.errors import ArtifactError

from support.agent import artifact_bytes, write_artifact

ACME = [("entitle", "network.outbound", ("*.acme.com", 443)), ("deny", "process.exec", ())]


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    write_artifact(d, "tenant.acme", ACME)
    write_artifact(d, "_global", [("entitle", "threads.create", ())])
    return d


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("POLC_POLICY_DIR", "POLC_RELOAD", "POLC_RELOAD_INTERVAL"):
        monkeypatch.delenv(name, raising=False)


def reloader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "polc-reloader"]


def test_defaults(pdir):
    a = PolicyAgent(pdir)
    assert (a.policy_dir, a.reload_interval, a.reload, a.strict) == (str(pdir), 5.0, True, False)


def test_environment_then_defaults(pdir, monkeypatch):
    monkeypatch.setenv("POLC_POLICY_DIR", str(pdir))
    monkeypatch.setenv("POLC_RELOAD_INTERVAL", "0.5")
    monkeypatch.setenv("POLC_RELOAD", "yes")
    a = PolicyAgent()
    assert (a.policy_dir, a.reload_interval, a.reload) == (str(pdir), 0.5, True)
    monkeypatch.setenv("POLC_RELOAD", "FALSE")
    assert PolicyAgent().reload is False
    monkeypatch.setenv("POLC_RELOAD", "0")
    assert PolicyAgent().reload is False


def test_arguments_win_over_environment(pdir, tmp_path, monkeypatch):
    monkeypatch.setenv("POLC_POLICY_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("POLC_RELOAD_INTERVAL", "9")
    monkeypatch.setenv("POLC_RELOAD", "false")
    a = PolicyAgent(pdir, reload_interval=2, reload=True)
    assert (a.policy_dir, a.reload_interval, a.reload) == (str(pdir), 2.0, True)


@pytest.mark.parametrize(
    "env, value, message",
    [
        ("POLC_RELOAD", "maybe", "POLC_RELOAD='maybe': expected true or false"),
        ("POLC_RELOAD_INTERVAL", "soon", "POLC_RELOAD_INTERVAL='soon': expected a number of seconds"),
        ("POLC_RELOAD_INTERVAL", "-1", "expected a number of seconds >= 0"),
        ("POLC_RELOAD_INTERVAL", "nan", "expected a number of seconds >= 0"),
    ],
)
def test_bad_environment_values(pdir, monkeypatch, env, value, message):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        PolicyAgent(pdir)


def test_bad_arguments(pdir):
    with pytest.raises(ValueError, match="no policy directory"):
        PolicyAgent()
    with pytest.raises(ValueError, match="reload_interval"):
        PolicyAgent(pdir, reload_interval=-2)
    with pytest.raises(ValueError, match="reload_interval"):
        PolicyAgent(pdir, reload_interval="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [{"reload": False}, {"reload_interval": 0}])
def test_reload_off_loads_once_and_starts_no_thread(pdir, kw):
    before = len(reloader_threads())
    with PolicyAgent(pdir, **kw) as a:
        assert a.reload is False and a._thread is None
        assert len(reloader_threads()) == before
        assert a.check("tenant.acme", "network.outbound", "api.acme.com", 443)
        write_artifact(pdir, "tenant.acme", [])
        assert a.check("tenant.acme", "network.outbound", "api.acme.com", 443)  # nobody polls
        assert a.reload_now().changed == ["tenant.acme"]  # ...but a reload on demand works
        assert not a.check("tenant.acme", "network.outbound", "api.acme.com", 443)


def test_check_before_start_denies(pdir):
    a = PolicyAgent(pdir, reload=False)
    assert not a.ready
    d = a.check("tenant.acme", "threads.create")
    assert not d and "not loaded yet" in d.reason
    a.start()
    assert a.ready and a.check("tenant.acme", "threads.create")


def test_context_manager_starts_and_stops_the_thread(pdir):
    with PolicyAgent(pdir, reload_interval=0.05) as a:
        t = a._thread
        assert t is not None and t.is_alive() and t.daemon
    assert not t.is_alive()
    a.stop()
    a.stop()


def test_status_is_json_and_complete(pdir):
    (pdir / "tenant.bad.bin").write_bytes(b"junk")
    with PolicyAgent(pdir, reload=False) as a:
        st = a.status()
        json.dumps(st)
        assert st["policy_dir"] == str(pdir) and st["reload"] is False and st["ready"] is True
        assert isinstance(st["last_reload"], float)
        assert st["reloads"] == {"ok": 2, "failed": 1}
        acme = st["modules"]["tenant.acme"]
        assert set(acme) == {"revision", "rules", "mode", "loaded_at", "source", "file", "last_error"}
        assert acme["rules"] == 2 and acme["mode"] == "enforce" and len(acme["revision"]) == 12
        assert acme["source"] == "src/tenant.acme.pol" and acme["file"] == "tenant.acme.bin"
        assert acme["last_error"] is None
        bad = st["modules"]["tenant.bad"]
        assert bad["revision"] is None and bad["rules"] == 0 and "not a polc artifact" in bad["last_error"]


def test_events_and_reload_result(pdir):
    with PolicyAgent(pdir, reload=False) as a:
        events: list[ReloadEvent] = []
        unsubscribe = a.subscribe(events.append)
        write_artifact(pdir, "tenant.new", [("entitle", "threads.create", ())])
        write_artifact(pdir, "tenant.acme", [("deny", "threads.create", ())])
        (pdir / "_global.bin").write_bytes(b"junk")
        result = a.reload_now()
        assert isinstance(result, ReloadResult)
        assert sorted(result.changed) == ["tenant.acme", "tenant.new"]
        assert result.removed == []
        assert [(f.file, f.module) for f in result.failed] == [("_global.bin", "_global")]
        assert isinstance(result.failed[0], ReloadFailure)
        json.dumps(result.to_dict())
        kinds = sorted((e.kind, e.module) for e in events)
        assert kinds == [("failed", "_global"), ("loaded", "tenant.new"), ("reloaded", "tenant.acme")]
        failed = next(e for e in events if e.kind == "failed")
        assert failed.revision is not None and failed.rules == 1  # the previous _global stays
        assert a.check("tenant.x", "threads.create")  # ...and still decides
        unsubscribe()
        write_artifact(pdir, "tenant.new", [])
        assert a.reload_now().changed == ["tenant.new"]
        assert len(events) == 3
        assert a.reload_now() == ReloadResult([], [], [])  # nothing changed


def test_trust_is_passed_to_the_reader(pdir):
    class Refuse:
        calls: ClassVar[list[str]] = []

        def verify(self, header, signed_bytes, trailer, module):
            self.calls.append(module)
            if module != "_global":
                raise ArtifactError(f"{module}: not signed by a trusted key", reason="untrusted")

    trust = Refuse()
    with PolicyAgent(pdir, reload=False, trust=trust) as a:
        assert sorted(trust.calls) == ["_global", "tenant.acme"]
        assert "not signed" in a.status()["modules"]["tenant.acme"]["last_error"]
        assert not a.check("tenant.acme", "network.outbound", "api.acme.com", 443)


def test_decision_api(pdir):
    with PolicyAgent(pdir, reload=False) as a:
        d = a.check("tenant.acme", "process.exec", "ls")
        assert isinstance(d, Decision) and not d and d.effect == "deny" and d.rule.endswith(":3:5")
        assert set(d.to_dict()) == {"allowed", "effect", "reason", "rule", "module", "revision", "audit"}


def test_cache_size_zero_disables_cache(pdir):
    with PolicyAgent(pdir, reload=False, cache_size=0) as a:
        assert a.check("tenant.acme", "network.outbound", "api.acme.com", 443)
        assert not a.snapshot._cache
    with pytest.raises(ValueError):
        PolicyAgent(pdir, cache_size=-1)


def test_swap_invalidates_cache_by_construction(pdir):
    with PolicyAgent(pdir, reload=False) as a:
        assert a.check("tenant.acme", "network.outbound", "api.acme.com", 443)
        old = a.snapshot
        (pdir / "tenant.acme.bin").write_bytes(artifact_bytes("tenant.acme", []))
        a.reload_now()
        assert a.snapshot is not old
        assert not a.check("tenant.acme", "network.outbound", "api.acme.com", 443)
        assert old.check("tenant.acme", "network.outbound", "api.acme.com", 443)  # old snapshot unchanged
