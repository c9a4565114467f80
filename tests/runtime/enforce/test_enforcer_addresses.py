"""IP literals in every spelling the C library accepts are matched as the address they
reach, or refused as malformed: a CIDR deny cannot be passed by writing the address
another way, and a rule written in IPv4-mapped form matches like its IPv4 form.

The oracle for "what the C library accepts" is the real ``socket.inet_aton`` and
``socket.getaddrinfo(..., AI_NUMERICHOST)`` of this machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from polc.runtime import patterns
from polc.runtime.catalog import BUILTINS
from polc.runtime.enforce import Snapshot, link, normalize
from polc.runtime.errors import MalformedPayload
from polc.runtime.format import encode, opcodes
from polc.runtime.format.reader import read_artifact
from polc.runtime.format.writer import pack_artifact
from polc.runtime.patterns import PatternError, compile_host, normalize_host

from support.agent import artifact_bytes, payload


def linked(module, rules):
    return link(read_artifact(artifact_bytes(module, rules), expected_module=module))


def deny_snapshot(block: str) -> Snapshot:
    """_global denies ``block``; module m may connect anywhere."""
    return Snapshot(
        {"m": linked("m", [("entitle", "network.outbound", ())])},
        linked("_global", [("deny", "network.outbound", (block,))]),
    )


def entitle_snapshot(block: str) -> Snapshot:
    return Snapshot({"m": linked("m", [("entitle", "network.outbound", (block,))])}, None)


# ---------------------------------------------------------------------------
# the oracle


def c_accepts(spelling: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses the C library reads ``spelling`` as (empty: it is not an address)."""
    out = []
    with contextlib.suppress(OSError, ValueError):
        out.append(ipaddress.IPv4Address(socket.inet_aton(spelling)))
    try:
        infos = socket.getaddrinfo(spelling, None, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        infos = []
    for info in infos:
        out.append(ipaddress.ip_address(info[4][0].partition("%")[0]))
    return out


def reaches(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> set:
    """The IPv4 address an IPv6 form denotes or embeds (what NAT64, mapping and
    compatibility forms reach), plus the address itself."""
    out = {addr}
    if addr.version == 6:
        n = int(addr)
        if addr.ipv4_mapped is not None or n >> 32 in (0, int(ipaddress.IPv6Address("64:ff9b::")) >> 32,
                                                        int(ipaddress.IPv6Address("::ffff:0:0:0")) >> 32):
            out.add(ipaddress.IPv4Address(n & 0xFFFFFFFF))
    return out


# ---------------------------------------------------------------------------
# spellings


@st.composite
def inet_aton_form(draw, n: int) -> str:
    """``n`` in one of inet_aton's forms: 1 to 4 parts, each decimal, octal or hex."""
    parts_count = draw(st.integers(1, 4))
    b = n.to_bytes(4, "big")
    parts = list(b[: parts_count - 1]) + [int.from_bytes(b[parts_count - 1 :], "big")]
    out = []
    for p in parts:
        base = draw(st.sampled_from(["dec", "dec", "oct", "hex", "HEX"]))
        zeros = "0" * draw(st.integers(0, 2))
        if base == "dec":
            out.append(str(p))  # a leading zero would make it octal
        elif base == "oct":
            out.append("0" + zeros + format(p, "o"))
        else:
            x = draw(st.sampled_from(["0x", "0X"]))
            digits = format(p, "x")
            out.append(x + zeros + (digits.upper() if base == "HEX" else digits))
    return ".".join(out)


def _hex_groups(n32: int) -> str:
    return f"{n32 >> 16:x}:{n32 & 0xFFFF:x}"


@st.composite
def ipv6_dressing(draw, text: str) -> str:
    """Case, a zone id and brackets around an IPv6 spelling."""
    if draw(st.booleans()):
        text = text.upper()
    if draw(st.integers(0, 3)) == 0:
        text += draw(st.sampled_from(["%lo", "%1", "%eth0"]))
    if draw(st.integers(0, 3)) == 0:
        text = f"[{text}]"
    return text


# Python's socket functions encode a str host with IDNA, which maps fullwidth
# characters and ideographic full stops to ASCII: these reach the address too.
FULLWIDTH = str.maketrans({c: chr(ord(c) + 0xFEE0) for c in "0123456789abcdefxABCDEFX"} | {".": "\u3002"})


@st.composite
def ipv4_spelling(draw, n: int) -> str:
    v4 = str(ipaddress.IPv4Address(n))
    kind = draw(st.sampled_from(["quad", "aton", "aton", "mapped", "mapped-hex", "mapped-full", "nat64",
                                 "nat64-hex", "compat", "translated", "fullwidth"]))
    if kind == "quad":
        return v4
    if kind == "aton":
        return draw(inet_aton_form(n))
    if kind == "fullwidth":
        return draw(st.one_of(st.just(v4), inet_aton_form(n))).translate(FULLWIDTH)
    text = {
        "mapped": f"::ffff:{v4}",
        "mapped-hex": f"::ffff:{_hex_groups(n)}",
        "mapped-full": f"0:0:0:0:0:ffff:{_hex_groups(n)}",
        "nat64": f"64:ff9b::{v4}",
        "nat64-hex": f"64:ff9b::{_hex_groups(n)}",
        "compat": f"::{v4}",
        "translated": f"::ffff:0:{v4}",
    }[kind]
    return draw(ipv6_dressing(text))


@st.composite
def ipv6_spelling(draw, addr: ipaddress.IPv6Address) -> str:
    text = draw(st.sampled_from([addr.compressed, addr.exploded, ":".join(f"{int(g, 16):x}" for g in addr.exploded.split(":"))]))
    return draw(ipv6_dressing(text))


def accepted(spelling: str) -> list:
    """What the C library reads (brackets are stripped first, as URL parsers do)."""
    inner = spelling[1:-1] if spelling.startswith("[") and spelling.endswith("]") else spelling
    return c_accepts(inner)


@st.composite
def v4_block(draw):
    prefix = draw(st.sampled_from([8, 12, 16, 24, 30, 32]))
    base = draw(st.sampled_from([0x7F000000, 0xA9FE0000, 0x0A000000, 0xC0A80000, 0xAC100000, 0x08080808]))
    net = ipaddress.IPv4Network((base, prefix), strict=False)
    return net


# ---------------------------------------------------------------------------
# the properties


@settings(max_examples=400, deadline=None)
@given(v4_block(), st.data())
def test_every_spelling_of_an_address_in_a_denied_ipv4_block_is_denied(net, data):
    mapped_rule = data.draw(st.booleans())
    block = f"::ffff:{net.network_address}/{96 + net.prefixlen}" if mapped_rule else str(net)
    s = deny_snapshot(block)
    n = data.draw(st.integers(int(net.network_address), int(net.broadcast_address)))
    spelling = data.draw(ipv4_spelling(n))
    resolved = accepted(spelling)
    assume(resolved)  # only what the C library accepts is an address
    target = ipaddress.IPv4Address(n)
    assert any(target in reaches(a) for a in resolved), (spelling, resolved)
    d = s.check("m", "network.outbound", spelling, 80)
    assert not d.allowed, (block, spelling, d)
    assert d.reason == "denied by _global" or d.reason.startswith("invalid argument 'host'"), d


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["2001:db8::/32", "fe80::/10", "::1/128", "fc00::/7", "64:ff9b::/96"]), st.data())
def test_every_spelling_of_an_address_in_a_denied_ipv6_block_is_denied(block, data):
    net = ipaddress.IPv6Network(block)
    s = deny_snapshot(block)
    addr = ipaddress.IPv6Address(data.draw(st.integers(int(net.network_address), int(net.broadcast_address))))
    assume(addr.ipv4_mapped is None)
    spelling = data.draw(ipv6_spelling(addr))
    assume(accepted(spelling))
    d = s.check("m", "network.outbound", spelling, 443)
    assert not d.allowed, (block, spelling, d)


