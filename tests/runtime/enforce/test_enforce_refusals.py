"""Refusals (an invalid argument, a wrong arity) are remembered process-wide per plan
(``plan._REFUSED``) when the request alone decides them: they must stay exactly the Decision a
fresh plan builds, on the C path and the pure-Python path, for every plan its own (module,
revision, capability), never shared by values that are equal but of another type (``True`` and
``1``, a str subclass), and never for a command string (whether it resolves is the file
system's answer)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polc.runtime.enforce import Snapshot, link
from polc.runtime.enforce.plan import Plan
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes


def linked(module, rules):
    return link(read_artifact(artifact_bytes(module, rules), expected_module=module))


def fields(d):
    return (d.allowed, d.effect, d.reason, d.rule, d.module, d.revision, d.audit)


RULES = [
    ("entitle", "network.outbound", ("*.example.com", 443)),
    ("entitle", "fs.read", ("data", "**")),
    ("entitle", "process.exec", ("git*",)),
]


def snapshots():
    glob = linked("_global", [("deny", "network.outbound", ("*", 25))])
    mods = {"a": linked("a", RULES), "b": linked("b", RULES[:2])}
    return [Snapshot(mods, glob, cache_size=0, accel=accel) for accel in (False, None)]


class Sneaky(str):
    pass


value_st = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(alphabet="ab.!/-_ *", max_size=12),
    st.sampled_from(["", "../x", "/etc/passwd", "a..b", "x" * 300, "bad_host!", "a.example.com"]),
    st.builds(Sneaky, st.sampled_from(["a.example.com", "bad_host!", "data"])),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    module=st.sampled_from(["a", "b", "c"]),
    cap=st.sampled_from(["network.outbound", "fs.read", "process.exec"]),
    args=st.lists(value_st, max_size=3),
)
def test_a_remembered_refusal_is_the_decision_a_fresh_plan_makes(module, cap, args):
    args = tuple(args)
    for s in snapshots():
        fresh = Plan(module, cap, s.module(module), s.glob)
        want = fields(fresh.decide(args))
        for _ in range(3):  # the first call fills the memo, the others read it
            assert fields(s.check(module, cap, *args)) == want, (s.accelerated, args)


@pytest.mark.parametrize("accel", [False, None])
def test_equal_values_of_another_type_never_share_a_refusal(accel):
    glob = linked("_global", [])
    mod = linked("a", [("entitle", "network.outbound", ("*", (1, 2))), ("entitle", "fs.read", ("data", "**"))])
    s = Snapshot({"a": mod}, glob, cache_size=0, accel=accel)
    requests = [
        ("fs.read", (1, "x")),  # refused: got int
        ("fs.read", (True, "x")),  # equal to the one before, refused for another reason: got bool
        ("fs.read", (1.0, "x")),
        ("network.outbound", ("bad_host!", 1)),
        ("network.outbound", (Sneaky("bad_host!"), 1)),
        ("network.outbound", ("h.example.com", True)),
        ("network.outbound", ("h.example.com", 1)),
    ]
    for _ in range(2):
        for order in (requests, requests[::-1]):
            for cap, args in order:
                want = fields(Plan("a", cap, mod, glob).decide(args))
                assert fields(s.check("a", cap, *args)) == want, args
    assert "got bool" in s.check("a", "fs.read", True, "x").reason


@pytest.mark.parametrize("accel", [False, None])
def test_each_plan_refuses_in_its_own_name(accel):
    glob = linked("_global", [])
    s = Snapshot({"a": linked("a", RULES), "b": linked("b", RULES)}, glob, cache_size=0, accel=accel)
    t = Snapshot({"a": linked("a", RULES[1:])}, glob, cache_size=0, accel=accel)
    for _ in range(2):
        for snap, mod in ((s, "a"), (s, "b"), (t, "a"), (s, "zz")):
            bad = snap.check(mod, "network.outbound", "bad_host!", 443)
            assert bad.module == mod and "invalid argument 'host' of network.outbound" in bad.reason
            arity = snap.check(mod, "fs.read", "data")
            assert arity.module == mod and arity.reason == "wrong arity: fs.read takes 2 arguments, got 1"
            assert snap.check(mod, "fs.read", "data", "x", "y").reason.endswith("got 3")
            assert bad.revision == (snap.module(mod).revision if snap.module(mod) else None)


def test_a_command_string_is_never_remembered(tmp_path, monkeypatch):
    """A relative command is refused while the working directory is gone, and decided once
    there is one again: its refusal must not outlive the condition."""
    import os

    from polc.runtime import patterns
    from polc.runtime.enforce import plan as plan_mod

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    os.rmdir(gone)
    s = Snapshot({"a": linked("a", [("entitle", "process.exec", ("*",))])}, None, cache_size=0, accel=None)
    try:
        patterns.forget_resolutions()
        d = s.check("a", "process.exec", "bin/tool")
        assert not d.allowed and "working directory is gone" in d.reason
        assert not any(type(k[1]) is tuple and "bin/tool" in k[1] for k in plan_mod._REFUSED.data)
        monkeypatch.chdir(tmp_path)
        patterns.forget_resolutions()
        assert s.check("a", "process.exec", "bin/tool").allowed
    finally:
        patterns.forget_resolutions()
