"""The pieces of runtime/format/ and runtime/signing/ other code builds on.

The one header reader (``read_envelope``, ``declared_lengths``,
``mark_signed``), the bounded field reader, the one encoder (the test
helpers' artifacts are byte for byte the compiler's), ``location()``,
``Artifact`` as a ``Program``, the exception root, and the import layering
inside the runtime (``patterns`` needs the opcodes only).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from polc.runtime import errors
from polc.runtime.format import header as hdr
from polc.runtime.format.opcodes import MODES
from polc.runtime.format.payload import read_fields, unpack_payload
from polc.runtime.format.program import Program, Rule, location
from polc.runtime.format.reader import Artifact, read_artifact
from polc.runtime.format.writer import pack_artifact

from support import REPO
from support.artifacts import ACME_SOURCE, RICH_RULES, big_rules, make_artifact, make_payload
from support.memory import traced_peak

RUNTIME = REPO / "runtime"


def _artifact_of(payload: bytes, *, minor: int = 1, flags: int = 0, trailer: bytes = b"") -> bytes:
    head = hdr.MAGIC + struct.pack(">HHIII", 1, minor, flags, len(payload), len(trailer))
    return head + hashlib.sha256(head[:12] + payload).digest() + payload + trailer


# ---------------------------------------------------------------------------
# the header: one reader


def test_envelope_is_the_checked_header_payload_and_trailer():
    data = make_artifact()
    env = hdr.read_envelope(data)
    assert env.header == hdr.read_header(data)
    assert env.data is data  # bytes are not copied
    assert bytes(env.payload) == data[hdr.HEADER_SIZE :] and env.trailer == b""
    view = hdr.read_envelope(memoryview(data))
    assert view.data == data and type(view.data) is bytes
    assert bytes(hdr.payload_view(data, env.header)) == bytes(env.payload)


def _cut(data: bytes) -> bytes:
    return data[:-1]


def _longer(data: bytes) -> bytes:
    return data + b"\x00"


def _flip_payload(data: bytes) -> bytes:
    b = bytearray(data)
    b[-1] ^= 1
    return bytes(b)


def _flip_minor(data: bytes) -> bytes:
    b = bytearray(data)
    b[11] ^= 1
    return bytes(b)


def _flags(data: bytes) -> bytes:
    b = bytearray(data)
    b[15] |= 2
    return bytes(b)


@pytest.mark.parametrize(
    "damage", [_cut, _longer, _flip_payload, _flip_minor, _flags, lambda d: d[:40], lambda d: b"PK" + d[2:]]
)
def test_envelope_refuses_what_the_reader_refuses_with_the_same_error(damage):
    data = damage(make_artifact())
    with pytest.raises(errors.ArtifactError) as by_reader:
        read_artifact(data)
    with pytest.raises(errors.ArtifactError) as by_envelope:
        hdr.read_envelope(data)
    assert type(by_envelope.value) is type(by_reader.value)
    assert str(by_envelope.value) == str(by_reader.value)


def test_declared_lengths_and_mark_signed_touch_only_flags_and_trailer_length():
    data = make_artifact()
    assert hdr.declared_lengths(data) == (0, len(data) - hdr.HEADER_SIZE, 0)
    assert hdr.declared_lengths(data[:55]) is None
    # nothing else is checked: a foreign magic still gives its fields
    assert hdr.declared_lengths(b"X" * 12 + struct.pack(">III", 7, 8, 9) + b"\x00" * 32) == (7, 8, 9)
    head = bytearray(data[: hdr.HEADER_SIZE])
    hdr.mark_signed(head, 82)
    assert head[:12] == data[:12] and head[24:] == data[24:56]
    assert struct.unpack_from(">III", head, 12) == (hdr.FLAG_SIGNED, len(data) - hdr.HEADER_SIZE, 82)


def test_signing_rewrites_the_header_through_the_format_module():
    pytest.importorskip("cryptography")
    from polc.runtime.signing import SigningKey, sign_artifact, signer_key_id

    key = SigningKey.from_seed(b"\x07" * 32, "t")
    data = make_artifact()
    signed = sign_artifact(data, key)
    env = hdr.read_envelope(signed)
    assert env.header.signed and env.header.trailer_len == len(env.trailer) == 82
    assert signed[24 : hdr.HEADER_SIZE] == data[24 : hdr.HEADER_SIZE]  # digest and payload unchanged
    assert signer_key_id(signed) == key.key_id and signer_key_id(data) is None
    with pytest.raises(errors.ArtifactError, match="not an artifact: 10 bytes"):
        sign_artifact(data[:10], key)
    with pytest.raises(errors.ArtifactError, match="not a whole artifact"):
        sign_artifact(data + b"x", key)


# ---------------------------------------------------------------------------
# read_fields: a few fields, bounded


UPTODATE_KEYS = ("module", "compiler", "source", "source_digest", "caps")


@pytest.mark.parametrize("n", [0, 4, 100, 3000], ids=lambda n: f"{n}-rules")
def test_read_fields_agrees_with_unpacking_whole(n):
    data = make_artifact("big", big_rules(n))
    payload = hdr.read_envelope(data).payload
    whole = unpack_payload(payload)
    for keys in (UPTODATE_KEYS, ("code",), ("nothing", "module")):
        got = read_fields(payload, keys)
        assert got == {k: whole[k] for k in keys if k in whole}


def _pk(value: object) -> bytes:
    return msgpack.packb(value)


_PAD = _pk("pad") + _pk("x" * 5000)  # a key and value that take a payload past the unpack-whole size


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_pk([1, 2]), "payload: expected map, got array"),
        (_pk(["x" * 5000]), "payload: expected map, got array"),
        (_pk({"module": "a"}) + b"\x00", "1 byte after the payload map"),
        (b"\x82" + _PAD + _pk("module") + _pk("a") + b"\x00", "1 byte after the payload map"),
        (b"\x82" + _pk("module") + _pk("a") + _pk("module") + _pk("b"), "key 'module' appears twice"),
        (b"\x83" + _PAD + _pk("module") + _pk("a") + _pk("module") + _pk("b"), "key 'module' appears twice"),
        (b"\x81\x01\x02", "not a string"),
        (b"\x82" + _PAD + b"\x01\x02", "not a string"),
        (b"\x82" + _PAD + _pk("module"), "cut off by the end of the payload"),
        (b"", "the payload is empty"),
    ],
)
def test_read_fields_refuses_what_is_not_a_payload_map(body, message):
    with pytest.raises(errors.MalformedPayload, match=message):
        read_fields(body, UPTODATE_KEYS)


def test_read_fields_does_not_build_what_it_skips():
    # a 4 MB value of empty maps (64 bytes each once built) that is not asked for
    bomb = b"\xdd" + struct.pack(">I", 4_000_000) + b"\x80" * 4_000_000
    body = b"\x82" + msgpack.packb("module") + msgpack.packb("a") + msgpack.packb("code") + bomb
    found, peak = traced_peak(lambda: read_fields(body, ("module",)))
    assert found == {"module": "a"}
    assert peak < 2_000_000, peak


@pytest.mark.parametrize("key", ["module", "caps"])
def test_read_fields_does_not_build_a_value_asked_for_that_is_not_what_the_format_says(key):
    # a 4 MB array of empty maps where a string (``module``) or at most MAX_CAPS capabilities (``caps``) belong
    bomb = b"\xdd" + struct.pack(">I", 4_000_000) + b"\x80" * 4_000_000
    body = b"\x82" + msgpack.packb("source") + msgpack.packb("a.pol") + msgpack.packb(key) + bomb
    refused, peak = traced_peak(lambda: pytest.raises(errors.MalformedPayload, read_fields, body, UPTODATE_KEYS))
    refused.match(f"{key}: expected str, got array|{key}: 4,000,000 entries")
    assert peak < 2_000_000, peak


def test_read_fields_reads_an_array_asked_for_a_window_at_a_time():
    # a capability whose parameter list claims a million entries: refused by the element limit, not reserved
    cap = b"\x92" + msgpack.packb("tool.call") + b"\xdd" + struct.pack(">I", 1_000_000) + b"\x90" * 100
    body = b"\x82" + _PAD + msgpack.packb("caps") + b"\x91" + cap
    with pytest.raises(errors.MalformedPayload, match=r"caps\[0\]"):
        read_fields(body, UPTODATE_KEYS)


# ---------------------------------------------------------------------------
# one encoder, one location, one Program


def test_the_test_helpers_build_the_compilers_bytes():
    """tests/support/artifacts.py says its artifacts come from the compiler's encoder: they are byte-identical."""
    from polc.compiler.memory import compile_source

    result = compile_source(ACME_SOURCE, "tenant.acme.pol")
    assert not result.errors
    assert result.artifacts == [("tenant.acme", make_artifact())]


