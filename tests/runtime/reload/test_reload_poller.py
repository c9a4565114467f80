"""The poller on its own: one step at a time (run_step), outcomes as dataclasses,
without an agent, a thread or a lock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from polc.runtime import PolicyLoadError
from polc.runtime.config import AgentConfig
from polc.runtime.enforce import EMPTY_SNAPSHOT, Snapshot
from polc.runtime.errors import ConfigError, PolcError
from polc.runtime.events import EVENT_KINDS, ReloadFailure
from polc.runtime.reload.filestate import FileState
from polc.runtime.reload.outcomes import Failed, NewPolicy, SamePolicy, Touched, examine
from polc.runtime.reload.poller import Poller

from support.agent import artifact_bytes, rewrite_in_place, write_artifact

ALLOW = [("entitle", "network.outbound", ("api.acme.com", 443))]
DENY = [("deny", "network.outbound", ())]
REQ = ("tenant.acme", "network.outbound", "api.acme.com", 443)


def make_poller(d: Path) -> tuple[Poller, list[Snapshot]]:
    published: list[Snapshot] = []
    return Poller(str(d), trust=None, cache_size=100, publish=published.append), published


def test_run_step_loads_reloads_and_keeps_the_previous_policy(tmp_path):
    write_artifact(tmp_path, "tenant.acme", ALLOW)
    poller, published = make_poller(tmp_path)
    assert poller.snapshot is EMPTY_SNAPSHOT
    events, result = poller.run_step(initial=True)
    assert result.changed == ["tenant.acme"] and [e.kind for e in events] == ["loaded"]
    assert published[-1] is poller.snapshot and poller.snapshot.check(*REQ)

    events, result = poller.run_step()  # nothing changed
    assert events == [] and result.to_dict() == {"changed": [], "removed": [], "failed": []}

    time.sleep(0.01)
    write_artifact(tmp_path, "tenant.acme", DENY)
    events, result = poller.run_step()
    assert result.changed == ["tenant.acme"] and [e.kind for e in events] == ["reloaded"]
    assert not poller.snapshot.check(*REQ)

    (tmp_path / "tenant.acme.bin").write_bytes(b"garbage")
    events, result = poller.run_step()
    assert [e.kind for e in events] == ["failed"] and result.failed[0].module == "tenant.acme"
    assert not poller.snapshot.check(*REQ)  # the previous policy stays
    assert poller.status_modules["tenant.acme"]["last_error"] == events[0].reason


def test_examine_says_what_a_file_holds_without_changing_anything(tmp_path):
    path = write_artifact(tmp_path, "tenant.acme", ALLOW)
    now = time.time_ns()
    found = examine(path.name, str(path), None, None, None, now)
    assert isinstance(found, NewPolicy) and found.module == "tenant.acme" and found.linked.rule_count == 1
    st = path.stat()
    trusted = FileState(found.key, False, found.content, None)
    assert examine(path.name, str(path), trusted, found.linked, None, now) is None  # unchanged stat
    racy = FileState(found.key, True, found.content, None)
    again = examine(path.name, str(path), racy, found.linked, None, now)
    assert isinstance(again, Touched) and again.content == found.content  # re-read: the same bytes
    other = FileState((st.st_mtime_ns, st.st_size, st.st_ino, 0), False, b"other bytes", None)
    same = examine(path.name, str(path), other, found.linked, None, now)
    assert isinstance(same, SamePolicy)  # other bytes recorded, but the payload in force
    rewrite_in_place(path, artifact_bytes("tenant.acme", DENY))
    new = examine(path.name, str(path), other, found.linked, None, now)
    assert isinstance(new, NewPolicy) and new.linked.digest != found.linked.digest
    path.write_bytes(b"garbage")
    bad = examine(path.name, str(path), other, found.linked, None, now)
    assert isinstance(bad, Failed) and bad.reason.startswith("not a polc artifact")
    missing = examine("tenant.gone.bin", str(tmp_path / "tenant.gone.bin"), None, None, None, now)
    assert isinstance(missing, Failed) and missing.key[0] == "error" and missing.reason.startswith("cannot read")


def test_forget_starts_over(tmp_path):
    write_artifact(tmp_path, "tenant.acme", ALLOW)
    poller, published = make_poller(tmp_path)
    poller.run_step(initial=True)
    poller.forget()
    assert published[-1] is EMPTY_SNAPSHOT and not poller.files and not poller.in_force
    events, _result = poller.run_step(initial=True)
    assert [e.kind for e in events] == ["loaded"]


def test_config_and_load_errors_sit_under_polc_error_and_keep_their_bases(tmp_path, monkeypatch):
    monkeypatch.setenv("POLC_RELOAD", "maybe")
    with pytest.raises(ConfigError, match=r"POLC_RELOAD='maybe': expected true or false") as info:
        AgentConfig.resolve(tmp_path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, PolcError)
    err = PolicyLoadError([ReloadFailure("x.bin", "x", "bad")])
    assert isinstance(err, PolcError) and str(err) == "1 policy artifact(s) failed to load:\n  x.bin: bad"


def test_event_kinds_are_the_strings_subscribers_see():
    assert EVENT_KINDS == ("loaded", "reloaded", "failed", "removed", "recovered", "watch")
