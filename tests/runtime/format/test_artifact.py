"""The artifact format: writer, reader, error classes, verifier messages, atomic writes."""

from __future__ import annotations

import hashlib
import os
import struct
import threading

import msgpack
import pytest

from polc.runtime.catalog import BUILTINS
from polc.runtime.errors import (
    ArtifactError,
    BadHeader,
    BadMagic,
    DigestMismatch,
    MalformedPayload,
    ModuleNameMismatch,
    PayloadTooLarge,
    TrailingData,
    Truncated,
    UnreadableArtifact,
    UnsupportedVersion,
)
from polc.runtime.format import arguments, encode, opcodes, verify
from polc.runtime.format.header import (
    FLAG_SIGNED,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    MAX_TRAILER,
    Header,
    read_header,
)
from polc.runtime.format.payload import pack_payload
from polc.runtime.format.reader import read_artifact, read_artifact_file
from polc.runtime.format.writer import pack_artifact, write_atomic

from support.artifacts import (
    ACME_RULES,
    NET,
    RICH_RULES,
    TOOL_CALL,
    big_rules,
    compiled_artifacts,
    make_artifact,
    make_payload,
)

HDR = struct.Struct(">8sHHIII32s")


def raw_artifact(payload_bytes: bytes, *, magic=MAGIC, major=1, minor=0, flags=0, trailer=b"", digest=None) -> bytes:
    """An artifact with any header at all (pack_artifact refuses bad ones)."""
    if digest is None:
        # The digest covers magic, major, minor and the payload.
        digest = hashlib.sha256(magic + struct.pack(">HH", major, minor) + payload_bytes).digest()
    return HDR.pack(magic, major, minor, flags, len(payload_bytes), len(trailer), digest) + payload_bytes + trailer


def with_payload(payload: dict, **kw) -> bytes:
    return raw_artifact(msgpack.packb(payload, use_bin_type=True), **kw)


# ---------------------------------------------------------------------------
# round trip


def test_round_trip_fields():
    data = make_artifact("tenant.acme", RICH_RULES, mode="audit")
    art = read_artifact(data, expected_module="tenant.acme")
    assert art.module == "tenant.acme"
    assert art.mode == "audit" and art.audit
    assert art.compiler == "0.1.0"
    assert art.source == "tenant.acme.pol"
    assert len(art.source_digest) == 64
    # a payload without governs (format 1.2's field) is written as 1.1, byte for byte as before
    assert art.header.major == 1 and art.header.minor == 1 and art.header.flags == 0
    assert art.header.payload_len == len(data) - HEADER_SIZE
    assert art.size == len(data)
    assert art.digest_hex == hashlib.sha256(data[:12] + data[HEADER_SIZE:]).hexdigest()
    assert art.revision == art.digest_hex[:12]
    assert art.trailer == b""
    assert [r.index for r in art.rules] == list(range(len(RICH_RULES)))
    for rule, (effect, cap, line, col, args) in zip(art.rules, RICH_RULES):
        assert (rule.effect, rule.cap, rule.line, rule.col) == (effect, cap, line, col)
        assert rule.args == tuple(tuple(a) for a in args)
    assert art.rules[0].location(art.source) == "tenant.acme.pol:2:5"
    assert art.location(art.rules[3]) == "tenant.acme.pol:5:5"
    # built-in signatures are the catalog's own objects; equal args are shared
    assert art.rules[0].cap is BUILTINS["network.outbound"]
    assert art.rules[0].args[1] is art.rules[1].args[1]
    assert art.rules[3].args[0] is arguments.ANY_ARG


def test_rule_is_frozen():
    art = read_artifact(make_artifact())
    with pytest.raises(AttributeError):
        art.rules[0].line = 9  # type: ignore[misc]
    with pytest.raises(AttributeError):
        art.module = "x"  # type: ignore[misc]


def test_reproducible_and_key_order_independent():
    p = make_payload()
    shuffled = dict(reversed(list(p.items())))
    assert pack_artifact(p) == pack_artifact(p) == pack_artifact(shuffled)
    # the payload's keys are written in design.md order
    body = pack_artifact(shuffled)[HEADER_SIZE:]
    assert list(msgpack.unpackb(body)) == list(opcodes.PAYLOAD_KEYS)


