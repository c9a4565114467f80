"""The artifact file: header, writer, reader and errors (docs/artifact-format.md).

A ``NAME.bin`` artifact is a fixed 56-byte header in the manner of a ``.pyc``
followed by a msgpack payload and an optional trailer (a signature block)::

    offset size  field
    0      8     magic            b"\\x89POLC\\r\\n\\x1a"
    8      2     format major     u16 big-endian
    10     2     format minor     u16 big-endian
    12     4     flags            u32; bit 0 = signed
    16     4     payload length   u32, at most MAX_PAYLOAD
    20     4     trailer length   u32, 0 unless signed
    24     32    SHA-256 of the payload

The reader checks, in order and before unpacking anything: the length of the
header, the magic, the version, the flags, the declared lengths, the exact
file length, and the digest. Only then is the payload unpacked, with msgpack
limits bounded by the payload's own length, verified structurally
(``bytecode.verify_payload``), and its module name compared with the file
name. Every failure raises one subclass of :class:`ArtifactError` with a
message for people and a short ``reason``; what a failure *means* is the
caller's business (the agent keeps the previous policy, ``polc inspect``
exits 1).

Format history (the table in docs/artifact-format.md is the full record):

    1.0  initial format
    1.1  parameter type ``command`` (process.exec's parameter); 1.0 artifacts still read
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from . import bytecode
from .bytecode import PAYLOAD_KEYS, Program, Rule, VerifyError
from .catalog import Capability

__all__ = [
    "MAGIC",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "MAX_TRAILER",
    "FLAG_SIGNED",
    "KNOWN_FLAGS",
    "Header",
    "Artifact",
    "Rule",
    "ArtifactError",
    "BadMagic",
    "UnsupportedVersion",
    "BadHeader",
    "Truncated",
    "TrailingData",
    "PayloadTooLarge",
    "DigestMismatch",
    "MalformedPayload",
    "ModuleNameMismatch",
    "UnreadableArtifact",
    "artifact_digest",
    "pack_payload",
    "build_header",
    "pack_artifact",
    "write_atomic",
    "stage_file",
    "fsync_dir",
    "process_umask",
    "read_header",
    "read_artifact",
    "read_artifact_bytes",
    "read_artifact_file",
    "module_for_path",
    "unpack_payload",
]

MAGIC = b"\x89POLC\r\n\x1a"
FORMAT_MAJOR = 1
FORMAT_MINOR = 1
_HEADER = struct.Struct(">8sHHIII32s")
HEADER_SIZE = _HEADER.size  # 56
MAX_PAYLOAD = 64 * 1024 * 1024
MAX_TRAILER = 64 * 1024
FLAG_SIGNED = 1
KNOWN_FLAGS = FLAG_SIGNED
ARTIFACT_SUFFIX = ".bin"

assert HEADER_SIZE == 56


# ---------------------------------------------------------------------------
# Errors


class ArtifactError(Exception):
    """Root of every artifact failure. ``str(e)`` is the precise message,
    ``e.reason`` a short fixed phrase for logs and metrics."""

    reason = "bad artifact"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class BadMagic(ArtifactError):
    reason = "bad magic"


class UnsupportedVersion(ArtifactError):
    reason = "unsupported format version"

    def __init__(self, message: str, *, major: int, minor: int) -> None:
        super().__init__(message)
        self.major = major
        self.minor = minor


class BadHeader(ArtifactError):
    """Unknown flag bits, or a trailer that does not agree with the flags."""

    reason = "bad header"


class Truncated(ArtifactError):
    reason = "truncated"


class TrailingData(ArtifactError):
    reason = "trailing data"


class PayloadTooLarge(ArtifactError):
    reason = "payload too large"


class DigestMismatch(ArtifactError):
    reason = "checksum mismatch"


class MalformedPayload(ArtifactError):
    reason = "malformed payload"


class ModuleNameMismatch(ArtifactError):
    reason = "module name mismatch"


class UnreadableArtifact(ArtifactError):
    """The file could not be read; ``__cause__`` is the OSError, ``errno`` its errno."""

    reason = "unreadable"

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


# ---------------------------------------------------------------------------
# Data


@dataclass(frozen=True, slots=True)
class Header:
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


class Trust(Protocol):
    """What ``read_artifact(trust=...)`` calls (implemented in runtime/signing.py)."""

    def verify(self, header: Header, signed_bytes: bytes, trailer: bytes, module: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Artifact:
    """A verified artifact, ready to link. Immutable."""

    header: Header
    module: str
    mode: str
    compiler: str
    source: str
    source_digest: str
    caps: tuple[Capability, ...]
    consts: tuple[str, ...]
    rules: tuple[Rule, ...]
    revision: str
    digest_hex: str
    trailer: bytes
    size: int

    @property
    def audit(self) -> bool:
        return self.mode == "audit"

    def location(self, rule: Rule) -> str:
        """``source:line:col`` of one of this artifact's rules."""
        return f"{self.source}:{rule.line}:{rule.col}"


