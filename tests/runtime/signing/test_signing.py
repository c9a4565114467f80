"""Signature block, signing, trust configuration and directory guard.

These tests build artifacts from the byte layout of docs/design.md directly,
so they pin the format rather than one writer's implementation; the agent
and reader integration lives in test_trust_agent.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

pytest.importorskip("cryptography")

from polc.runtime import signing
from polc.runtime.errors import ArtifactError
from polc.runtime.format.header import FLAG_SIGNED
from polc.runtime.signing import (
    BadSignatureError,
    KeyFileError,
    KeyScopeError,
    SignatureError,
    SigningKey,
    TrustConfig,
    TrustConfigError,
    UnknownKeyError,
    UnsignedArtifactError,
    check_directory_permissions,
    check_file_permissions,
    module_pattern_matches,
    parse_signature_block,
    sign_artifact,
    signer_key_id,
)

MAGIC = b"\x89POLC\r\n\x1a"


def raw_artifact(module: str, flags: int = 0, trailer: bytes = b"") -> bytes:
    payload = msgpack.packb({"module": module, "mode": "enforce", "code": []})
    header = MAGIC + struct.pack(">HHIII", 1, 0, flags, len(payload), len(trailer))
    header += hashlib.sha256(header[:12] + payload).digest()
    assert len(header) == 56
    return header + payload + trailer


def seeded_key(n: int, name: str | None = None) -> SigningKey:
    return SigningKey.from_seed(bytes([n]) * 32, name)


ACME = seeded_key(1, "acme-ci")
PLATFORM = seeded_key(2, "platform")
STRANGER = seeded_key(3, "stranger")


@pytest.fixture(scope="module")
def trust() -> TrustConfig:
    return TrustConfig.from_keys({ACME: ["tenant.acme"], PLATFORM: ["_global", "tenant.*"]})


# -- the signature block --------------------------------------------------------


def test_sign_sets_flag_and_trailer_and_keeps_payload():
    unsigned = raw_artifact("tenant.acme")
    signed = sign_artifact(unsigned, ACME)
    flags, plen, tlen = struct.unpack_from(">III", signed, 12)
    assert flags & FLAG_SIGNED
    assert tlen == signing.TRAILER_LEN == 82
    assert len(signed) == 56 + plen + tlen
    assert signed[24 : 56 + plen] == unsigned[24:]  # digest and payload untouched
    block = parse_signature_block(signed[56 + plen :])
    assert block.version == 1 and block.key_id == ACME.key_id and len(block.signature) == 64
    assert signer_key_id(signed) == ACME.key_id
    assert signer_key_id(unsigned) is None


def test_signing_is_deterministic_and_resigning_replaces_the_block():
    unsigned = raw_artifact("tenant.acme")
    a = sign_artifact(unsigned, ACME)
    assert sign_artifact(unsigned, ACME) == a  # reproducible builds stay reproducible
    b = sign_artifact(a, PLATFORM)
    assert signer_key_id(b) == PLATFORM.key_id
    assert len(b) == len(a)
    assert sign_artifact(b, ACME) == a


def test_key_id_is_sha256_prefix_of_raw_public_key():
    assert ACME.key_id == hashlib.sha256(ACME.public_key).hexdigest()[:16]
    assert len(ACME.public_key) == 32


@pytest.mark.parametrize(
    "trailer, message",
    [
        (b"\x01", "malformed"),
        (b"\x02\x10" + b"0" * 16 + b"s" * 64, "newer than this polc"),
        (b"\x00\x10" + b"0" * 16 + b"s" * 64, "malformed"),
        (b"\x01\x00" + b"s" * 64, "key id length 0"),
        (b"\x01\x10" + b"0" * 16 + b"s" * 63, "expected 82"),
        (b"\x01\x10" + b"0" * 16 + b"s" * 65, "expected 82"),
        (b"\x01\x10" + b"ABCDEF0123456789" + b"s" * 64, "not lower-case hex"),
        (b"\x01\x10" + b"\xff" * 16 + b"s" * 64, "not lower-case hex"),
    ],
)
def test_malformed_blocks_are_rejected_cleanly(trailer, message):
    with pytest.raises(BadSignatureError, match=message):
        parse_signature_block(trailer)


def test_errors_are_artifact_errors():
    for cls in (SignatureError, UnsignedArtifactError, BadSignatureError, UnknownKeyError, KeyScopeError):
        assert issubclass(cls, ArtifactError)


# -- verification -----------------------------------------------------------------


def test_verify_accepts_a_signed_artifact(trust):
    signed = sign_artifact(raw_artifact("tenant.acme"), ACME)
    assert trust.verify_artifact(signed, "tenant.acme").key_id == ACME.key_id
    assert trust.verify_artifact(sign_artifact(raw_artifact("_global"), PLATFORM), "_global").name == "platform"


def test_verify_rejects_unsigned(trust):
    with pytest.raises(UnsignedArtifactError, match="artifact is not signed"):
        trust.verify_artifact(raw_artifact("tenant.acme"), "tenant.acme")


def test_reader_checks_the_signature_before_unpacking_the_payload(trust):
    from polc.runtime.errors import MalformedPayload
    from polc.runtime.format.reader import read_artifact

    # raw_artifact's payload is structurally malformed: without trust the
    # verifier says so; with trust the missing signature is found first, so
    # bytes no trusted key signed are never parsed.
    data = raw_artifact("tenant.acme")
    with pytest.raises(MalformedPayload):
        read_artifact(data, expected_module="tenant.acme")
    with pytest.raises(UnsignedArtifactError):
        read_artifact(data, expected_module="tenant.acme", trust=trust)
    with pytest.raises(KeyScopeError):
        read_artifact(sign_artifact(data, ACME), expected_module="tenant.globex", trust=trust)


def test_payload_byte_changed_with_recomputed_digest_fails_the_signature(trust):
    signed = bytearray(sign_artifact(raw_artifact("tenant.acme"), ACME))
    plen = struct.unpack_from(">I", signed, 16)[0]
    i = 56 + plen - 1
    signed[i] ^= 0x01
    signed[24:56] = hashlib.sha256(signed[:12] + signed[56 : 56 + plen]).digest()  # checksum now fine
    with pytest.raises(BadSignatureError, match="signature does not verify"):
        trust.verify_artifact(bytes(signed), "tenant.acme")


@pytest.mark.parametrize("offset", range(0, 56))
def test_every_header_byte_is_covered(trust, offset):
    signed = bytearray(sign_artifact(raw_artifact("tenant.acme"), ACME))
    signed[offset] ^= 0x01
    with pytest.raises(SignatureError):
        h = types_ns(flags=struct.unpack_from(">I", signed, 12)[0])
        plen = len(signed) - 56 - signing.TRAILER_LEN
        trust.verify(h, bytes(signed[: 56 + plen]), bytes(signed[56 + plen :]), "tenant.acme")


def types_ns(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**kw)


def test_clearing_the_signed_flag_means_unsigned(trust):
    signed = bytearray(sign_artifact(raw_artifact("tenant.acme"), ACME))
    struct.pack_into(">I", signed, 12, 0)
    with pytest.raises(UnsignedArtifactError):
        trust.verify_artifact(bytes(signed), "tenant.acme")


def test_signature_bytes_flipped(trust):
    signed = bytearray(sign_artifact(raw_artifact("tenant.acme"), ACME))
    signed[-1] ^= 0x80
    with pytest.raises(BadSignatureError, match="does not verify"):
        trust.verify_artifact(bytes(signed), "tenant.acme")


def test_unknown_key(trust):
    signed = sign_artifact(raw_artifact("tenant.acme"), STRANGER)
    with pytest.raises(UnknownKeyError, match=f"signed by unknown key {STRANGER.key_id}"):
        trust.verify_artifact(signed, "tenant.acme")


def test_key_id_swapped_to_a_trusted_key_does_not_verify(trust):
    # a stranger's signature relabelled with the Acme key id
    signed = bytearray(sign_artifact(raw_artifact("tenant.acme"), STRANGER))
    start = len(signed) - 64 - 16
    signed[start : start + 16] = ACME.key_id.encode()
    with pytest.raises(BadSignatureError):
        trust.verify_artifact(bytes(signed), "tenant.acme")


def test_acme_key_may_not_sign_globex(trust):
    signed = sign_artifact(raw_artifact("tenant.globex"), ACME)
    with pytest.raises(KeyScopeError, match="may not sign module 'tenant.globex'"):
        trust.verify_artifact(signed, "tenant.globex")
    with pytest.raises(KeyScopeError, match="'_global'"):
        trust.verify_artifact(sign_artifact(raw_artifact("_global"), ACME), "_global")


def test_platform_key_scope(trust):
    assert trust.verify_artifact(sign_artifact(raw_artifact("tenant.globex"), PLATFORM), "tenant.globex")
    with pytest.raises(KeyScopeError):
        trust.verify_artifact(sign_artifact(raw_artifact("tenant.acme.billing"), PLATFORM), "tenant.acme.billing")


@pytest.mark.parametrize(
    "pattern, module, expected",
    [
        ("_global", "_global", True),
        ("_global", "_globalx", False),
        ("tenant.*", "tenant.acme", True),
        ("tenant.*", "tenant", False),
        ("tenant.*", "tenant.acme.billing", False),
        ("tenant.**", "tenant.acme.billing", True),
        ("tenant.**", "tenant", False),
        ("tenant.acme", "tenant.acme", True),
        ("tenant.acme", "tenant.Acme", False),
        ("tenant.acme", "tenant.acmex", False),
        ("*", "_global", True),
        ("**", "a.b.c", True),
        ("*.acme", "tenant.acme", True),
        ("**.acme", "x.y.acme", True),
    ],
)
def test_module_patterns(pattern, module, expected):
    assert module_pattern_matches(pattern, module) is expected


@pytest.mark.parametrize("bad", ["", "tenant.", "tenant.a*", "tenant.[ab]", "a..b", "tenant.?"])
def test_bad_patterns_rejected(bad):
    with pytest.raises(TrustConfigError):
        TrustConfig.from_keys({ACME: [bad]})


# -- trust files --------------------------------------------------------------------


def write_pub(tmp_path: Path, key: SigningKey) -> Path:
    p = tmp_path / f"{key.name}.pub"
    p.write_bytes(key.public_pem())
    return p


def test_trust_file_toml(tmp_path):
    write_pub(tmp_path, ACME)
    (tmp_path / "trust.toml").write_text(
        f"""
