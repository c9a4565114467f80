"""process.exec compares a command that is a path as the file it names: another
spelling of a denied file (``//``, ``.``, ``..``, a symlinked directory, a symlink
or hard link to the file, a relative path, a bare name found through PATH) never
slips past the deny. Real files and symlinks in tmp_path, checked through the
enforcer as an application would."""

from __future__ import annotations

import hashlib
import os
import struct
import types

import pytest

from polc.runtime.catalog import BUILTINS, Capability, Param
from polc.runtime.enforce import Snapshot, link
from polc.runtime.format import encode, opcodes
from polc.runtime.format.header import HEADER_SIZE, MAGIC
from polc.runtime.format.payload import pack_payload
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes


def linked(module, rules):
    return link(read_artifact(artifact_bytes(module, rules), expected_module=module))


def exe(path, text="#!/bin/sh\nexit 0\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """tmp/bin/tool and tmp/bin/other (programs), tmp/link -> bin, tmp/alias -> bin/tool,
    tmp/hard/copy (a hard link of tool), tmp/evil/tool (another program named tool).
    The working directory is tmp; PATH is tmp/link only."""
    tool = exe(tmp_path / "bin" / "tool")
    exe(tmp_path / "bin" / "other", "#!/bin/sh\nexit 1\n")
    (tmp_path / "link").symlink_to("bin")
    (tmp_path / "alias").symlink_to(tmp_path / "bin" / "tool")
    (tmp_path / "hard").mkdir()
    os.link(tool, tmp_path / "hard" / "copy")
    exe(tmp_path / "evil" / "tool", "#!/bin/sh\necho evil\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "link"))
    return tmp_path


def deny_snapshot(command: str) -> Snapshot:
    """_global denies ``command``; module m may run anything."""
    return Snapshot(
        {"m": linked("m", [("entitle", "process.exec", ())])},
        linked("_global", [("deny", "process.exec", (command,))]),
    )


def spellings_of_tool(t) -> list[str]:
    return [
        f"{t}/bin/tool",
        f"{t}/bin//tool",
        f"{t}//bin/tool",
        f"{t}/bin/./tool",
        f"{t}/./bin/tool",
        f"{t}/bin/../bin/tool",
        f"{t}/evil/../bin/tool",
        f"{t}/link/tool",
        f"{t}/link/../link/tool",
        f"{t}/alias",
        f"{t}/hard/copy",
        "bin/tool",
        "./bin/tool",
        "link/tool",
        "./alias",
        "hard/../bin/tool",
        "tool",  # through PATH (tmp/link)
    ]


def test_every_spelling_of_a_denied_path_is_denied(tree):
    s = deny_snapshot(f"{tree}/bin/tool")
    for spelling in spellings_of_tool(tree):
        d = s.check("m", "process.exec", spelling)
        assert not d.allowed and d.reason == "denied by _global", (spelling, d)
    for other in [f"{tree}/bin/other", "other", f"{tree}/evil/tool", "./evil/tool", "/bin/true"]:
        assert s.check("m", "process.exec", other).allowed, other


@pytest.mark.parametrize("rule", ["{t}/link/tool", "{t}/bin//tool", "{t}/evil/../bin/tool", "{t}/alias", "{t}/hard/copy"])
def test_a_deny_written_through_another_spelling_stops_the_file(tree, rule):
    s = deny_snapshot(rule.format(t=tree))
    for spelling in spellings_of_tool(tree):
        assert not s.check("m", "process.exec", spelling).allowed, (rule, spelling)
    assert s.check("m", "process.exec", f"{tree}/bin/other").allowed


def test_a_glob_through_a_symlinked_directory_covers_the_real_directory(tree):
    s = deny_snapshot(f"{tree}/link/*")
    for spelling in [f"{tree}/bin/tool", f"{tree}/bin/other", f"{tree}/alias", "bin/other", "tool"]:
        assert not s.check("m", "process.exec", spelling).allowed, spelling
    assert s.check("m", "process.exec", f"{tree}/evil/tool").allowed


def test_a_bare_name_deny_matches_the_program_anywhere_under_any_name(tree):
    s = deny_snapshot("tool")
    for spelling in spellings_of_tool(tree) + [f"{tree}/evil/tool", "/nowhere/tool", "nowhere/tool"]:
        assert not s.check("m", "process.exec", spelling).allowed, spelling
    assert s.check("m", "process.exec", "other").allowed
    assert s.check("m", "process.exec", f"{tree}/bin/other").allowed
    g = deny_snapshot("to*")
    assert not g.check("m", "process.exec", f"{tree}/alias").allowed  # its real name
    assert not g.check("m", "process.exec", "tool -x").allowed


def test_a_bare_name_entitle_allows_that_program_only(tree):
    s = Snapshot({"m": linked("m", [("entitle", "process.exec", ("tool",))])}, None)
    for ok in ["tool", f"{tree}/bin/tool", f"{tree}/link/tool", "./alias", f"{tree}/hard/copy"]:
        assert s.check("m", "process.exec", ok).allowed, ok
    for bad in [f"{tree}/evil/tool", "./evil/tool", "other", f"{tree}/bin/other", "tool2", "/nowhere/tool"]:
        assert not s.check("m", "process.exec", bad).allowed, bad


def test_a_path_entitle_allows_the_file_under_its_other_names_only(tree):
    s = Snapshot({"m": linked("m", [("entitle", "process.exec", (f"{tree}/bin/tool",))])}, None)
    for ok in spellings_of_tool(tree):
        assert s.check("m", "process.exec", ok).allowed, ok
    for bad in [f"{tree}/evil/tool", f"{tree}/bin/other", f"{tree}/bin/tool2", "other"]:
        assert not s.check("m", "process.exec", bad).allowed, bad
    # a glob entitle is matched against normalised paths, never the raw text
    g = Snapshot({"m": linked("m", [("entitle", "process.exec", (f"{tree}/evil/*",))])}, None)
    assert g.check("m", "process.exec", f"{tree}/evil/tool").allowed
    assert not g.check("m", "process.exec", f"{tree}/evil/../bin/tool").allowed


def test_decisions_follow_the_file_system_within_the_resolve_ttl(tree, monkeypatch):
    """Repointing a symlink changes the decision once what was looked up expires
    (patterns.RESOLVE_TTL, 1 s): command decisions are never cached for longer."""
    from polc.runtime import patterns
    from polc.runtime.enforce import snapshot as snapshot_mod

    clock = [1000.0]
    fake = types.SimpleNamespace(monotonic=lambda: clock[0])
    monkeypatch.setattr(patterns, "time", fake)
    monkeypatch.setattr(snapshot_mod, "time", fake)
    ttl = patterns.RESOLVE_TTL
    assert ttl <= 1.0
    s = deny_snapshot(f"{tree}/bin/tool")
    (tree / "switch").symlink_to(tree / "bin" / "other")
    assert s.check("m", "process.exec", f"{tree}/switch").allowed
    (tree / "switch").unlink()
    (tree / "switch").symlink_to(tree / "bin" / "tool")
    clock[0] += ttl + 0.001
    assert not s.check("m", "process.exec", f"{tree}/switch").allowed
    (tree / "switch").unlink()
    clock[0] += ttl + 0.001
    assert s.check("m", "process.exec", f"{tree}/switch").allowed
    # and without waiting once the remembered lookups are dropped
    (tree / "switch").unlink(missing_ok=True)
    (tree / "switch").symlink_to(tree / "alias")
    patterns.forget_resolutions()
    s2 = deny_snapshot(f"{tree}/bin/tool")
    assert not s2.check("m", "process.exec", f"{tree}/switch").allowed
    assert not s._cache and not s2._cache  # nothing about a command is in the long-lived cache
    assert s.check("m", "threads.create").reason == "no entitlement" and s._cache  # other decisions are


def test_merged_usr_spellings_of_the_system_shell():
    """Where /bin and /usr/bin are one directory (merged /usr), a deny of /bin/sh
    also stops /usr/bin/sh and the shell's real path."""
    if not os.path.exists("/bin/sh") or os.path.realpath("/bin/sh") != os.path.realpath("/usr/bin/sh"):
        pytest.skip("/bin/sh and /usr/bin/sh are different files here")
    s = deny_snapshot("/bin/sh")
    for spelling in ["/bin/sh", "/bin//sh", "/bin/./sh", "/usr/bin/../../bin/sh", "/usr/bin/sh",
                     os.path.realpath("/bin/sh")]:
        assert not s.check("m", "process.exec", spelling).allowed, spelling


def test_bad_commands_are_denied_with_a_reason(tree):
    s = deny_snapshot("nothing")
    for bad, words in [("", "empty command"), ("a\0b", "NUL"), (3, "expected a command"), ("x" * 5000, "longer than")]:
        d = s.check("m", "process.exec", bad)
        assert not d.allowed and d.reason.startswith("invalid argument 'command' of process.exec"), d
        assert words in d.reason


def test_a_declared_capability_may_take_a_command(tree):
    cap = Capability("job.run", (Param("queue", "string"), Param("program", "command")))
    art = link(read_artifact(artifact_bytes(
        "m", [("entitle", "job.run", ("q", f"{tree}/bin/*")), ("deny", "job.run", ("*", "tool"))], caps={"job.run": cap},
    ), expected_module="m"))
    s = Snapshot({"m": art}, None)
    assert s.check("m", "job.run", "q", f"{tree}/bin/other").allowed
    assert not s.check("m", "job.run", "q", f"{tree}/link/tool").allowed
    assert not s.check("m", "job.run", "q", f"{tree}/evil/../bin/../alias").allowed
    assert not s.check("m", "job.run", "r", f"{tree}/bin/other").allowed
    assert not s._cache  # a declared command parameter is never cached either


def _artifact_1_0(module: str, rules) -> bytes:
    """An artifact as polc 0.1.0 wrote it: format 1.0, process.exec(command: string)."""
    legacy = Capability("process.exec", (Param("command", "string"),))
    caps, consts, code = encode.assemble([(e, legacy, 2 + i, 5, args) for i, (e, args) in enumerate(rules)])
    payload = {
        "module": module, "mode": "enforce", "compiler": "0.1.0", "source": f"{module}.pol",
        "source_digest": hashlib.sha256(b"x").hexdigest(), "caps": caps, "consts": consts, "code": code,
    }
    body = pack_payload(payload)
    digest = hashlib.sha256(MAGIC + struct.pack(">HH", 1, 0) + body).digest()
    header = struct.pack(">8sHHIII32s", MAGIC, 1, 0, 0, len(body), 0, digest)
    assert len(header) == HEADER_SIZE
    return header + body


def test_format_1_0_artifacts_are_read_with_command_semantics(tree):
    data = _artifact_1_0("_global", [(opcodes.DENY, [(opcodes.STR_EXACT, f"{tree}/bin/tool")])])
    art = read_artifact(data, expected_module="_global")
    assert art.header.minor == 0
    assert art.caps == (BUILTINS["process.exec"],)  # read as the current built-in
    s = Snapshot({"m": linked("m", [("entitle", "process.exec", ())])}, link(art))
    for spelling in spellings_of_tool(tree):
        assert not s.check("m", "process.exec", spelling).allowed, spelling
    assert s.check("m", "process.exec", f"{tree}/bin/other").allowed


def test_a_bare_name_follows_a_change_of_path_at_once(tree, monkeypatch):
    """What a bare name resolves to is remembered per PATH value: a new PATH decides the
    very next check, without waiting for the remembered lookups to expire."""
    s = Snapshot({"m": linked("m", [("entitle", "process.exec", ())])},
                 linked("_global", [("deny", "process.exec", (f"{tree}/bin/tool",))]), cache_size=0)
    assert not s.check("m", "process.exec", "tool").allowed  # PATH: tmp/link -> bin/tool
    assert not s.check("m", "process.exec", "tool").allowed  # remembered
    monkeypatch.setenv("PATH", str(tree / "evil"))
    assert s.check("m", "process.exec", "tool").allowed  # another program named tool
    monkeypatch.setenv("PATH", str(tree / "link"))
    assert not s.check("m", "process.exec", "tool").allowed
    monkeypatch.setenv("PATH", f"{tree / 'evil'}:.")  # a relative entry: the working directory counts
    assert s.check("m", "process.exec", "tool").allowed
    monkeypatch.chdir(tree / "bin")
    monkeypatch.setenv("PATH", f".:{tree / 'evil'}")
    assert not s.check("m", "process.exec", "tool").allowed  # ./tool is bin/tool
