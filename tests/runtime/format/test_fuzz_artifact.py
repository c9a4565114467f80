"""Exhaustive and fuzzed damage to real artifacts: the reader rejects it with its own errors.

Truncation at every byte offset, every single-bit
flip, arbitrary bytes, well-formed headers around random msgpack, and payloads
mutated from a real one. Any input gives an ArtifactError (or, for a mutated
payload that is still valid, an artifact the reference verifier agrees with),
never another exception, a hang, or unbounded memory.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from polc.runtime import errors
from polc.runtime.errors import (
    ArtifactError,
    BadHeader,
    BadMagic,
    DigestMismatch,
    MalformedPayload,
    PayloadTooLarge,
    TrailingData,
    Truncated,
    UnsupportedVersion,
)
from polc.runtime.format import arguments, encode, opcodes, verify
from polc.runtime.format.header import FLAG_SIGNED, HEADER_SIZE, MAGIC
from polc.runtime.format.reader import Artifact, read_artifact, read_artifact_file
from polc.runtime.format.writer import pack_artifact
from polc.runtime.patterns import PatternError, compile_host

from support.artifacts import ACME_RULES, RICH_RULES, big_rules, compiled_artifacts, make_payload
from support.memory import peak_of

HDR = struct.Struct(">8sHHIII32s")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class HashTrust:
    """A stand-in for runtime/signing/trust.py: the trailer is sha256(header + payload)."""

    def verify(self, header, signed_bytes, trailer, module):
        if header.signed and hashlib.sha256(signed_bytes).digest() != trailer:
            raise BadSignature("signature does not verify")


class BadSignature(ArtifactError):
    reason = "bad signature"


def _signed(payload: dict) -> bytes:
    placeholder = pack_artifact(payload, flags=FLAG_SIGNED, trailer=b"\0" * 32)
    signed = placeholder[:-32]
    return signed + hashlib.sha256(signed).digest()


def _real_artifacts(tmp_path_factory) -> dict[str, bytes]:
    arts = {
        "acme": pack_artifact(make_payload("tenant.acme", ACME_RULES)),
        "rich": pack_artifact(make_payload("tenant.acme", RICH_RULES, mode="audit")),
        "signed": _signed(make_payload("tenant.acme", ACME_RULES)),
    }
    for path in compiled_artifacts(tmp_path_factory.mktemp("compiled")):
        arts[f"compiled:{path.name}"] = path.read_bytes()
    return arts


@pytest.fixture(scope="module")
def real_artifacts(tmp_path_factory):
    arts = _real_artifacts(tmp_path_factory)
    assert any(name.startswith("compiled:") for name in arts), "polc compile policies-src/ produced nothing"
    return arts


def read(data: bytes, trust=None) -> Artifact:
    """read_artifact, asserting that only the reader's own errors escape it."""
    try:
        return read_artifact(data, trust=trust)
    except ArtifactError as exc:
        assert "internal verifier error" not in str(exc), str(exc)
        raise
    except Exception as exc:  # pragma: no cover - the bug this file looks for
        pytest.fail(f"read_artifact raised {type(exc).__name__}: {exc!r}")


# ---------------------------------------------------------------------------
# exhaustive damage


def test_truncation_at_every_offset(real_artifacts):
    for data in real_artifacts.values():
        read(data, trust=HashTrust())
        for n in range(len(data)):
            with pytest.raises(Truncated):
                read(data[:n])


def test_truncated_files_at_every_offset(real_artifacts, tmp_path):
    data = real_artifacts["acme"]
    path = tmp_path / "tenant.acme.bin"
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(Truncated):
            read_artifact_file(path)


def _expected_for_flip(data: bytes, byte: int, signed: bool):
    if byte < 8:
        return BadMagic
    if byte < 10:
        return UnsupportedVersion
    if byte < 12:
        return DigestMismatch  # any minor is readable; the digest covers it
    if byte < 16:
        return BadHeader
    if byte < 20:
        return (PayloadTooLarge, Truncated, TrailingData)
    if byte < 24:
        return (BadHeader, Truncated, TrailingData) if signed else BadHeader
    if byte < HEADER_SIZE + struct.unpack_from(">I", data, 16)[0]:
        return DigestMismatch
    return BadSignature  # the trailer


