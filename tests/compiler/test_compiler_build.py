"""compile_paths: the tree walk, up-to-date skipping, atomic writes, failures, -j."""

from __future__ import annotations

import os
import shutil

import pytest

from polc.compiler.build import compile_paths
from polc.compiler.sources import default_out_dir, find_sources
from polc.runtime.format.reader import read_artifact_file

ACME = """security module tenant.acme {
    entitle module to network.outbound("*.acme.com", 443);
    deny module to process.exec;
}
"""
GLOBEX = """security module tenant.globex {
    entitle module to network.listen(8000..8999);
}
security module tenant.globex.batch {
    entitle module to threads.create;
}
"""
GATEWAY = """security module agent.gateway {
    capability tool.call(server: string, tool: string);
    entitle module to tool.call("jira", *);
}
"""
USER = """security module agent.user {
    entitle module to tool.call("github", "search_*");
}
"""


def stat_sig(path):
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_ino, st.st_size, st.st_ctime_ns)


@pytest.fixture
def tree(write_tree):
    return write_tree({"tenant.acme.pol": ACME, "globex/tenant.globex.pol": GLOBEX})


def test_writes_one_artifact_per_module_beside_the_source_dir(tree, chdir):
    r = compile_paths(["policies-src"])
    assert r.exit_code == 0, r.render_diagnostics()
    assert r.out_dir == "policies"
    assert sorted(os.listdir(chdir / "policies")) == [
        ".polc-compile.lock", "tenant.acme.bin", "tenant.globex.batch.bin", "tenant.globex.bin",
    ]
    assert r.summary() == "compiled 3, up to date 0, failed 0"
    art = read_artifact_file(chdir / "policies" / "tenant.globex.bin")
    assert art.source == "policies-src/globex/tenant.globex.pol"


def test_default_out_dir(tmp_path, chdir):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.pol").write_text("")
    assert default_out_dir(["src"]) == "policies"
    assert default_out_dir(["src/"]) == "policies"
    assert default_out_dir(["src/a.pol"]) == "policies"
    assert default_out_dir(["."]) == str(tmp_path.parent / "policies")


def test_find_sources(tree, tmp_path):
    (tree / ".hidden").mkdir()
    (tree / ".hidden" / "x.pol").write_text("")
    (tree / "notes.txt").write_text("")
    given = str(tree) + "/"
    found = find_sources([given, str(tree / "tenant.acme.pol")])
    assert found == [given + "globex/tenant.globex.pol", given + "tenant.acme.pol"]


def test_second_run_is_up_to_date_and_touches_nothing(tree, tmp_path):
    out = tmp_path / "out"
    assert compile_paths([str(tree)], str(out)).exit_code == 0
    before = {p.name: stat_sig(p) for p in out.iterdir()}
    r = compile_paths([str(tree)], str(out))
    assert r.exit_code == 0
    assert r.summary() == "compiled 0, up to date 3, failed 0"
    assert {p.name: stat_sig(p) for p in out.iterdir()} == before
    assert sorted(os.listdir(out)) == sorted(before)  # no temp files left behind


def test_force_rewrites_byte_identical(tree, tmp_path):
    out = tmp_path / "out"
    compile_paths([str(tree)], str(out))
    before = {p.name: (p.read_bytes(), os.stat(p).st_ino) for p in out.glob("*.bin")}
    r = compile_paths([str(tree)], str(out), force=True)
    assert r.summary() == "compiled 3, up to date 0, failed 0"
    after = {p.name: (p.read_bytes(), os.stat(p).st_ino) for p in out.glob("*.bin")}
    for name, (data, ino) in before.items():
        assert after[name][0] == data
        assert after[name][1] != ino  # really rewritten (atomic replace = new inode)


def test_changed_source_recompiles_only_its_modules(tree, tmp_path):
    out = tmp_path / "out"
    compile_paths([str(tree)], str(out))
    acme_before = stat_sig(out / "tenant.acme.bin")
    (tree / "globex" / "tenant.globex.pol").write_text(GLOBEX.replace("8999", "8998"))
    r = compile_paths([str(tree)], str(out))
    status = {m.module: m.status for m in r.modules}
    assert status == {"tenant.acme": "up to date", "tenant.globex": "compiled", "tenant.globex.batch": "compiled"}
    assert stat_sig(out / "tenant.acme.bin") == acme_before


