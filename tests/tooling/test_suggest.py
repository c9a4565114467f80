"""``polc suggest``: drafts from the guard's observation log that decide what was observed."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from polc.cli import cli
from polc.compiler.fmt import format_source, grammar_text_of_tests
from polc.compiler.suggest import has_governs, registrable_domain
from polc.runtime import PolicyAgent
from polc.runtime.catalog import BUILTINS

TIME = "2026-01-02T03:04:05Z"


def obs(package: str, module: str, capability: str, args: list[Any], decision: str = "allow",
        site: str = "vendorlib/client.py:42") -> str:
    return json.dumps({"v": 1, "time": TIME, "package": package, "module": module, "capability": capability,
                       "args": args, "decision": decision, "site": site})


VENDOR = "com.vendor.library"
HANDWRITTEN = [
    obs("vendorlib", VENDOR, "network.outbound", ["api.acme.com", 443]),
    obs("vendorlib", VENDOR, "network.outbound", ["api.acme.com", 443]),
    obs("vendorlib", VENDOR, "network.outbound", ["cdn.acme.com", 443], "audit"),
    obs("vendorlib", VENDOR, "network.outbound", ["api.partner.com", 443]),
    obs("vendorlib", VENDOR, "network.outbound", ["evil.com", 443], "deny"),
    obs("vendorlib", VENDOR, "network.outbound", ["10.1.2.3", 5432]),
    obs("vendorlib", VENDOR, "fs.read", ["config", "app/a.yaml"]),
    obs("vendorlib", VENDOR, "fs.read", ["config", "app/b.yaml"]),
    obs("vendorlib", VENDOR, "fs.read", ["config", "top.yaml"]),
    obs("vendorlib", VENDOR, "process.exec", ["/bin/sh"], "deny"),
    obs("helperlib", "_global", "threads.create", []),
    obs("helperlib", "_global", "env.read", ["HOME"], "audit"),
]


def _write_log(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), "utf-8")
    return path


def _guarded_run(tmp_path: Path) -> Path:
    """An observation log recorded by the real guard (``polc guard --observe``) running a small service."""
    if cli.get_command(None, "guard") is None:  # type: ignore[arg-type]
        pytest.skip("polc guard is not part of this installation")
    app = tmp_path / "app"
    (app / "vendorlib").mkdir(parents=True)
    (app / "vendorlib" / "__init__.py").write_text(textwrap.dedent("""
        import os, socket, subprocess, threading
        def work(root, port, true):
            with open(os.path.join(root, "app", "a.yaml")) as fh:
                fh.read()
            with open(os.path.join(root, "app", "b.yaml")) as fh:
                fh.read()
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()
            socket.create_connection(("127.0.0.1", port), timeout=30).close()
            os.environ.get("HOME")
            subprocess.run([true], check=True)
    """))
    (app / "config" / "app").mkdir(parents=True)
    for name in ("a.yaml", "b.yaml"):
        (app / "config" / "app" / name).write_text("x: 1\n")
    (app / "service.py").write_text(textwrap.dedent("""
        import socket, sys, vendorlib
        server = socket.create_server(("127.0.0.1", 0))  # the service's own code: not governed
        vendorlib.work(sys.argv[1], server.getsockname()[1], sys.argv[2])
        conn, _ = server.accept()
        conn.close()
    """))
    true = shutil.which("true")
    assert true is not None
    policies = tmp_path / "policies"
    src = tmp_path / "src"
    src.mkdir()
    (src / "com.vendor.library.pol").write_text(
        'security module com.vendor.library {\n    governs "vendorlib";\n    mode audit;\n}\n')
    r = subprocess.run([sys.executable, "-m", "polc", "compile", str(src), "-o", str(policies), "-q"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    log = tmp_path / "observed.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "polc", "guard", str(policies), "--mode", "audit", "--observe", str(log),
         "--root", f"config={app / 'config'}", "--", sys.executable, str(app / "service.py"), str(app / "config"), true],
        cwd=app, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    seen = {e["capability"] for e in _read_log(log)}
    assert {"fs.read", "threads.create", "network.outbound", "process.exec"} <= seen, seen
    return log


@pytest.fixture(params=["handwritten", "guarded"])
def observation_log(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The observation log a test drafts from: hand-written, or recorded by a real guarded run."""
    if request.param == "guarded":
        return _guarded_run(tmp_path)
    return _write_log(tmp_path / "observed.jsonl", HANDWRITTEN)


