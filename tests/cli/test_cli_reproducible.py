"""One source tree gives byte-identical artifacts however it is named and from wherever it is compiled.

Real ``polc compile`` subprocesses, run from different working directories
with different spellings of the same tree; artifacts are compared byte for
byte and searched for the build machine's absolute paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polc.runtime.format.reader import read_artifact_file

from support import REPO


def _polc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "polc", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, (args, cwd, p.stderr)
    return p


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.bin"))}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "checkout" / "repo"
    root.mkdir(parents=True)
    shutil.copytree(REPO / "policies-src", root / "policies-src")
    (root / "policies-src" / "nested").mkdir()
    (root / "policies-src" / "nested" / "deep.pol").write_text(
        "security module nested.deep {\n    entitle module to threads.create;\n}\n"
    )
    (tmp_path / "elsewhere").mkdir()
    return root


@pytest.mark.slow
def test_every_spelling_and_working_directory_gives_the_same_bytes(repo, tmp_path):
    src = repo / "policies-src"
    runs = [
        (repo, ["policies-src"]),
        (repo, ["./policies-src"]),
        (repo, ["policies-src/"]),
        (repo, [str(src)]),
        (repo, ["policies-src/nested/../../policies-src"]),
        (src, ["."]),
        (src / "nested", [".."]),
        (tmp_path / "elsewhere", ["../checkout/repo/policies-src"]),
        (Path("/"), [str(src)]),
        # an explicit root, spelled two ways, names the same thing as the default
        (tmp_path / "elsewhere", [str(src), "--source-root", str(repo)]),
        (src, [".", "--source-root", ".."]),
    ]
    outs = []
    for i, (cwd, args) in enumerate(runs):
        out = tmp_path / f"out{i}"
        _polc(["compile", *args, "-o", str(out)], cwd)
        outs.append(_tree(out))
    first = outs[0]
    assert len(first) == 7  # the six example modules and nested.deep
    for (cwd, args), got in zip(runs, outs):
        assert got == first, (cwd, args)

    leaks = {str(tmp_path).encode(), str(repo).encode(), os.getcwd().encode(), b"/tmp/", b"checkout"}
    for name, data in first.items():
        for leak in leaks:
            assert leak not in data, (name, leak)
    art = read_artifact_file(tmp_path / "out0" / "tenant.acme.bin")
    assert art.source == "policies-src/tenant.acme.pol"
    assert read_artifact_file(tmp_path / "out0" / "nested.deep.bin").source == "policies-src/nested/deep.pol"
    # the rule a decision names is the form the docs show
    p = subprocess.run([sys.executable, "-m", "polc", "eval", str(tmp_path / "out0"), "tenant.acme",
                        "network.outbound", "api.acme.com", "443"], capture_output=True, text=True, timeout=60)
    assert "rule:     policies-src/tenant.acme.pol:3:5" in p.stdout, p.stdout


def test_a_single_file_records_the_same_name_as_its_directory(repo, tmp_path):
    _polc(["compile", "policies-src", "-o", str(tmp_path / "dir")], repo)
    _polc(["compile", "tenant.acme.pol", "-o", str(tmp_path / "file")], repo / "policies-src")
    assert (tmp_path / "file" / "tenant.acme.bin").read_bytes() == (tmp_path / "dir" / "tenant.acme.bin").read_bytes()


def test_up_to_date_across_spellings_and_rebuild_for_another_root(repo, tmp_path):
    out = tmp_path / "out"
    _polc(["compile", "policies-src", "-o", str(out)], repo)
    # The artifacts; the stat manifest (.polc-uptodate) may be written by any of these
    # compiles, once the files' stats are old enough to be trusted (docs/compiler.md).
    before = {p.name: os.stat(p).st_mtime_ns for p in out.glob("*.bin")}
    p = _polc(["compile", ".", "-o", str(out)], repo / "policies-src")
    assert p.stderr.strip() == "compiled 0, up to date 7, failed 0"
    p = _polc(["compile", str(repo / "policies-src"), "-o", str(out)], Path("/"))
    assert p.stderr.strip() == "compiled 0, up to date 7, failed 0"
    assert {p.name: os.stat(p).st_mtime_ns for p in out.glob("*.bin")} == before
    # another root records other names: everything is rebuilt, and says so
    p = _polc(["compile", "policies-src", "-o", str(out), "--source-root", "policies-src"], repo)
    assert p.stderr.strip() == "compiled 7, up to date 0, failed 0"
    assert read_artifact_file(out / "tenant.acme.bin").source == "tenant.acme.pol"


def test_source_root_usage_errors(repo, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "polc", "compile", *args, "-o", str(tmp_path / "o")],
                              cwd=repo, capture_output=True, text=True, timeout=60)

    p = run("policies-src", "--source-root", str(tmp_path / "elsewhere"))
    assert p.returncode == 2
    assert "policies-src/_global.pol is not under the source root" in p.stderr
    p = run("policies-src", "--source-root", "missing")
    assert p.returncode == 2 and "source root missing is not a directory" in p.stderr
    # two trees whose files would be recorded under one name
    other = tmp_path / "elsewhere" / "policies-src"
    other.mkdir()
    (other / "tenant.acme.pol").write_text("security module x.y { entitle module to threads.create; }\n")
    p = run("policies-src", str(other))
    assert p.returncode == 2
    assert "would both be recorded as policies-src/tenant.acme.pol" in p.stderr and "--source-root" in p.stderr
    assert not (tmp_path / "o").exists()