@settings(max_examples=300, deadline=None)
@given(v4_block(), st.data())
def test_an_entitled_block_matches_its_addresses_in_either_form_and_never_more(net, data):
    """Entitles are consistent with the IPv4 form: the dotted quad and the IPv4-mapped
    spellings are allowed alike, whichever form the rule is written in; legacy
    inet_aton spellings are refused as malformed, never allowed by accident."""
    block = f"::ffff:{net.network_address}/{96 + net.prefixlen}" if data.draw(st.booleans()) else str(net)
    s = entitle_snapshot(block)
    n = data.draw(st.integers(int(net.network_address), int(net.broadcast_address)))
    v4 = str(ipaddress.IPv4Address(n))
    for spelling in (v4, f"::ffff:{v4}", f"[::ffff:{_hex_groups(n)}]", f"::FFFF:{v4}%lo"):
        assert s.check("m", "network.outbound", spelling, 80).allowed, (block, spelling)
    legacy = data.draw(inet_aton_form(n))
    assume(legacy != v4)
    d = s.check("m", "network.outbound", legacy, 80)
    assert not d.allowed and d.reason.startswith("invalid argument 'host'"), (legacy, d)
    outside = (int(net.broadcast_address) + 1) % 2**32
    assume(ipaddress.IPv4Address(outside) not in net and outside not in (0,))
    o = str(ipaddress.IPv4Address(outside))
    for spelling in (o, f"::ffff:{o}"):
        assert not s.check("m", "network.outbound", spelling, 80).allowed, (block, spelling)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789abcdefxX.:[]%lo", max_size=24))