def _drafted(e: dict[str, Any]) -> str:
    """The module an observation is drafted into: its governing module, or for _global its package."""
    return str(e["package"] if e["module"] == "_global" else e["module"])


def _read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def test_suggest_from_an_observation_log(observation_log: Path, tmp_path: Path) -> None:
    """The drafts pass polc check, and decide every observation as it was observed, in a real agent."""
    out = tmp_path / "drafts"
    r = subprocess.run([sys.executable, "-m", "polc", "suggest", str(observation_log), "-o", str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    sources = sorted(p for p in out.glob("*.pol") if not p.name.endswith(".test.pol"))
    tests = sorted(out.glob("*.test.pol"))
    assert sources and len(tests) == len(sources)
    r = subprocess.run([sys.executable, "-m", "polc", "check", *map(str, sources)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    policies = tmp_path / "policies"
    r = subprocess.run([sys.executable, "-m", "polc", "compile", *map(str, sources), "-o", str(policies), "-q"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    entries = _read_log(observation_log)
    with PolicyAgent(str(policies), reload=False) as agent:
        governor = getattr(agent.snapshot, "governor", None)
        module_of = {e["package"]: governor(e["package"]) if governor is not None else _drafted(e) for e in entries}
        allowed = {(module_of[e["package"]], e["capability"], json.dumps(e["args"])) for e in entries
                   if e["decision"] != "deny"}
        for e in entries:
            module = module_of[e["package"]]
            want = (module, e["capability"], json.dumps(e["args"])) in allowed
            d = agent.check(module, e["capability"], *e["args"])
            assert d.allowed is want, (e, d)
    for p in sources:
        assert format_source(p.read_text("utf-8"), p.name).text == p.read_text("utf-8"), "drafts are formatted"
    if cli.get_command(None, "test") is not None:  # type: ignore[arg-type]
        r = subprocess.run([sys.executable, "-m", "polc", "test", str(out)],
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert " passed, 0 failed" in r.stdout + r.stderr


def test_the_draft_generalises_only_where_siblings_were_seen(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "o.jsonl", HANDWRITTEN)
    r = CliRunner().invoke(cli, ["suggest", str(log)])
    assert r.exit_code == 0, r.stderr
    text = r.stdout
    # two names below acme.com at port 443: grouped; the partner's one name is not
    assert ('entitle module to network.outbound("*.acme.com", 443);  // seen 3 times (allow 2, audit 1): '
            "api.acme.com (2), cdn.acme.com (1)") in text
    assert 'entitle module to network.outbound("api.partner.com", 443);  // seen once' in text
    assert 'entitle module to network.outbound("10.1.2.3", 5432);' in text
    assert 'entitle module to fs.read("config", "app/**");  // seen 2 times' in text
    assert 'entitle module to fs.read("config", "top.yaml");' in text
    # denied requests are listed, not entitled
    assert '//   network.outbound("evil.com", 443): once' in text
    assert '//   process.exec("/bin/sh"): once' in text
    assert "process.exec(" not in text.replace('//   process.exec("/bin/sh")', "")
    # a module per governing module; _global's packages get a module of their own name
    assert "security module com.vendor.library {" in text
    assert "security module helperlib {" in text
    if has_governs():
        assert '    governs "vendorlib";' in text
    else:
        assert "    // governs the package(s) vendorlib" in text
    assert "governs" not in text.split("security module helperlib")[1]


@pytest.mark.parametrize(
    ("seen", "denied", "expected", "absent"),
    [
        (["a.acme.com", "b.acme.com"], [], ['"*.acme.com"'], ['"a.acme.com"']),
        (["a.acme.com", "x.y.acme.com"], [], ['"**.acme.com"'], []),
        (["a.acme.com"], [], ['"a.acme.com"'], ["*.acme.com"]),
        (["acme.com", "a.acme.com"], [], ['"acme.com"', '"a.acme.com"'], ["*.acme.com"]),
        (["a.acme.com", "b.acme.com"], ["c.acme.com"], ['"a.acme.com"', '"b.acme.com"'], ["*.acme.com"]),
        (["a.acme.co.uk", "b.acme.co.uk"], [], ['"*.acme.co.uk"'], ['"*.co.uk"']),
        (["a.one.com", "a.two.com"], [], ['"a.one.com"', '"a.two.com"'], ["*."]),
    ],
)
def test_host_grouping(tmp_path: Path, seen: list[str], denied: list[str], expected: list[str],
                       absent: list[str]) -> None:
    lines = [obs("vendorlib", "vendorlib", "network.outbound", [h, 443]) for h in seen]
    lines += [obs("vendorlib", "vendorlib", "network.outbound", [h, 443], "deny") for h in denied]
    r = CliRunner().invoke(cli, ["suggest", str(_write_log(tmp_path / "o.jsonl", lines))])
    assert r.exit_code == 0, r.stderr
    rules = [line for line in r.stdout.splitlines() if line.strip().startswith("entitle")]
    for e in expected:
        assert any(e in line for line in rules), (e, rules)
    for a in absent:
        assert not any(a in line.split("//")[0] for line in rules), (a, rules)


def test_ports_are_kept(tmp_path: Path) -> None:
    lines = [obs("v", "v", "network.outbound", ["a.acme.com", 443]), obs("v", "v", "network.outbound",
                                                                          ["b.acme.com", 8443])]
    r = CliRunner().invoke(cli, ["suggest", str(_write_log(tmp_path / "o.jsonl", lines))])
    assert '"a.acme.com", 443' in r.stdout and '"b.acme.com", 8443' in r.stdout and "*.acme" not in r.stdout


def test_registrable_domain() -> None:
    assert registrable_domain("api.eu.acme.com") == "acme.com"
    assert registrable_domain("api.acme.co.uk") == "acme.co.uk"
    assert registrable_domain("x.user.github.io") == "user.github.io"
    assert registrable_domain("localhost") is None
    assert registrable_domain("10.0.0.1") is None


def test_output_is_deterministic(tmp_path: Path) -> None:
    outs = set()
    for seed in range(4):
        lines = list(HANDWRITTEN)
        random.Random(seed).shuffle(lines)
        r = CliRunner().invoke(cli, ["suggest", str(_write_log(tmp_path / f"o{seed}.jsonl", lines))])
        assert r.exit_code == 0
        outs.add(r.stdout.replace(f"o{seed}.jsonl", "LOG"))
    assert len(outs) == 1


BAD_LINES = [
    ("not json", "not a JSON document"),
    ('{"v": 1, "v": 1}', 'duplicate key "v"'),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"v": 1}), "missing args, capability, decision, module, package, site, time"),
    (obs("v", "v", "threads.create", [])[:-1] + ', "extra": 1}', 'unknown "extra"'),
    (obs("v", "v", "threads.create", []).replace('"v": 1', '"v": 2'), "'v' must be 1"),
    (obs("v", "v", "threads.create", []).replace('"v": 1', '"v": true'), "'v' must be 1"),
    (obs("v", "v", "network.outbound", ["a.com", True]), "argument 'port' must be an integer"),
    (obs("v", "v", "network.outbound", ["a.com", 70000]), "out of range 0..65535"),
    (obs("v", "v", "network.outbound", ["a.com", 443]).replace("443", "NaN"), "not a number JSON allows"),
    (obs("v", "v", "network.outbound", ["*.com", 443]), "contains '*' or '?'"),
    (obs("v", "v", "network.outbound", ["a.com"]), "takes 2 argument(s)"),
    (obs("v", "v", "fs.read", ["r", "a/\u001b[2Jb"]), "control or invisible character"),
    (obs("v", "v", "fs.read", ["r", "../etc/passwd"]), "escapes its root"),
    (obs("v", "v", "process.exec", ["bin/sh"]), "must be absolute"),
    (obs("v", "v", "tool.call", ["a", "b"]), 'unknown capability "tool.call"'),
    (obs("v", "v", "threads.create", [], "maybe"), "'decision' must be one of allow, audit, deny"),
    (obs("v", "v", "threads.create", []).replace(TIME, "2026-01-02T03:04:05+02:00"), "'time' must be in UTC"),
    (obs("v", "v", "threads.create", []).replace(TIME, "yesterday"), "not an ISO-8601 time"),
    (obs("v-1", "_global", "threads.create", []), "not a dotted Python package name"),
    (obs("v", "bad..module", "threads.create", []), "'module' is not a module name"),
    ("[" * 100_000 + "]" * 100_000, "longer than 65536 bytes"),
    ("[" * 30_000 + "]" * 30_000, "not a JSON document (RecursionError)"),
]


def test_hostile_lines_get_diagnostics_and_the_rest_is_drafted(tmp_path: Path) -> None:
    good = obs("vendorlib", "vendorlib", "network.outbound", ["api.acme.com", 443])
    raw = b"".join(line.encode() + b"\n" for line, _ in BAD_LINES) + b"\xff\xfe not utf-8\n\n" + good.encode()
    log = tmp_path / "hostile.jsonl"
    log.write_bytes(raw)
    r = CliRunner().invoke(cli, ["suggest", str(log)])
    assert r.exit_code == 1
    errors = [line for line in r.stderr.splitlines() if ": error: " in line]
    for n, (_, message) in enumerate(BAD_LINES, start=1):
        assert any(line.startswith(f"{log}:{n}:1: error: ") and message in line for line in errors), (n, message)
    assert f"{log}:{len(BAD_LINES) + 1}:1: error: the line is not valid UTF-8" in errors
    assert len(errors) == len(BAD_LINES) + 1
    assert 'entitle module to network.outbound("api.acme.com", 443);' in r.stdout
    assert all(len(line) < 400 for line in r.stderr.splitlines())


def test_write_to_a_directory_and_refuse_to_overwrite(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "o.jsonl", HANDWRITTEN)
    out = tmp_path / "drafts"
    r = CliRunner().invoke(cli, ["suggest", str(log), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "com.vendor.library.pol", "com.vendor.library.test.pol", "helperlib.pol", "helperlib.test.pol"]
    test = (out / "com.vendor.library.test.pol").read_text("utf-8")
    assert 'expect allow com.vendor.library to network.outbound("cdn.acme.com", 443);' in test
    assert 'expect deny com.vendor.library to process.exec("/bin/sh");' in test
    assert test.count("expect ") == 9
    if grammar_text_of_tests() is not None:
        assert format_source(test, "x.test.pol").text == test
    before = (out / "helperlib.pol").stat().st_mtime_ns
    r = CliRunner().invoke(cli, ["suggest", str(log), "-o", str(out)])
    assert r.exit_code == 2 and "exists; pass --force" in r.stderr
    assert (out / "helperlib.pol").stat().st_mtime_ns == before
    r = CliRunner().invoke(cli, ["suggest", str(log), "-o", str(out), "--force", "--module", "helperlib"])
    assert r.exit_code == 0


def test_module_filter_and_nothing_to_draft(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "o.jsonl", HANDWRITTEN)
    r = CliRunner().invoke(cli, ["suggest", str(log), "--module", "helperlib"])
    assert r.exit_code == 0
    assert "security module helperlib {" in r.stdout and VENDOR not in r.stdout
    r = CliRunner().invoke(cli, ["suggest", str(log), "--module", "nobody"])
    assert r.exit_code == 1 and "no observations for module nobody" in r.stderr
    r = CliRunner().invoke(cli, ["suggest", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 2 and "cannot read" in r.stderr


def test_subprocess_suggest_to_stdout(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "o.jsonl", HANDWRITTEN)
    r = subprocess.run([sys.executable, "-m", "polc", "suggest", str(log)], capture_output=True, text=True,
                       timeout=120, check=False, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().endswith("drafted 2 module(s) from 11 distinct observation(s); 12 line(s) read, 0 bad")
    src = tmp_path / "drafts.pol"
    src.write_text(r.stdout, "utf-8")
    r = subprocess.run([sys.executable, "-m", "polc", "check", str(src)], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(src) > 0


@pytest.mark.skipif("native.load" not in BUILTINS, reason="this runtime has no native.load")
def test_native_libraries_are_absolute_paths_grouped_by_directory(tmp_path: Path) -> None:
    lines = [obs("vendorlib", "vendorlib", "native.load", [p]) for p in
             ("/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/opt/v/lib.so")]
    lines.append(obs("vendorlib", "vendorlib", "native.load", ["/usr/lib/libevil.so"], "deny"))
    log = _write_log(tmp_path / "o.jsonl", lines)
    out = tmp_path / "drafts"
    r = CliRunner().invoke(cli, ["suggest", str(log), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    text = (out / "vendorlib.pol").read_text("utf-8")
    assert 'entitle module to native.load("/usr/lib/x86_64-linux-gnu/**");  // seen 2 times' in text
    assert 'entitle module to native.load("/opt/v/lib.so");' in text
    assert '//   native.load("/usr/lib/libevil.so"): once' in text
    policies = tmp_path / "policies"
    r = CliRunner().invoke(cli, ["compile", str(out / "vendorlib.pol"), "-o", str(policies), "-q"])
    assert r.exit_code == 0, r.output
    with PolicyAgent(str(policies), reload=False) as agent:
        assert agent.check("vendorlib", "native.load", "/usr/lib/x86_64-linux-gnu/libssl.so.3").allowed
        assert not agent.check("vendorlib", "native.load", "/usr/lib/libevil.so").allowed


def test_a_flood_of_bad_lines_is_reported_in_bounded_space(tmp_path: Path) -> None:
    log = tmp_path / "flood.jsonl"
    good = obs("vendorlib", "vendorlib", "threads.create", [])
    log.write_bytes(b"x\n" * 50_000 + good.encode() + b"\n")
    r = CliRunner().invoke(cli, ["suggest", str(log)])
    assert r.exit_code == 1
    errors = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 101
    assert errors[-1] == f"{log}:50001:1: error: 49900 more bad line(s) not shown"
    assert "50001 line(s) read, 50000 bad" in r.stderr
    assert "entitle module to threads.create;" in r.stdout


_P_HOSTS = ["a.acme.com", "b.acme.com", "x.y.acme.com", "acme.com", "a.b.co.uk", "c.b.co.uk", "10.0.0.1", "::1",
            "api.other.io"]
_P_PATHS = ["app/a.yaml", "app/b.yaml", "app/sub/c.yaml", "top.txt", "other/x"]


@st.composite
def _observations(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(1, 12))):
        decision = draw(st.sampled_from(["allow", "audit", "deny"]))
        package = draw(st.sampled_from(["vendorlib", "helperlib"]))
        module = draw(st.sampled_from([VENDOR, "_global", package]))
        if draw(st.booleans()):
            args: list[Any] = [draw(st.sampled_from(_P_HOSTS)), draw(st.sampled_from([443, 80, 8443]))]
            cap = "network.outbound"
        else:
            args, cap = ["config", draw(st.sampled_from(_P_PATHS))], draw(st.sampled_from(["fs.read", "fs.write"]))
        out.append(obs(package, module, cap, args, decision))
    return out


@settings(max_examples=60, deadline=None)
@given(_observations())
def test_any_log_gives_drafts_that_decide_it_as_observed(lines: list[str]) -> None:
    from polc.compiler.diff import set_from_sources

    with tempfile.TemporaryDirectory() as d:
        log = _write_log(Path(d) / "o.jsonl", lines)
        out = Path(d) / "drafts"
        r = CliRunner().invoke(cli, ["suggest", str(log), "-o", str(out)])
        assert r.exit_code == 0, r.stderr
        sources = [(p.name, p.read_text("utf-8")) for p in sorted(out.glob("*.pol"))
                   if not p.name.endswith(".test.pol")]
    snap = set_from_sources("drafts", sources).snapshot
    entries = [json.loads(line) for line in lines]
    governor = getattr(snap, "governor", None)
    if governor is not None:  # what the guard would do: the package's governing module decides
        module_of = {e["package"]: governor(e["package"]) for e in entries}
        assert None not in module_of.values(), (module_of, sources)
    else:
        module_of = {e["package"]: _drafted(e) for e in entries}
    # a module's rules decide for every package it governs: allowed for one of them is allowed for all
    allowed = {(module_of[e["package"]], e["capability"], json.dumps(e["args"])) for e in entries
               if e["decision"] != "deny"}
    for e in entries:
        module = module_of[e["package"]]
        want = (module, e["capability"], json.dumps(e["args"])) in allowed
        assert snap.check(module, e["capability"], *e["args"]).allowed is want, (e, sources)


def test_a_package_seen_under_two_modules_is_drafted_into_one(tmp_path: Path) -> None:
    """A package is governed by one module: _global observations of a package the log binds go to its module."""
    lines = [obs("vendorlib", VENDOR, "network.outbound", ["api.vendor.com", 443]),
             obs("vendorlib", "_global", "fs.read", ["config", "a.yaml"]),
             obs("vendorlib", "other.module", "env.read", ["HOME"])]
    r = CliRunner().invoke(cli, ["suggest", str(_write_log(tmp_path / "o.jsonl", lines))])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("security module ") == 1 and f"security module {VENDOR} {{" in r.stdout
    for rule in ('network.outbound("api.vendor.com", 443)', 'fs.read("config", "a.yaml")', 'env.read("HOME")'):
        assert f"entitle module to {rule};" in r.stdout