def test_location_is_one_format_everywhere():
    art = read_artifact(make_artifact("tenant.acme", RICH_RULES))
    rule = art.rules[2]
    assert location(art.source, rule.line, rule.col) == "tenant.acme.pol:4:5"
    assert rule.location(art.source) == art.location(rule) == "tenant.acme.pol:4:5"


def test_artifact_is_a_program_with_where_it_came_from():
    data = make_artifact("tenant.acme", RICH_RULES)
    art = read_artifact(data)
    assert isinstance(art, Program) and isinstance(art.rules[0], Rule)
    program_fields = [f.name for f in dataclasses.fields(Program)]
    artifact_fields = [f.name for f in dataclasses.fields(Artifact)]
    assert artifact_fields[: len(program_fields)] == program_fields
    assert artifact_fields[len(program_fields) :] == ["header", "revision", "digest_hex", "trailer", "size"]
    assert art.size == len(data) and art.revision == art.digest_hex[:12] and art.audit is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        art.mode = "audit"  # type: ignore[misc]


def test_modes_are_defined_once_and_the_verifier_uses_them():
    assert MODES == ("enforce", "audit")
    payload = make_payload()
    payload["mode"] = "permissive"
    with pytest.raises(errors.MalformedPayload, match="mode: expected 'enforce' or 'audit'"):
        pack_artifact(payload)