def test_every_bit_flip(real_artifacts):
    """Every single-bit flip is rejected by the check that guards that byte.

    Readers accept any minor of their major (docs/artifact-format.md,
    compatibility), so the minor version is guarded by the digest.
    """
    for name, data in real_artifacts.items():
        signed = name == "signed"
        read(data, trust=HashTrust())  # the undamaged artifact reads
        for byte in range(len(data)):
            expected = _expected_for_flip(data, byte, signed)
            for bit in range(8):
                damaged = bytearray(data)
                damaged[byte] ^= 1 << bit
                damaged = bytes(damaged)
                with pytest.raises(expected):
                    read(damaged, trust=HashTrust())


# ---------------------------------------------------------------------------
# fuzzing


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data):
    with pytest.raises(ArtifactError):
        read(data)


@FUZZ
@given(
    st.integers(0, 3),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 3]),
    st.integers(0, 2**32 - 1) | st.integers(0, 64),
    st.integers(0, 2**32 - 1) | st.integers(0, 64),
    st.binary(max_size=32),
    st.binary(max_size=400),
)
def test_arbitrary_headers(major, minor, flags, plen, tlen, digest, rest):
    data = HDR.pack(MAGIC, major, minor, flags, plen, tlen, digest.ljust(32, b"\0")) + rest
    with pytest.raises(ArtifactError):
        read(data)


def _header_for(body: bytes, *, trailer: bytes = b"") -> bytes:
    flags = FLAG_SIGNED if trailer else 0
    return HDR.pack(MAGIC, 1, 0, flags, len(body), len(trailer), hashlib.sha256(MAGIC + b"\x00\x01\x00\x00" + body).digest()) + body + trailer


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from(list(opcodes.OPCODE_NAMES) + ["enforce", "audit", "host", "port", "network.outbound"]),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10) | st.sampled_from(opcodes.PAYLOAD_KEYS), children, max_size=9),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgpack_values)
def test_well_formed_header_random_msgpack(value):
    body = msgpack.packb(value, use_bin_type=True)
    with contextlib.suppress(ArtifactError):
        read(_header_for(body))


small_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 300) | st.text(max_size=8) | st.binary(max_size=4),
    lambda children: st.lists(children, max_size=4),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_well_formed_header_random_payload_map(data):
    """Random values under exactly the right keys get past the key check."""
    payload = {k: data.draw(small_values, label=k) for k in opcodes.PAYLOAD_KEYS}
    body = msgpack.packb(payload, use_bin_type=True)
    with pytest.raises(MalformedPayload):
        read(_header_for(body))


# Mutations of a real payload that keep it *almost* valid.

_BASE = make_payload("tenant.acme", RICH_RULES)
_NEAR = st.one_of(
    st.sampled_from(list(opcodes.OPCODE_NAMES) + [0, 2, 0x14, 0x55, -1, 2**63, 2**64 - 1, 65535, 65536, 10, 11]),
    st.integers(-3, 20),
    st.sampled_from([True, False, None, 1.0, "", "*", "**", "*.", "a..b", "10.0.0.0/33", "::1", "/etc", "a/../b", b"x", [], {}]),
    st.sampled_from(["host", "port", "path", "string", "int", "bytes", "audit", "enforce", "_global", "tenant.globex"]),
    msgpack_values,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))


def _mutate(payload, data):
    payload = copy.deepcopy(payload)
    paths = [p for p in _paths(payload) if p]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths), label="path")
        parent = payload
        try:
            for step in path[:-1]:
                parent = parent[step]
            key = path[-1]
            kind = data.draw(st.sampled_from(["replace", "delete", "insert", "duplicate", "bump"]), label="kind")
            if kind == "replace":
                parent[key] = data.draw(_NEAR, label="value")
            elif kind == "bump" and type(parent[key]) is int:
                parent[key] += data.draw(st.sampled_from([-1, 1, 256, -(2**16)]), label="delta")
            elif isinstance(parent, list) and kind == "delete":
                del parent[key]
            elif isinstance(parent, list) and kind == "insert":
                parent.insert(key, data.draw(_NEAR, label="value"))
            elif isinstance(parent, list) and kind == "duplicate":
                parent.insert(key, copy.deepcopy(parent[key]))
            elif isinstance(parent, dict) and kind == "delete":
                del parent[key]
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation moved things: skip this one
    return payload


