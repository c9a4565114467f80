"""Patterns that never match what their author meant are diagnosed by the compiler:
empty patterns and IPv4-shaped DNS wildcards are errors, a quoted "*" host warns;
command patterns are normalised or refused."""

from __future__ import annotations

import msgpack
import pytest

from polc.compiler import compile_source
from polc.compiler.diagnostics import ERROR, WARNING
from polc.runtime.format.header import HEADER_SIZE


def module(body: str) -> str:
    return f"security module m {{\n{body}\n}}\n"


def diags(body: str, severity: str):
    r = compile_source(module(body), "t.pol")
    return [d for d in r.diagnostics if d.severity == severity]


@pytest.mark.parametrize(
    "rule",
    ['env.read("")', 'fs.read("", "**")', 'fs.write("r", "")', 'process.exec("")', 'network.outbound("")',
     'network.outbound("", 443)'],
)
def test_empty_patterns_are_errors(rule):
    (e,) = diags(f"    entitle module to {rule};", ERROR)
    assert "empty" in e.message
    (e,) = diags(f"    deny module to {rule};", ERROR)
    assert "empty" in e.message


def test_declared_string_parameters_refuse_empty_patterns_too():
    (e,) = diags('    capability tool.call(server: string, tool: string);\n    entitle module to tool.call("a", "");', ERROR)
    assert "empty" in e.message and e.line == 3


@pytest.mark.parametrize(
    "host, block",
    [
        ("192.168.*.*", "192.168.0.0/16"),
        ("10.*.*.*", "10.0.0.0/8"),
        ("10.**", "10.0.0.0/8"),
        ("172.16.5.*", "172.16.5.0/24"),
        ("192.168.**", "192.168.0.0/16"),
        ("10.*", "10.0.0.0/8"),
    ],
)
def test_ipv4_shaped_wildcards_are_errors_that_name_the_cidr_block(host, block):
    (e,) = diags(f'    deny module to network.outbound("{host}");', ERROR)
    assert "never IP addresses" in e.message and f"'{block}'" in e.message, e.message


@pytest.mark.parametrize("host", ["10.*.1.*", "300.*.*.*", "*.1.2.3", "*.0x7f"])
def test_other_address_shaped_wildcards_are_errors(host):
    (e,) = diags(f'    deny module to network.outbound("{host}");', ERROR)
    assert "IP address" in e.message, e.message


def test_dns_wildcards_that_start_with_digits_are_still_fine():
    assert diags('    entitle module to network.outbound("*.1password.com", 443);', ERROR) == []
    assert diags('    entitle module to network.outbound("**.365.example", 443);', ERROR) == []


def test_a_quoted_star_host_warns_and_suggests_the_bare_star():
    r = compile_source(module('    entitle module to network.outbound("*", 443);'), "t.pol")
    (w,) = [d for d in r.diagnostics if d.severity == WARNING]
    assert "exactly one DNS label" in w.message and "without quotes" in w.message
    assert (w.line, w.col) == (2, 40)
    assert r.ok and r.artifacts  # a warning, not an error
    for body in ["    entitle module to network.outbound(*, 443);", '    entitle module to network.outbound("*.a.com");',
                 '    entitle module to network.outbound("**", 443);']:
        assert diags(body, WARNING) == [], body


def test_command_patterns_are_normalised_and_relative_paths_refused():
    r = compile_source(module('    deny module to process.exec("/usr/bin/../../bin//./sh");\n'
                              '    deny module to process.exec("sh");\n'
                              '    deny module to process.exec("/usr/local/bin/*");'), "t.pol").check()
    p = msgpack.unpackb(r["m"][HEADER_SIZE:], raw=False)
    assert p["consts"] == ["/bin/sh", "sh", "/usr/local/bin/*"]
    assert p["caps"] == [["process.exec", [["command", "command"]]]]
    for bad, words in [('"bin/sh"', "must be absolute"), ('"./run.sh"', "must be absolute"), ('"*/sh"', "must be absolute"),
                       ('".."', "not a program"), ("443", "wrong argument type")]:
        (e,) = diags(f"    deny module to process.exec({bad});", ERROR)
        assert words in e.message, (bad, e.message)


def test_declared_capabilities_may_use_the_command_type():
    r = compile_source(module("    capability job.run(program: command);\n"
                              '    entitle module to job.run("/opt/jobs/*");'), "t.pol")
    assert r.ok, r.render()
    (e,) = diags("    capability job.run(program: command);\n"
                 '    entitle module to job.run("jobs/x");', ERROR)
    assert "must be absolute" in e.message
