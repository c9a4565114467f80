"""A plan whose rules test a command alone matches them through one index
(``patterns.command_index``: names and paths by dict probes, file identities through
one map) instead of one ``command_matcher`` call per rule. It must decide exactly as
those matchers do: random rule sets of exact bare names, name globs, absolute paths and
path globs, denies and entitles, ``_global``'s and the module's, against random requests
in a real directory of programs, symlinks and hard links on a PATH the test sets; and it
must follow the file system and PATH as the matchers' lookups do (RESOLVE_TTL)."""

from __future__ import annotations

import os
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polc.runtime import patterns
from polc.runtime.enforce import Snapshot, link
from polc.runtime.enforce.deciders import source_of
from polc.runtime.enforce.plan import Plan
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes


def linked(module, rules):
    return link(read_artifact(artifact_bytes(module, rules), expected_module=module))


def exe(path, text="#!/bin/sh\nexit 0\n", mode=0o755):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """bin/{tool,other,git-x,sudo-ish,run.sh}, link -> bin, alias -> bin/tool, hard/copy (a hard
    link of tool), evil/{tool,other} (other programs of those names), plain/tool (not executable)."""
    t = tmp_path_factory.mktemp("commands")
    tool = exe(t / "bin" / "tool")
    for name in ("other", "git-x", "sudo-ish", "run.sh"):
        exe(t / "bin" / name, f"#!/bin/sh\necho {name}\n")
    (t / "link").symlink_to("bin")
    (t / "alias").symlink_to(t / "bin" / "tool")
    (t / "hard").mkdir()
    os.link(tool, t / "hard" / "copy")
    exe(t / "evil" / "tool", "#!/bin/sh\necho evil\n")
    exe(t / "evil" / "other", "#!/bin/sh\necho evil other\n")
    exe(t / "plain" / "tool", mode=0o644)
    return t


NAMES = ["tool", "other", "copy", "alias", "git-x", "sudo-ish", "run.sh", "nope", "sh"]
NAME_GLOBS = [
    "t*",
    "too*",
    "tool*",
    "*l",
    "*ool",
    "g*",
    "to*",
    "*ol",
    "*oo*",
    "t?ol",
    "*",
    "git*",
    "*.sh",
    "*sudo*",
    "o*r",
    "c*",
    "*-x",
    "**ol",
    "al*s",
]
PATHS = ["bin/tool", "link/tool", "alias", "hard/copy", "evil/tool", "bin/other", "nowhere/tool", "plain/tool"]
PATH_GLOBS = ["link/*", "bin/t*", "evil/*", "*/tool", "bin/*er", "hard/*", "li?k/*"]
REQUESTS = [
    "tool",
    "other",
    "copy",
    "alias",
    "git-x",
    "git",
    "sudo-ish",
    "run.sh",
    "nope",
    "tool -x",
    "sh",
    "{t}/bin/tool",
    "{t}/bin//tool",
    "{t}/link/tool",
    "{t}/alias",
    "{t}/hard/copy",
    "{t}/evil/tool",
    "{t}/evil/other",
    "{t}/bin/other",
    "{t}/bin/git-x",
    "{t}/plain/tool",
    "{t}/nowhere/tool",
    "bin/tool",
    "./alias",
    "link/../bin/tool",
    "evil/tool",
    "hard/copy",
    "nowhere/tool",
    "/bin/sh",
]
PATH_VALUES = ["{t}/link", "{t}/evil:{t}/link", "{t}/link:{t}/evil", "{t}/plain:{t}/evil", ".:{t}/evil", "", "bin"]


def constant(kind: str, value: str, t) -> str:
    if kind in ("path", "path glob"):
        value = f"{t}/{value}"
    return patterns.compile_command(value)[1]