# ---------------------------------------------------------------------------
# Writing


def pack_payload(payload: dict) -> bytes:
    """The msgpack bytes of a payload, keys in the order of docs/design.md.

    Deterministic: no timestamps, a fixed key order, and msgpack's smallest
    encodings; the same payload always gives the same bytes.
    """
    ordered = {k: payload[k] for k in PAYLOAD_KEYS if k in payload}
    if len(ordered) != len(payload):
        extra = sorted(str(k) for k in payload if k not in ordered)
        raise MalformedPayload(f"payload: unknown keys {', '.join(extra)}")
    return msgpack.packb(ordered, use_bin_type=True)


# The digest covers the magic and the format version as well as the payload,
# so no single-bit flip anywhere in the header or payload leaves a policy
# readable: flags and lengths have their own exact checks, and the version
# bytes (a flipped minor would otherwise still be readable) are hashed.
def artifact_digest(payload: bytes, major: int = FORMAT_MAJOR, minor: int = FORMAT_MINOR) -> bytes:
    """SHA-256 over the magic, the format version and the payload bytes."""
    h = hashlib.sha256(MAGIC + struct.pack(">HH", major, minor))
    h.update(payload)
    return h.digest()


def build_header(payload_bytes: bytes, *, flags: int = 0, trailer_len: int = 0) -> bytes:
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
    return _HEADER.pack(
        MAGIC,
        FORMAT_MAJOR,
        FORMAT_MINOR,
        flags,
        len(payload_bytes),
        trailer_len,
        artifact_digest(payload_bytes),
    )


def pack_artifact(payload: dict, *, flags: int = 0, trailer: bytes = b"", verify: bool = True) -> bytes:
    """Header + msgpack payload + trailer.

    With ``verify`` (the default) the payload is read back through the same
    verifier the runtime uses, so a writer can never produce an artifact the
    runtime rejects; a failure raises :class:`MalformedPayload`.
    """
    body = pack_payload(payload)
    data = build_header(body, flags=flags, trailer_len=len(trailer)) + body + trailer
    if verify:
        read_artifact(data)
    return data