def test_header_layout():
    data = make_artifact()
    magic, major, minor, flags, plen, tlen, digest = HDR.unpack_from(data)
    assert (magic, major, minor, flags, tlen) == (b"\x89POLC\r\n\x1a", 1, 1, 0, 0)  # no governs: 1.1
    assert plen == len(data) - 56 and digest == hashlib.sha256(data[:12] + data[56:]).digest()
    assert read_header(data) == Header(1, 1, 0, plen, 0, digest)


def test_assemble_verify_round_trip():
    caps, consts, code = encode.assemble(RICH_RULES)
    assert consts == list(dict.fromkeys(a[1] for r in RICH_RULES for a in r[4] if a[0] in opcodes.CONST_OPS))
    payload = make_payload(rules=RICH_RULES)
    obj = msgpack.unpackb(msgpack.packb(payload), use_list=False)
    prog = verify.verify_payload(obj)
    again = encode.assemble((r.effect, r.cap, r.line, r.col, r.args) for r in prog.rules)
    assert again == (caps, consts, code)


def test_pack_refuses_invalid_payload():
    p = make_payload()
    p["mode"] = "permissive"
    with pytest.raises(MalformedPayload, match="mode"):
        pack_artifact(p)
    p = make_payload()
    p["extra"] = 1
    with pytest.raises(MalformedPayload, match="unknown keys extra"):
        pack_artifact(p)
    with pytest.raises(BadHeader):
        pack_artifact(make_payload(), flags=FLAG_SIGNED)  # signed needs a trailer
    with pytest.raises(BadHeader):
        pack_artifact(make_payload(), trailer=b"sig")  # a trailer needs the flag
    with pytest.raises(BadHeader):
        pack_artifact(make_payload(), flags=4)


# ---------------------------------------------------------------------------
# header errors, in order


def test_bad_magic():
    data = make_artifact()
    with pytest.raises(BadMagic, match="not a polc artifact"):
        read_artifact(b"PK\x03\x04" + data[4:])
    with pytest.raises(BadMagic):
        read_artifact(b"hello")  # short and not a prefix of the magic
    e = pytest.raises(BadMagic, read_artifact, b"\x00" * 100).value
    assert e.reason == "bad magic" and isinstance(e, ArtifactError)


def test_short_files_are_truncated():
    data = make_artifact()
    with pytest.raises(Truncated, match="empty"):
        read_artifact(b"")
    for n in (1, 7, 8, 20, 55):
        with pytest.raises(Truncated, match="shorter than the 56-byte header"):
            read_artifact(data[:n])


def test_newer_major_names_both_versions():
    body = pack_payload(make_payload())
    e = pytest.raises(UnsupportedVersion, read_artifact, raw_artifact(body, major=2, minor=3)).value
    assert str(e) == "artifact format 2.3 is newer than this polc supports (1.x); upgrade polc"
    assert (e.major, e.minor, e.reason) == (2, 3, "unsupported format version")
    e = pytest.raises(UnsupportedVersion, read_artifact, raw_artifact(body, major=0)).value
    assert "older" in str(e) and "0.0" in str(e) and "1.x" in str(e)


def test_newer_minor_is_read_and_may_add_payload_keys():
    payload = make_payload()
    art = read_artifact(with_payload(payload, minor=7))
    assert art.header.minor == 7 and art.header.version == "1.7"
    payload["added_in_1_7"] = [1, 2]
    assert read_artifact(with_payload(payload, minor=7)).module == "tenant.acme"
    with pytest.raises(MalformedPayload, match="unknown key 'added_in_1_7'"):
        read_artifact(with_payload(payload, minor=0))


def test_unknown_flags_and_trailer_consistency():
    body = pack_payload(make_payload())
    with pytest.raises(BadHeader, match="unknown flag bits 0x2"):
        read_artifact(raw_artifact(body, flags=2))
    with pytest.raises(BadHeader, match="signed flag is not set"):
        read_artifact(raw_artifact(body, trailer=b"x" * 64))
    with pytest.raises(BadHeader, match="no signature trailer"):
        read_artifact(raw_artifact(body, flags=FLAG_SIGNED))
    big = HDR.pack(MAGIC, 1, 0, FLAG_SIGNED, len(body), MAX_TRAILER + 1, hashlib.sha256(body).digest())
    with pytest.raises(BadHeader, match="trailer"):
        read_artifact(big + body)


def test_payload_too_large_refused_from_the_header():
    hdr = HDR.pack(MAGIC, 1, 0, 0, 2**32 - 1, 0, b"\0" * 32)
    e = pytest.raises(PayloadTooLarge, read_artifact, hdr).value
    assert "4294967295" in str(e) and str(MAX_PAYLOAD) in str(e)


