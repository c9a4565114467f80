"""``polc guard`` end to end: the incident story with a real recompile and reload, audit mode,
the observation log, and what the command refuses."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time

import pytest

from support.guard import POLC, child_env, compile_policies

# Usage and the observation log are the same whichever hook runs: these run with the C hook
# alone (the incident story, and every test of the tree, run with each).
c_hook_only = pytest.mark.parametrize("guard_hook", ["C"], indirect=True)

DEADLINE = 30.0


class Program:
    """A program under ``polc guard``: rounds over stdin/stdout, stderr collected as it comes."""

    def __init__(self, args, cwd):
        self.proc = subprocess.Popen(args, cwd=cwd, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True),
                      threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True)]  # fmt: skip
        for pump in self.pumps:
            pump.start()

    @staticmethod
    def _pump(stream, put):
        for line in stream:
            put(line)

    def round(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        try:
            return json.loads(self.lines.get(timeout=DEADLINE))
        except queue.Empty:
            raise AssertionError("no answer from the program; stderr:\n" + "".join(self.stderr)) from None

    def until(self, predicate, what: str) -> tuple[dict, float]:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            r = self.round()
            if predicate(r):
                return r, time.monotonic()
        raise AssertionError(f"{what} not seen within {DEADLINE}s; stderr:\n" + "".join(self.stderr))

    def wait_stderr(self, text: str) -> str:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            for line in list(self.stderr):
                if text in line:
                    return line
            time.sleep(0.01)
        raise AssertionError(f"{text!r} not on stderr:\n" + "".join(self.stderr))

    def close(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=DEADLINE)

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)
        for pump in self.pumps:
            pump.join(DEADLINE)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
def test_incident_story_deny_then_audit_without_restart(tree, server_factory):
    upstream = server_factory()
    port = upstream.server_address[1]
    prog = Program([*POLC, "guard", str(tree / "policies"), "--reload-interval", "0.2", "--",
                    sys.executable, "loop.py", str(port)], cwd=tree / "app")  # fmt: skip
    try:
        first = prog.round()
        assert first["vendor"] == f"hello from {port}" and first["service"] == f"hello from {port}"
        assert first["data"] == "allowed data"
        pid = first["pid"]

        # the incident: one line in the vendor's source, compiled with the real compiler
        source = tree / "policies-src" / "vendorlib.pol"
        _edit(source, "security module vendorlib {", "security module vendorlib {\n    deny module to network.outbound;")
        compile_policies(tree / "policies-src", tree / "policies")
        before = upstream.connections
        denied, _ = prog.until(lambda r: "vendor_denied" in r, "the vendor's request refused")
        assert denied["pid"] == pid  # no restart
        # refused at the name lookup, or at the connect when the swap fell between the two
        assert re.match(rf"PolicyDenied: polc: vendorlib may not network.outbound\('(localhost|127\.0\.0\.1)', {port}\)",
                        denied["vendor_denied"]), denied  # fmt: skip
        assert "denied by policies-src/vendorlib.pol:3:5" in denied["vendor_denied"]  # the new rule decides
        assert denied["service"] == f"hello from {port}" and denied["data"] == "allowed data"
        # the refused request never reached the server: after the first refusal, only the service connects
        counted = upstream.connections
        again = prog.round()
        assert "vendor_denied" in again and upstream.connections == counted + 1
        assert counted >= before
        prog.wait_stderr("polc: vendorlib may not network.outbound('localhost', ")
        prog.wait_stderr("polc: reloaded vendorlib")

        # audit mode: the same deny is logged as "would deny" and the request proceeds
        _edit(source, "security module vendorlib {", "security module vendorlib {\n    mode audit;")
        compile_policies(tree / "policies-src", tree / "policies")
        proceeded, _ = prog.until(lambda r: "vendor" in r, "the audited request proceeding")
        assert proceeded["pid"] == pid and proceeded["vendor"] == f"hello from {port}"
        line = prog.wait_stderr("would deny: vendorlib may not network.outbound('localhost', ")
        assert "(audit mode)" in line
        assert prog.close() == 0
    finally:
        prog.finish()


@c_hook_only
def test_observe_writes_one_line_per_distinct_operation(tree, server_factory):
    upstream = server_factory()
    port = upstream.server_address[1]
    log = tree / "observed.jsonl"
    r = subprocess.run([*POLC, "guard", str(tree / "policies"), "--mode", "audit", "--unlisted", "global",
                        "--observe", str(log), "--", sys.executable, "observe.py", str(port)],
                       cwd=tree / "app", env=child_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(f"hello from {port}") == 2  # audit mode: everything proceeded
    assert "the secret" in r.stdout and "denied:" not in r.stdout
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    keys = {"v", "time", "package", "module", "capability", "args", "decision", "site"}
    for line in lines:
        assert set(line) == keys, line
        assert line["v"] == 1 and line["time"].endswith("+00:00") and line["site"].count(":") == 1
    seen = [(x["package"], x["capability"], tuple(x["args"]), x["decision"]) for x in lines]
    assert len(seen) == len(set(seen)), "a distinct operation was written twice"
    by = {(x["package"], x["capability"], tuple(x["args"])): x for x in lines}
    out = by[("vendorlib", "network.outbound", ("localhost", port))]
    assert out["decision"] == "allow" and out["module"] == "vendorlib" and out["site"].startswith("vendorlib/__init__.py:")
    assert by[("vendorlib", "fs.read", ("data", "allowed.txt"))]["decision"] == "allow"
    assert by[("vendorlib", "process.exec", ("/usr/bin/true",))]["decision"] == "allow"
    assert by[("vendorlib", "fs.read", (".", "secret.txt"))]["decision"] == "audit"
    unlisted = by[("unlistedlib", "fs.read", (".", "secret.txt"))]
    assert unlisted["module"] == "_global" and unlisted["decision"] == "audit"
    assert unlisted["site"].startswith("unlistedlib/__init__.py:")
    assert "would deny: vendorlib may not fs.read('.', 'secret.txt')" in r.stderr
    # the Python child the program started ran under its own guard, logging to the same file
    child = by[("vendorlib", "fs.read", ("data", "public/note.txt"))]
    assert child["decision"] == "allow" and "child " in r.stdout
    # the log is what polc suggest reads: every line accepted, drafts that compile
    drafts = tree / "drafts"
    s = subprocess.run([*POLC, "suggest", str(log), "-o", str(drafts)], capture_output=True, text=True, timeout=120)
    assert s.returncode == 0, s.stdout + s.stderr
    assert "error" not in s.stderr
    c = subprocess.run([*POLC, "check", str(drafts)], capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr


@c_hook_only
def test_guard_refuses_bad_usage(tree):
    def run(*args):
        return subprocess.run([*POLC, "guard", *args], cwd=tree / "app", env=child_env(), capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    r = run(str(tree / "missing"), "--", sys.executable, "-c", "print('ran')")
    assert r.returncode == 2 and "not a directory" in r.stderr and "ran" not in r.stdout
    r = run(str(tree / "policies"), "--root", "nodir", "--", sys.executable, "-c", "print('ran')")
    assert r.returncode == 2 and "NAME=DIR" in r.stderr
    # python -m MODULE, and a console script found on PATH, run guarded
    r = run(str(tree / "policies"), "--mode", "audit", "--", sys.executable, "-m", "whoami")
    assert r.returncode == 0 and r.stdout.strip() == "guarded audit", r.stderr
    bindir = tree / "bin"
    bindir.mkdir()
    script = bindir / "whoami-tool"
    script.write_text(f"#!{sys.executable}\nimport os, runpy, sys\nsys.path.insert(0, os.getcwd())\n"
                      "runpy.run_module('whoami', run_name='__main__')\n")  # fmt: skip
    script.chmod(0o755)
    env = child_env(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([*POLC, "guard", str(tree / "policies"), "--", "whoami-tool"], cwd=tree / "app", env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "guarded enforce", r.stderr
    r = run(str(tree / "policies"), "--", "polc-no-such-program")
    assert r.returncode == 2 and "command not found" in r.stderr
    # a hostile configuration in the environment stops the program before it runs
    env = child_env(PYTHONPATH=str(POLC_BOOT()), POLC_GUARD_CONFIG='{"policy_dir": "relative"}')
    r = subprocess.run([sys.executable, "-c", "print('ran')"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "policy_dir must be an absolute path" in r.stderr and "ran" not in r.stdout


def POLC_BOOT():
    from pathlib import Path

    import polc.runtime.guard.launch as launch

    return Path(launch.__file__).parent / "boot"