# platform key signs the global policy and every tenant
[[key]]
name = "platform"
id = "{PLATFORM.key_id}"
public_key = "{PLATFORM.public_key_b64}"
modules = ["_global", "tenant.*"]

[[key]]
name = "acme-ci"
public_key_file = "acme-ci.pub"
modules = ["tenant.acme"]
"""
    )
    t = TrustConfig.from_file(tmp_path / "trust.toml")
    assert {k.key_id for k in t.keys} == {ACME.key_id, PLATFORM.key_id}
    assert t.get(ACME.key_id).modules == ("tenant.acme",)
    with pytest.raises(KeyScopeError):
        t.verify_artifact(sign_artifact(raw_artifact("tenant.globex"), ACME), "tenant.globex")


def test_trust_file_json_and_pem_inline(tmp_path):
    f = tmp_path / "trust.json"
    f.write_text(json.dumps({"keys": [{"public_key": ACME.public_pem().decode(), "modules": ["tenant.acme"]}]}))
    t = TrustConfig.from_file(f)
    assert t.get(ACME.key_id) is not None


def test_trust_from_env(tmp_path):
    from polc.runtime.config import trust_from_env

    f = tmp_path / "t.json"
    f.write_text(json.dumps({"key": [{"public_key": ACME.public_key_b64, "modules": ["tenant.acme"]}]}))
    assert trust_from_env({"POLC_TRUST_FILE": str(f)}).get(ACME.key_id)
    assert trust_from_env({}) is None
    # set but blank is never "no trust": a template that expanded to nothing
    for blank in ("", " ", "\t\n"):
        with pytest.raises(TrustConfigError, match="POLC_TRUST_FILE=.*set but empty"):
            trust_from_env({"POLC_TRUST_FILE": blank})
    with pytest.raises(TrustConfigError, match="leading or trailing whitespace"):
        trust_from_env({"POLC_TRUST_FILE": f" {f}"})


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"public_key": ACME.public_key_b64}, "'modules' must be a list"),
        ({"public_key": ACME.public_key_b64, "modules": "tenant.acme"}, "'modules' must be a list"),
        ({"public_key": ACME.public_key_b64, "modules": []}, "no modules"),
        ({"public_key": ACME.public_key_b64, "module": ["x"]}, "unknown field"),
        ({"modules": ["x"]}, "exactly one of"),
        ({"public_key": "not base64!", "modules": ["x"]}, "neither PEM nor base64"),
        ({"public_key": base64.b64encode(b"x" * 31).decode(), "modules": ["x"]}, "32 bytes"),
        ({"public_key": ACME.public_key_b64, "id": "0000000000000000", "modules": ["x"]}, "does not match"),
        ({"public_key_file": "missing.pub", "modules": ["x"]}, "cannot read public key"),
    ],
)
def test_bad_trust_entries(tmp_path, entry, message):
    f = tmp_path / "trust.json"
    f.write_text(json.dumps({"key": [entry]}))
    with pytest.raises(TrustConfigError, match=message):
        TrustConfig.from_file(f)


def test_bad_trust_files(tmp_path):
    with pytest.raises(TrustConfigError, match="cannot read"):
        TrustConfig.from_file(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[[key]\n")
    with pytest.raises(TrustConfigError, match="not a valid trust file"):
        TrustConfig.from_file(tmp_path / "bad.toml")
    (tmp_path / "empty.toml").write_text("")
    with pytest.raises(TrustConfigError, match="no keys"):
        TrustConfig.from_file(tmp_path / "empty.toml")
    (tmp_path / "dup.json").write_text(
        json.dumps({"key": [{"public_key": ACME.public_key_b64, "modules": ["a"]}] * 2})
    )
    with pytest.raises(TrustConfigError, match="listed twice"):
        TrustConfig.from_file(tmp_path / "dup.json")


# -- keys on disk -------------------------------------------------------------------


def test_write_and_load_key_pair(tmp_path):
    key = signing.generate_signing_key("ci")
    k, p = signing.write_key_pair(key, tmp_path, "ci")
    assert stat.S_IMODE(os.stat(k).st_mode) == 0o600
    loaded = signing.load_signing_key(k)
    assert loaded.key_id == key.key_id
    assert signing.load_public_key(p) == key.public_key
    with pytest.raises(KeyFileError, match="exists"):
        signing.write_key_pair(signing.generate_signing_key(), tmp_path, "ci")
    assert signing.load_signing_key(k).key_id == key.key_id  # untouched
    other = signing.generate_signing_key()
    signing.write_key_pair(other, tmp_path, "ci", force=True)
    assert stat.S_IMODE(os.stat(k).st_mode) == 0o600
    assert signing.load_signing_key(k).key_id == other.key_id
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_load_bad_keys(tmp_path):
    (tmp_path / "x.key").write_text("garbage")
    with pytest.raises(KeyFileError, match="not a private key"):
        signing.load_signing_key(tmp_path / "x.key")
    with pytest.raises(KeyFileError, match="cannot read"):
        signing.load_signing_key(tmp_path / "missing.key")
    assert "PRIVATE" not in repr(ACME)


def test_keygen_command(tmp_path):
    from click.testing import CliRunner

    from polc.cli import cli

    r = CliRunner().invoke(cli, ["keygen", "acme-ci", "-o", str(tmp_path / "keys")])
    assert r.exit_code == 0, r.output
    kid = r.stdout.strip()
    key = signing.load_signing_key(tmp_path / "keys" / "acme-ci.key")
    assert kid == key.key_id
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "acme-ci.key").st_mode) == 0o600
    r2 = CliRunner().invoke(cli, ["keygen", "acme-ci", "-o", str(tmp_path / "keys")])
    assert r2.exit_code != 0 and "exists" in r2.output
    r3 = CliRunner().invoke(cli, ["keygen", "acme-ci", "-o", str(tmp_path / "keys"), "--force"])
    assert r3.exit_code == 0 and r3.stdout.strip() != kid
    r4 = CliRunner().invoke(cli, ["keygen", "../evil"])
    assert r4.exit_code != 0


def test_runtime_import_does_not_import_cryptography():
    code = (
        "import sys, polc.runtime.signing, polc.runtime;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('cryptography','lark','click')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_missing_cryptography_is_a_clear_error():
    code = (
        "import sys; sys.modules['cryptography']=None\n"
        "from polc.runtime import signing\n"
        "try:\n"
        "    signing.TrustConfig.from_keys({b'x'*32: ['a']})\n"
        "except signing.SigningUnavailableError as e:\n"
        "    print(e); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pip install 'polc[sign]'" in r.stdout


# -- directory guard ----------------------------------------------------------------


def test_guarded_directory_has_no_problems(tmp_path):
    d = tmp_path / "policies"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    (d / "a.bin").write_bytes(b"x")
    os.chmod(d / "a.bin", 0o644)
    assert check_directory_permissions(d) == []


def test_world_writable_directory_and_artifact(tmp_path):
    d = tmp_path / "policies"
    d.mkdir()
    (d / "tenant.acme.bin").write_bytes(b"x")
    (d / "notes.txt").write_bytes(b"x")
    os.chmod(d, 0o777)
    os.chmod(d / "tenant.acme.bin", 0o664)
    os.chmod(d / "notes.txt", 0o666)
    problems = check_directory_permissions(d)
    assert any("policy directory" in p and "group and others" in p for p in problems), problems
    assert any("tenant.acme.bin" in p and "writable by group" in p for p in problems), problems
    assert not any("notes.txt" in p for p in problems)


def test_owned_by_another_user(tmp_path):
    d = tmp_path / "policies"
    d.mkdir(mode=0o755)
    f = d / "_global.bin"
    f.write_bytes(b"x")
    os.chmod(f, 0o644)
    # pretend to be uid 4242: every root-owned file is then fine, so use a
    # uid we can give files to only when root; otherwise check our own files
    # as seen by a different euid
    if os.geteuid() == 0:
        os.chown(f, 4242, -1)
        problems = check_directory_permissions(d)
        assert any("_global.bin" in p and "owned by uid 4242" in p for p in problems), problems
    else:
        problems = check_directory_permissions(d, euid=os.geteuid() + 1)
        assert any("owned by uid" in p for p in problems), problems


def test_writable_parent_without_sticky_bit(tmp_path):
    parent = tmp_path / "shared"
    d = parent / "policies"
    d.mkdir(parents=True)
    os.chmod(d, 0o755)
    os.chmod(parent, 0o777)
    assert any("parent directory" in p for p in check_directory_permissions(d))
    os.chmod(parent, 0o1777)
    assert not any("parent directory" in p for p in check_directory_permissions(d))
    os.chmod(parent, 0o755)


def test_check_file_permissions(tmp_path):
    f = tmp_path / "trust.toml"
    f.write_text("")
    os.chmod(f, 0o646)
    assert check_file_permissions(f) and "others" in check_file_permissions(f)[0]
    os.chmod(f, 0o644)
    assert check_file_permissions(f) == []
    assert check_directory_permissions(tmp_path / "missing") == []
