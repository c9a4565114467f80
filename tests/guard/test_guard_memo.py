"""Allows the guard remembers per snapshot (connects to an address, execs of a program on PATH,
opens of an absolute path),
and answers again without deciding (the C hook by itself): a repeat is counted like a decided
allow, and nothing that could change the answer is answered from memory — a reload, another
governed package on the stack, another PATH, a working directory or environment of the call's
own, a PATH lookup that now finds another file, a symlink repointed here or by another
process, another open mode. Each scenario runs in a child process under the
real guard (audit hooks cannot be removed), with real sockets and real programs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from support.guard import child_env, compile_policies

VENDOR = """
import socket, subprocess

def connect(address):
    s = socket.socket()
    try:
        s.connect(address)
    finally:
        s.close()

def run(argv, **kw):
    return subprocess.run(argv, **kw).returncode

def read(path):
    with open(path) as f:
        return f.read()

def write(path, text):
    with open(path, "w") as f:
        f.write(text)
"""
CALLER = """
import memovendor

def connect(address):
    return memovendor.connect(address)
"""


class Listener:
    """A loopback TCP listener that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def _tree(tmp_path: Path, vendor_rules: str) -> Path:
    site = tmp_path / "site-packages"
    (site / "memovendor").mkdir(parents=True)
    (site / "memovendor" / "__init__.py").write_text(VENDOR)
    (site / "memocaller").mkdir()
    (site / "memocaller" / "__init__.py").write_text(CALLER)
    src = tmp_path / "src"
    src.mkdir()
    (src / "_global.pol").write_text("security module _global { }\n")
    (src / "memovendor.pol").write_text(f"security module memovendor {{\n{vendor_rules}\n}}\n")
    (src / "memocaller.pol").write_text("security module memocaller { }\n")
    compile_policies(src, tmp_path / "policies")
    return tmp_path


PRELUDE = """
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[1] + "/site-packages")
from polc.runtime import PolicyAgent, PolicyDenied
agent = PolicyAgent(sys.argv[1] + "/policies", reload_interval=0).start()
agent.guard(base=sys.argv[1])
import memovendor, memocaller
try:
    from polc.runtime.guard import _hook
except ImportError:
    _hook = None

def remembered():
    return _hook.stats()["remembered"] if _hook is not None and os.environ.get("POLC_GUARD_ACCEL") == "1" else None

def attempt(fn, *args, **kw):
    try:
        fn(*args, **kw)
        return "ok"
    except PolicyDenied as exc:
        return "denied: " + str(exc)

def outcome(fn, *args, **kw):
    # what fn returns; "denied: ..." for a PolicyDenied; the name of any other OSError
    try:
        return fn(*args, **kw)
    except PolicyDenied as exc:
        return "denied: " + str(exc)
    except OSError as exc:
        return type(exc).__name__

def allowed(package, capability):
    return agent.status()["guard"]["packages"].get(package, {}).get(capability, {}).get("allowed", 0)
"""