# ---------------------------------------------------------------------------
# exceptions


def test_format_and_signing_errors_share_one_root_and_keep_their_bases():
    pytest.importorskip("cryptography")
    from polc.runtime import signing
    from polc.runtime.patterns import PatternError

    for cls in (errors.ArtifactError, errors.MalformedPayload, errors.UnreadableArtifact, signing.SignatureError,
                signing.KeyScopeError):
        assert issubclass(cls, errors.PolcError) and issubclass(cls, errors.ArtifactError)
    for cls, base in ((errors.VerifyError, ValueError), (PatternError, ValueError),
                      (signing.SigningUnavailableError, RuntimeError), (signing.TrustConfigError, ValueError),
                      (signing.KeyFileError, ValueError)):
        assert issubclass(cls, errors.PolcError) and issubclass(cls, base), cls


# ---------------------------------------------------------------------------
# layering inside the runtime


def test_patterns_needs_only_the_opcodes():
    probe = (
        "import sys, json, polc.runtime.patterns\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('polc.'))))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout))
    # polc.runtime.memo, the bounded-memo helper, imports nothing of polc
    assert loaded <= {"polc", "polc.runtime", "polc.runtime.catalog", "polc.runtime.errors",
                      "polc.runtime.format", "polc.runtime.format.opcodes", "polc.runtime.memo",
                      "polc.runtime.patterns"}, loaded


def _module_imports(path: Path, name: str) -> set[str]:
    """The polc.runtime modules ``path`` imports when it is imported (not inside functions or TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for n in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(n, ast.ImportFrom) and n.level:
                base = package.split(".")[: len(package.split(".")) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
                found.update(f"{target}.{a.name}" for a in n.names)
                found.add(target)
    return found


def test_no_module_of_format_or_signing_is_imported_back():
    modules: dict[str, Path] = {}
    for path in RUNTIME.rglob("*.py"):
        rel = path.relative_to(RUNTIME).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        modules[".".join(["polc", "runtime", *parts])] = path
    graph = {m: {d for d in _module_imports(p, m) if d in modules and d != m} for m, p in modules.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for d in graph[start]:  # noqa: SIM110 - seen.add inside any() would hide the walk
            if d == goal or (d not in seen and (seen.add(d) or reaches(d, goal, seen))):
                return True
        return False

    ours = [m for m in modules if m.startswith(("polc.runtime.format", "polc.runtime.signing"))]
    assert len(ours) >= 15
    cycles = [m for m in ours if reaches(m, m, set())]
    assert not cycles
