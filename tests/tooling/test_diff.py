"""``polc diff OLD NEW``: rule changes by meaning, witness requests decided by the real enforcer, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from polc.cli import cli
from polc.compiler.diff import diff_sets, label, load_set, set_from_sources
from polc.compiler.fmt import format_source
from polc.compiler.suggest import has_governs
from polc.runtime import PolicyAgent

from support import REPO

EXAMPLES = REPO / "policies-src"


def _copy(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name / "policies-src"
    shutil.copytree(EXAMPLES, d, ignore=shutil.ignore_patterns("*.test.pol"))
    return d


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text("utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new), "utf-8")


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_a_widening_change_is_found_with_its_witness(tmp_path: Path) -> None:
    old, new = _copy(tmp_path, "old"), _copy(tmp_path, "new")
    _edit(new / "tenant.acme.pol", '"api.partner.com"', '"*.partner.com"')
    code, out, err = _run("diff", str(old), str(new))
    assert code == 1, out + err
    assert 'tenant.acme network.outbound("x.partner.com", 443): deny \u2192 allow' in out
    assert ('~ entitle network.outbound("api.partner.com", 443) \u2192 entitle network.outbound("*.partner.com", 443)'
            in out)
    assert out.rstrip().endswith("1 decision change(s): 1 widening (deny \u2192 allow), 0 narrowing")


def test_the_witness_is_what_the_runtime_decides(tmp_path: Path) -> None:
    """Compile both trees to disk, load them with PolicyAgent, and decide the witness request there."""
    old, new = _copy(tmp_path, "old"), _copy(tmp_path, "new")
    _edit(new / "tenant.globex.pol", "network.listen(8000..8999)", "network.listen(8000..9999)")
    result = diff_sets(load_set(str(old)), load_set(str(new)))
    [w] = result.witnesses
    assert (w.module, w.capability, w.old_label, w.new_label) == ("tenant.globex", "network.listen", "deny", "allow")
    assert 9000 <= w.args[0] <= 9999
    for tree, allowed in ((old, False), (new, True)):
        out = tree.parent / "policies"
        r = CliRunner().invoke(cli, ["compile", str(tree), "-o", str(out), "-q"])
        assert r.exit_code == 0, r.output
        with PolicyAgent(str(out), reload=False) as agent:
            assert agent.check(w.module, w.capability, *w.args).allowed is allowed


@pytest.mark.parametrize(
    ("file", "old", "new", "witness"),
    [
        ("tenant.globex.pol", '"10.20.0.0/16", 5432', '"10.0.0.0/8", 5432',
         'tenant.globex network.outbound("10.0.0.1", 5432): deny \u2192 allow'),
        ("tenant.globex.pol", '"config/*.yaml"', '"config/**"',
         'tenant.globex fs.read("tenants/globex", "config/x"): deny \u2192 allow'),
        ("tenant.acme.pol", '"*.acme.com", 443', '"**.acme.com", 443',
         'tenant.acme network.outbound("x.y.acme.com", 443): deny \u2192 allow'),
        ("tenant.acme.pol", '"*.acme.com", 443', '"*.acme.com", *',
         'tenant.acme network.outbound("x.acme.com", 442): deny \u2192 allow'),
        ("tenant.acme.pol", '"api.partner.com", 443', '"api.partner.com", 442..443',
         'tenant.acme network.outbound("api.partner.com", 442): deny \u2192 allow'),
        ("agent.gateway.pol", 'deny module to tool.call(*, "shell?exec");', "",
         'agent.gateway tool.call("jira", "shellxexec"): deny \u2192 allow'),
        # a deny removed where nothing entitles what it denied: no decision changes
        ("agent.gateway.pol", 'deny module to tool.call("github", "delete_*");', "", None),
        ("tenant.initech.pol", "mode audit;", "mode enforce;",
         'tenant.initech network.listen(1): audit \u2192 deny'),
        # nobody is entitled to env.read("AWS_x"), but initech is in audit mode: its deny becomes a would-deny
        ("_global.pol", 'deny module to env.read("AWS_*");', "",
         'tenant.initech env.read("AWS_x"): deny \u2192 audit'),
        ("_global.pol", 'entitle module to fs.write("logs", "*.log");', "",
         'tenant.acme fs.write("logs", "x.log"): allow \u2192 deny'),
    ],
)
def test_witnesses_from_the_rules_own_patterns(tmp_path: Path, file: str, old: str, new: str,
                                               witness: str | None) -> None:
    a, b = _copy(tmp_path, "old"), _copy(tmp_path, "new")
    _edit(b / file, old, new)
    code, out, _ = _run("diff", str(a), str(b))
    if witness is None:
        assert code == 0, out
        assert "0 decision change(s)" in out
    else:
        assert code == 1, out
        assert witness in out


def test_a_reformatted_and_reordered_tree_changes_nothing(tmp_path: Path) -> None:
    old, new = _copy(tmp_path, "old"), _copy(tmp_path, "new")
    for p in new.glob("*.pol"):
        text = p.read_text("utf-8")
        squeezed = text.replace("    ", "  ").replace(", ", ",").replace(";\n", " ;\n\n")
        p.write_text(squeezed, "utf-8")
    # two rules of one effect swapped: the order changes which rule a decision names, not the decision
    _edit(new / "tenant.acme.pol",
          'entitle module to network.outbound("*.acme.com",443) ;\n\n  entitle module to network.outbound('
          '"api.partner.com",443) ;',
          'entitle module to network.outbound("api.partner.com",443) ;\n  entitle module to network.outbound('
          '"*.acme.com",443) ;')
    formatted = format_source((new / "tenant.acme.pol").read_text("utf-8"), "t.pol").text
    assert formatted is not None
    code, out, err = _run("diff", str(old), str(new))
    assert code == 0, out + err
    assert "+ " not in out and "- " not in out and "~ " not in out
    assert out.strip() == "0 changed, 0 added, 0 removed, 6 unchanged; 0 decision change(s): 0 widening " \
                          "(deny \u2192 allow), 0 narrowing"


def test_artifact_directories_and_source_trees_alike(tmp_path: Path) -> None:
    old, new = _copy(tmp_path, "old"), _copy(tmp_path, "new")
    _edit(new / "tenant.acme.pol", '"api.partner.com"', '"*.partner.com"')
    for tree in (old, new):
        r = CliRunner().invoke(cli, ["compile", str(tree), "-o", str(tree.parent / "policies"), "-q"])
        assert r.exit_code == 0
    code, out, _ = _run("diff", str(tmp_path / "old" / "policies"), str(tmp_path / "new" / "policies"))
    assert code == 1
    assert 'tenant.acme network.outbound("x.partner.com", 443): deny \u2192 allow' in out
    # an artifact directory against a source tree
    code, out, _ = _run("diff", str(tmp_path / "old" / "policies"), str(new))
    assert code == 1 and 'network.outbound("x.partner.com", 443): deny \u2192 allow' in out


def test_only_widening_ignores_narrowing_changes(tmp_path: Path) -> None:
    old, new = _copy(tmp_path, "old"), _copy(tmp_path, "new")
    _edit(new / "tenant.acme.pol", '"*.acme.com", 443', '"api.acme.com", 443')
    code, out, _ = _run("diff", str(old), str(new))
    assert code == 1
    assert 'tenant.acme network.outbound("x.acme.com", 443): allow \u2192 deny' in out
    code, out, _ = _run("diff", "--only-widening", str(old), str(new))
    assert code == 0, out
    assert "allow \u2192 deny" not in out.splitlines()[0]
    _edit(new / "tenant.globex.pol", "network.listen(8000..8999)", "network.listen(*)")
    code, out, _ = _run("diff", "--only-widening", str(old), str(new))
    assert code == 1
    assert "tenant.globex network.listen(7999): deny \u2192 allow" in out
    assert "allow \u2192 deny" not in out.split("\n0 changed")[0].split("decisions that change:")[-1]


def test_modules_added_and_removed(tmp_path: Path) -> None:
    old, new = _copy(tmp_path, "old"), _copy(tmp_path, "new")
    (new / "com.vendor.library.pol").unlink()
    (new / "tenant.hooli.pol").write_text(
        "security module tenant.hooli {\n    entitle module to network.outbound(\"api.hooli.xyz\", 443);\n}\n")
    code, out, _ = _run("diff", "--format", "json", str(old), str(new))
    assert code == 1
    doc = json.loads(out)
    assert doc["version"] == 1
    mods = {m["module"]: m for m in doc["modules"]}
    assert mods["com.vendor.library"]["status"] == "removed"
    assert mods["tenant.hooli"]["status"] == "added"
    removed = {w["request"]: (w["old"]["decision"], w["new"]["decision"]) for w in mods["com.vendor.library"]["witnesses"]}
    assert removed['network.outbound("api.vendor.com", 443)'] == ("allow", "deny")
    # the removed module still gets what _global entitles everybody: no change there
    assert 'network.outbound("dns.internal", 53)' not in removed
    assert load_set(str(new)).snapshot.check("com.vendor.library", "network.outbound", "dns.internal", 53).allowed
    added = {w["request"] for w in mods["tenant.hooli"]["witnesses"]}
    assert 'network.outbound("api.hooli.xyz", 443)' in added
    assert doc["summary"]["added"] == 1 and doc["summary"]["removed"] == 1
    assert doc["widening"] >= 1 and doc["decision_changes"] >= 2
    code, text, _ = _run("diff", str(old), str(new))
    # sources are named as the artifacts record them: relative to the source root
    assert ("com.vendor.library (policies-src/com.vendor.library.pol): removed (its requests are decided by "
            "_global alone)") in text


def test_unreadable_sides_are_usage_errors(tmp_path: Path) -> None:
    old = _copy(tmp_path, "old")
    code, _, err = _run("diff", str(old), str(tmp_path / "missing"))
    assert code == 2 and "no such file or directory" in err
    bad = _copy(tmp_path, "bad")
    _edit(bad / "tenant.acme.pol", "process.exec", "process.exce")
    code, _, err = _run("diff", str(old), str(bad))
    assert code == 2
    assert "the sources have errors" in err and "unknown capability 'process.exce'" in err
    arts = tmp_path / "arts"
    arts.mkdir()
    (arts / "tenant.acme.bin").write_bytes(b"\x89POLC\r\n\x1a" + b"\0" * 60)
    code, _, err = _run("diff", str(arts), str(old))
    assert code == 2 and "tenant.acme.bin" in err


def test_subprocess_diff(tmp_path: Path) -> None:
    _copy(tmp_path, "old")
    new = _copy(tmp_path, "new")
    _edit(new / "tenant.acme.pol", '"api.partner.com"', '"*.partner.com"')
    r = subprocess.run([sys.executable, "-m", "polc", "diff", "old/policies-src", "new/policies-src"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1, r.stderr
    assert 'tenant.acme network.outbound("x.partner.com", 443): deny \u2192 allow' in r.stdout
    assert "(policies-src/tenant.acme.pol:4:5 \u2192 policies-src/tenant.acme.pol:4:5)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "polc", "diff", "old/policies-src", "old/policies-src"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not has_governs(), reason="this language has no governs statement")
def test_a_package_no_longer_governed_is_a_widening_change(tmp_path: Path) -> None:
    governed = ('security module com.vendor.library {\n    governs "vendorlib";\n\n'
                '    entitle module to network.outbound("api.vendor.com", 443);\n}\n')
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "v.pol").write_text(governed, "utf-8")
    (tmp_path / "new" / "v.pol").write_text(governed.replace('    governs "vendorlib";\n\n', ""), "utf-8")
    code, out, _ = _run("diff", str(tmp_path / "old"), str(tmp_path / "new"))
    assert code == 1, out
    assert "  governs: vendorlib \u2192 -" in out
    assert "package vendorlib: governed by com.vendor.library \u2192 (ungoverned: not checked)" in out
    assert out.rstrip().endswith("1 decision change(s): 1 widening (deny \u2192 allow), 0 narrowing")
    code, out, _ = _run("diff", "--only-widening", "--format", "json", str(tmp_path / "old"), str(tmp_path / "new"))
    assert code == 1
    assert json.loads(out)["governance"] == [
        {"package": "vendorlib", "old": "com.vendor.library", "new": None, "widening": True}]
    code, out, _ = _run("diff", "--only-widening", str(tmp_path / "new"), str(tmp_path / "old"))
    assert code == 0, out
    code, out, _ = _run("diff", str(tmp_path / "new"), str(tmp_path / "old"))
    assert code == 1 and "package vendorlib: governed by (ungoverned: not checked) \u2192 com.vendor.library" in out


# --------------------------------------------------------------------------
# completeness on a small universe: whenever some request of the universe is decided
# differently, diff finds a witness (and every witness it finds is decided differently)

_HOST_PATTERNS = ['"a.com"', '"*.a.com"', '"**.a.com"', '"b.com"', '"10.0.0.0/8"', '"10.1.0.0/16"', "*"]
_PORT_PATTERNS = ["443", "80..90", "*", "1..1000"]
_PATH_PATTERNS = ['"cfg/*.yaml"', '"cfg/**"', '"**"', '"cfg/a.yaml"', '"x/*/y"']
_UNIVERSE_HOSTS = ["a.com", "x.a.com", "x.y.a.com", "b.com", "10.1.2.3", "10.2.0.1", "11.0.0.1", "c.org"]
_UNIVERSE_PORTS = [1, 79, 80, 85, 90, 91, 443, 999, 1000, 1001, 8080]
_UNIVERSE_PATHS = ["cfg/a.yaml", "cfg/b.yaml", "cfg/a.json", "cfg/d/e", "x/q/y", "x/y", "other"]


@st.composite
def _policy(draw: st.DrawFn, name: str = "m") -> str:
    rules = []
    for _ in range(draw(st.integers(0, 4))):
        effect = draw(st.sampled_from(["entitle", "entitle", "deny"]))
        if draw(st.booleans()):
            rules.append(f"{effect} module to network.outbound({draw(st.sampled_from(_HOST_PATTERNS))}, "
                         f"{draw(st.sampled_from(_PORT_PATTERNS))});")
        else:
            rules.append(f'{effect} module to fs.read("r", {draw(st.sampled_from(_PATH_PATTERNS))});')
    mode = draw(st.sampled_from(["", "mode audit;"]))
    return f"security module {name} {{\n" + "\n".join([mode, *rules]) + "\n}\n"


_maybe_global = st.one_of(st.just(""), _policy("_global"))


@settings(max_examples=120)
@given(_policy(), _policy(), _maybe_global, _maybe_global)
def test_diff_finds_a_witness_whenever_some_request_changes(old: str, new: str, old_g: str, new_g: str) -> None:
    a = set_from_sources("old", [("m.pol", old), ("g.pol", old_g)])
    b = set_from_sources("new", [("m.pol", new), ("g.pol", new_g)])
    result = diff_sets(a, b)
    for w in result.witnesses:
        assert label(a.snapshot.check(w.module, w.capability, *w.args)) != label(
            b.snapshot.check(w.module, w.capability, *w.args))
    requests = [("network.outbound", (h, p)) for h in _UNIVERSE_HOSTS for p in _UNIVERSE_PORTS]
    requests += [("fs.read", ("r", p)) for p in _UNIVERSE_PATHS]
    for module in ("m", "_global"):  # "_global": what a module without an artifact gets
        differs = [(cap, args) for cap, args in requests
                   if label(a.snapshot.check(module, cap, *args)) != label(b.snapshot.check(module, cap, *args))]
        found = [w for w in result.witnesses if w.module == module]
        if differs:
            for cap in {c for c, _ in differs}:
                assert any(w.capability == cap for w in found), (old, old_g, new, new_g, module, cap, differs[:3])
        else:
            assert not found