def stage_file(directory: str, data: bytes, *, prefix: str = ".") -> str:
    """A new temporary file in ``directory`` holding ``data``, fsynced; its path.

    The file is named ``PREFIX*.tmp`` (agents skip names starting with '.') and
    created with mode 0666 less the umask, like ``open()`` would. On any
    failure it is removed and the error propagates. Renaming it into place is
    the caller's step (:func:`write_atomic` does both).
    """
    import tempfile  # writers only: agents never pay for importing it

    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        try:
            os.fchmod(fd, 0o666 & ~process_umask())
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    A temporary file in the same directory is written, flushed and fsynced
    (:func:`stage_file`), then renamed over ``path`` with ``os.replace``; the
    directory is fsynced so the rename survives a crash. On any failure the
    temporary file is removed and ``path`` is unchanged. The new file is
    created with mode 0644 (less the umask), like ``open()`` would.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = stage_file(directory, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(directory)


_UMASK: int | None = None


def process_umask() -> int:
    """The process umask, read once and without changing it where the OS allows.

    Writers with threads call it before starting them: where the umask can
    only be read by setting it, another thread must not create files meanwhile.
    """
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("Umask:"):
                        _UMASK = int(line.split()[1], 8)
                        break
        except (OSError, ValueError, IndexError):
            pass
        if _UMASK is None:  # os.umask can only be read by setting it: do that once
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def fsync_dir(directory: str) -> None:
    """Make the renames in ``directory`` durable (where the OS supports it)."""
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not supported here (e.g. some network filesystems)
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# ---------------------------------------------------------------------------
# Reading


def read_header(data: bytes) -> Header:
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
                f"artifact format {major}.{minor} is newer than this polc supports "
                f"({FORMAT_MAJOR}.x); upgrade polc",
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
            f"unknown flag bits {flags & ~KNOWN_FLAGS:#x} in the header (flags {flags:#x}); "
            f"written by a newer polc?"
        )
    if payload_len > MAX_PAYLOAD:
        raise PayloadTooLarge(
            f"header declares a payload of {payload_len} bytes, more than the "
            f"{MAX_PAYLOAD}-byte limit"
        )
    if flags & FLAG_SIGNED:
        if trailer_len == 0:
            raise BadHeader("header says signed but declares no signature trailer")
        if trailer_len > MAX_TRAILER:
            raise BadHeader(
                f"header declares a trailer of {trailer_len} bytes, more than the "
                f"{MAX_TRAILER}-byte limit"
            )
    elif trailer_len != 0:
        raise BadHeader(f"header declares a {trailer_len}-byte trailer but the signed flag is not set")
    return Header(major, minor, flags, payload_len, trailer_len, digest)