rule_st = st.tuples(
    st.sampled_from(["_global", "m"]),
    st.sampled_from(["deny", "entitle"]),
    st.one_of(
        st.tuples(st.just("name"), st.sampled_from(NAMES)),
        st.tuples(st.just("name glob"), st.sampled_from(NAME_GLOBS)),
        st.tuples(st.just("path"), st.sampled_from(PATHS)),
        st.tuples(st.just("path glob"), st.sampled_from(PATH_GLOBS)),
        st.tuples(st.just("any"), st.just("")),
    ),
)
texts_st = st.lists(st.text(alphabet="tol/.*-x", min_size=0, max_size=8), max_size=4)


def build(rules, t, accel):
    by = {"_global": [], "m": []}
    for where, effect, (kind, value) in rules:
        args = () if kind == "any" else (constant(kind, value, t),)
        by[where].append((effect, "process.exec", args))
    glob = linked("_global", by["_global"]) if by["_global"] else None
    return Snapshot({"m": linked("m", by["m"])}, glob, cache_size=0, accel=accel)


def uses_the_index(plan: Plan) -> bool:
    src = source_of(plan.fn) or ""
    return "commands(" in src


def same(a, b) -> bool:
    return (a.allowed, a.effect, a.reason, a.rule, a.module, a.revision, a.audit) == (
        b.allowed,
        b.effect,
        b.reason,
        b.rule,
        b.module,
        b.revision,
        b.audit,
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=st.lists(rule_st, min_size=1, max_size=10),
    texts=texts_st,
    path=st.sampled_from(PATH_VALUES),
    accel=st.sampled_from([False, None]),
)
def test_the_index_decides_as_the_rule_matchers(tree, rules, texts, path, accel):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tree)
        mp.setenv("PATH", path.format(t=tree))
        s = build(rules, tree, accel)
        s.check("m", "process.exec", "tool")  # builds the plan
        plan = Plan("m", "process.exec", s.module("m"), s.glob)
        if any(kind != "any" and value != "*" for _, _, (kind, value) in rules):  # "*" is written as any
            assert uses_the_index(plan), source_of(plan.fn)
        for raw in REQUESTS + texts:  # every request of the pool, and a few random ones
            value = raw.format(t=tree) if "{t}" in raw else raw
            want = plan.decide((value,))  # the tables scanned, one command_matcher per rule
            got = plan.fn((value,))
            assert same(got, want), (value, got, want)
            via = s.check("m", "process.exec", value)  # the snapshot's own plan, C dispatch when built
            assert same(via, want), (value, via, want)
        for raw in REQUESTS + texts:  # again: the answers the indexes remembered for each Command
            value = raw.format(t=tree) if "{t}" in raw else raw
            want = plan.decide((value,))
            assert same(plan.fn((value,)), want), value
            assert same(s.check("m", "process.exec", value), want), value