def test_truncated_and_trailing_are_distinct():
    data = make_artifact()
    e = pytest.raises(Truncated, read_artifact, data[:-1]).value
    assert f"declares {len(data)} bytes" in str(e) and f"got {len(data) - 1}" in str(e)
    e = pytest.raises(TrailingData, read_artifact, data + b"\n").value
    assert str(e).startswith("1 unexpected byte after the artifact")
    assert e.reason == "trailing data"


def test_digest_mismatch():
    data = bytearray(make_artifact())
    data[-3] ^= 0x40
    e = pytest.raises(DigestMismatch, read_artifact, bytes(data)).value
    assert e.reason == "checksum mismatch" and str(e).startswith("checksum mismatch")


@pytest.mark.parametrize(
    "body, match",
    [
        (b"\xc1", "not valid msgpack"),  # reserved byte
        (b"\x92\x01", "not valid msgpack"),  # incomplete array
        (msgpack.packb({}) + b"\x00", "not valid msgpack"),  # extra data
        (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),  # array claiming 4 G elements
        (b"\xdb\xff\xff\xff\xff", "not valid msgpack"),  # str claiming 4 GB
        (b"\xa2\xff\xfe", "not valid msgpack"),  # invalid UTF-8
        (b"\x81\x01\x02", "not valid msgpack"),  # int map key
        (b"\x91" * 5000 + b"\xc0", "not valid msgpack"),  # nesting
        (msgpack.packb([1, 2]), "payload: expected map, got array"),
        (msgpack.packb(None), "payload: expected map, got nil"),
    ],
)
def test_unpack_failures_are_malformed_payload(body, match):
    with pytest.raises(MalformedPayload, match=match):
        read_artifact(raw_artifact(body))


# ---------------------------------------------------------------------------
# structural verification: one precise message per way to be wrong


def _mutated(mutate) -> bytes:
    payload = make_payload(rules=RICH_RULES)
    mutate(payload)
    return with_payload(payload)