def unpack_payload(payload: bytes) -> Any:
    """msgpack-unpack payload bytes with every limit bounded by their length.

    No container or string can claim more elements or bytes than the payload
    has, so a hostile length field is refused before anything is allocated.
    Raises :class:`MalformedPayload` for anything msgpack refuses.
    """
    n = len(payload)
    try:
        return msgpack.unpackb(
            payload,
            use_list=False,
            raw=False,
            strict_map_key=True,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n // 2,
            max_ext_len=n,
        )
    except Exception as exc:  # ExtraData, FormatError, StackError, ValueError, UnicodeDecodeError, ...
        raise MalformedPayload(f"payload is not valid msgpack: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_artifact(
    data: bytes,
    *,
    expected_module: str | None = None,
    trust: Trust | None = None,
    file_name: str | None = None,
) -> Artifact:
    """Check and verify one artifact's bytes; raise an :class:`ArtifactError` if anything is wrong.

    ``expected_module``: the module the file may hold (its name without
    ``.bin``); ``file_name`` only words the mismatch message (default
    ``expected_module + ".bin"``). ``trust``: see :class:`Trust`; without it
    a signature trailer is carried but not interpreted.
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
    payload = bytes(data[HEADER_SIZE:end])
    actual = artifact_digest(payload, header.major, header.minor)
    if actual != header.digest:
        raise DigestMismatch(
            f"checksum mismatch: the computed SHA-256 is {actual.hex()[:16]}..., "
            f"the header says {header.digest.hex()[:16]}..."
        )
    trailer = bytes(data[end:total])
    # With a trust configuration and a known module, the signature is checked
    # before the payload is unpacked, so bytes no trusted key signed are never
    # parsed. The module-name check below then binds the payload to that name.
    signature_checked = trust is not None and expected_module is not None
    if signature_checked:
        trust.verify(header, bytes(data[:end]), trailer, expected_module)
    obj = unpack_payload(payload)
    try:
        program = bytecode.verify_payload(obj, allow_unknown_keys=header.minor > FORMAT_MINOR)
    except VerifyError as exc:
        raise MalformedPayload(f"malformed payload: {exc}") from None
    except RecursionError:
        raise MalformedPayload("malformed payload: nested too deeply") from None
    except Exception as exc:  # a verifier bug must not escape the reader
        raise MalformedPayload(f"malformed payload: internal verifier error ({_describe(exc)})") from None
    if expected_module is not None and program.module != expected_module:
        if file_name is None:
            file_name = expected_module + ARTIFACT_SUFFIX
        raise ModuleNameMismatch(
            f"artifact is for module {program.module!r} but the file is named {file_name}"
        )
    if trust is not None and not signature_checked:
        trust.verify(header, bytes(data[:end]), trailer, program.module)
    return _artifact(header, program, trailer, n)


def _artifact(header: Header, program: Program, trailer: bytes, size: int) -> Artifact:
    digest_hex = header.digest.hex()
    return Artifact(
        header=header,
        module=program.module,
        mode=program.mode,
        compiler=program.compiler,
        source=program.source,
        source_digest=program.source_digest,
        caps=program.caps,
        consts=program.consts,
        rules=program.rules,
        revision=digest_hex[:12],
        digest_hex=digest_hex,
        trailer=trailer,
        size=size,
    )


def module_for_path(path: str | os.PathLike[str]) -> str:
    """The module a file may hold: its name without ``.bin`` (``tenant.acme.bin`` -> ``tenant.acme``)."""
    name = os.path.basename(os.fspath(path))
    if name.endswith(ARTIFACT_SUFFIX):
        return name[: -len(ARTIFACT_SUFFIX)]
    return name


def read_artifact_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an artifact file, reading no more than the header allows.

    The header is read and checked first; then at most the declared length
    plus one byte (to tell trailing data from an exact fit). So a file of
    any size costs at most ``HEADER_SIZE + MAX_PAYLOAD + MAX_TRAILER + 1``
    bytes of memory. Raises :class:`UnreadableArtifact` for an OSError, and
    the header's own errors.
    """
    try:
        # O_NONBLOCK: opening a FIFO someone dropped into the directory must
        # not block the poller until a writer appears; it is then refused as
        # not a regular file. (It changes nothing for regular files.)
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UnreadableArtifact(f"cannot read: not a regular file ({_file_kind(st.st_mode)})")
        with os.fdopen(fd, "rb") as f:
            head = f.read(HEADER_SIZE)
            header = read_header(head)
            rest = _read_upto(f, header.payload_len + header.trailer_len + 1)
    except OSError as exc:
        raise UnreadableArtifact(
            f"cannot read: {exc.strerror or exc}", errno=exc.errno
        ) from exc
    return head + rest


_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return f"mode {mode:o}"


_CHUNK = 1 << 20


def _read_upto(f: Any, want: int) -> bytes:
    """Up to ``want`` bytes of ``f``, allocating no more than the file holds.

    ``f.read(n)`` allocates ``n`` bytes before reading, so a header that
    claims 64 MiB in front of a 100-byte file would cost 64 MiB: the first
    read is sized by the file's actual size, and the rest comes in chunks.
    """
    try:
        st = os.fstat(f.fileno())
        hint = st.st_size - f.tell() + 1 if stat.S_ISREG(st.st_mode) else _CHUNK
    except (OSError, AttributeError, ValueError):
        hint = _CHUNK
    asked = max(1, min(want, hint))
    first = f.read(asked)
    if len(first) < asked or len(first) >= want:
        return first  # a short read is the end of the file
    parts = [first]
    got = len(first)
    while got < want:
        chunk = f.read(min(want - got, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_artifact_file(path: str | os.PathLike[str], *, trust: Trust | None = None) -> Artifact:
    """Read, check and verify ``path``; its module must match its file name."""
    return read_artifact(
        read_artifact_bytes(path),
        expected_module=module_for_path(path),
        trust=trust,
        file_name=os.path.basename(os.fspath(path)),
    )