def test_another_spelling_of_the_tree_is_up_to_date_another_root_rebuilds(tree, tmp_path, chdir):
    out = tmp_path / "out"
    compile_paths(["policies-src"], str(out))
    for spelling in ("./policies-src", str(tree), str(tree) + "/", "policies-src/../policies-src"):
        r = compile_paths([spelling], str(out))
        assert r.count("up to date") == 3, spelling
    assert read_artifact_file(out / "tenant.acme.bin").source == "policies-src/tenant.acme.pol"
    # the recorded name is part of what "up to date" compares
    r = compile_paths(["policies-src"], str(out), source_root="policies-src")
    assert r.count("compiled") == 3
    assert read_artifact_file(out / "tenant.acme.bin").source == "tenant.acme.pol"
    assert read_artifact_file(out / "tenant.globex.bin").source == "globex/tenant.globex.pol"
    r = compile_paths(["policies-src/tenant.acme.pol"], str(out), source_root="policies-src")
    assert r.count("up to date") == 1


def test_failing_module_keeps_its_artifact_others_are_written(tree, tmp_path):
    out = tmp_path / "out"
    compile_paths([str(tree)], str(out))
    acme_bytes = (out / "tenant.acme.bin").read_bytes()
    acme_sig = stat_sig(out / "tenant.acme.bin")
    (tree / "tenant.acme.pol").write_text(ACME.replace("network.outbound", "network.inbound"))
    # in the other file: one module breaks, the other changes
    (tree / "globex" / "tenant.globex.pol").write_text(
        GLOBEX.replace("8000..8999", "9000..80").replace("threads.create", "threads.create()")
    )
    batch_before = (out / "tenant.globex.batch.bin").read_bytes()
    r = compile_paths([str(tree)], str(out))
    assert r.exit_code == 1
    assert r.summary() == "compiled 1, up to date 0, failed 2"
    assert (out / "tenant.acme.bin").read_bytes() == acme_bytes
    assert stat_sig(out / "tenant.acme.bin") == acme_sig
    assert (out / "tenant.globex.batch.bin").read_bytes() != batch_before
    assert read_artifact_file(out / "tenant.globex.batch.bin").source_digest != ""
    # and a failure is reported again on the next run, not taken for "up to date"
    r = compile_paths([str(tree)], str(out))
    assert r.exit_code == 1 and r.failed == 2


def test_a_file_level_syntax_error_fails_every_module_of_the_file(write_tree, tmp_path):
    src = write_tree({"a.pol": "security module a { }\nsecurity module b c { }\n"})
    r = compile_paths([str(src)], str(tmp_path / "out"))
    assert r.exit_code == 1
    assert not (tmp_path / "out" / "a.bin").exists()


def test_file_without_any_module_and_an_error_counts_as_failed(write_tree, tmp_path):
    src = write_tree({"a.pol": "entitle module to x;\n"})
    r = compile_paths([str(src)], str(tmp_path / "out"))
    assert r.exit_code == 1 and r.summary() == "compiled 0, up to date 0, failed 1"


def test_declaration_change_rebuilds_users_in_other_files(write_tree, tmp_path):
    src = write_tree({"gw.pol": GATEWAY, "user.pol": USER})
    out = tmp_path / "out"
    assert compile_paths([str(src)], str(out)).exit_code == 0
    r = compile_paths([str(src)], str(out))
    assert r.count("up to date") == 2
    (src / "gw.pol").write_text(GATEWAY.replace("tool: string", "tool: string, version: int"))
    r = compile_paths([str(src)], str(out))
    status = {m.module: m.status for m in r.modules}
    assert status == {"agent.gateway": "compiled", "agent.user": "compiled"}, r.render_diagnostics()
    caps = read_artifact_file(out / "agent.user.bin").caps
    assert [p.name for p in caps[0].params] == ["server", "tool", "version"]


def test_duplicate_module_with_an_up_to_date_file(write_tree, tmp_path):
    src = write_tree({"a.pol": ACME})
    out = tmp_path / "out"
    compile_paths([str(src)], str(out))
    (src / "b.pol").write_text(ACME)
    r = compile_paths([str(src)], str(out))
    dups = [d for d in r.diagnostics if "duplicate module 'tenant.acme'" in d.message]
    assert {d.file for d in dups} == {f"{src}/a.pol", f"{src}/b.pol"}
    assert r.exit_code == 1


def test_check_writes_nothing(tree, tmp_path, chdir):
    r = compile_paths(["policies-src"], write=False)
    assert r.exit_code == 0 and r.summary() == "checked 3, failed 0"
    assert not (tmp_path / "policies").exists()


