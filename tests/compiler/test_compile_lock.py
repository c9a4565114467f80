"""One compile at a time per output directory, and no debris from crashed ones.

Real ``polc compile`` subprocesses: a compile waits while another holds the
output directory's lock (or fails with ``--no-wait``), a compile killed with
SIGKILL while staging leaves temporary files that the next compile removes,
and two compiles of different trees into one directory leave one tree's
artifacts, never a mix.
"""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from polc.compiler.build import compile_paths
from polc.compiler.output import LOCK_NAME, STALE_TEMP_AGE
from polc.runtime import PolicyAgent
from polc.runtime.format.reader import read_artifact_file
from polc.runtime.signing import check_directory_permissions

DEADLINE = 120.0


def _write_tree(root: Path, n_files: int, per_file: int = 1, tag: str = "a") -> Path:
    root.mkdir(parents=True)
    for i in range(n_files):
        body = "".join(
            f"security module m{i}.n{j} {{\n"
            f'    entitle module to fs.read("{tag}/{i}/{j}", "**");\n'
            f'    entitle module to network.outbound("{tag}{i}-{j}.example.com", 443);\n'
            f"}}\n"
            for j in range(per_file)
        )
        (root / f"f{i:04d}.pol").write_text(body)
    return root


def _polc(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "polc", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _temp_files(out: Path) -> list[str]:
    return sorted(n for n in os.listdir(out) if n.endswith(".tmp"))


class _Lines:
    """A process's stderr, line by line, read by a thread (so waiting on it has a deadline)."""

    def __init__(self, stream) -> None:
        self.q: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.q.put(line)
        self.q.put(None)

    def wait_for(self, text: str) -> bool:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            try:
                line = self.q.get(timeout=end - time.monotonic())
            except queue.Empty:
                return False
            if line is None:
                return False
            self.seen.append(line)
            if text in line:
                return True
        return False

    def rest(self) -> str:
        out = []
        while True:
            line = self.q.get(timeout=DEADLINE)
            if line is None:
                return "".join(self.seen + out)
            out.append(line)


@pytest.fixture
def held_lock(tmp_path):
    """Hold the output directory's lock as a running compile would."""
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    state = {"fd": fd}

    def release():
        if state["fd"] is not None:
            os.close(state["fd"])
            state["fd"] = None

    yield out, release
    release()


def test_a_compile_waits_for_the_lock_and_no_wait_fails(tmp_path, held_lock):
    out, release = held_lock
    _write_tree(tmp_path / "src", 5)
    # what a running compile is staging: nobody but its owner may touch it
    running_tmp = out / ".polc-compile-abcd1234.tmp"
    running_tmp.write_bytes(b"half an artifact")

    p = _polc("compile", "--no-wait", "src", "-o", str(out), cwd=tmp_path)
    _, err = p.communicate(timeout=DEADLINE)
    assert p.returncode == 2, err
    assert f"polc: error: another polc compile is writing to {out}" in err and "--no-wait" in err
    assert "Traceback" not in err

    p = _polc("compile", "src", "-o", str(out), cwd=tmp_path)
    lines = _Lines(p.stderr)
    try:
        assert lines.wait_for("polc: waiting for another polc compile writing to"), "".join(lines.seen)
        # waiting: it wrote nothing and removed nothing
        assert p.poll() is None
        assert sorted(os.listdir(out)) == [".polc-compile-abcd1234.tmp", LOCK_NAME]
        assert running_tmp.read_bytes() == b"half an artifact"
    finally:
        release()
    assert p.wait(timeout=DEADLINE) == 0
    rest = lines.rest()
    p.stdout.close()
    p.stderr.close()
    assert "compiled 5, up to date 0, failed 0" in rest, rest
    # once it held the lock, the other compile was gone: its leftovers went too
    assert _temp_files(out) == []
    assert sorted(n for n in os.listdir(out) if n.endswith(".bin")) == [f"m{i}.n0.bin" for i in range(5)]


def test_kill_9_while_staging_then_the_next_compile_cleans_up(tmp_path):
    _write_tree(tmp_path / "src", 300, per_file=2)
    out = tmp_path / "out"
    out.mkdir()
    debris: list[str] = []
    for _attempt in range(5):
        # -j 2: the parent stages each artifact as soon as its file comes back and
        # renames only at the end, so temporary files exist for most of the run
        p = _polc("compile", "src", "-o", str(out), "-j", "2", "--force", cwd=tmp_path)
        end = time.monotonic() + DEADLINE
        while not _temp_files(out) and p.poll() is None and time.monotonic() < end:
            time.sleep(0.002)
        p.send_signal(signal.SIGKILL)
        # returns once the pipes close: the workers (which share them) died with their parent
        p.communicate(timeout=DEADLINE)
        debris = _temp_files(out)
        if debris:
            break
    assert debris, "never caught the compile while it was staging"
    assert p.returncode == -signal.SIGKILL

    p = _polc("compile", "src", "-o", str(out), "-v", cwd=tmp_path)
    _, err = p.communicate(timeout=DEADLINE)
    assert p.returncode == 0, err
    assert _temp_files(out) == [], "the crashed compile's temporary files are still there"
    assert f"removed {len(debris)} temporary file(s) of interrupted compiles" in err
    bins = sorted(out.glob("*.bin"))
    assert len(bins) == 600
    for b in bins:
        read_artifact_file(b)  # every artifact whole and valid


def test_two_concurrent_compiles_of_different_trees_leave_one_tree(tmp_path):
    a = _write_tree(tmp_path / "tree-a", 150, per_file=2, tag="a")
    b = _write_tree(tmp_path / "tree-b", 150, per_file=2, tag="b")
    out = tmp_path / "out"
    for _ in range(2):
        procs = [_polc("compile", str(t.name), "-o", str(out), cwd=tmp_path) for t in (a, b)]
        errs = [p.communicate(timeout=DEADLINE)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errs
        sources = {read_artifact_file(f).source.split("/")[0] for f in out.glob("*.bin")}
        assert len(sources) == 1, f"artifacts of both trees mixed in one directory: {sources}"
        assert len(list(out.glob("*.bin"))) == 300
        assert _temp_files(out) == []


def test_old_temporary_files_of_other_writers_and_symlinks(tmp_path):
    src = _write_tree(tmp_path / "src", 2)
    out = tmp_path / "out"
    out.mkdir()
    old = out / ".ab12cd34.tmp"  # write_atomic's (or an older polc's) name, a day old: a crash's
    fresh = out / ".ef56gh78.tmp"  # the same, just written: maybe a live writer that takes no lock
    own = out / ".polc-compile-zz99yy88.tmp"
    target = tmp_path / "precious"
    target.write_text("keep")
    link = out / ".polc-compile-link0000.tmp"
    link.symlink_to(target)
    for f in (old, fresh, own):
        f.write_bytes(b"x")
    past = time.time() - STALE_TEMP_AGE - 60
    os.utime(old, (past, past))
    r = compile_paths([str(src)], str(out))
    assert r.exit_code == 0 and r.removed_debris == 2
    assert not old.exists() and not own.exists()
    assert fresh.exists() and link.is_symlink() and target.read_text() == "keep"


def test_a_symlinked_lock_file_is_refused(tmp_path):
    _write_tree(tmp_path / "src", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(tmp_path / "elsewhere")
    p = _polc("compile", "src", "-o", str(out), cwd=tmp_path)
    _, err = p.communicate(timeout=DEADLINE)
    assert p.returncode == 2 and "lock file" in err and "symbolic link" in err, err
    assert not (tmp_path / "elsewhere").exists()


def test_the_agent_and_the_guard_ignore_the_lock_and_temporary_files(tmp_path, held_lock):
    out, release = held_lock
    release()
    src = _write_tree(tmp_path / "src", 3)
    assert compile_paths([str(src)], str(out)).exit_code == 0
    os.chmod(out / LOCK_NAME, 0o666)
    (out / ".polc-compile-abcd1234.tmp").write_bytes(b"garbage")
    fd = os.open(out / LOCK_NAME, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as during a compile
    try:
        agent = PolicyAgent(str(out), reload=False, strict=True).start()
        status = agent.status()
        assert sorted(status["modules"]) == ["m0.n0", "m1.n0", "m2.n0"]
        assert all(info["last_error"] is None for info in status["modules"].values())
        assert agent.check("m1.n0", "fs.read", "a/1/0", "x")
        assert check_directory_permissions(out) == []
    finally:
        os.close(fd)