def test_fast_host_path_equals_patterns_for_address_like_text(value):
    normalize.HOST_MEMO.clear()
    normalize.HOST_BAD.clear()
    try:
        expected = patterns.normalize_host(value)
    except ValueError:
        with pytest.raises(ValueError):
            normalize.norm_host(value)
        return
    assert normalize.norm_host(value) == expected
    assert normalize.norm_host(value) == expected  # memoised


# ---------------------------------------------------------------------------
# the cases of the report, one by one


@pytest.mark.parametrize(
    "spelling",
    [
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "::ffff:a9fe:a9fe",
        "[::ffff:169.254.169.254]",
        "::ffff:169.254.169.254%eth0",
        "0:0:0:0:0:ffff:a9fe:a9fe",
        "64:ff9b::169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "::169.254.169.254",
        "::ffff:0:169.254.169.254",
        "0xa9fea9fe",
        "0xA9FEA9FE",
        "0xa9.0xfe.0xa9.0xfe",
        "2852039166",
        "169.254.43518",
        "169.16689662",
        "0251.0376.0251.0376",
        "0251.0376.0251.0376.",
        "169.254.169.254.",
    ],
)
def test_metadata_address_spellings_are_all_denied(spelling):
    s = deny_snapshot("169.254.0.0/16")
    assert not s.check("m", "network.outbound", spelling, 80).allowed
    assert s.check("m", "network.outbound", "api.example.com", 80).allowed


def test_loopback_spellings_are_denied_like_127_0_0_1():
    s = deny_snapshot("127.0.0.0/8")
    for spelling in ["127.0.0.1", "127.1", "0x7f000001", "2130706433", "017700000001", "::ffff:127.0.0.1",
                     "[::ffff:7f00:1]", "0.0.0.0", "::ffff:0.0.0.0", "0", "0x0",
                     "\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127\u30020\u30020\u30021"]:
        d = s.check("m", "network.outbound", spelling, 80)
        assert not d.allowed, (spelling, d)
    assert s.check("m", "network.outbound", "128.0.0.1", 80).allowed
    # ``::`` reaches the IPv6 loopback, which a rule for ::1 covers
    s6 = deny_snapshot("::1/128")
    for spelling in ["::1", "[::1]", "0:0:0:0:0:0:0:1", "::", "[::]", "::1%lo"]:
        assert not s6.check("m", "network.outbound", spelling, 80).allowed, spelling