def run_child(tree: Path, code: str, *args: str) -> dict:
    script = textwrap.dedent(PRELUDE) + textwrap.dedent(code)
    r = subprocess.run([sys.executable, "-c", script, str(tree), *args], env=child_env(), capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_repeated_connects_are_counted_and_a_reload_ends_what_was_remembered(tmp_path, listener, guard_hook):
    tree = _tree(tmp_path, '    entitle module to network.outbound("127.0.0.1", *);')
    deny = tmp_path / "deny-src"
    deny.mkdir()
    (deny / "_global.pol").write_text("security module _global { }\n")
    (deny / "memovendor.pol").write_text("security module memovendor { deny module to network.outbound; }\n")
    (deny / "memocaller.pol").write_text("security module memocaller { }\n")
    out = run_child(tree, """
        address = ("127.0.0.1", int(sys.argv[2]))
        before = remembered()
        results = [attempt(memovendor.connect, address) for _ in range(40)]
        after = remembered()
        counted = allowed("memovendor", "network.outbound")
        # the vendor is blocked: a new policy, reloaded
        r = subprocess.run([sys.executable, "-m", "polc", "compile", sys.argv[3], "-o", sys.argv[1] + "/policies"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        agent.reload_now()
        blocked = attempt(memovendor.connect, address)
        print(json.dumps({"results": results, "counted": counted, "blocked": blocked,
                          "remembered": None if before is None else after - before}))
    """, str(listener.port), str(deny))
    assert out["results"] == ["ok"] * 40
    assert out["counted"] == 40  # each connect counted once, decided or remembered
    assert out["blocked"].startswith("denied: polc: memovendor may not network.outbound('127.0.0.1', ")
    assert listener.accepted == 40  # the refused connect never reached the listener
    if guard_hook == "C":
        assert out["remembered"] >= 39  # all but the first answered by the C hook itself


def test_another_governed_package_on_the_stack_is_asked_again(tmp_path, listener, guard_hook):
    tree = _tree(tmp_path, '    entitle module to network.outbound("127.0.0.1", *);')
    out = run_child(tree, """
        address = ("127.0.0.1", int(sys.argv[2]))
        alone = [attempt(memovendor.connect, address) for _ in range(5)]
        through = attempt(memocaller.connect, address)  # memocaller has no entitlement of its own
        again = attempt(memovendor.connect, address)
        print(json.dumps({"alone": alone, "through": through, "again": again}))
    """, str(listener.port))
    assert out["alone"] == ["ok"] * 5
    assert out["through"].startswith("denied: polc: memocaller may not network.outbound('127.0.0.1', ")
    assert out["again"] == "ok"
    assert listener.accepted == 6


def _tools(tmp_path: Path) -> tuple[Path, Path]:
    """Two directories, each with an executable ``tool``: ``allowed/tool`` and ``other/tool``."""
    dirs = []
    for name in ("allowed", "other"):
        d = tmp_path / name
        d.mkdir()
        tool = d / "tool"
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(0o755)
        dirs.append(d)
    return dirs[0], dirs[1]


def test_a_remembered_exec_is_not_reused_for_another_path_cwd_or_environment(tmp_path, guard_hook):
    allowed_dir, other_dir = _tools(tmp_path)
    tree = _tree(tmp_path, f'    entitle module to process.exec("{allowed_dir}/tool");')
    out = run_child(tree, """
        good, bad = sys.argv[2], sys.argv[3]
        os.environ["PATH"] = good
        first = [attempt(memovendor.run, ["tool"]) for _ in range(5)]
        os.environ["PATH"] = bad  # the same name now finds another program
        switched = attempt(memovendor.run, ["tool"])
        os.environ["PATH"] = good
        back = attempt(memovendor.run, ["tool"])
        own_env = attempt(memovendor.run, ["tool"], env={"PATH": bad})
        own_cwd = attempt(memovendor.run, ["./tool"], cwd=bad)
        relative = attempt(memovendor.run, ["./tool"], cwd=good)
        print(json.dumps({"first": first, "switched": switched, "back": back, "own_env": own_env,
                          "own_cwd": own_cwd, "relative": relative}))
    """, str(allowed_dir), str(other_dir))
    assert out["first"] == ["ok"] * 5
    denied = f"denied: polc: memovendor may not process.exec('{other_dir}/tool')"
    assert out["switched"].startswith(denied)
    assert out["back"] == "ok"
    assert out["own_env"].startswith(denied)
    assert out["own_cwd"].startswith(f"denied: polc: memovendor may not process.exec('{other_dir}/./tool')")
    assert out["relative"] == "ok"


def test_a_remembered_exec_lasts_no_longer_than_its_path_lookup(tmp_path, guard_hook):
    """A program that appears earlier on PATH is what runs after at most the lookup's lifetime
    (one second): the remembered allow of the old one ends with it."""
    allowed_dir, other_dir = _tools(tmp_path)
    early = tmp_path / "early"
    early.mkdir()
    tree = _tree(tmp_path, f'    entitle module to process.exec("{allowed_dir}/tool");')
    out = run_child(tree, """
        import shutil, time
        good, bad, early = sys.argv[2], sys.argv[3], sys.argv[4]
        os.environ["PATH"] = early + os.pathsep + good
        first = [attempt(memovendor.run, ["tool"]) for _ in range(3)]
        shutil.copy(bad + "/tool", early + "/tool")  # now found first, and not entitled
        deadline = time.monotonic() + 30
        later = "ok"
        while later == "ok" and time.monotonic() < deadline:
            later = attempt(memovendor.run, ["tool"])
        print(json.dumps({"first": first, "later": later}))
    """, str(allowed_dir), str(other_dir), str(early))
    assert out["first"] == ["ok"] * 3
    assert out["later"].startswith(f"denied: polc: memovendor may not process.exec('{early}/tool')")


def test_an_observed_guard_remembers_nothing(tmp_path, listener, guard_hook):
    """With --observe every request is logged, so nothing is answered from memory."""
    tree = _tree(tmp_path, '    entitle module to network.outbound("127.0.0.1", *);')
    log = tmp_path / "observed.jsonl"
    code = textwrap.dedent(PRELUDE).replace("agent.guard(base=sys.argv[1])",
                                            f"agent.guard(base=sys.argv[1], observe={str(log)!r})")  # fmt: skip
    code += textwrap.dedent("""
        address = ("127.0.0.1", int(sys.argv[2]))
        results = [attempt(memovendor.connect, address) for _ in range(5)]
        print(json.dumps({"results": results, "remembered": remembered(),
                          "counted": allowed("memovendor", "network.outbound")}))
    """)
    r = subprocess.run([sys.executable, "-c", code, str(tree), str(listener.port)], env=child_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["results"] == ["ok"] * 5
    assert out["counted"] == 5
    if guard_hook == "C":
        assert out["remembered"] == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["capability"] for line in lines] == ["network.outbound"]
    assert os.path.exists(log)


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """data/ (entitled), secret.txt (not), data/link -> data/ok.txt."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.txt").write_text("ok")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(data / "ok.txt", data / "link")
    return data, data / "link", tmp_path / "secret.txt"


def test_remembered_opens_end_when_a_symlink_is_repointed_here(tmp_path, guard_hook):
    data, link, secret = _files(tmp_path)
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    out = run_child(tree, """
        link, secret = sys.argv[2], sys.argv[3]
        before = remembered()
        first = [attempt(memovendor.read, link) for _ in range(20)]
        after = remembered()
        counted = allowed("memovendor", "fs.read")
        os.remove(link)
        os.symlink(secret, link)  # repointed by this process: seen at once
        repointed = attempt(memovendor.read, link)
        print(json.dumps({"first": first, "counted": counted, "repointed": repointed,
                          "remembered": None if before is None else after - before}))
    """, str(link), str(secret))
    assert out["first"] == ["ok"] * 20
    assert out["counted"] == 20
    assert out["repointed"].startswith("denied: polc: memovendor may not fs.read(")
    assert "secret.txt" in out["repointed"]
    if guard_hook == "C":
        assert out["remembered"] >= 19


def test_remembered_opens_end_when_another_process_repoints_a_symlink(tmp_path, guard_hook):
    """Another process's change raises no event here: it is seen once the path's resolution
    expires (one second), as for any resolution the guard reuses."""
    data, link, secret = _files(tmp_path)
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    out = run_child(tree, """
        import time
        link, secret = sys.argv[2], sys.argv[3]
        first = [attempt(memovendor.read, link) for _ in range(5)]
        # repointed by another process (no audit event here): ln -sfn replaces the link
        r = subprocess.run(["ln", "-sfn", secret, link + ".new"], capture_output=True)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["mv", "-T", link + ".new", link], capture_output=True)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 30
        later = "ok"
        while later == "ok" and time.monotonic() < deadline:
            later = attempt(memovendor.read, link)
        print(json.dumps({"first": first, "later": later}))
    """, str(link), str(secret))
    assert out["first"] == ["ok"] * 5
    assert out["later"].startswith("denied: polc: memovendor may not fs.read(")
    assert "secret.txt" in out["later"]


def test_a_remembered_read_is_not_a_write(tmp_path, guard_hook):
    data, _link, _secret = _files(tmp_path)
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    target = data / "ok.txt"
    out = run_child(tree, """
        path = sys.argv[2]
        reads = [attempt(memovendor.read, path) for _ in range(5)]
        written = attempt(memovendor.write, path, "overwritten")
        print(json.dumps({"reads": reads, "written": written}))
    """, str(target))
    assert out["reads"] == ["ok"] * 5
    assert out["written"].startswith("denied: polc: memovendor may not fs.write(")
    assert target.read_text() == "ok"  # the write never happened


def _deny_tree(tmp_path: Path) -> Path:
    deny = tmp_path / "deny-src"
    deny.mkdir()
    (deny / "_global.pol").write_text("security module _global { }\n")
    (deny / "memovendor.pol").write_text("security module memovendor { deny module to network.outbound; deny module to process.exec; }\n")
    (deny / "memocaller.pol").write_text("security module memocaller { }\n")
    return deny


# A reload (and the switch to its snapshot, which any other thread's next handled event makes)
# that lands while a request is being decided under the old snapshot: the old snapshot's allow
# must not be remembered in the new snapshot's memo. The decided allow is held before it is
# remembered, and another thread reloads meanwhile (the interleaving a thread switch gives,
# made certain).
RACE = """
    import threading
    from polc.runtime.guard import events
    guard = agent._guard
    go, done = threading.Event(), threading.Event()
    held = []

    def hold():
        if not held:
            held.append(True)
            go.set()
            assert done.wait(60)

    def reloader():
        assert go.wait(60)
        r = subprocess.run([sys.executable, "-m", "polc", "compile", sys.argv[3], "-o", sys.argv[1] + "/policies"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        agent.reload_now()
        guard.snapshot()  # what this thread's next handled event does
        done.set()

    remember = guard.remember

    def racing(*args):  # the decision is made: the reload lands before it is remembered
        hold()
        remember(*args)

    guard.remember = racing
    threading.Thread(target=reloader, daemon=True).start()
"""


def test_an_allow_decided_under_the_old_snapshot_is_not_remembered_for_a_reload(tmp_path, listener, guard_hook):
    tree = _tree(tmp_path, '    entitle module to network.outbound("127.0.0.1", *);')
    out = run_child(tree, textwrap.dedent(RACE) + textwrap.dedent("""
        address = ("127.0.0.1", int(sys.argv[2]))
        during = attempt(memovendor.connect, address)  # decided before the reload: allowed
        del guard.remember
        after = [attempt(memovendor.connect, address) for _ in range(3)]
        print(json.dumps({"during": during, "after": after}))
    """), str(listener.port), str(_deny_tree(tmp_path)))
    assert out["during"] == "ok"
    denied = "denied: polc: memovendor may not network.outbound('127.0.0.1', "
    assert all(a.startswith(denied) for a in out["after"]), out["after"]
    assert out["during"] == "ok"
    denied = "denied: polc: memovendor may not network.outbound('127.0.0.1', "
    assert all(a.startswith(denied) for a in out["after"]), out["after"]
    assert listener.accepted == 1


def test_an_exec_allowed_under_the_old_snapshot_is_not_remembered_for_a_reload(tmp_path, guard_hook):
    allowed_dir, _ = _tools(tmp_path)
    tree = _tree(tmp_path, f'    entitle module to process.exec("{allowed_dir}/tool");')
    out = run_child(tree, textwrap.dedent(RACE) + textwrap.dedent("""
        os.environ["PATH"] = sys.argv[2]
        during = attempt(memovendor.run, ["tool"])  # decided before the reload: allowed
        del guard.remember
        after = [attempt(memovendor.run, ["tool"]) for _ in range(3)]
        print(json.dumps({"during": during, "after": after}))
    """), str(allowed_dir), str(_deny_tree(tmp_path)))
    assert out["during"] == "ok"
    denied = f"denied: polc: memovendor may not process.exec('{allowed_dir}/tool')"
    assert all(a.startswith(denied) for a in out["after"]), out["after"]


def test_a_remembered_exec_is_keyed_by_the_path_it_was_looked_up_on(tmp_path, guard_hook):
    """PATH changes while an exec is decided (the package's other thread, at a thread switch, made
    certain here): the allow found on the new PATH is not remembered under the PATH read before."""
    allowed_dir, other_dir = _tools(tmp_path)
    tree = _tree(tmp_path, f'    entitle module to process.exec("{allowed_dir}/tool");')
    out = run_child(tree, """
        from polc.runtime.guard import events
        good, bad = sys.argv[2], sys.argv[3]
        lookup = events.executable_of

        def switching(*args, **kw):
            os.environ["PATH"] = good
            return lookup(*args, **kw)

        os.environ["PATH"] = bad
        events.executable_of = switching
        during = attempt(memovendor.run, ["tool"])
        events.executable_of = lookup
        os.environ["PATH"] = bad
        after = [attempt(memovendor.run, ["tool"]) for _ in range(3)]
        print(json.dumps({"during": during, "after": after}))
    """, str(allowed_dir), str(other_dir))
    denied = f"denied: polc: memovendor may not process.exec('{other_dir}/tool')"
    assert all(a.startswith(denied) for a in out["after"]), out["after"]
    assert out["during"] == "ok" or out["during"].startswith(denied)


def test_a_file_decision_of_the_old_snapshot_is_not_remembered_for_a_reload(tmp_path, guard_hook):
    """The same race for the remembered file-system decisions (Guard.fs_decision)."""
    data = tmp_path / "data.txt"
    data.write_text("data")
    tree = _tree(tmp_path, f'    entitle module to fs.read("/", "{str(data)[1:]}");')
    deny = _deny_tree(tmp_path)
    (deny / "memovendor.pol").write_text("security module memovendor { deny module to fs.read; }\n")
    out = run_child(tree, textwrap.dedent(RACE).replace("    guard.remember = racing\n", "") + textwrap.dedent("""
        candidates = guard.roots.candidates

        def racing_candidates(real):
            yield from candidates(real)
            hold()  # every spelling decided: the reload lands before the decision is remembered

        guard.roots.candidates = racing_candidates
        during = attempt(memovendor.read, sys.argv[2])
        guard.roots.candidates = candidates
        after = [attempt(memovendor.read, sys.argv[2]) for _ in range(3)]
        print(json.dumps({"during": during, "after": after}))
    """), str(data), str(deny))
    assert out["during"] == "ok"
    assert all(a.startswith("denied: polc: memovendor may not fs.read(") for a in out["after"]), out["after"]


def test_a_classification_of_the_old_snapshot_is_not_kept_for_a_reload(tmp_path, listener, guard_hook):
    """The same race for the classification of module names (Guard._classify): memovendor is
    ungoverned under the old policy and governed (denied) under the new one."""
    tree = _tree(tmp_path, "")
    (tmp_path / "src" / "memovendor.pol").unlink()
    shutil.rmtree(tmp_path / "policies")
    compile_policies(tmp_path / "src", tmp_path / "policies")
    out = run_child(tree, textwrap.dedent(RACE).replace("    guard.remember = racing\n", "") + textwrap.dedent("""
        classifier = guard._classifier
        classify = classifier.classify

        def racing_classify(name, file):
            owner = classify(name, file)
            if name == "memovendor":
                hold()  # classified under the old snapshot: the reload lands before it is kept
            return owner

        classifier.classify = racing_classify
        address = ("127.0.0.1", int(sys.argv[2]))
        during = attempt(memovendor.connect, address)  # ungoverned under the old policy
        after = [attempt(memovendor.connect, address) for _ in range(3)]
        print(json.dumps({"during": during, "after": after}))
    """), str(listener.port), str(_deny_tree(tmp_path)))
    assert out["during"] == "ok"
    denied = "denied: polc: memovendor may not network.outbound('127.0.0.1', "
    assert all(a.startswith(denied) for a in out["after"]), out["after"]


def test_a_remembered_open_through_proc_self_cwd_ends_at_a_chdir(tmp_path, guard_hook):
    """/proc/self/cwd is where the working directory is: a chdir changes what a path through
    it resolves to, so what was resolved (and remembered) through it is not reused."""
    data, _link, _secret = _files(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "ok.txt").write_text("secret")
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    out = run_child(tree, """
        data, other = sys.argv[2], sys.argv[3]
        os.chdir(data)
        first = [memovendor.read("/proc/self/cwd/ok.txt") for _ in range(5)]
        os.chdir(other)
        later = outcome(memovendor.read, "/proc/self/cwd/ok.txt")
        print(json.dumps({"first": first, "later": later}))
    """, str(data), str(other))
    assert out["first"] == ["ok"] * 5
    assert out["later"].startswith("denied: polc: memovendor may not fs.read(")


def test_a_remembered_open_ends_when_a_hard_link_makes_a_symlink(tmp_path, guard_hook):
    """os.link(..., follow_symlinks=False) of a symlink makes a new symlink (a relative one
    points elsewhere from its new place): how the new name resolves changed, as at os.symlink."""
    data, _link, _secret = _files(tmp_path)
    (data / "a").mkdir()
    os.symlink("../x.txt", data / "a" / "evil")  # data/a/evil -> data/x.txt (entitled)
    (tmp_path / "x.txt").write_text("secret")  # data/sub -> ../x.txt is this one
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    out = run_child(tree, """
        data = sys.argv[2]
        sub = data + "/sub"
        first = [outcome(memovendor.read, sub) for _ in range(3)]  # not there yet: allowed, then not found
        os.link(data + "/a/evil", sub, follow_symlinks=False)  # sub is now a symlink to ../x.txt
        later = outcome(memovendor.read, sub)
        print(json.dumps({"first": first, "later": later}))
    """, str(data))
    assert out["first"] == ["FileNotFoundError"] * 3
    assert out["later"].startswith("denied: polc: memovendor may not fs.read(")
    assert "x.txt" in out["later"]


def test_a_path_through_proc_self_fd_is_resolved_at_every_open(tmp_path, guard_hook):
    """/proc/self/fd/N leads where descriptor N is now: a dup2 (or a close and another open)
    moves it with no event the guard sees, so such a path is not remembered."""
    data, _link, _secret = _files(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "ok.txt").write_text("secret")
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    out = run_child(tree, """
        data, other = sys.argv[2], sys.argv[3]
        n = os.open(data, os.O_RDONLY | os.O_DIRECTORY)  # the service's own descriptors
        path = f"/proc/self/fd/{n}/ok.txt"
        first = [memovendor.read(path) for _ in range(5)]
        os.dup2(os.open(other, os.O_RDONLY | os.O_DIRECTORY), n)
        later = outcome(memovendor.read, path)
        print(json.dumps({"first": first, "later": later}))
    """, str(data), str(other))
    assert out["first"] == ["ok"] * 5
    assert out["later"].startswith("denied: polc: memovendor may not fs.read(")


def test_polc_reading_its_policy_directory_is_not_answered_from_a_remembered_open(tmp_path, guard_hook):
    """polc's own frame innermost to the governed ones: its read of the policy directory is
    neither decided nor counted as the governed package's (both hooks), even when the package's
    own read of that very file was remembered."""
    data, _link, _secret = _files(tmp_path)
    tree = _tree(tmp_path, '    entitle module to fs.read("policies", "**");')
    out = run_child(tree, """
        path = sorted(os.path.join(sys.argv[1], "policies", n) for n in os.listdir(sys.argv[1] + "/policies"))[0]
        own = [memovendor.read(path) is not None for _ in range(5)]  # the package's own reads: remembered
        namespace = {"__name__": "polc.runtime.reader"}  # a frame of polc (the agent reading its bundle)
        exec("def read(path):\\n    with open(path) as f:\\n        return f.read()\\n", namespace)
        call = {"__name__": "memovendor"}  # memovendor calling into polc
        exec("def call(fn, *args):\\n    return fn(*args)\\n", call)
        before = allowed("memovendor", "fs.read")
        for _ in range(5):
            call["call"](namespace["read"], path)
        print(json.dumps({"own": own, "counted": allowed("memovendor", "fs.read") - before}))
    """)
    assert out["own"] == [True] * 5
    assert out["counted"] == 0


def test_an_open_resolved_before_another_thread_repoints_a_symlink_is_not_remembered(tmp_path, guard_hook):
    """The symlink is repointed by another thread after the open's path was resolved and before
    its allow is remembered: the allow is not reused once the change is seen."""
    data, link, secret = _files(tmp_path)
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    out = run_child(tree, """
        import threading
        link, secret = sys.argv[2], sys.argv[3]
        guard = agent._guard
        remember = guard.remember
        held = []

        def repoint():
            os.remove(link)
            os.symlink(secret, link)

        def racing(*args):  # resolved and decided: the other thread repoints the link now
            if not held:
                held.append(True)
                t = threading.Thread(target=repoint)
                t.start()
                t.join(60)
            remember(*args)

        guard.remember = racing
        during = attempt(memovendor.read, link)  # the open in flight: the check's own gap
        guard.remember = remember
        after = [attempt(memovendor.read, link) for _ in range(3)]
        print(json.dumps({"during": during, "after": after}))
    """, str(link), str(secret))
    assert out["during"] == "ok"
    assert all(a.startswith("denied: polc: memovendor may not fs.read(") for a in out["after"]), out["after"]


@pytest.fixture
def open_tmp():
    """A scratch directory every user can reach (the child may give up root: see below)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="polc-memo-"))
    path.chmod(0o755)
    yield path
    for p in path.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path)


