"""The output directory's stat manifest: a no-op compile reads no unchanged source or artifact,
and every change is still seen.

A compile records, for each file it found up to date, the stat of the source and of its
artifacts (compiler/uptodate.py: ``Manifest``); the next compile takes a file whose stats
are all still the same as up to date without reading it. These tests change files in the
ways the manifest must notice (an edit of the same size with the modification time put
back, an artifact overwritten in place, a declaration elsewhere in the tree, a damaged
manifest) and check what the compile then does. Files are only recorded once they are at
least ``RACY_NS`` old; most tests set it to 0 so they need not wait.
"""

from __future__ import annotations

import os

import pytest

from polc.compiler import build, uptodate
from polc.compiler.build import compile_paths
from polc.runtime.format.reader import read_artifact_file

ACME = """security module tenant.acme {
    entitle module to network.outbound("*.acme.com", 443);
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


@pytest.fixture
def no_racy_window(monkeypatch):
    monkeypatch.setattr(uptodate, "RACY_NS", 0)


@pytest.fixture
def reads(monkeypatch):
    """The source files each compile reads, in order."""
    seen: list[str] = []
    real = build.read_sources

    def spy(walked, srcs, stdin):
        seen.extend(f for f, _, _ in walked)
        return real(walked, srcs, stdin)

    monkeypatch.setattr(build, "read_sources", spy)
    return seen


def _compile(src, out, **kw):
    r = compile_paths([str(src)], str(out), **kw)
    assert r.exit_code == 0, r.render_diagnostics()
    return r


def _statuses(report):
    return {m.module: m.status for m in report.modules}


def _rewrite_keeping_mtime(path, text):
    st = os.stat(path)
    assert len(text.encode()) == st.st_size
    with open(path, "r+", encoding="utf-8") as f:  # in place: same inode
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def test_a_noop_compile_reads_no_unchanged_source(write_tree, tmp_path, no_racy_window, reads):
    src = write_tree({"tenant.acme.pol": ACME, "globex/tenant.globex.pol": GLOBEX})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)  # every file checked in full, and recorded
    assert (out / uptodate.MANIFEST_NAME).is_file()
    reads.clear()
    r = _compile(src, out)
    assert reads == []
    assert r.summary() == "compiled 0, up to date 3, failed 0"
    assert [(m.module, m.line, m.col) for m in r.modules] == [
        ("tenant.globex", 1, 17), ("tenant.globex.batch", 4, 17), ("tenant.acme", 1, 17),
    ]


def test_an_edit_of_the_same_size_with_the_mtime_put_back_is_seen(write_tree, tmp_path, no_racy_window, reads):
    src = write_tree({"tenant.acme.pol": ACME, "globex/tenant.globex.pol": GLOBEX})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)
    _rewrite_keeping_mtime(src / "tenant.acme.pol", ACME.replace("443", "444"))
    reads.clear()
    r = _compile(src, out)
    assert reads == [f"{src}/tenant.acme.pol"]
    assert _statuses(r) == {"tenant.acme": "compiled", "tenant.globex": "up to date",
                            "tenant.globex.batch": "up to date"}
    rules = read_artifact_file(out / "tenant.acme.bin").rules
    assert [args[1][1:] for _i, _e, _c, _l, _col, args in rules] == [(444, 444)]


def test_an_artifact_overwritten_in_place_is_checked_and_rebuilt(write_tree, tmp_path, no_racy_window):
    src = write_tree({"tenant.acme.pol": ACME})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)
    art = out / "tenant.acme.bin"
    good = art.read_bytes()
    _rewrite_keeping_mtime_bytes(art, b"\0" * len(good))
    r = _compile(src, out)
    assert _statuses(r) == {"tenant.acme": "compiled"}
    assert art.read_bytes() == good


def _rewrite_keeping_mtime_bytes(path, data):
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_an_artifact_removed_is_rebuilt(write_tree, tmp_path, no_racy_window):
    src = write_tree({"globex/tenant.globex.pol": GLOBEX})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)
    (out / "tenant.globex.batch.bin").unlink()
    r = _compile(src, out)
    assert _statuses(r) == {"tenant.globex": "up to date", "tenant.globex.batch": "compiled"}


def test_a_changed_declaration_elsewhere_voids_the_entries(write_tree, tmp_path, no_racy_window, reads):
    src = write_tree({"agent.gateway.pol": GATEWAY, "agent.user.pol": USER})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)
    reads.clear()
    assert _statuses(_compile(src, out)) == {"agent.gateway": "up to date", "agent.user": "up to date"}
    assert reads == [f"{src}/agent.gateway.pol"]  # a file that declares is always read
    (src / "agent.gateway.pol").write_text(GATEWAY.replace("tool: string", "name: string"))
    r = _compile(src, out)
    assert _statuses(r) == {"agent.gateway": "compiled", "agent.user": "compiled"}
    caps = read_artifact_file(out / "agent.user.bin").caps
    assert [(p.name, p.type) for p in caps[0].params] == [("server", "string"), ("name", "string")]


def test_a_damaged_manifest_is_a_miss(write_tree, tmp_path, no_racy_window, reads):
    src = write_tree({"tenant.acme.pol": ACME})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)
    manifest = out / uptodate.MANIFEST_NAME
    for junk in (b"", b"\xc1", manifest.read_bytes()[:-3], b"\x93\x01\x02\x03", b"\x91" * 100_000):
        manifest.write_bytes(junk)
        reads.clear()
        assert _statuses(_compile(src, out)) == {"tenant.acme": "up to date"}
        assert reads == [f"{src}/tenant.acme.pol"], junk[:8]
    reads.clear()
    _compile(src, out)
    assert reads == []  # rewritten whole by the compile before


def test_a_forged_entry_for_another_source_is_not_trusted(write_tree, tmp_path, no_racy_window):
    """An entry only vouches for the stats it records: pointing it at a changed source is a miss."""
    src = write_tree({"tenant.acme.pol": ACME})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)
    (src / "tenant.acme.pol").write_text(ACME.replace("*.acme.com", "*.other.com"))
    r = _compile(src, out)
    assert _statuses(r) == {"tenant.acme": "compiled"}
    rules = read_artifact_file(out / "tenant.acme.bin").rules
    assert rules[0][5][0][1] == "*.other.com"


def test_files_changed_within_the_racy_window_are_not_recorded(write_tree, tmp_path, reads):
    src = write_tree({"tenant.acme.pol": ACME})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)
    assert not (out / uptodate.MANIFEST_NAME).exists()  # everything is younger than RACY_NS
    reads.clear()
    _compile(src, out)
    assert reads == [f"{src}/tenant.acme.pol"]


def test_force_and_strict_never_use_it(write_tree, tmp_path, no_racy_window, reads):
    src = write_tree({"tenant.acme.pol": ACME})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)
    for kw in ({"force": True}, {"strict": True}):
        reads.clear()
        _compile(src, out, **kw)
        assert reads == [f"{src}/tenant.acme.pol"], kw


def test_a_module_name_defined_again_elsewhere_is_reported(write_tree, tmp_path, no_racy_window):
    src = write_tree({"tenant.acme.pol": ACME})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)
    (src / "copy.pol").write_text(ACME)
    r = compile_paths([str(src)], str(out))
    assert r.exit_code == 1
    dups = [d for d in r.diagnostics if "duplicate module 'tenant.acme'" in d.message]
    assert sorted(d.file for d in dups) == [f"{src}/copy.pol", f"{src}/tenant.acme.pol"]


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664])
def test_a_manifest_others_may_write_is_not_read(write_tree, tmp_path, no_racy_window, reads, mode):
    src = write_tree({"tenant.acme.pol": ACME})
    out = tmp_path / "out"
    _compile(src, out)
    _compile(src, out)
    manifest = out / uptodate.MANIFEST_NAME
    manifest.chmod(mode)
    reads.clear()
    assert _statuses(_compile(src, out)) == {"tenant.acme": "up to date"}
    assert reads == [f"{src}/tenant.acme.pol"]


def test_the_manifest_is_written_for_no_one_else_to_write_under_a_group_umask(write_tree, tmp_path, no_racy_window,
                                                                             reads, monkeypatch):
    from polc.runtime.format import writer

    monkeypatch.setattr(writer, "_UMASK", None)  # read again, under the umask set here
    old = os.umask(0o002)
    try:
        src = write_tree({"tenant.acme.pol": ACME})
        out = tmp_path / "out"
        _compile(src, out)
        _compile(src, out)
        assert (out / uptodate.MANIFEST_NAME).stat().st_mode & 0o777 == 0o644
        reads.clear()
        _compile(src, out)
        assert reads == []
    finally:
        os.umask(old)