def _link_both(obj):
    """The fast and the reference linker on an unpacked payload: (fast, reference) outcomes."""
    try:
        caps = verify.verify_caps(obj["caps"])
        consts = tuple(obj["consts"])
        assert all(type(c) is str for c in consts) and type(obj["code"]) is tuple
    except (errors.VerifyError, AssertionError, KeyError, TypeError):
        return None
    code = obj["code"]
    fast = verify._link_fast(code, caps, consts)
    try:
        ref = verify._link_reference(code, caps, consts)
    except errors.VerifyError:
        ref = None
    return fast, ref


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_payload(data):
    mutated = _mutate(_BASE, data)
    try:
        body = msgpack.packb(mutated, use_bin_type=True)
    except (OverflowError, ValueError):
        assume(False)  # msgpack cannot encode it, so no artifact can hold it
    try:
        art = read(_header_for(body))
    except MalformedPayload:
        art = None
    except ArtifactError as exc:  # only the payload changed: nothing else may complain
        pytest.fail(f"unexpected {type(exc).__name__}: {exc}")
    obj = msgpack.unpackb(body, use_list=False, strict_map_key=False)
    both = _link_both(obj) if isinstance(obj, dict) else None
    if both is not None:
        fast, ref = both
        # the fast path may give up on a valid payload, never accept an invalid one
        if fast is not None:
            assert ref is not None and fast == ref
    if art is not None:
        # what was accepted re-encodes to the same instruction stream
        caps, consts, code = encode.assemble((r.effect, r.cap, r.line, r.col, r.args) for r in art.rules)
        assert len(code) == len(mutated["code"])


@FUZZ
@given(st.data())
def test_byte_mutations_with_a_correct_digest(data):
    body = bytearray(msgpack.packb(_BASE, use_bin_type=True))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    with contextlib.suppress(ArtifactError):
        read(_header_for(bytes(body[:cut] if data.draw(st.booleans()) else body)))


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="abcXYZ019-_.*:/", max_size=40))
def test_fast_host_check_is_a_subset_of_compile_host(text):
    for op in (opcodes.HOST_EXACT, opcodes.HOST_WILD):
        if arguments._fast_host_ok(op, text):
            assert compile_host(text) == (op, text)


def test_fast_host_check_edge_cases():
    for text in ["a." * 126 + "com", "1.2.3.4", "*.123", "a-.com", "-a.com", "a" * 64 + ".com", "***.com", ""]:
        for op in (opcodes.HOST_EXACT, opcodes.HOST_WILD):
            if arguments._fast_host_ok(op, text):
                assert compile_host(text) == (op, text)
            else:
                with contextlib.suppress(PatternError):
                    assert compile_host(text) != (op, text)


# ---------------------------------------------------------------------------
# memory


def test_four_gib_claim_is_refused_before_allocation(tmp_path):
    hdr = HDR.pack(MAGIC, 1, 0, 0, 2**32 - 1, 0, b"\0" * 32)
    path = tmp_path / "tenant.acme.bin"
    path.write_bytes(hdr + b"\x91\xc0" * 50)

    def go():
        with pytest.raises(PayloadTooLarge):
            read_artifact_file(path)
        with pytest.raises(PayloadTooLarge):
            read_artifact(hdr + b"\0" * 100)

    assert peak_of(go) < 256 * 1024


def test_claim_within_the_limit_costs_only_what_the_file_holds(tmp_path):
    hdr = HDR.pack(MAGIC, 1, 0, 0, 60 << 20, 0, b"\0" * 32)
    path = tmp_path / "tenant.acme.bin"
    path.write_bytes(hdr + b"x" * 1000)

    def go():
        with pytest.raises(Truncated):
            read_artifact_file(path)

    assert peak_of(go) < 256 * 1024


@pytest.mark.parametrize(
    "body",
    [
        b"\xdd\xff\xff\xff\xff",  # array of 4 G elements
        b"\xdf\xff\xff\xff\xff",  # map of 4 G pairs
        b"\xdb\xff\xff\xff\xff" + b"a" * 100,  # str of 4 GB
        b"\xc6\xff\xff\xff\xff",  # bin of 4 GB
        b"\xc9\xff\xff\xff\xff\x01",  # ext of 4 GB
        b"\x81\xa4code\xdd\x00\x10\x00\x00" + b"\xc0" * 64,  # 1 M-element array inside 70 bytes
    ],
)
def test_msgpack_length_claims_are_bounded_by_the_payload(body):
    data = _header_for(body)

    def go():
        with pytest.raises(MalformedPayload):
            read(data)

    assert peak_of(go) < 256 * 1024


def test_large_valid_artifact_reads_in_bounded_memory():
    data = pack_artifact(make_payload("big", big_rules(1000)))
    # kept alive so its interned constants stay in the interpreter's table:
    # otherwise re-interning them may resize that table, a one-off cost
    # that has nothing to do with this artifact's size
    first = read(data)
    assert first.module == "big"
    assert peak_of(lambda: read(data)) < 40 * len(data)