def _code(p):
    return p["code"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.pop("consts"), "payload: missing key consts"),
        (lambda p: p.update(module=7), "module: expected str, got int"),
        (lambda p: p.update(module="../etc"), "module: invalid module name '../etc'"),
        (lambda p: p.update(module="a..b"), "invalid module name"),
        (lambda p: p.update(module="tenant/acme"), "invalid module name"),
        (lambda p: p.update(module=""), "invalid module name"),
        (lambda p: p.update(module="a" * 252), "invalid module name"),  # a.bin must fit 255 bytes
        (lambda p: p.update(mode="permissive"), "mode: expected 'enforce' or 'audit', got 'permissive'"),
        (lambda p: p.update(compiler=None), "compiler: expected str, got nil"),
        (lambda p: p.update(source=b"x.pol"), "source: expected str, got bin"),
        (lambda p: p.update(source_digest="ABC"), "source_digest: expected 64 lower-case hex digits"),
        (lambda p: p.update(caps={}), "caps: expected array, got map"),
        (lambda p: p["caps"].append(p["caps"][0]), "caps[7]: capability network.outbound declared twice"),
        (lambda p: p["caps"].__setitem__(0, ["network.outbound", [["host", "string"], ["port", "port"]]]),
         "caps[0]: built-in capability network.outbound has signature network.outbound(host: host, port: port)"),
        (lambda p: p["caps"][5][1].__setitem__(1, ["tool", "bytes"]), "caps[5] (tool.call) param 1: unknown type 'bytes'"),
        (lambda p: p["caps"][5][1].__setitem__(1, ["server", "string"]), "parameter server declared twice"),
        (lambda p: p["caps"][5].__setitem__(0, "tool call"), "caps[5]: invalid capability name 'tool call'"),
        (lambda p: p["consts"].append(5), "consts[10]: expected str, got int"),
        (lambda p: p.update(code={}), "code: expected array, got map"),
        (lambda p: _code(p).__setitem__(1, [0x55, 0]), "code[1]: unknown opcode 0x55"),
        (lambda p: _code(p).__setitem__(1, [opcodes.HOST_WILD, 99]), "code[1]: const index 99 out of range (10 consts)"),
        (lambda p: _code(p).__setitem__(1, [opcodes.HOST_WILD, True]), "code[1]: operand 1 of HOST_WILD must be an int, got bool"),
        (lambda p: _code(p).__setitem__(1, [opcodes.HOST_WILD, 0.0]), "code[1]: operand 1 of HOST_WILD must be an int, got float"),
        (lambda p: _code(p).__setitem__(1, [opcodes.HOST_WILD]), "code[1]: HOST_WILD takes 1 operand, got 0"),
        (lambda p: _code(p).__setitem__(1, "HOST_WILD"), "code[1]: expected an instruction array, got str"),
        (lambda p: _code(p).__setitem__(1, []), "code[1]: empty instruction"),
        (lambda p: _code(p).__setitem__(1, ["HOST_WILD", 0]), "code[1]: opcode must be an int, got str"),
        (lambda p: _code(p).__setitem__(0, [opcodes.RULE, 2, 0, 2, 5]), "code[0]: rule 0: effect 2 is neither 0 (deny) nor 1 (entitle)"),
        (lambda p: _code(p).__setitem__(0, [opcodes.RULE, 1, 7, 2, 5]), "code[0]: rule 0: capability index 7 out of range (7 caps)"),
        (lambda p: _code(p).__setitem__(0, [opcodes.RULE, 1, 0, 0, 5]), "line and column must be >= 1"),
        (lambda p: _code(p).__setitem__(0, [opcodes.RULE, 1, 0, 2, -5]), "operand 4 of RULE must be between 0 and"),
        (lambda p: _code(p).__setitem__(0, [opcodes.RULE, 1, 0, 2]), "code[0]: RULE takes 4 operands, got 3"),
        (lambda p: _code(p).pop(2), "rule 0: capability network.outbound takes 2 arguments, got 1"),
        (lambda p: _code(p).insert(2, [opcodes.ANY]), "rule 0: capability network.outbound takes 2 arguments, got 3"),
        (lambda p: _code(p).insert(0, [opcodes.ANY]), "code[0]: ANY outside a rule"),
        (lambda p: _code(p).__setitem__(2, [opcodes.HOST_WILD, 0]), "rule 0: argument 2 of network.outbound (port: port) cannot be HOST_WILD"),
        (lambda p: _code(p).__setitem__(2, [opcodes.INT_RANGE, 443, 70000]), "rule 0: INT_RANGE 443..70000 for port: port 70000 out of range"),
        (lambda p: _code(p).__setitem__(2, [opcodes.INT_RANGE, 444, 443]), "lower bound is greater"),
        (lambda p: _code(p).__setitem__(2, [opcodes.INT_RANGE, 0, 2**64 - 1]), "operand 2 of INT_RANGE out of the signed 64-bit range"),
        (lambda p: p["consts"].__setitem__(0, "*..com"), "rule 0: HOST_WILD pattern '*..com': invalid host '*..com': empty label"),
        (lambda p: p["consts"].__setitem__(0, "*."), "rule 0: HOST_WILD pattern '*.': not in normal form (the compiler writes it as HOST_WILD '*')"),
        (lambda p: p["consts"].__setitem__(0, "*.ACME.com"), "rule 0: HOST_WILD pattern '*.ACME.com': not in normal form"),
        (lambda p: p["consts"].__setitem__(0, "api.acme.com"), "rule 0: HOST_WILD pattern 'api.acme.com': not in normal form (the compiler writes it as HOST_EXACT"),
        (lambda p: p["consts"].__setitem__(4, "10.0.0.1/8"), "rule 4: HOST_CIDR pattern '10.0.0.1/8': invalid CIDR"),
        (lambda p: p["consts"].__setitem__(3, "/etc/**"), "rule 2: PATH_GLOB pattern '/etc/**'"),
        (lambda p: p["consts"].__setitem__(3, "a/../b"), "'..' is not allowed"),
        (lambda p: p["consts"].__setitem__(7, "sea*rch"), "rule 8: STR_EXACT pattern 'sea*rch': not in normal form"),
    ],
)
def test_verifier_messages(mutate, message):
    e = pytest.raises(MalformedPayload, read_artifact, _mutated(mutate)).value
    assert message in str(e), str(e)
    assert str(e).startswith("malformed payload: ")
    assert e.reason == "malformed payload"


def test_unreferenced_consts_and_caps_are_allowed():
    payload = make_payload()
    payload["consts"].append("anything at all \x00")
    payload["caps"].append(["tool.call", [["server", "string"], ["tool", "string"]]])
    art = read_artifact(with_payload(payload))
    assert art.consts[-1] == "anything at all \x00" and art.caps[-1] == TOOL_CALL


