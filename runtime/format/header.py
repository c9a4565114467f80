"""The fixed 56-byte header of an artifact: the one place that reads or writes it.

A ``NAME.bin`` artifact is this header, in the manner of a ``.pyc``, followed
by a msgpack payload and an optional trailer (a signature block)::

    offset size  field
    0      8     magic            b"\\x89POLC\\r\\n\\x1a"
    8      2     format major     u16 big-endian
    10     2     format minor     u16 big-endian
    12     4     flags            u32; bit 0 = signed
    16     4     payload length   u32, at most MAX_PAYLOAD
    20     4     trailer length   u32, 0 unless signed
    24     32    SHA-256 of the magic, the version and the payload

:func:`read_header` checks it (steps 1-6 of docs/artifact-format.md's
"Verification order"), :func:`read_envelope` adds the exact length and the
digest (steps 7-9): what anything must check before it looks at a payload.
:func:`declared_lengths` and :func:`mark_signed` are for the signature code,
which reads and rewrites the flags and lengths of artifacts it did not check.

Format history (the table in docs/artifact-format.md is the full record):

    1.0  initial format
    1.1  parameter type ``command`` (process.exec's parameter); 1.0 artifacts still read
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import BadHeader, BadMagic, DigestMismatch, PayloadTooLarge, TrailingData, Truncated, UnsupportedVersion

__all__ = [
    "FLAG_SIGNED",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "HEADER_SIZE",
    "KNOWN_FLAGS",
    "MAGIC",
    "MAX_PAYLOAD",
    "MAX_TRAILER",
    "Envelope",
    "Header",
    "artifact_digest",
    "build_header",
    "declared_lengths",
    "mark_signed",
    "payload_view",
    "read_envelope",
    "read_header",
]

MAGIC = b"\x89POLC\r\n\x1a"
FORMAT_MAJOR = 1
# The newest minor this polc reads and writes. The writer writes the oldest
# minor that holds the payload (writer.format_minor), so a payload without
# the 1.2 field is written as 1.1, byte for byte as before.
FORMAT_MINOR = 2
_HEADER = struct.Struct(">8sHHIII32s")
HEADER_SIZE = _HEADER.size  # 56
MAX_PAYLOAD = 64 * 1024 * 1024
MAX_TRAILER = 64 * 1024
FLAG_SIGNED = 1
KNOWN_FLAGS = FLAG_SIGNED

# flags, payload length, trailer length: the fields a signer rewrites
_LENGTHS_AT = 12
_LENGTHS = struct.Struct(">III")
_VERSION = struct.Struct(">HH")

assert HEADER_SIZE == 56


@dataclass(frozen=True, slots=True)
class Header:
    """A checked header (what :func:`read_header` returns)."""

    major: int
    minor: int
    flags: int
    payload_len: int
    trailer_len: int
    digest: bytes

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def signed(self) -> bool:
        return bool(self.flags & FLAG_SIGNED)

    @property
    def total_len(self) -> int:
        return HEADER_SIZE + self.payload_len + self.trailer_len


# The digest covers the magic and the format version as well as the payload,
# so no single-bit flip anywhere in the header or payload leaves a policy
# readable: flags and lengths have their own exact checks, and the version
# bytes (a flipped minor would otherwise still be readable) are hashed.
def artifact_digest(
    payload: bytes | bytearray | memoryview, major: int = FORMAT_MAJOR, minor: int = FORMAT_MINOR
) -> bytes:
    """SHA-256 over the magic, the format version and the payload bytes."""
    h = hashlib.sha256(MAGIC + _VERSION.pack(major, minor))
    h.update(payload)
    return h.digest()


def build_header(payload_bytes: bytes, *, flags: int = 0, trailer_len: int = 0, minor: int = FORMAT_MINOR) -> bytes:
    """The 56-byte header for ``payload_bytes`` (for signers: header + payload is what is signed)."""
    if flags & ~KNOWN_FLAGS:
        raise BadHeader(f"unknown flag bits {flags & ~KNOWN_FLAGS:#x}")
    if bool(flags & FLAG_SIGNED) != (trailer_len > 0):
        raise BadHeader("a trailer is written exactly when the signed flag is set")
    if trailer_len > MAX_TRAILER:
        raise BadHeader(f"trailer of {trailer_len} bytes exceeds the {MAX_TRAILER}-byte limit")
    if len(payload_bytes) > MAX_PAYLOAD:
        raise PayloadTooLarge(
            f"payload of {len(payload_bytes)} bytes exceeds the {MAX_PAYLOAD}-byte limit"
        )
    if not 0 <= minor <= FORMAT_MINOR:
        raise BadHeader(f"format minor {minor} is not one this polc writes (0..{FORMAT_MINOR})")
    return _HEADER.pack(
        MAGIC,
        FORMAT_MAJOR,
        minor,
        flags,
        len(payload_bytes),
        trailer_len,
        artifact_digest(payload_bytes, FORMAT_MAJOR, minor),
    )


def read_header(data: bytes | bytearray | memoryview) -> Header:
    """Parse and check the fixed header; nothing past it is looked at."""
    n = len(data)
    if n < HEADER_SIZE:
        if not MAGIC.startswith(bytes(data[:8])):
            raise BadMagic(f"not a polc artifact (starts with {bytes(data[:8])!r}, expected {MAGIC!r})")
        if n == 0:
            raise Truncated("truncated artifact: the file is empty")
        raise Truncated(f"truncated artifact: {n} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, major, minor, flags, payload_len, trailer_len, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadMagic(f"not a polc artifact (starts with {magic!r}, expected {MAGIC!r})")
    if major != FORMAT_MAJOR:
        if major > FORMAT_MAJOR:
            raise UnsupportedVersion(
                f"artifact format {major}.{minor} is newer than this polc supports ({FORMAT_MAJOR}.x); upgrade polc",
                major=major,
                minor=minor,
            )
        raise UnsupportedVersion(
            f"artifact format {major}.{minor} is older than this polc supports "
            f"({FORMAT_MAJOR}.x); recompile the policy",
            major=major,
            minor=minor,
        )
    if flags & ~KNOWN_FLAGS:
        raise BadHeader(
            f"unknown flag bits {flags & ~KNOWN_FLAGS:#x} in the header (flags {flags:#x}); written by a newer polc?"
        )
    if payload_len > MAX_PAYLOAD:
        raise PayloadTooLarge(
            f"header declares a payload of {payload_len} bytes, more than the {MAX_PAYLOAD}-byte limit"
        )
    if flags & FLAG_SIGNED:
        if trailer_len == 0:
            raise BadHeader("header says signed but declares no signature trailer")
        if trailer_len > MAX_TRAILER:
            raise BadHeader(f"header declares a trailer of {trailer_len} bytes, more than the {MAX_TRAILER}-byte limit")
    elif trailer_len != 0:
        raise BadHeader(f"header declares a {trailer_len}-byte trailer but the signed flag is not set")
    return Header(major, minor, flags, payload_len, trailer_len, digest)


class Envelope(NamedTuple):
    """An artifact whose header, length and digest are checked; its payload not yet looked at."""

    header: Header
    data: bytes | bytearray
    """The whole artifact (the bytes given; a copy only when given another buffer)."""
    payload: memoryview
    """The payload bytes: a view into ``data``, not a copy."""
    trailer: bytes


def read_envelope(data: bytes | bytearray | memoryview) -> Envelope:
    """Check the header, the exact length and the digest; unpack nothing.

    Steps 1-9 of docs/artifact-format.md's "Verification order", raising the
    same errors as ``read_artifact``: what any reader of an artifact must
    check before it looks at the payload (``read_artifact`` goes on to verify
    it; the compiler's up-to-date check reads a few of its fields).
    """
    header = read_header(data)
    total = header.total_len
    n = len(data)
    if n < total:
        raise Truncated(
            f"truncated artifact: header declares {total} bytes ({HEADER_SIZE} + payload "
            f"{header.payload_len} + trailer {header.trailer_len}), got {n}"
        )
    if n > total:
        raise TrailingData(
            f"{n - total} unexpected byte{'s' if n - total != 1 else ''} after the artifact: "
            f"header declares {total} bytes, got {n}"
        )
    end = HEADER_SIZE + header.payload_len
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    payload = memoryview(data)[HEADER_SIZE:end]  # not copied
    actual = artifact_digest(payload, header.major, header.minor)
    if actual != header.digest:
        raise DigestMismatch(
            f"checksum mismatch: the computed SHA-256 is {actual.hex()[:16]}..., "
            f"the header says {header.digest.hex()[:16]}..."
        )
    return Envelope(header, data, payload, bytes(data[end:total]))


def payload_view(data: bytes | bytearray | memoryview, header: Header) -> memoryview:
    """The payload bytes of the artifact ``data`` whose checked header is ``header``: a view, not a copy."""
    return memoryview(data)[HEADER_SIZE : HEADER_SIZE + header.payload_len]


def declared_lengths(data: bytes | bytearray | memoryview) -> tuple[int, int, int] | None:
    """``(flags, payload length, trailer length)`` as the header declares them; None if shorter than a header.

    Nothing is checked (not even the magic): for the signature code, which
    looks at and re-signs artifacts without reading them, and must not
    refuse what it was not asked to judge.
    """
    if len(data) < HEADER_SIZE:
        return None
    flags, payload_len, trailer_len = _LENGTHS.unpack_from(data, _LENGTHS_AT)
    return flags, payload_len, trailer_len


def mark_signed(head: bytearray, trailer_len: int) -> None:
    """Set the signed flag and the trailer length in the header at the start of ``head``, in place."""
    flags, payload_len, _ = _LENGTHS.unpack_from(head, _LENGTHS_AT)
    _LENGTHS.pack_into(head, _LENGTHS_AT, flags | FLAG_SIGNED, payload_len, trailer_len)
