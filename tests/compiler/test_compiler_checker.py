"""Semantic checks, argument typing, warnings and code generation (in-memory API)."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from polc import __version__
from polc.compiler import compile_source, compile_sources
from polc.compiler.diagnostics import ERROR, NOTE, WARNING, CompileError, render
from polc.runtime.format.header import HEADER_SIZE
from polc.runtime.format.opcodes import (
    ANY,
    DENY,
    ENTITLE,
    HOST_CIDR,
    HOST_EXACT,
    HOST_WILD,
    INT_RANGE,
    PATH_GLOB,
    RULE,
    STR_EXACT,
    STR_GLOB,
)
from polc.runtime.format.reader import read_artifact


def module(body: str, name: str = "m") -> str:
    return f"security module {name} {{\n{body}\n}}\n"


def diags_of(body: str, severity: str = ERROR, **kw):
    r = compile_source(module(body), "t.pol", **kw)
    return [d for d in r.diagnostics if d.severity == severity]


def one_error(body: str):
    errs = diags_of(body)
    assert len(errs) == 1, errs
    return errs[0]


def payload(data: bytes) -> dict:
    read_artifact(data)  # valid for the runtime's reader and verifier
    return msgpack.unpackb(data[HEADER_SIZE:], raw=False)


# -- capabilities ------------------------------------------------------------


def test_unknown_capability_suggests_network_listen():
    r = compile_source(module("    entitle module to network.inbound(8080);"), "src/t.pol")
    assert not r.ok and r.artifacts == []
    (e,) = r.errors
    assert e.header() == (
        "src/t.pol:2:23: error: unknown capability 'network.inbound'; did you mean 'network.listen'?"
    )
    text = render(e, r.sources)
    assert text.splitlines()[1].strip() == "entitle module to network.inbound(8080);"
    assert text.splitlines()[2] == " " * 4 + " " * 22 + "^" + "~" * (len("network.inbound") - 1)


@pytest.mark.parametrize(
    "cap, suggestion",
    [("network.outbund", "network.outbound"), ("fs.raed", "fs.read"), ("proces.exec", "process.exec"),
     ("fs.open", "fs.read"), ("env.get", "env.read")],
)
def test_unknown_capability_did_you_mean(cap, suggestion):
    e = one_error(f"    entitle module to {cap};")
    assert f"did you mean '{suggestion}'?" in e.message


def test_unknown_capability_without_a_close_match_has_no_suggestion():
    e = one_error("    entitle module to zzz.qqq;")
    assert e.message == "unknown capability 'zzz.qqq'"


def test_suggests_declared_capabilities_too():
    e = one_error("    capability tool.call(server: string, tool: string);\n    entitle module to tool.cal;")
    assert "did you mean 'tool.call'?" in e.message


def test_wrong_arity():
    e = one_error('    entitle module to network.listen(80, 81);')
    assert "wrong number of arguments" in e.message and "network.listen(port: port)" in e.message
    assert (e.line, e.col) == (2, 42)  # the first extra argument
    e = one_error("    entitle module to threads.create(1);")
    assert "takes no arguments, got 1" in e.message


def test_omitted_trailing_arguments_are_any():
    r = compile_source(module('    entitle module to network.outbound("a.com");\n    deny module to fs.read;'), "t.pol")
    r.check()
    code = payload(r["m"])["code"]
    assert code == [
        [RULE, ENTITLE, 0, 2, 5], [HOST_EXACT, 0], [ANY],
        [RULE, DENY, 1, 3, 5], [ANY], [ANY],
    ]


# -- argument typing, one test per parameter type ----------------------------


@pytest.mark.parametrize(
    "arg, op, const",
    [
        ('"API.Example.com."', HOST_EXACT, "api.example.com"),
        ('"*.example.com"', HOST_WILD, "*.example.com"),
        ('"**.example.com"', HOST_WILD, "**.example.com"),
        ('"10.0.0.0/8"', HOST_CIDR, "10.0.0.0/8"),
        ('"192.168.1.7"', HOST_CIDR, "192.168.1.7/32"),
        ('"2001:db8::/32"', HOST_CIDR, "2001:db8::/32"),
        ("*", ANY, None),
    ],
)
def test_host_arguments(arg, op, const):
    r = compile_source(module(f"    entitle module to network.outbound({arg});"), "t.pol").check()
    p = payload(r["m"])
    instr = p["code"][1]
    assert instr[0] == op
    if const is not None:
        assert p["consts"][instr[1]] == const


@pytest.mark.parametrize(
    "arg, fragment",
    [
        ('"a..b.com"', "empty label"),
        ('"a*.com"', "wildcard must be a whole label"),
        ('"10.0.0.1/8"', "invalid CIDR block"),
        ('"300.1.1.1"', "looks like an IP address"),
        ('"example.com:443"', "port goes in its own argument"),
        ("443", "wrong argument type"),
        ("1..2", "wrong argument type"),
    ],
)
def test_host_argument_errors(arg, fragment):
    e = one_error(f"    entitle module to network.outbound({arg});")
    assert fragment in e.message
    assert e.col == 5 + len("entitle module to network.outbound(")


@pytest.mark.parametrize(
    "arg, lo, hi", [("0", 0, 0), ("65535", 65535, 65535), ("8000..8999", 8000, 8999), ("80..80", 80, 80)]
)
def test_port_arguments(arg, lo, hi):
    r = compile_source(module(f"    entitle module to network.listen({arg});"), "t.pol").check()
    assert payload(r["m"])["code"][1] == [INT_RANGE, lo, hi]


@pytest.mark.parametrize(
    "arg, fragment",
    [
        ("65536", "port 65536 out of range (0..65535)"),
        ("-1", "port -1 out of range"),
        ("9000..80", "bad range 9000..80"),
        ("0..70000", "port 70000 out of range"),
        ('"80"', "wrong argument type: parameter 'port' of network.listen(port: port) is port"),
    ],
)
def test_port_argument_errors(arg, fragment):
    e = one_error(f"    entitle module to network.listen({arg});")
    assert fragment in e.message


def test_path_arguments():
    r = compile_source(module('    entitle module to fs.read("data", "./logs//**/*.log");'), "t.pol").check()
    p = payload(r["m"])
    assert p["code"][1:3] == [[STR_EXACT, 0], [PATH_GLOB, 1]]
    assert p["consts"] == ["data", "logs/**/*.log"]


@pytest.mark.parametrize(
    "arg, fragment",
    [('"/etc/passwd"', "drop the leading '/'"), ('"../x"', "'..' is not allowed"), ('"a**"', "'**' must be a whole"),
     ('""', "empty"), ("7", "wrong argument type")],
)
def test_path_argument_errors(arg, fragment):
    e = one_error(f'    entitle module to fs.read("data", {arg});')
    assert fragment in e.message


def test_string_arguments():
    r = compile_source(module('    entitle module to env.read("HOME");\n    entitle module to env.read("LC_?*");'), "t.pol")
    p = payload(r.check()["m"])
    assert p["code"][1] == [STR_EXACT, 0] and p["code"][3] == [STR_GLOB, 1]
    e = one_error("    entitle module to env.read(5..6);")
    assert "wrong argument type" in e.message and "got a range" in e.message
    e = one_error(r'    entitle module to env.read("a\q");')
    assert "unknown escape '\\q'" in e.message


def test_int_parameters_of_declared_capabilities():
    decl = "    capability queue.size(n: int);\n"
    r = compile_source(module(decl + "    entitle module to queue.size(-5..5);"), "t.pol").check()
    assert payload(r["m"])["code"][1] == [INT_RANGE, -5, 5]
    e = one_error(decl + f"    entitle module to queue.size({2**63});")
    assert "out of range" in e.message
    e = one_error(decl + "    entitle module to queue.size(5..1);")
    assert "bad range 5..1" in e.message
    e = one_error(decl + '    entitle module to queue.size("5");')
    assert "wrong argument type" in e.message


# -- modules, modes and declarations ------------------------------------------


def test_mode():
    r = compile_source(module("    mode audit;\n    deny module to process.exec;"), "t.pol").check()
    assert payload(r["m"])["mode"] == "audit"
    r = compile_source(module("    deny module to process.exec;"), "t.pol").check()
    assert payload(r["m"])["mode"] == "enforce"
    e = one_error("    mode enforcing;")
    assert e.message == "unknown mode 'enforcing'; did you mean 'enforce'?"
    assert "did you mean 'audit'?" in one_error("    mode dryrun;").message
    assert "mode set twice" in one_error("    mode audit;\n    mode enforce;").message


def test_duplicate_module_reported_in_both_places():
    r = compile_sources([("a.pol", module("", "tenant.x")), ("b.pol", module("", "tenant.x") + module("", "y"))])
    dups = [d for d in r.errors if "duplicate module 'tenant.x'" in d.message]
    assert {(d.file, d.line, d.col) for d in dups} == {("a.pol", 1, 17), ("b.pol", 1, 17)}
    assert "also defined at b.pol:1:17" in dups[0].message
    assert [name for name, _ in r.artifacts] == ["y"]


def test_redefining_a_builtin_is_an_error():
    e = one_error("    capability fs.read(root: string, path: path);")
    assert "'fs.read' is built in and cannot be redefined" in e.message


def test_declarations_are_tree_wide():
    gw = module("    capability tool.call(server: string, tool: string);", "gw")
    user = module('    entitle module to tool.call("github", "search_*");', "user")
    r = compile_sources([("gw.pol", gw), ("user.pol", user)]).check()
    p = payload(r["user"])
    assert p["caps"] == [["tool.call", [["server", "string"], ["tool", "string"]]]]
    assert p["code"][1:] == [[STR_EXACT, 0], [STR_GLOB, 1]]


def test_identical_redeclaration_is_fine_conflicting_is_an_error():
    decl = "    capability tool.call(server: string, tool: string);"
    r = compile_sources([("a.pol", module(decl, "a")), ("b.pol", module(decl, "b"))])
    assert r.ok
    r = compile_sources([("a.pol", module(decl, "a")), ("b.pol", module("    capability tool.call(server: string);", "b"))])
    (e,) = r.errors
    assert e.file == "b.pol" and "conflicting declaration of capability 'tool.call(server: string)'" in e.message
    assert "a.pol:2:16" in e.message
    assert e.notes and e.notes[0].severity == NOTE and e.notes[0].file == "a.pol"
    assert [n for n, _ in r.artifacts] == ["a"]


def test_bad_declarations():
    e = one_error("    capability t.x(a: strng);")
    assert e.message == "unknown type 'strng'; did you mean 'string'?"
    assert "did you mean 'int'?" in one_error("    capability t.x(a: integer);").message
    assert "duplicate parameter 'a'" in one_error("    capability t.x(a: int, a: int);").message
    assert "simple name" in one_error("    capability t.x(a.b: int);").message
    # a use of a broken declaration is not reported a second time
    assert len(diags_of("    capability t.x(a: strng);\n    entitle module to t.x(\"q\");")) == 1


def test_three_independent_mistakes_in_one_run():
    body = (
        "    entitle module to network.inbound(8080);\n"
        "    entitle module to network.outbound(\"api.example.com\", 70000);\n"
        "    mode enforcing;\n"
    )
    errs = diags_of(body)
    assert [(d.line, d.message.split(";")[0].split(" (")[0]) for d in errs] == [
        (2, "unknown capability 'network.inbound'"),
        (3, "port 70000 out of range"),
        (4, "unknown mode 'enforcing'"),
    ]


def test_syntax_and_semantic_errors_together():
    body = "    entitle module to fs.read(\"a\" \"b\");\n    entitle module to network.inbound;"
    errs = diags_of(body)
    assert len(errs) == 2
    assert "argument list" in errs[0].message and "unknown capability" in errs[1].message


# -- warnings ------------------------------------------------------------------


def test_duplicate_rule_warning():
    body = '    entitle module to fs.read("a");\n    entitle module to fs.read("a", *);'
    (w,) = diags_of(body, WARNING)
    assert (w.line, w.message) == (3, "duplicate rule: the same as line 2")
    r = compile_source(module(body), "t.pol")
    assert r.ok and r.artifacts  # a warning does not fail the module


@pytest.mark.parametrize(
    "entitle, deny",
    [
        ('network.outbound("a.com", 443)', "network.outbound"),
        ('network.outbound("a.com", 443)', 'network.outbound("a.com")'),
        ('network.outbound("a.com", 443)', 'network.outbound(*, 443)'),
        ("network.listen(8080)", "network.listen(8000..8999)"),
        ("network.listen(8100..8200)", "network.listen(8000..8999)"),
        ('fs.read("r", "a/b")', 'fs.read("r", "**")'),
        ('env.read("X")', 'env.read("*")'),
        ('network.outbound("*.a.com")', 'network.outbound("**")'),
    ],
)
def test_shadowed_entitle_warning(entitle, deny):
    body = f"    entitle module to {entitle};\n    deny module to {deny};"
    (w,) = diags_of(body, WARNING)
    assert w.line == 2 and "shadowed by the deny at line 3" in w.message
    assert w.notes[0].line == 3


@pytest.mark.parametrize(
    "entitle, deny",
    [
        ('network.outbound("a.com", 443)', 'network.outbound("b.com")'),
        ("network.outbound", 'network.outbound("a.com")'),
        ('network.outbound("x.a.com")', 'network.outbound("*.a.com")'),  # conservative
        ("network.listen(7000..8100)", "network.listen(8000..8999)"),
        ('network.outbound("10.0.0.1")', 'network.outbound("**")'),
        ('fs.read("r", "a")', 'fs.write("r", "a")'),
        ('env.read("X")', 'env.read("X?")'),
    ],
)
def test_not_shadowed(entitle, deny):
    body = f"    entitle module to {entitle};\n    deny module to {deny};"
    assert diags_of(body, WARNING) == []


def test_strict_turns_warnings_into_errors():
    body = '    entitle module to fs.read("a");\n    entitle module to fs.read("a");'
    r = compile_source(module(body), "t.pol", strict=True)
    assert not r.ok and r.artifacts == []
    assert r.errors[0].severity == ERROR and "duplicate rule" in r.errors[0].message


# -- the artifact ----------------------------------------------------------------


def test_payload_fields_and_constant_dedup():
    text = module(
        '    entitle module to fs.read("data", "x/**");\n'
        '    entitle module to fs.write("data", "x/**");\n'
        "    deny module to network.listen;"
    )
    r = compile_source(text, "dir/t.pol").check()
    art = read_artifact(r["m"], expected_module="m")
    assert art.module == "m" and art.mode == "enforce" and art.compiler == __version__
    assert art.source == "dir/t.pol"
    assert art.source_digest == hashlib.sha256(text.encode()).hexdigest()
    p = payload(r["m"])
    assert p["consts"] == ["data", "x/**"]
    assert [c[0] for c in p["caps"]] == ["fs.read", "fs.write", "network.listen"]
    assert list(p) == ["module", "mode", "compiler", "source", "source_digest", "caps", "consts", "code"]


def test_reproducible():
    text = module('    entitle module to network.outbound("*.a.com", 443);\n    deny module to process.exec;')
    a = compile_source(text, "t.pol").check()["m"]
    b = compile_source(text, "t.pol").check()["m"]
    assert a == b
    c = compile_source(text + "\n", "t.pol").check()["m"]
    assert c != a  # the source digest is recorded


def test_check_raises_compile_error_with_rendered_text():
    with pytest.raises(CompileError) as info:
        compile_source(module("    entitle module to nope;"), "t.pol").check()
    assert "t.pol:2:23: error: unknown capability 'nope'" in str(info.value)


def test_examples_compile_without_warnings(examples_dir):
    sources = [(str(p.relative_to(examples_dir.parent)), p.read_text()) for p in sorted(examples_dir.glob("*.pol")) if not p.name.endswith(".test.pol")]
    r = compile_sources(sources)
    assert r.diagnostics == [], r.render()
    names = {n for n, _ in r.artifacts}
    assert {"_global", "tenant.acme", "tenant.globex", "tenant.initech", "com.vendor.library"} <= names
    modes = {n: payload(d)["mode"] for n, d in r.artifacts}
    assert modes["tenant.initech"] == "audit"
    assert any("tool.call" in [c[0] for c in payload(d)["caps"]] for _, d in r.artifacts)


# -- property: whatever valid rules we write come back from the artifact ---------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_port = st.integers(0, 65535)
_ranges = st.tuples(_port, _port).map(lambda t: f"{min(t)}..{max(t)}")
_RULES = st.one_of(
    st.tuples(st.just("network.listen"), st.one_of(_port.map(str), _ranges, st.just("*"))),
    st.tuples(
        st.just("network.outbound"),
        st.sampled_from(['"a.com"', '"*.b.org"', '"10.0.0.0/8"', "*"]).flatmap(
            lambda h: st.one_of(_port, _ranges).map(lambda p: f"{h}, {p}")
        ),
    ),
    st.tuples(st.just("env.read"), st.sampled_from(['"HOME"', '"LC_*"', '"A?"', "*"])),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["entitle", "deny"]), _RULES), min_size=1, max_size=15))
def test_rules_round_trip_through_the_artifact(rules):
    body = "\n".join(f"    {eff} module to {cap}({args});" for eff, (cap, args) in rules)
    r = compile_source(module(body), "t.pol")
    assert r.ok, r.render()
    art = read_artifact(r["m"], expected_module="m")
    assert len(art.rules) == len(rules)
    p = payload(r["m"])
    rule_headers = [i for i in p["code"] if i[0] == RULE]
    assert [(h[3], h[4]) for h in rule_headers] == [(i + 2, 5) for i in range(len(rules))]
    assert [h[1] for h in rule_headers] == [ENTITLE if e == "entitle" else DENY for e, _ in rules]
    assert len(set(p["consts"])) == len(p["consts"])
