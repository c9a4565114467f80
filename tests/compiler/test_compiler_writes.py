"""How polc compile writes artifacts: atomically, each file fsynced, the directory once."""

from __future__ import annotations

import os

import polc.compiler.output as output
from polc.compiler.build import compile_paths
from polc.runtime.format.reader import read_artifact_file

OK = "security module {name} {{ entitle module to threads.create; }}\n"


def test_every_file_fsynced_and_the_directory_once(write_tree, tmp_path, monkeypatch):
    src = write_tree({f"m{i}.pol": OK.format(name=f"m{i}") for i in range(20)})
    out = tmp_path / "out"
    out.mkdir()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else "?")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    report = compile_paths([str(src)], str(out))
    assert report.exit_code == 0 and report.count("compiled") == 20
    assert len(synced) == 21  # 20 temporary files, then the directory once
    if synced[0] != "?":
        assert synced[-1] == str(out.resolve())
        assert all(os.path.basename(p).startswith(".") and p.endswith(".tmp") for p in synced[:-1])
    assert sorted(os.listdir(out)) == sorted([".polc-compile.lock"] + [f"m{i}.bin" for i in range(20)])
    for i in range(20):
        assert read_artifact_file(out / f"m{i}.bin").module == f"m{i}"


def test_a_failed_write_is_reported_and_leaves_no_temporary_file(write_tree, tmp_path, monkeypatch):
    src = write_tree({"a.pol": OK.format(name="a"), "b.pol": OK.format(name="b")})
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.bin").write_bytes(b"old")
    real_replace = os.replace

    def replace(a, b):
        if str(b).endswith("b.bin"):
            raise OSError(28, "No space left on device")
        return real_replace(a, b)

    monkeypatch.setattr(output.os, "replace", replace)
    report = compile_paths([str(src)], str(out))
    assert report.exit_code == 2
    assert "cannot write" in report.fatal and "b.bin" in report.fatal and "No space left" in report.fatal
    assert {m.module: m.status for m in report.modules} == {"a": "compiled", "b": "failed"}
    assert sorted(os.listdir(out)) == [".polc-compile.lock", "a.bin", "b.bin"]
    assert (out / "b.bin").read_bytes() == b"old"


def test_duplicates_are_never_written_and_leave_no_temporary_file(write_tree, tmp_path):
    src = write_tree({"a.pol": OK.format(name="d"), "b.pol": OK.format(name="d"), "c.pol": OK.format(name="c")})
    out = tmp_path / "out"
    report = compile_paths([str(src)], str(out))
    assert report.exit_code == 1
    assert sorted(os.listdir(out)) == [".polc-compile.lock", "c.bin"]


def test_unwritable_temporary_file_is_reported(write_tree, tmp_path, monkeypatch):
    src = write_tree({"a.pol": OK.format(name="a")})
    out = tmp_path / "out"
    out.mkdir()

    def fail(directory, data, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(output, "stage_file", fail)
    report = compile_paths([str(src)], str(out))
    assert report.exit_code == 2 and "cannot write" in report.fatal
    assert os.listdir(out) == [".polc-compile.lock"]


def test_parallel_compile_stages_early_but_never_renames_a_duplicate(write_tree, tmp_path):
    files = {f"m{i}.pol": OK.format(name=f"m{i}") for i in range(40)}
    files["z1.pol"] = OK.format(name="dup")
    files["z2.pol"] = OK.format(name="dup")
    src = write_tree(files)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dup.bin").write_bytes(b"old")
    report = compile_paths([str(src)], str(out), jobs=2)
    assert report.exit_code == 1
    assert sorted(os.listdir(out)) == sorted([f"m{i}.bin" for i in range(40)] + ["dup.bin", ".polc-compile.lock"])
    assert (out / "dup.bin").read_bytes() == b"old"
    # and a parallel no-op touches nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    report = compile_paths([str(src)], str(out), jobs=2)
    assert report.count("up to date") == 40
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
