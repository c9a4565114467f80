"""The signature block a signed artifact carries as its trailer, and :func:`sign_artifact`.

Signature block v1 (the artifact trailer; ``trailer length`` in the header is
its size, and bit 0 of the header's flags is set)::

    offset size  field
    0      1     block version        u8 (1)
    1      1     key id length (n)    u8, 1..64 (polc writes 16)
    2      n     key id               ASCII lower-case hex
    2+n    64    Ed25519 signature    over the header and the payload, as written

The signature covers the 56-byte header *as written* (magic, version, flags
with the signed bit set, payload length, the final trailer length, payload
digest) followed by the payload: clearing the signed flag, changing the
trailer length, the digest or any payload byte breaks it. Ed25519 signatures
are deterministic, so signing stays reproducible: the same source, compiler
and key give byte-identical artifacts.

Nothing here needs ``cryptography``: a block is parsed (to show who signed an
artifact) without verifying it, and :func:`sign_artifact` leaves the signing
itself to the key. The header's flags and lengths are read and rewritten
through ``format.header`` (``declared_lengths``, ``mark_signed``), without
checking the rest of the header: the reader does that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ArtifactError, BadSignatureError, SignatureError, UnsignedArtifactError
from ..format.header import FLAG_SIGNED, HEADER_SIZE, declared_lengths, mark_signed
from .keys import KEY_ID_LEN

__all__ = [
    "BLOCK_VERSION",
    "MAX_KEY_ID_LEN",
    "SIGNATURE_LEN",
    "TRAILER_LEN",
    "SignatureBlock",
    "Signer",
    "artifact_parts",
    "describe_trailer",
    "encode_signature_block",
    "parse_signature_block",
    "sign_artifact",
    "signer_key_id",
]

BLOCK_VERSION = 1
MAX_KEY_ID_LEN = 64
SIGNATURE_LEN = 64
TRAILER_LEN = 2 + KEY_ID_LEN + SIGNATURE_LEN  # 82: the size polc always writes

_HEX_ID = re.compile(r"[0-9a-f]{1,64}\Z")


class Signer(Protocol):
    """What :func:`sign_artifact` needs of a key (``keys.SigningKey``)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SignatureBlock:
    version: int
    key_id: str
    signature: bytes


def encode_signature_block(key_id: str, signature: bytes) -> bytes:
    """Encode a v1 signature block (the artifact trailer)."""
    if not _HEX_ID.match(key_id):
        raise ValueError(f"key id must be 1..{MAX_KEY_ID_LEN} lower-case hex digits: {key_id!r}")
    if len(signature) != SIGNATURE_LEN:
        raise ValueError(f"an Ed25519 signature is {SIGNATURE_LEN} bytes, not {len(signature)}")
    kid = key_id.encode("ascii")
    return bytes((BLOCK_VERSION, len(kid))) + kid + bytes(signature)


def parse_signature_block(trailer: bytes | bytearray | memoryview) -> SignatureBlock:
    """Parse a trailer as a signature block; :class:`BadSignatureError` when malformed.

    Needs no ``cryptography``: the artifact reader and ``polc inspect`` use it
    to show who signed an artifact even when nothing verifies it.
    """
    t = bytes(trailer)
    if not t:
        raise UnsignedArtifactError("artifact is not signed")
    if len(t) < 2:
        raise BadSignatureError(f"malformed signature block: {len(t)} bytes")
    version, n = t[0], t[1]
    if version != BLOCK_VERSION:
        if version > BLOCK_VERSION:
            raise BadSignatureError(
                f"signature block version {version} is newer than this polc supports ({BLOCK_VERSION})"
            )
        raise BadSignatureError(f"malformed signature block: version {version}")
    if not 1 <= n <= MAX_KEY_ID_LEN:
        raise BadSignatureError(f"malformed signature block: key id length {n}")
    if len(t) != 2 + n + SIGNATURE_LEN:
        raise BadSignatureError(f"malformed signature block: {len(t)} bytes, expected {2 + n + SIGNATURE_LEN}")
    try:
        key_id = t[2 : 2 + n].decode("ascii")
    except UnicodeDecodeError:
        key_id = ""
    if not _HEX_ID.match(key_id):
        raise BadSignatureError("malformed signature block: key id is not lower-case hex")
    return SignatureBlock(version, key_id, t[2 + n :])


def describe_trailer(header: Any, trailer: bytes | bytearray | memoryview) -> dict[str, Any]:
    """What ``polc inspect`` shows about a signature block, without verifying it.

    Raises :class:`SignatureError` for a malformed block.
    """
    block = parse_signature_block(trailer)
    return {"algorithm": "ed25519", "block_version": block.version, "key_id": block.key_id}


def signer_key_id(data: bytes | bytearray | memoryview) -> str | None:
    """Key id of the signer of a whole artifact's bytes, None when unsigned or malformed.

    A cheap look at the header and trailer for tools (``polc inspect``, the
    compiler's up-to-date check); it verifies nothing.
    """
    lengths = declared_lengths(data)
    if lengths is None:
        return None
    flags, plen, tlen = lengths
    mv = memoryview(data)
    if not flags & FLAG_SIGNED or not tlen or len(mv) != HEADER_SIZE + plen + tlen:
        return None
    try:
        return parse_signature_block(mv[HEADER_SIZE + plen :]).key_id
    except SignatureError:
        return None


def artifact_parts(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """``(flags, payload length, trailer length)`` of a whole artifact's bytes, as its header declares them.

    Only the length is checked (the bytes must be exactly what the header
    declares); raises :class:`ArtifactError` otherwise.
    """
    n = len(memoryview(data))
    lengths = declared_lengths(data)
    if lengths is None:
        raise ArtifactError(f"not an artifact: {n} bytes, the header alone is {HEADER_SIZE}")
    flags, plen, tlen = lengths
    if n != HEADER_SIZE + plen + tlen:
        raise ArtifactError(f"not a whole artifact: {n} bytes, header says {HEADER_SIZE + plen + tlen}")
    return flags, plen, tlen


def sign_artifact(data: bytes | bytearray | memoryview, key: Signer) -> bytes:
    """Return ``data`` (a whole artifact, as ``pack_artifact`` wrote it) signed by ``key``.

    The header's flags get the signed bit and its trailer length becomes the
    size of the signature block *before* signing, so the signature covers the
    header exactly as written.  An artifact that is already signed is re-signed
    (its old block is dropped).  Nothing else of the header or payload changes,
    so ``revision`` and the payload digest stay the same.
    """
    _, plen, _ = artifact_parts(data)
    body = bytearray(memoryview(data)[: HEADER_SIZE + plen])
    block_len = 2 + len(key.key_id) + SIGNATURE_LEN
    mark_signed(body, block_len)
    signature = key.sign(bytes(body))
    trailer = encode_signature_block(key.key_id, signature)
    assert len(trailer) == block_len
    return bytes(body) + trailer
