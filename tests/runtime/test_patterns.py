"""Pattern syntax and matching: the one definition shared by compiler, verifier and enforcer."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polc.runtime.format import opcodes
from polc.runtime.patterns import (
    PatternError,
    check_range,
    compile_host,
    compile_path,
    compile_string,
    host_wild_matcher,
    normalize_host,
    normalize_path,
    path_matcher,
    string_matcher,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("api.acme.com", (opcodes.HOST_EXACT, "api.acme.com")),
        ("API.Acme.COM.", (opcodes.HOST_EXACT, "api.acme.com")),
        ("*.acme.com", (opcodes.HOST_WILD, "*.acme.com")),
        ("**.acme.com", (opcodes.HOST_WILD, "**.acme.com")),
        ("api.*.acme.com", (opcodes.HOST_WILD, "api.*.acme.com")),
        ("10.0.0.0/8", (opcodes.HOST_CIDR, "10.0.0.0/8")),
        ("10.1.2.3", (opcodes.HOST_CIDR, "10.1.2.3/32")),
        ("::1", (opcodes.HOST_CIDR, "::1/128")),
        ("2001:DB8::/32", (opcodes.HOST_CIDR, "2001:db8::/32")),
    ],
)
def test_host_patterns_normalise(text, expected):
    assert compile_host(text) == expected
    # A normalised constant compiles to itself: what the verifier relies on.
    assert compile_host(expected[1]) == expected


@pytest.mark.parametrize(
    "text, words",
    [
        ("a*.acme.com", "whole label"),
        ("10.0.0.1/8", "host bits set"),
        ("10.0.0.0/33", "CIDR"),
        ("api.acme.com:443", "port goes in its own argument"),
        ("1.2.3", "looks like an IP address"),
        ("a..b", "empty label"),
        ("", "empty"),
        ("-bad.com", "bad label"),
        ("x" * 64 + ".com", "longer than 63"),
        ("a." * 127 + "com", "longer than 253"),
    ],
)
def test_bad_host_patterns_are_refused_with_words(text, words):
    with pytest.raises(PatternError, match=words):
        compile_host(text)


def test_single_label_wildcard_does_not_cross_dots():
    one = host_wild_matcher("*.acme.com")
    assert one("api.acme.com")
    assert not one("a.b.acme.com")  # fnmatch would say yes here
    assert not one("acme.com")
    assert not one("evilacme.com")
    many = host_wild_matcher("**.acme.com")
    assert many("api.acme.com") and many("a.b.acme.com")
    assert not many("acme.com") and not many("evil-acme.com")
    middle = host_wild_matcher("api.*.acme.com")
    assert middle("api.eu.acme.com") and not middle("api.acme.com")


def test_request_hosts_normalise():
    assert normalize_host("API.Acme.com.") == "api.acme.com"
    assert normalize_host("10.1.2.3") == ipaddress.ip_address("10.1.2.3")
    assert normalize_host("[::1]") == ipaddress.ip_address("::1")
    for bad in ("bad host", "1.2.3.400", "", 443, None, b"acme.com", "a..b"):
        with pytest.raises(ValueError):
            normalize_host(bad)


@pytest.mark.parametrize(
    "pattern, yes, no",
    [
        ("**", ["", "a", "a/b/c"], []),
        ("a/**", ["a", "a/b", "a/b/c"], ["b", "ab"]),
        ("**/b", ["b", "x/b", "x/y/b"], ["bb", "b/x"]),
        ("a/**/b", ["a/b", "a/x/b", "a/x/y/b"], ["ab", "a/x/c"]),
        ("*.txt", ["x.txt", ".txt"], ["d/x.txt", "x.txt2"]),
        ("a/*", ["a/x"], ["a", "a/x/y"]),
        ("a/?.log", ["a/1.log"], ["a/12.log", "a/.log"]),
        ("a+b/[x]", ["a+b/[x]"], ["aab/x"]),
    ],
)
def test_path_globs(pattern, yes, no):
    match = path_matcher(compile_path(pattern))
    for p in yes:
        assert match(p), p
    for p in no:
        assert not match(p), p


@pytest.mark.parametrize(
    "text, words",
    [("/etc/**", "relative to the root"), ("a/../b", "'..'"), ("a/**x", "whole path segment"),
     ("", "empty"), ("a\0b", "NUL")],
)
def test_bad_path_patterns(text, words):
    with pytest.raises(PatternError, match=words):
        compile_path(text)


def test_path_patterns_normalise_to_a_fixed_point():
    assert compile_path("./a//b/") == "a/b"
    assert compile_path("a/**/**") == "a/**"
    assert compile_path("a/b") == compile_path(compile_path("a/b"))


def test_request_paths_normalise_and_escapes_are_refused():
    assert normalize_path("a/./b/../c") == "a/c"
    assert normalize_path("") == ""
    for bad in ("../x", "a/../../x", "/etc/passwd", "a\0", 7):
        with pytest.raises(ValueError):
            normalize_path(bad)


@given(st.lists(st.sampled_from(["a", "b", "..", ".", ""]), max_size=8))
def test_normalised_paths_never_climb(segments):
    raw = "/".join(segments)
    try:
        norm = normalize_path(raw)
    except ValueError:
        return
    assert ".." not in norm.split("/")
    assert not norm.startswith("/")


def test_strings():
    assert compile_string("ls") == (opcodes.STR_EXACT, "ls")
    assert compile_string("git*") == (opcodes.STR_GLOB, "git*")
    m = string_matcher("g?t *")
    assert m("git log") and m("gut --x") and not m("gt log") and not m("git")
    # '.' and other regex characters are literal.
    assert string_matcher("a.b*")("a.bc") and not string_matcher("a.b*")("axb")


def test_ranges():
    check_range("port", 0, 65535)
    check_range("int", -(2**63), 2**63 - 1)
    with pytest.raises(PatternError, match="lower bound is greater"):
        check_range("port", 9000, 80)
    with pytest.raises(PatternError, match="out of range"):
        check_range("port", 0, 65536)
    with pytest.raises(PatternError, match="out of range"):
        check_range("int", 0, 2**63)
    with pytest.raises(PatternError, match="integers"):
        check_range("port", True, 5)
    with pytest.raises(PatternError, match="not valid for a string"):
        check_range("string", 1, 2)
