"""The status table kept as a base and the changes since (a commit costs O(changes)):
what status() shows must be what a table copied whole on every commit would show."""

from __future__ import annotations

from polc.runtime import PolicyAgent
from polc.runtime.reload import poller as poller_mod

from support.agent import write_artifact

RULES = [("entitle", "threads.create", ())]


def test_status_through_folds_matches_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(poller_mod, "STATUS_FOLD", 2)
    d = tmp_path / "p"
    d.mkdir()
    write_artifact(d, "_global", [])
    a = PolicyAgent(d, reload=False).start()
    want: dict[str, str | None] = {"_global": None}
    for i in range(12):
        write_artifact(d, f"t.m{i}", RULES)
        want[f"t.m{i}"] = None
        if i % 3 == 0:
            (d / f"t.bad{i}.bin").write_bytes(b"junk")
            want[f"t.bad{i}"] = "not a polc artifact"
        if i % 4 == 1:  # a module that never loaded, gone: no status left
            (d / f"t.bad{i - 1}.bin").unlink(missing_ok=True)
            want.pop(f"t.bad{i - 1}", None)
        if i % 5 == 2:  # a loaded module's file removed: status kept, with the reason
            (d / f"t.m{i - 1}.bin").unlink()
            want[f"t.m{i - 1}"] = "file removed"
        a.reload_now()
        got = a.status()["modules"]
        assert set(got) == set(want), (i, sorted(got), sorted(want))
        for module, error in want.items():
            last = got[module]["last_error"]
            assert (last is None) if error is None else (error in (last or "")), (i, module, last)
    base, delta = a._poller._status
    assert len(delta) <= max(2, len(base) >> 3)  # folded along the way


def test_a_module_without_error_keeps_no_status_object_of_its_own(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    write_artifact(d, "_global", [])
    write_artifact(d, "t.ok", RULES)
    (d / "t.bad.bin").write_bytes(b"junk")
    a = PolicyAgent(d, reload=False).start()
    base, delta = a._poller._status
    kept = {**base, **delta}
    assert kept["t.ok"] is a._poller.in_force["t.ok"]  # the policy in force itself, no dict
    assert kept["t.bad"][1] and kept["t.bad"][2] == "t.bad.bin"
    shown = a.status()["modules"]
    assert shown["t.ok"]["last_error"] is None and shown["t.ok"]["rules"] == 1
    assert shown["t.ok"]["file"] == "t.ok.bin" and shown["t.ok"]["revision"]
    assert "not a polc artifact" in shown["t.bad"]["last_error"] and shown["t.bad"]["revision"] is None
    assert a._poller.status_of("t.ok") == shown["t.ok"] and a._poller.status_of("nope") is None