def test_jobs_give_the_same_artifacts(write_tree, tmp_path):
    files = {f"t{i}.pol": ACME.replace("tenant.acme", f"tenant.t{i}") for i in range(12)}
    files["gw.pol"] = GATEWAY
    files["user.pol"] = USER
    src = write_tree(files)
    r1 = compile_paths([str(src)], str(tmp_path / "one"), jobs=1)
    r2 = compile_paths([str(src)], str(tmp_path / "two"), jobs=2)
    assert r1.exit_code == r2.exit_code == 0
    assert [m.module for m in r1.modules] == [m.module for m in r2.modules]
    for name in os.listdir(tmp_path / "one"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_jobs_report_errors(write_tree, tmp_path):
    src = write_tree({"a.pol": ACME, "b.pol": USER.replace("tool.call", "tool.cal")})
    r = compile_paths([str(src)], str(tmp_path / "out"), jobs=2)
    assert r.exit_code == 1 and any("unknown capability 'tool.cal'" in d.message for d in r.diagnostics)


def test_missing_source_is_a_usage_error(tmp_path):
    r = compile_paths([str(tmp_path / "nope")], str(tmp_path / "out"))
    assert r.exit_code == 2 and "no such file or directory" in r.fatal


def test_empty_source_dir_is_a_usage_error(tmp_path):
    (tmp_path / "src").mkdir()
    r = compile_paths([str(tmp_path / "src")], str(tmp_path / "out"))
    assert r.exit_code == 2 and "no policy sources" in r.fatal


def test_unwritable_output_is_an_io_error(tree, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = compile_paths([str(tree)], str(blocker / "out"))
    assert r.exit_code == 2 and "cannot create output directory" in r.fatal


def test_corrupt_existing_artifact_is_rebuilt(tree, tmp_path):
    out = tmp_path / "out"
    compile_paths([str(tree)], str(out))
    good = (out / "tenant.acme.bin").read_bytes()
    (out / "tenant.acme.bin").write_bytes(good[:-3])
    r = compile_paths([str(tree)], str(out))
    assert {m.module: m.status for m in r.modules}["tenant.acme"] == "compiled"
    assert (out / "tenant.acme.bin").read_bytes() == good


def test_examples_tree(examples_dir, tmp_path):
    src = tmp_path / "policies-src"
    shutil.copytree(examples_dir, src)
    r = compile_paths([str(src)])
    assert r.exit_code == 0 and r.diagnostics == [], r.render_diagnostics()
    assert r.out_dir == str(tmp_path / "policies") or os.path.samefile(r.out_dir, tmp_path / "policies")
    assert r.count("compiled") == len([p for p in src.glob("*.pol") if not p.name.endswith(".test.pol")])


def test_strict_rechecks_up_to_date_files(write_tree, tmp_path):
    src = write_tree({"w.pol": 'security module w {\n  deny module to fs.read("a");\n  deny module to fs.read("a");\n}\n'})
    out = tmp_path / "out"
    r = compile_paths([str(src)], str(out))
    assert r.exit_code == 0 and r.warnings == 1
    r = compile_paths([str(src)], str(out), strict=True)
    assert r.exit_code == 1 and r.errors == 1
    assert (out / "w.bin").exists()  # the artifact of the earlier run stays


def test_recorded_names_of_a_walk_match_recorded_name(tree, chdir):
    from polc.compiler.sources import recorded_name
    from polc.compiler.sources import recorded_names as _recorded_names
    from polc.compiler.sources import walk_sources as _walk_sources

    os.makedirs("policies-src/globex/deeper")
    (tree / "globex" / "deeper" / "x.pol").write_text("")
    spellings = [["policies-src"], ["./policies-src/"], [str(tree)], ["policies-src/globex"],
                 ["policies-src/globex/../globex"], ["policies-src/tenant.acme.pol", "policies-src/globex"]]
    for srcs in spellings:
        for root in (None, ".", "policies-src", str(tree.parent)):
            walked = _walk_sources(srcs)
            got = _recorded_names(walked, srcs, root)
            assert got == {f: recorded_name(f, srcs[i], root) for f, i, _ in walked}, (srcs, root)
    os.chdir(tree / "globex")
    walked = _walk_sources([".."])
    assert sorted(_recorded_names(walked, [".."], None).values()) == [
        "policies-src/globex/deeper/x.pol", "policies-src/globex/tenant.globex.pol", "policies-src/tenant.acme.pol",
    ]
    walked = _walk_sources(["deeper"])
    assert _recorded_names(walked, ["deeper"], "..") == {"deeper/x.pol": "globex/deeper/x.pol"}
    with pytest.raises(Exception, match="not under the source root"):
        _recorded_names(_walk_sources([".."]), [".."], ".")