def test_a_remembered_open_ends_when_a_directory_becomes_searchable(open_tmp, guard_hook):
    """A directory the process cannot search hides a symlink in it: the path resolves as if the
    symlink were a plain name (the open then fails). A chmod that makes the directory searchable
    changes where the path leads, as a symlink made there would."""
    tmp_path = open_tmp
    data, _link, secret = _files(tmp_path)
    secret.chmod(0o644)
    locked = data / "locked"
    locked.mkdir()
    os.symlink("../..", locked / "up")  # data/locked/up -> the tree itself
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    for p in [tree, *tree.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(locked, 65534, 65534)
    locked.chmod(0)
    out = run_child(tree, """
        if os.geteuid() == 0:  # root searches any directory: the child runs as nobody
            os.setgid(65534)
            os.setuid(65534)
        locked = sys.argv[2]
        path = locked + "/up/secret.txt"  # data/locked/up/secret.txt while up cannot be seen
        first = [outcome(memovendor.read, path) for _ in range(3)]
        os.chmod(locked, 0o755)
        later = outcome(memovendor.read, path)
        print(json.dumps({"first": first, "later": later}))
    """, str(locked))
    assert out["first"] == ["PermissionError"] * 3
    assert out["later"].startswith("denied: polc: memovendor may not fs.read(")
    assert "secret.txt" in out["later"]


def test_the_import_system_writes_for_a_governed_package_only_bytecode_in_pycache(tmp_path, guard_hook):
    """The import system's own functions called by a governed package: its writes are exempt
    only where the import system itself writes (bytecode in __pycache__), not for every name an
    import reads (an extension module's name anywhere)."""
    data, _link, _secret = _files(tmp_path)
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    out = run_child(tree, """
        namespace = {"__name__": "memovendor"}
        exec("import importlib._bootstrap_external as be\\n"
             "def write(path, data):\\n    be._write_atomic(path, data)\\n", namespace)
        target = sys.argv[1] + "/evil.cpython-311-x86_64-linux-gnu.so"
        written = attempt(namespace["write"], target, b"not an extension")
        import memocaller  # an import of a package's module still caches its bytecode
        print(json.dumps({"written": written, "exists": os.path.exists(target)}))
    """)
    assert out["written"].startswith("denied: polc: memovendor may not fs.write(")
    assert not out["exists"]


def test_a_governed_package_cannot_write_the_services_bytecode_through_the_import_system(tmp_path, guard_hook):
    data, _link, _secret = _files(tmp_path)
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    (tmp_path / "__pycache__").mkdir()
    out = run_child(tree, """
        namespace = {"__name__": "memovendor"}
        exec("import importlib._bootstrap_external as be\\n"
             "def write(path, data):\\n    be._write_atomic(path, data)\\n", namespace)
        target = sys.argv[1] + "/__pycache__/service.cpython-311.pyc"  # the service's own module, next run
        print(json.dumps({"written": attempt(namespace["write"], target, b"injected bytecode")}))
    """)
    assert out["written"].startswith("denied: polc: memovendor may not fs.write(")


def test_a_remembered_open_for_reading_and_writing_counts_each_capability_once(tmp_path, guard_hook):
    data, _link, _secret = _files(tmp_path)
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");\n    entitle module to fs.write("data", "**");')
    out = run_child(tree, """
        path = sys.argv[2]
        namespace = {"__name__": "memovendor"}
        exec("def update(path):\\n    with open(path, 'r+') as f:\\n        f.read()\\n", namespace)
        before = remembered()
        for _ in range(10):
            namespace["update"](path)
        after = remembered()
        print(json.dumps({"read": allowed("memovendor", "fs.read"), "write": allowed("memovendor", "fs.write"),
                          "remembered": None if before is None else after - before}))
    """, str(data / "ok.txt"))
    assert (out["read"], out["write"]) == (10, 10)
    if guard_hook == "C":
        assert out["remembered"] >= 9


def test_an_import_by_a_governed_package_still_caches_its_bytecode(tmp_path, guard_hook):
    """The import system's own bytecode writes, under an import a governed package makes, are
    the interpreter's: not attributed, so an import never fails for want of fs.write."""
    tree = _tree(tmp_path, '    entitle module to fs.read("data", "**");')
    sub = tmp_path / "site-packages" / "memovendor" / "fresh.py"
    sub.write_text("VALUE = 42\n")
    out = run_child(tree, """
        sys.dont_write_bytecode = False
        namespace = {"__name__": "memovendor"}
        exec("def load():\\n    import memovendor.fresh\\n    return memovendor.fresh.VALUE\\n", namespace)
        print(json.dumps({"value": namespace["load"]()}))
    """)
    assert out["value"] == 42
    assert list((sub.parent / "__pycache__").glob("fresh.*.pyc"))