def test_longest_module_name_fits_a_file_name(tmp_path):
    name = ".".join(["a" * 49] * 5) + "bb"
    assert len(name) == opcodes.MAX_MODULE_NAME_LEN == 251
    path = tmp_path / f"{name}.bin"
    write_atomic(path, make_artifact(name))
    assert read_artifact_file(path).module == name


def test_empty_policy_is_valid():
    art = read_artifact(make_artifact("_global", []))
    assert art.rules == () and art.caps == () and art.module == "_global"


# ---------------------------------------------------------------------------
# files


def test_read_file_checks_the_name(tmp_path):
    data = make_artifact("tenant.acme")
    (tmp_path / "tenant.acme.bin").write_bytes(data)
    assert read_artifact_file(tmp_path / "tenant.acme.bin").module == "tenant.acme"
    (tmp_path / "tenant.globex.bin").write_bytes(data)
    e = pytest.raises(ModuleNameMismatch, read_artifact_file, tmp_path / "tenant.globex.bin").value
    assert str(e) == "artifact is for module 'tenant.acme' but the file is named tenant.globex.bin"
    (tmp_path / "tenant.acme.bin.bak").write_bytes(data)
    e = pytest.raises(ModuleNameMismatch, read_artifact_file, tmp_path / "tenant.acme.bin.bak").value
    assert str(e) == "artifact is for module 'tenant.acme' but the file is named tenant.acme.bin.bak"


def test_read_file_follows_symlinks(tmp_path):
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "tenant.acme.bin").write_bytes(make_artifact())
    os.symlink("..data/tenant.acme.bin", tmp_path / "tenant.acme.bin")
    assert read_artifact_file(tmp_path / "tenant.acme.bin").module == "tenant.acme"


def test_unreadable(tmp_path):
    e = pytest.raises(UnreadableArtifact, read_artifact_file, tmp_path / "missing.bin").value
    assert "No such file" in str(e) and e.errno == 2 and isinstance(e.__cause__, FileNotFoundError)
    with pytest.raises(UnreadableArtifact):
        read_artifact_file(tmp_path)


def test_file_reads_are_bounded(tmp_path, monkeypatch):
    """A file with megabytes after a small artifact is read only as far as its header says."""
    data = make_artifact()
    path = tmp_path / "tenant.acme.bin"
    path.write_bytes(data + b"\0" * (8 << 20))
    sizes = []
    real_fdopen = os.fdopen

    class Spy:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            sizes.append(n)
            return self.f.read(n)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: Spy(real_fdopen(*a, **k)))
    with pytest.raises(TrailingData):
        read_artifact_file(path)
    assert sizes == [HEADER_SIZE, len(data) + 1]  # the header, then the file from its start: not the 8 MiB after it


def test_special_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "tenant.acme.bin"
    os.mkfifo(fifo)
    result = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(UnreadableArtifact, read_artifact_file, fifo).value))
    t.start()
    t.join(5)
    if t.is_alive():  # pragma: no cover - the hang this test looks for; unblock the reader
        with open(fifo, "wb"):
            pass
        t.join()
        pytest.fail("reading a FIFO blocked")
    assert str(result[0]) == "cannot read: not a regular file (a FIFO)"
    e = pytest.raises(UnreadableArtifact, read_artifact_file, tmp_path).value
    assert str(e) == "cannot read: not a regular file (a directory)"
    with pytest.raises(UnreadableArtifact, match="a character device"):
        read_artifact_file("/dev/zero")


def test_trust_is_called_after_verification_and_its_errors_propagate():
    class Refused(ArtifactError):
        reason = "untrusted"

    calls = []

    class Trust:
        def verify(self, header, signed_bytes, trailer, module):
            calls.append((header, signed_bytes, trailer, module))
            if trailer != b"good-signature":
                raise Refused("signature does not verify")

    payload = make_payload()
    good = pack_artifact(payload, flags=FLAG_SIGNED, trailer=b"good-signature")
    art = read_artifact(good, trust=Trust())
    assert art.trailer == b"good-signature" and art.header.signed
    header, signed, trailer, module = calls[0]
    assert signed == good[: -len(b"good-signature")] and module == "tenant.acme"
    bad = good[: -len(trailer)] + b"evil-signature"
    with pytest.raises(Refused):
        read_artifact(bad, trust=Trust())
    # without trust the trailer is carried but not interpreted
    assert read_artifact(bad).trailer == b"evil-signature"
    # a broken payload never reaches the trust check
    calls.clear()
    with pytest.raises(DigestMismatch):
        read_artifact(good[:60] + bytes([good[60] ^ 1]) + good[61:], trust=Trust())
    assert calls == []