def test_a_program_that_appears_earlier_on_path_is_seen_within_the_resolve_ttl(tree, monkeypatch):
    """plain/tool, first on PATH, becomes executable: a bare-name entitle of tool that did not
    allow it does once the remembered PATH lookup expires (the index's file map with it)."""
    clock = [5000.0]
    monkeypatch.setattr(patterns, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.chdir(tree)
    monkeypatch.setenv("PATH", f"{tree}/plain:{tree}/link")
    s = build([("m", "deny", ("name glob", "*sudo*")), ("m", "entitle", ("name", "tool"))], tree, None)
    plan = Plan("m", "process.exec", s.module("m"), s.glob)
    assert uses_the_index(plan)
    target = f"{tree}/plain/tool"
    try:
        assert not s.check("m", "process.exec", target).allowed  # PATH gives link/tool: another file
        assert s.check("m", "process.exec", f"{tree}/hard/copy").allowed  # link/tool's hard link
        (tree / "plain" / "tool").chmod(0o755)
        clock[0] += patterns.RESOLVE_TTL / 2
        assert not s.check("m", "process.exec", target).allowed  # still the remembered lookup
        clock[0] += patterns.RESOLVE_TTL / 2 + 0.001
        assert s.check("m", "process.exec", target).allowed  # the lookup expired: plain/tool now
        assert not s.check("m", "process.exec", f"{tree}/hard/copy").allowed
        assert same(plan.fn((target,)), plan.decide((target,)))
        (tree / "plain" / "tool").chmod(0o644)
        patterns.forget_resolutions()  # and at once when the remembered answers are dropped
        assert not s.check("m", "process.exec", target).allowed
        assert s.check("m", "process.exec", f"{tree}/hard/copy").allowed
    finally:
        (tree / "plain" / "tool").chmod(0o644)
        patterns.forget_resolutions()


def test_a_bare_name_constant_follows_a_change_of_path_at_once(tree, monkeypatch):
    monkeypatch.chdir(tree)
    monkeypatch.setenv("PATH", f"{tree}/link")
    s = build([("_global", "deny", ("name", "other")), ("m", "entitle", ("any", ""))], tree, None)
    assert uses_the_index(Plan("m", "process.exec", s.module("m"), s.glob))
    evil = f"{tree}/evil/other"
    assert not s.check("m", "process.exec", evil).allowed  # its name is other: a deny stops any name
    entitle = build([("m", "entitle", ("name", "tool"))], tree, None)
    assert not entitle.check("m", "process.exec", f"{tree}/evil/tool").allowed
    monkeypatch.setenv("PATH", f"{tree}/evil")
    assert entitle.check("m", "process.exec", f"{tree}/evil/tool").allowed  # PATH gives evil/tool now
    assert not entitle.check("m", "process.exec", f"{tree}/bin/tool").allowed
    monkeypatch.setenv("PATH", ".")
    monkeypatch.chdir(tree / "bin")
    assert entitle.check("m", "process.exec", f"{tree}/hard/copy").allowed  # ./tool is bin/tool
    monkeypatch.chdir(tree / "evil")
    assert not entitle.check("m", "process.exec", f"{tree}/hard/copy").allowed  # ./tool is evil/tool


def test_rules_testing_more_than_the_command_keep_the_scan(tree):
    from polc.runtime.catalog import Capability, Param

    cap = Capability("job.run", (Param("queue", "string"), Param("program", "command")))
    art = link(
        read_artifact(
            artifact_bytes(
                "m",
                [("entitle", "job.run", ("q", f"{tree}/bin/*")), ("deny", "job.run", ("*", "tool"))],
                caps={"job.run": cap},
            ),
            expected_module="m",
        )
    )
    s = Snapshot({"m": art}, None, accel=False)
    plan = Plan("m", "job.run", s.module("m"), None)
    assert not uses_the_index(plan)
    assert s.check("m", "job.run", "q", f"{tree}/bin/other").allowed
    assert not s.check("m", "job.run", "q", f"{tree}/link/tool").allowed


def test_the_file_map_expires_with_the_answer_it_used(tmp_path, monkeypatch):
    """Another thread may look a constant up again between the index's lookup and its reading
    of the remembered entry's expiry: the map must not keep the older answer until the newer
    one's expiry (past RESOLVE_TTL after that older lookup)."""
    from polc.runtime.enforce.matchers import str_glob
    from polc.runtime.format.opcodes import STR_EXACT

    none = 10**9
    clock = [1000.0]
    monkeypatch.setattr(patterns, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    const = str(exe(tmp_path / "a"))
    exe(tmp_path / "b")
    req = tmp_path / "hard"
    os.link(const, req)  # the file that a is now
    fn = patterns.command_matcher(STR_EXACT, const, deny=False, glob_matcher=str_glob)
    first = patterns.command_index([(7, False, STR_EXACT, const, fn)], none, none)
    try:
        patterns._file_id(const)  # remembered at 1000, until 1000 + RESOLVE_TTL
        patterns.command_of(str(req))
        clock[0] += patterns.RESOLVE_TTL * 0.9
        real = patterns._file_id
        done = []

        def another_thread_looks_again(path):
            got = real(path)  # the remembered answer, fresh now
            if path == const and not done:
                done.append(path)
                clock[0] += patterns.RESOLVE_TTL * 0.1  # the entry expired: a thread looks again
                os.replace(tmp_path / "b", const)
                st = os.stat(const)
                patterns._resolved.put(("id", const), ((st.st_dev, st.st_ino), clock[0] + patterns.RESOLVE_TTL))
            return got

        monkeypatch.setattr(patterns, "_file_id", another_thread_looks_again)
        first(str(req))  # builds the file map (from the answer of 1000)
        assert done
        monkeypatch.setattr(patterns, "_file_id", real)
        clock[0] += patterns.RESOLVE_TTL * 0.8  # that answer is 1.8 RESOLVE_TTL old
        cmd = patterns.command_of(str(req))
        assert not fn(cmd)  # the matcher sees the newer answer: a is another file now
        assert first(str(req)) == none
    finally:
        patterns.forget_resolutions()


@pytest.mark.parametrize("accel", [False, None])
def test_a_remembered_answer_by_names_follows_path_both_ways(tree, monkeypatch, accel):
    """A bare name's spellings come from its PATH lookup (alias is a symlink to bin/tool, so
    on a PATH of the tree it is also named tool): the index's remembered answer for a command
    is the one for the Command of the PATH in force, whichever way PATH changes, every time."""
    monkeypatch.chdir(tree)
    s = build([("m", "deny", ("name", "tool")), ("m", "entitle", ("any", ""))], tree, accel)
    assert uses_the_index(Plan("m", "process.exec", s.module("m"), s.glob))
    try:
        for _ in range(3):
            monkeypatch.setenv("PATH", str(tree))
            for _ in range(2):
                d = s.check("m", "process.exec", "alias")
                assert not d.allowed and d.effect == "deny", d
            monkeypatch.setenv("PATH", f"{tree}/evil")
            for _ in range(2):
                assert s.check("m", "process.exec", "alias").allowed  # not found: named alias only
    finally:
        patterns.forget_resolutions()


def test_remembered_answers_by_names_are_each_index_s_own(tree, monkeypatch):
    """Two plans, the same request: each index answers from its own rules (the memo is shared
    by every index of the process, keyed by the index)."""
    monkeypatch.chdir(tree)
    monkeypatch.setenv("PATH", f"{tree}/link")
    deny = build([("m", "deny", ("name", "tool")), ("m", "entitle", ("any", ""))], tree, None)
    allow = build([("m", "entitle", ("name", "tool"))], tree, None)
    other = build([("m", "entitle", ("name glob", "o*r"))], tree, None)
    for _ in range(3):
        assert not deny.check("m", "process.exec", "tool").allowed
        assert allow.check("m", "process.exec", "tool").allowed
        assert not other.check("m", "process.exec", "tool").allowed
        assert other.check("m", "process.exec", "other").allowed
        assert not allow.check("m", "process.exec", "other").allowed


def test_a_remembered_answer_by_names_is_dropped_with_the_resolutions(tmp_path, monkeypatch):
    """A symlink on PATH re-pointed to a program of another name: once the remembered lookups
    are dropped (forget_resolutions, as the guard does at a rename), the index sees the new
    name at once, although the request and PATH are the same."""
    monkeypatch.chdir(tmp_path)
    exe(tmp_path / "bin" / "tool")
    exe(tmp_path / "bin" / "other")
    (tmp_path / "on").mkdir()
    (tmp_path / "on" / "run").symlink_to(tmp_path / "bin" / "tool")
    monkeypatch.setenv("PATH", str(tmp_path / "on"))
    for accel in (False, None):
        s = build([("m", "deny", ("name", "tool")), ("m", "entitle", ("any", ""))], tmp_path, accel)
        try:
            assert not s.check("m", "process.exec", "run").allowed
            assert not s.check("m", "process.exec", "run").allowed
            (tmp_path / "on" / "run").unlink()
            (tmp_path / "on" / "run").symlink_to(tmp_path / "bin" / "other")
            patterns.forget_resolutions()
            assert s.check("m", "process.exec", "run").allowed
            assert s.check("m", "process.exec", "run").allowed
        finally:
            (tmp_path / "on" / "run").unlink()
            (tmp_path / "on" / "run").symlink_to(tmp_path / "bin" / "tool")
            patterns.forget_resolutions()
