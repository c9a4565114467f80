"""The payload's ``governs`` field (format 1.2): written only when present, verified, bounded, read both ways."""

from __future__ import annotations

import hashlib
import struct

import msgpack
import pytest

from polc.runtime.enforce import Snapshot, link
from polc.runtime.errors import MalformedPayload
from polc.runtime.format import opcodes
from polc.runtime.format import payload as af
from polc.runtime.format.header import FORMAT_MINOR, HEADER_SIZE, MAGIC, build_header
from polc.runtime.format.payload import pack_payload, read_fields
from polc.runtime.format.reader import read_artifact
from polc.runtime.format.writer import format_minor, pack_artifact

from support.artifacts import ACME_RULES, make_payload

HDR = struct.Struct(">8sHHIII32s")


def raw_artifact(payload: dict, minor: int) -> bytes:
    """An artifact of ``payload`` (packed as given, unverified) with a valid header of format 1.``minor``."""
    body = msgpack.packb(payload, use_bin_type=True)
    digest = hashlib.sha256(MAGIC + struct.pack(">HH", 1, minor) + body).digest()
    return HDR.pack(MAGIC, 1, minor, 0, len(body), 0, digest) + body


def with_governs(names, module: str = "com.vendor.library") -> dict:
    p = make_payload(module, ACME_RULES)
    p["governs"] = names
    return p


@pytest.fixture(params=["whole", "windowed"])
def way(request, monkeypatch):
    if request.param == "windowed":
        monkeypatch.setattr(af, "_WHOLE_MAX", -1)
        monkeypatch.setattr(af, "_WINDOW", 64)
    return request.param


def test_without_governs_the_payload_and_header_are_format_1_1():
    p = make_payload("tenant.acme", ACME_RULES)
    assert "governs" not in p and format_minor(p) == 1
    data = pack_artifact(p)
    assert struct.unpack_from(">HH", data, 8) == (1, 1)
    assert list(msgpack.unpackb(data[HEADER_SIZE:])) == list(opcodes.PAYLOAD_KEYS)
    assert read_artifact(data).governs == ()


def test_with_governs_it_is_format_1_2_written_last_sorted(way):
    from polc.runtime.format import encode

    p = encode.build_payload(
        module="com.vendor.library", mode="enforce", compiler="t", source="s.pol", source_digest="0" * 64,
        rules=[], governs=["vendorlib_ext", "vendorlib", "vendorlib_ext"],
    )
    assert p["governs"] == ["vendorlib", "vendorlib_ext"] and format_minor(p) == 2 == FORMAT_MINOR
    data = pack_artifact(p)
    assert struct.unpack_from(">HH", data, 8) == (1, 2)
    assert list(msgpack.unpackb(data[HEADER_SIZE:])) == [*opcodes.PAYLOAD_KEYS, "governs"]
    art = read_artifact(data, expected_module="com.vendor.library")
    assert art.governs == ("vendorlib", "vendorlib_ext")
    assert read_fields(data[HEADER_SIZE:], ["governs"]) == {"governs": ("vendorlib", "vendorlib_ext")}
    # and the linker and snapshot take it from there
    m = link(art)
    assert m.governs == ("vendorlib", "vendorlib_ext")
    s = Snapshot({m.name: m})
    assert s.governor("vendorlib.http") == "com.vendor.library"
    assert s.governor("vendorlib_ext") == "com.vendor.library"
    assert s.governor("com.vendor.library.x") == "com.vendor.library"
    assert s.governor("vendorlibx") is None