def test_requests_normalise_to_the_address_they_reach():
    HostAddresses = patterns.HostAddresses
    v4 = ipaddress.IPv4Address
    v6 = ipaddress.IPv6Address
    assert normalize_host("::ffff:10.1.2.3") == v4("10.1.2.3")
    assert normalize_host("[::FFFF:a01:203]") == v4("10.1.2.3")
    assert normalize_host("fe80::1%eth0") == v6("fe80::1")
    assert normalize_host("[fe80::1%1]") == v6("fe80::1")
    assert normalize_host("64:ff9b::10.1.2.3") == HostAddresses((v6("64:ff9b::a01:203"), v4("10.1.2.3")))
    assert normalize_host("::10.1.2.3") == HostAddresses((v6("::a01:203"), v4("10.1.2.3")))
    assert normalize_host("0.0.0.0") == HostAddresses((v4("0.0.0.0"), v4("127.0.0.1")))
    assert normalize_host("::1") == v6("::1")
    for bad in ["0x7f000001", "127.1", "0177.0.0.1", "2130706433", "1.2.3.4 foo", "[1.2.3.4]", "::1%", "x" * 10_000]:
        with pytest.raises(ValueError):
            normalize_host(bad)
    # a name that merely starts with digits or hex is still a name
    assert normalize_host("0x1.example.com") == "0x1.example.com"
    assert normalize_host("1password.com") == "1password.com"


def test_rules_written_in_mapped_form_match_like_the_ipv4_form():
    assert compile_host("::ffff:10.0.0.0/104") == (opcodes.HOST_CIDR, "::ffff:a00:0/104")
    assert patterns.cidr_network("::ffff:a00:0/104") == ipaddress.ip_network("10.0.0.0/8")
    assert patterns.cidr_network("::ffff:1.2.3.4/128") == ipaddress.ip_network("1.2.3.4/32")
    assert patterns.cidr_network("::/0") == ipaddress.ip_network("::/0")  # wider blocks stay IPv6
    for rule in ["::ffff:1.2.3.4", "1.2.3.4"]:
        s = entitle_snapshot(rule)
        for spelling in ["1.2.3.4", "::ffff:1.2.3.4", "::ffff:102:304"]:
            assert s.check("m", "network.outbound", spelling, 1).allowed, (rule, spelling)
        assert not s.check("m", "network.outbound", "1.2.3.5", 1).allowed
    # a wider IPv6 block says nothing about IPv4 destinations, in either spelling
    s = deny_snapshot("::/0")
    assert s.check("m", "network.outbound", "1.2.3.4", 1).allowed
    assert s.check("m", "network.outbound", "::ffff:1.2.3.4", 1).allowed
    assert not s.check("m", "network.outbound", "2001:db8::1", 1).allowed


@pytest.mark.parametrize(
    "text, words",
    [
        ("0x7f000001", "looks like an IP address"),
        ("0x7f.1", "looks like an IP address"),
        ("127.1", "looks like an IP address"),
        ("fe80::1%eth0", "zone id"),
        ("fe80::%eth0/64", "zone id"),
    ],
)
def test_address_like_rule_patterns_are_refused(text, words):
    with pytest.raises(PatternError, match=words):
        compile_host(text)


def test_the_verifier_refuses_a_host_constant_the_compiler_refuses():
    """An artifact written by hand (or by an older polc) with a legacy address
    spelling as a DNS name, or an IPv4-shaped wildcard, is refused."""
    for op, const in [(opcodes.HOST_EXACT, "0x7f000001"), (opcodes.HOST_WILD, "192.168.*.*"), (opcodes.HOST_EXACT, "0xa9.0xfe.0xa9.0xfe")]:
        p = payload("m", [])
        caps, consts, code = encode.assemble([(opcodes.DENY, BUILTINS["network.outbound"], 2, 5, [(op, const), (opcodes.ANY,)])])
        p.update(caps=caps, consts=consts, code=code)
        with pytest.raises(MalformedPayload):
            read_artifact(pack_artifact(p, verify=False), expected_module="m")


def test_loopback_deny_holds_against_a_real_connect(tmp_path):
    """What getaddrinfo turns these spellings into really reaches a listener on
    127.0.0.1; the deny of 127.0.0.0/8 stops every one of them."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    s = deny_snapshot("127.0.0.0/8")
    reached = []
    try:
        for spelling in ["127.0.0.1", "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "0x7f.1"]:
            assert not s.check("m", "network.outbound", spelling, port).allowed, spelling
            c = socket.create_connection((spelling, port), timeout=5)
            conn, _ = srv.accept()
            reached.append(spelling)
            conn.close()
            c.close()
    finally:
        srv.close()
    assert len(reached) == 6  # every spelling is a real route to the denied block
