"""The built-in native.load(library: path): compiled, checked, verified, and decided end to end --
a real ``polc compile`` of a tree, the artifacts loaded by a PolicyAgent and by ``polc eval``."""

from __future__ import annotations

import ctypes.util
import os
import subprocess

import msgpack
import pytest

from polc.compiler import compile_source
from polc.compiler.diagnostics import ERROR
from polc.runtime import PolicyAgent, PolicyDenied
from polc.runtime.catalog import BUILTINS, PATH, ROOTED_AT_SLASH
from polc.runtime.errors import MalformedPayload
from polc.runtime.format import opcodes
from polc.runtime.format.header import HEADER_SIZE
from polc.runtime.format.reader import read_artifact
from polc.runtime.patterns import root_relative

VENDOR = """security module vendorlib {
    entitle module to native.load("/usr/lib/**/libssl.so*");
    entitle module to native.load("opt/vendor/lib/*.so");
    deny module to native.load("/usr/lib/**/libcrypt*");
}
"""


def test_it_is_a_built_in_rooted_at_slash():
    cap = BUILTINS["native.load"]
    assert cap.signature() == "native.load(library: path)" and cap.params[0].type == PATH
    assert "native.load" in ROOTED_AT_SLASH


def test_compiles_with_absolute_paths_stored_relative_to_the_root():
    r = compile_source(VENDOR, "v.pol")
    assert [d for d in r.diagnostics if d.severity == ERROR] == []
    art = read_artifact(r["vendorlib"], expected_module="vendorlib")
    assert [(rule.effect_name, rule.cap.name, rule.args) for rule in art.rules] == [
        ("entitle", "native.load", ((opcodes.PATH_GLOB, "usr/lib/**/libssl.so*"),)),
        ("entitle", "native.load", ((opcodes.PATH_GLOB, "opt/vendor/lib/*.so"),)),
        ("deny", "native.load", ((opcodes.PATH_GLOB, "usr/lib/**/libcrypt*"),)),
    ]
    payload = msgpack.unpackb(r["vendorlib"][HEADER_SIZE:])
    assert payload["caps"] == [["native.load", [["library", "path"]]]]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ('"/"', 'invalid path pattern "/": empty; use "**" for any path (parameter \'library\' of native.load)'),
        ('"/usr/../etc/x.so"', "'..' is not allowed"),
        ("443", "wrong argument type: parameter 'library' of native.load(library: path) is path"),
        ('"a", "b"', "wrong number of arguments: native.load(library: path) takes 1 argument, got 2"),
    ],
)
def test_checked(arg, message):
    r = compile_source(f"security module m {{ entitle module to native.load({arg}); }}", "t.pol")
    errs = [d.message for d in r.diagnostics if d.severity == ERROR]
    assert len(errs) == 1 and message in errs[0], errs


def test_other_path_capabilities_keep_their_root():
    r = compile_source('security module m { entitle module to fs.read("config", "/etc/x"); }', "t.pol")
    (e,) = [d for d in r.diagnostics if d.severity == ERROR]
    assert "paths are relative to the root argument; drop the leading '/'" in e.message


def test_did_you_mean():
    r = compile_source("security module m { entitle module to native.dlopen; }", "t.pol")
    (e,) = [d for d in r.diagnostics if d.severity == ERROR]
    assert e.message == "unknown capability 'native.dlopen'; did you mean 'native.load'?"


def test_the_verifier_holds_native_load_to_its_signature():
    from polc.runtime.catalog import Capability, Param
    from polc.runtime.format.writer import pack_artifact

    from support.artifacts import make_payload

    wrong = Capability("native.load", (Param("library", "string"),))
    p = make_payload("m", [(opcodes.ENTITLE, wrong, 2, 5, [(opcodes.STR_EXACT, "x")])])
    with pytest.raises(MalformedPayload, match="native.load"):
        pack_artifact(p)


def test_root_relative():
    assert root_relative("/usr/lib/libssl.so.3") == "usr/lib/libssl.so.3"
    assert root_relative("//usr/./lib/../lib64//libc.so.6") == "usr/lib64/libc.so.6"
    assert root_relative("/../../usr/lib/x.so") == "usr/lib/x.so"  # '..' at the top stays there, as in the FS
    assert root_relative("/") == ""
    for bad in ("usr/lib/x.so", "", "/a\0b"):
        with pytest.raises(ValueError):
            root_relative(bad)
    with pytest.raises(ValueError):
        root_relative(b"/usr/lib")  # type: ignore[arg-type]


def test_end_to_end_compile_load_decide(write_tree, tmp_path, polc_cmd):
    src = write_tree({
        "vendorlib.pol": VENDOR,
        "_global.pol": 'security module _global {\n    deny module to native.load("/tmp/**");\n}\n',
    })
    out = tmp_path / "policies"
    p = subprocess.run([*polc_cmd, "compile", str(src), "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    # a real library file on this machine, resolved as a guard would resolve it
    found = ctypes.util.find_library("c")
    libc = None
    for d in ("/usr/lib", "/lib", "/usr/lib64", "/lib64", "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"):
        if found and os.path.exists(os.path.join(d, found)):
            libc = os.path.realpath(os.path.join(d, found))
            break
    with PolicyAgent(out, reload=False) as agent:
        ok = root_relative("/usr/lib/x86_64-linux-gnu/libssl.so.3")
        assert agent.require("vendorlib", "native.load", ok).allowed
        assert agent.check("vendorlib", "native.load", "opt/vendor/lib/libv.so").allowed
        with pytest.raises(PolicyDenied) as info:
            agent.require("vendorlib", "native.load", root_relative("/usr/lib/libcrypt.so.1"))
        assert str(info.value) == (
            "polc: vendorlib may not native.load('usr/lib/libcrypt.so.1'): denied by "
            f"{info.value.decision.rule}"
        ) and info.value.decision.rule.endswith("vendorlib.pol:4:5")
        d = agent.check("vendorlib", "native.load", root_relative("/tmp/evil/libx.so"))
        assert not d.allowed and d.reason == "denied by _global"
        assert agent.check("vendorlib", "native.load", "home/u/libx.so").reason == "no entitlement"
        # an absolute path is the path below '/' it names: the same request, the same decision
        for absolute in ("/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/libcrypt.so.1", "/tmp/evil/libx.so"):
            assert agent.check("vendorlib", "native.load", absolute) == agent.check(
                "vendorlib", "native.load", root_relative(absolute))
            assert agent.snapshot.decide_uncached("vendorlib", "native.load", absolute) == agent.check(
                "vendorlib", "native.load", absolute)
        assert agent.check("vendorlib", "native.load", "/usr/lib/../lib/ssl/libssl.so.3").allowed
        d = agent.check("vendorlib", "native.load", "/usr/lib/a\0libssl.so")
        assert not d.allowed and "NUL" in d.reason
        # other path parameters keep refusing absolute paths
        d = agent.check("vendorlib", "fs.read", "config", "/etc/passwd")
        assert not d.allowed and "absolute path" in d.reason
        if libc is not None:
            want = libc.startswith("/usr/lib/") and "libssl" in libc
            assert bool(agent.check("vendorlib", "native.load", root_relative(libc))) is want
    # and polc eval decides the same
    p = subprocess.run([*polc_cmd, "eval", str(out), "vendorlib", "native.load", "usr/lib/libcrypt.so.1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "deny" in p.stdout
    p = subprocess.run([*polc_cmd, "eval", str(out), "vendorlib", "native.load", "usr/lib/ssl/libssl.so.3"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "allow" in p.stdout
