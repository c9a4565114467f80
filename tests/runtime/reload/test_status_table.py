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