def test_encode_without_governs_is_byte_identical_to_before():
    from polc.runtime.format import encode

    kw = dict(module="m", mode="enforce", compiler="t", source="s.pol", source_digest="0" * 64, rules=[])
    assert pack_artifact(encode.build_payload(**kw)) == pack_artifact(encode.build_payload(**kw, governs=()))


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([], "governs: an empty array (a module that binds no package name has no such key)"),
        (["b", "a"], "governs[1]: 'a' after 'b'; the names are sorted, each once"),
        (["a", "a"], "governs[1]: 'a' after 'a'; the names are sorted, each once"),
        (["1x"], "governs[0]: invalid package name '1x': not a dotted Python name"),
        (["a..b"], "governs[0]: invalid package name 'a..b': not a dotted Python name"),
        (["a-b"], "governs[0]: invalid package name 'a-b': not a dotted Python name"),
        (["vendorlib."], "governs[0]: invalid package name 'vendorlib.': not a dotted Python name"),
        ([""], "governs[0]: invalid package name '': an empty name"),
        (["caf\u00e9"], "governs[0]: invalid package name 'caf\u00e9': not a dotted Python name"),
        (["vendor.class"], "governs[0]: invalid package name 'vendor.class': 'class' is a Python keyword"),
        (["x" * 256], "governs[0]: invalid package name '" + "x" * 100 + "': 256 characters, more than 255"),
        (["a", 1], "governs[1]: expected str, got int"),
        ("vendorlib", "governs: expected array, got str"),
        ({"a": 1}, "governs: expected array, got map"),
        (["com.vendor.library"], "governs: 'com.vendor.library' is the module's own name, which it governs already"),
        (["a"] * 0 + [f"p{i:04d}" for i in range(1025)], "governs: 1,025 names, more than the 1,024"),
        (["x" * 70000], "governs[0]: a string of 70,000 bytes, more than the 65,536 a payload string may have"),
    ],
)
def test_malformed_governs_is_refused_with_the_reason(names, message, way):
    with pytest.raises(MalformedPayload) as info:
        read_artifact(raw_artifact(with_governs(names), 2))
    assert message in str(info.value)


def test_global_binds_no_package(way):
    with pytest.raises(MalformedPayload, match="governs: _global applies to every governed package"):
        read_artifact(raw_artifact(with_governs(["vendorlib"], "_global"), 2))


@pytest.mark.parametrize("minor", [0, 1])
def test_governs_in_an_artifact_claiming_an_older_minor_is_refused(minor, way):
    with pytest.raises(MalformedPayload, match=rf"governs: a field of format 1\.2, in an artifact that says it is "
                                                rf"format 1\.{minor}, which has no such field"):
        read_artifact(raw_artifact(with_governs(["vendorlib"]), minor))


def test_a_newer_minor_still_verifies_governs(way):
    # 1.3 may add keys this reader skips, but governs it knows, and checks
    p = with_governs(["vendorlib"])
    p["from_the_future"] = [1, 2, 3]
    assert read_artifact(raw_artifact(p, 3)).governs == ("vendorlib",)
    p["governs"] = ["not a name"]
    with pytest.raises(MalformedPayload, match="governs.0.: invalid package name"):
        read_artifact(raw_artifact(p, 3))


def test_old_artifacts_without_the_field_still_load(way):
    for minor in (0, 1, 2):
        art = read_artifact(raw_artifact(make_payload("tenant.acme", ACME_RULES), minor))
        assert art.governs == () and art.header.minor == minor


def test_many_names_across_windows_keep_order_checks(monkeypatch):
    monkeypatch.setattr(af, "_WHOLE_MAX", -1)
    monkeypatch.setattr(af, "_WINDOW", 64)
    names = [f"pkg{i:04d}.sub" for i in range(1024)]
    art = read_artifact(pack_artifact(with_governs(names)))
    assert art.governs == tuple(names)
    names[700], names[701] = names[701], names[700]  # out of order where two windows meet, or inside one
    with pytest.raises(MalformedPayload, match=r"governs\[701\]: 'pkg0700.sub' after 'pkg0701.sub'"):
        read_artifact(raw_artifact(with_governs(names), 2))


def test_writer_refuses_a_minor_it_does_not_know():
    from polc.runtime.errors import BadHeader

    body = pack_payload(make_payload())
    with pytest.raises(BadHeader, match="format minor 3 is not one this polc writes"):
        build_header(body, minor=FORMAT_MINOR + 1)