# ---------------------------------------------------------------------------
# atomic writes


def test_write_atomic_creates_and_replaces(tmp_path):
    path = tmp_path / "tenant.acme.bin"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["tenant.acme.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_write_atomic_cleans_up_on_failure(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "tenant.acme.bin"
    write_atomic(path, b"old contents")
    real_write = os.write

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    if fail_at == "write":
        # write half, then fail: the half-written temp file must never become visible
        def half(fd, data):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", half)
    else:
        monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(OSError):
        write_atomic(path, b"new contents that are longer")
    monkeypatch.undo()
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["tenant.acme.bin"]


def test_write_atomic_cleans_up_on_interrupt(tmp_path, monkeypatch):
    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "x.bin", b"data")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_write_atomic_readers_see_old_or_new(tmp_path):
    path = tmp_path / "tenant.acme.bin"
    a = make_artifact(rules=ACME_RULES)
    b = make_artifact(rules=RICH_RULES)
    write_atomic(path, a)
    stop = threading.Event()
    seen = set()
    errors = []

    def reader():
        while not stop.is_set():
            try:
                seen.add(read_artifact_file(path).revision)
            except ArtifactError as exc:  # pragma: no cover - the failure this test looks for
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            write_atomic(path, b if i % 2 == 0 else a)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert seen <= {read_artifact(a).revision, read_artifact(b).revision}
    assert os.listdir(tmp_path) == ["tenant.acme.bin"]


def test_write_atomic_into_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "x.bin", b"data")
    assert os.listdir(tmp_path) == []


def test_declared_capability_rule():
    rules = [(opcodes.ENTITLE, TOOL_CALL, 1, 1, [(opcodes.STR_EXACT, "github"), (opcodes.ANY,)]), (opcodes.DENY, NET, 2, 1, [(opcodes.ANY,), (opcodes.ANY,)])]
    art = read_artifact(make_artifact("agent.gw", rules))
    assert art.rules[0].cap == TOOL_CALL and art.rules[0].args == ((opcodes.STR_EXACT, "github"), (opcodes.ANY,))


def test_validated_arguments_are_shared_across_artifacts_but_typed():
    from support.artifacts import COUNTER, LISTEN

    a = read_artifact(make_artifact("tenant.acme", RICH_RULES))
    b = read_artifact(make_artifact("tenant.globex", list(reversed(RICH_RULES))))
    assert a.rules[0].args[0] is b.rules[-1].args[0]  # HOST_WILD "*.acme.com"
    # a range valid for an int parameter is not thereby valid for a port
    assert read_artifact(make_artifact("x", [(opcodes.DENY, COUNTER, 1, 1, [(opcodes.INT_RANGE, 0, 70000)])])).rules
    payload = make_payload("x", [(opcodes.DENY, COUNTER, 1, 1, [(opcodes.INT_RANGE, 0, 70000)])])
    payload["caps"][0] = ["network.listen", [["port", "port"]]]
    with pytest.raises(MalformedPayload, match="port 70000 out of range"):
        read_artifact(with_payload(payload))
    assert LISTEN.params[0].type == "port"


@pytest.mark.parametrize("rules", [ACME_RULES, RICH_RULES, big_rules(200), []], ids=["acme", "rich", "big", "empty"])
def test_fast_path_takes_every_valid_payload(rules):
    """The optimistic linker must not fall back on valid input, and must agree with the reference."""
    obj = msgpack.unpackb(msgpack.packb(make_payload(rules=rules)), use_list=False)
    caps = verify.verify_caps(obj["caps"])
    consts = obj["consts"]
    fast = verify._link_fast(obj["code"], caps, consts)
    assert fast is not None
    assert fast == verify._link_reference(obj["code"], caps, consts)


def test_compiled_artifacts_are_reproducible(tmp_path):
    one = compiled_artifacts(tmp_path / "one")
    two = compiled_artifacts(tmp_path / "two")
    assert one, "polc compile policies-src/ produced no artifact"
    assert [p.name for p in one] == [p.name for p in two]
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes(), a.name
        read_artifact_file(a)
