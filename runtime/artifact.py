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
file length, and the digest. Only then is the payload read, in pieces of
bounded size each verified structurally before the next is unpacked (see
"The payload, read in bounded pieces" below), and its module name compared
with the file name. Every failure raises one subclass of :class:`ArtifactError` with a
message for people and a short ``reason``; what a failure *means* is the
caller's business (the agent keeps the previous policy, ``polc inspect``
exits 1).

Format history (the table in docs/artifact-format.md is the full record):

    1.0  initial format
    1.1  parameter type ``command`` (process.exec's parameter); 1.0 artifacts still read
"""

from __future__ import annotations

import gc
import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any, Callable, Protocol

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
    "read_payload",
    "MAX_PAYLOAD_KEYS",
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
    """msgpack-unpack payload bytes whole, with every limit bounded by their length.

    No container or string can claim more elements or bytes than the payload
    has, so a hostile length field is refused before anything is allocated.
    Raises :class:`MalformedPayload` for anything msgpack refuses. It builds
    every object the payload holds at once (about 20 times the payload's size
    for a real artifact, up to 80 times for a hostile one): meant for payloads
    :func:`read_artifact` has accepted, such as ``polc inspect``'s listing.
    ``read_artifact`` itself never calls it (see :func:`read_payload`).
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


# ---------------------------------------------------------------------------
# The payload, read in bounded pieces (docs/artifact-format.md, "What reading
# a payload costs")
#
# Unpacking a payload whole costs what its objects cost: a file of millions
# of tiny containers (an array of N empty maps: one byte each in the file, a
# 64-byte dict each in memory) costs 80 times its size, and msgpack holds the
# GIL while it builds them all. So only a small payload is unpacked in one
# call (_read_whole, below). Any other is walked: the top-level map and its
# keys here, the five string fields decoded in place, and the three arrays
# (``caps``, ``consts``, ``code``) unpacked _WINDOW bytes at a time, each
# piece checked (and ``code`` linked) before the next one is unpacked. The
# objects alive at once are those of one window and the one element that
# straddles it (a few MB whatever the file holds), plus what is kept: rules,
# constants and capabilities, bounded by bytecode.MAX_RULES, MAX_CONSTS and
# MAX_CAPS and costing about what a real artifact's do. Each call into the
# unpacker covers one window, so the GIL is never held for long. Limits per
# element keep even one window cheap: msgpack reserves the slots an array
# header announces before it reads them, so arrays inside elements are
# short; an element of ``code`` or ``caps`` that is longer than a window is
# refused (an instruction takes at most 50 bytes, a capability signature
# under 20 KB); and an element of ``consts`` cannot be a non-empty container.

_WINDOW = 32 * 1024
MAX_PAYLOAD_KEYS = 64  # keys of the payload map; format 1.0 has 8

_UNPACK = dict(
    use_list=False, raw=False, strict_map_key=True, max_buffer_size=MAX_PAYLOAD + _WINDOW, read_size=_WINDOW
)
_ELEMENT_LIMITS: dict[str, dict] = {
    # [name, [[param, type], ...]]: the longest array is the parameter list
    "caps": dict(_UNPACK, max_array_len=bytecode.MAX_PARAMS, max_map_len=16,
                 max_str_len=_WINDOW, max_bin_len=_WINDOW, max_ext_len=_WINDOW),
    # strings; a container here can only be empty
    "consts": dict(_UNPACK, max_array_len=0, max_map_len=0,
                   max_str_len=bytecode.MAX_STRING, max_bin_len=_WINDOW, max_ext_len=_WINDOW),
    # [opcode, operand, ...]: at most 5 elements (up to 64 get the verifier's own message)
    "code": dict(_UNPACK, max_array_len=64, max_map_len=16,
                 max_str_len=_WINDOW, max_bin_len=_WINDOW, max_ext_len=_WINDOW),
}
_EXPECTED = {"caps": "array", "consts": "str", "code": "array"}

_MAP, _ARRAY, _STR, _OTHER = range(4)
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class _NotMsgpack(Exception):
    """Raised inside read_payload; becomes ``MalformedPayload("payload is not valid msgpack: ...")``."""


def read_payload(payload: bytes | bytearray | memoryview, *, allow_unknown_keys: bool = False) -> bytecode.Program:
    """Check, verify and link payload bytes in bounded memory and time; raise :class:`MalformedPayload`.

    Accepts exactly the payloads of docs/artifact-format.md, like
    ``bytecode.verify_payload(unpack_payload(payload))``, within the limits of
    that page, which add two rules for the top-level map: at most
    ``MAX_PAYLOAD_KEYS`` keys, and no key twice.
    """
    if not isinstance(payload, (bytes, bytearray)):
        payload = bytes(payload)
    return _program(payload, 0, len(payload), allow_unknown_keys)


def _program(data: bytes | bytearray, start: int, end: int, allow_unknown_keys: bool) -> bytecode.Program:
    """The payload ``data[start:end]``, read whole when that is safe and by windows otherwise."""
    try:
        program = None
        if end - start <= _WHOLE_MAX:
            program = _read_whole(data, start, end, allow_unknown_keys)
        if program is None:
            program = _read_payload(memoryview(data)[start:end], allow_unknown_keys)
        return program
    except VerifyError as exc:
        message = f"malformed payload: {exc}"
    except _NotMsgpack as exc:
        message = f"payload is not valid msgpack: {exc}"
    except ArtifactError:
        raise
    except RecursionError:
        message = "malformed payload: nested too deeply"
    except Exception as exc:  # a verifier bug must not escape the reader
        message = f"malformed payload: internal verifier error ({_describe(exc)})"
    # raised here, not in the handler: the error then holds no traceback of
    # the verifier's frames, and so none of the objects they were checking
    raise MalformedPayload(message)


# A payload of up to _WHOLE_MAX bytes (a module of about 2,000 rules) is
# unpacked in one call, which is what a real artifact costs least with: its
# objects are bounded by its size (80 times 64 KiB at worst), and what msgpack
# reserves ahead for array headers is bounded by refusing this path when more
# than _WHOLE_CLAIMS bytes could be such headers (0xdc, 0xdd: an array of 16
# or more elements, for which msgpack may reserve up to 10,000 slots before
# reading any; a real payload has a few, its operand bytes included), and by
# max_array_len. Anything this path does not accept, for whatever reason, goes
# to the windowed reader, which decides and words the error.
_WHOLE_MAX = 64 * 1024
_WHOLE_CLAIMS = 32
_WHOLE_LIMITS = dict(
    use_list=False, raw=False, strict_map_key=True,
    max_array_len=8192, max_map_len=MAX_PAYLOAD_KEYS,
    max_str_len=_WHOLE_MAX, max_bin_len=_WHOLE_MAX, max_ext_len=_WHOLE_MAX,
)


def _read_whole(data: bytes | bytearray, start: int, end: int, allow_unknown_keys: bool) -> bytecode.Program | None:
    claims = 0
    for marker in (b"\xdc", b"\xdd"):
        at = data.find(marker, start, end)
        while at >= 0:
            claims += 1
            if claims > _WHOLE_CLAIMS:
                return None
            at = data.find(marker, at + 1, end)
    return _paused(_whole, data, start, end, allow_unknown_keys)


def _whole(data: bytes | bytearray, start: int, end: int, allow_unknown_keys: bool) -> bytecode.Program | None:
    try:
        obj = msgpack.unpackb(data[start:end], **_WHOLE_LIMITS)  # a copy of at most 64 KiB
    except Exception:
        return None
    if type(obj) is not dict or len(obj) != _map_count(data, start):
        return None  # not a map, or a key given twice (the last one would win)
    if allow_unknown_keys and not all(type(k) is str for k in obj):
        return None  # (without unknown keys, verify_payload sees that every key is a known one)
    return bytecode.verify_payload(obj, allow_unknown_keys=allow_unknown_keys)


# The garbage collector is paused while one piece is unpacked and checked
# (and its transient objects freed): a window's objects are all alive while
# msgpack builds them, so every collection that their allocation triggered
# would promote them, and enough promoted objects trigger a full collection,
# which walks every object of the process while holding the GIL (about
# 10 ms in a small process, far more in a large one: most of the old reader's
# stalls). Paused, objects that die with their piece are never seen by the
# collector, and what is kept (rules, constants) is collected afterwards like
# any other allocation. A process that disabled the collector itself keeps it
# disabled (one that disables it while a piece is being read finds it enabled
# again after the piece: the pause lasts a few milliseconds).
# An error raised meanwhile leaves without its traceback into ``fn`` (and
# the exception it was raised in handling): those would keep the piece's
# frames, and so its objects, alive past the pause. (Not bound to a name
# here either: an exception held by a frame of its own traceback is a cycle,
# which would keep the file's bytes alive until the next collection.)
def _paused(fn: Callable[..., Any], *args: Any) -> Any:
    collecting = gc.isenabled()
    if collecting:
        gc.disable()
    try:
        return fn(*args)
    except Exception as exc:
        exc.__traceback__ = None
        exc.__context__ = None
        raise
    finally:
        if collecting:
            gc.enable()


def _map_count(data: bytes | bytearray, pos: int) -> int:
    b = data[pos]
    if 0x80 <= b <= 0x8F:
        return b & 0x0F
    if b == 0xDE:
        return _U16.unpack_from(data, pos + 1)[0]
    if b == 0xDF:
        return _U32.unpack_from(data, pos + 1)[0]
    return -1


def _read_payload(buf: memoryview, allow_unknown_keys: bool) -> bytecode.Program:
    n = len(buf)
    if n == 0:
        raise _NotMsgpack("the payload is empty")
    family, count, pos = _head(buf, 0, "the payload")
    if family != _MAP:
        # not a payload, but say "not valid msgpack" if it is not even that
        if family == _STR and count <= bytecode.MAX_STRING:
            _text(buf, pos, count, "the payload")
        end = _skip(buf, 0, "the payload")
        if end != n:
            raise _NotMsgpack(f"{n - end} byte{'s' if n - end != 1 else ''} after the first object")
        raise VerifyError(f"payload: expected map, got {_kind(buf, 0)}")
    if count > MAX_PAYLOAD_KEYS:
        raise VerifyError(f"payload: a map of {count:,} keys, more than the {MAX_PAYLOAD_KEYS} a payload may have")
    seen: set[str] = set()
    fields: dict[str, str] = {}
    caps: tuple = ()
    consts: tuple = ()
    rules: list | None = None
    code_at = -1  # where ``code`` is, when it came before caps or consts
    for _ in range(count):
        family, size, at = _head(buf, pos, "a payload key")
        if family != _STR:
            raise _NotMsgpack(f"a key of the payload map is {_kind(buf, pos)}, not a string")
        _check_string(size, "a payload key")
        key = _text(buf, at, size, "a payload key")
        pos = at + size
        if key in seen:
            raise VerifyError(f"payload: key {key[:100]!r} appears twice")
        seen.add(key)
        if key in _FIELD_SET:
            family, size, at = _head(buf, pos, key)
            if family != _STR:
                raise VerifyError(f"{key}: expected str, got {_kind(buf, pos)}")
            _check_string(size, key)
            fields[key] = bytecode.verify_field(key, _text(buf, at, size, key))
            pos = at + size
        elif key == "caps":
            pos, caps = _read_caps(buf, pos)
        elif key == "consts":
            pos, consts = _read_consts(buf, pos)
        elif key == "code":
            if "caps" in seen and "consts" in seen:
                pos, rules = _read_code(buf, pos, caps, consts)
            else:
                code_at = pos  # linked once both are known
                pos = _skip(buf, pos, "code")
        elif allow_unknown_keys:
            pos = _skip(buf, pos, key[:100])
        else:
            raise VerifyError(f"payload: unknown key {key[:100]!r}")
    if pos != n:
        raise _NotMsgpack(f"{n - pos} byte{'s' if n - pos != 1 else ''} after the payload map")
    missing = [k for k in PAYLOAD_KEYS if k not in seen]
    if missing:
        raise VerifyError(f"payload: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if rules is None:
        _, rules = _read_code(buf, code_at, caps, consts)
    return bytecode.make_program([fields[k] for k in bytecode.FIELD_KEYS], caps, consts, rules)


_FIELD_SET = frozenset(bytecode.FIELD_KEYS)


def _read_caps(buf: memoryview, pos: int) -> tuple[int, tuple]:
    count, start = _array(buf, pos, "caps")
    bytecode.check_caps_count(count)
    pieces: list[tuple] = []
    end = _elements(buf, start, count, "caps", lambda chunk, first, final: pieces.append(chunk))
    return end, bytecode.verify_caps(_joined(pieces))


def _read_consts(buf: memoryview, pos: int) -> tuple[int, tuple]:
    count, start = _array(buf, pos, "consts")
    bytecode.check_consts_count(count)
    pieces: list[tuple] = []
    end = _elements(
        buf, start, count, "consts",
        lambda chunk, first, final: pieces.append(bytecode.verify_consts(chunk, first)),
    )
    return end, _joined(pieces)


def _read_code(buf: memoryview, pos: int, caps: tuple, consts: tuple) -> tuple[int, list]:
    count, start = _array(buf, pos, "code")
    linker = bytecode.Linker(caps, consts)
    bytecode.check_code_count(count, linker.tail - 1)
    end = _elements(buf, start, count, "code", lambda chunk, first, final: linker.feed(chunk, final))
    return end, linker.rules


def _joined(pieces: list[tuple]) -> tuple:
    if len(pieces) == 1:
        return pieces[0]
    return tuple(chain.from_iterable(pieces))


def _elements(buf: memoryview, start: int, count: int, what: str,
              take: Callable[[tuple, int, bool], None]) -> int:
    """Unpack the ``count`` elements of array ``what`` from ``start`` on, a window at a time.

    ``take(chunk, index of its first element, final)`` gets them in order, in
    pieces; returns the position after the last element.
    """
    if count == 0:
        return start
    n = len(buf)
    bounded = what != "consts"
    unpacker = msgpack.Unpacker(**_ELEMENT_LIMITS[what])
    fed = start
    done = 0
    while True:
        if fed >= n:
            raise _locate(buf, start, count, what)  # cut off by the end of the payload
        step = fed + _WINDOW if fed + _WINDOW < n else n
        unpacker.feed(buf[fed:step])
        fed = step
        got = _paused(_piece, unpacker, done, count, take)
        if got < 0:
            raise _locate(buf, start, count, what)  # msgpack refused something
        done += got
        if done == count:
            return start + unpacker.tell()
        if not got and bounded:
            raise _locate(buf, start, count, what)  # an element longer than a window


def _piece(unpacker: Any, done: int, count: int, take: Callable[[tuple, int, bool], None]) -> int:
    """Unpack and take the elements the unpacker has whole; how many, or -1 if msgpack refused one."""
    try:
        chunk = tuple(islice(unpacker, count - done))
    except Exception:
        return -1
    if chunk:
        take(chunk, done, done + len(chunk) == count)
    return len(chunk)


def _locate(buf: memoryview, start: int, count: int, what: str) -> Exception:
    """Why the windowed unpack of ``what`` stopped, with the element's index: the error to raise.

    Walks the elements again one by one (the error path only: each is built
    and dropped, so this costs time, not memory).
    """
    n = len(buf)
    bounded = what != "consts"
    unpacker = msgpack.Unpacker(**_ELEMENT_LIMITS[what])
    fed = start
    for k in range(count):
        at = unpacker.tell()
        while True:
            try:
                unpacker.unpack()
                break
            except msgpack.OutOfData:
                if fed >= n:
                    return _NotMsgpack(f"{what}[{k}] is cut off by the end of the payload")
                if bounded and fed - start - at > _WINDOW:
                    return _bad_element(buf, start + at, what, k, None)
                step = fed + _WINDOW if fed + _WINDOW < n else n
                unpacker.feed(buf[fed:step])
                fed = step
            except Exception as exc:
                return _bad_element(buf, start + at, what, k, exc)
    return _NotMsgpack(f"{what}: could not be unpacked")  # not reached: the same element fails again


def _check_string(size: int, what: str) -> None:
    # each string is decoded in one call into the interpreter: they are short
    if size > bytecode.MAX_STRING:
        raise VerifyError(f"{what}: a string of {size:,} bytes, more than the {bytecode.MAX_STRING:,} a payload string may have")


def _bad_element(buf: memoryview, at: int, what: str, k: int, exc: BaseException | None) -> Exception:
    kind = _kind(buf, at)
    if kind == "str" and what == "consts":
        size = _head(buf, at, f"consts[{k}]")[1]
        if size > bytecode.MAX_STRING:
            return VerifyError(
                f"consts[{k}]: a string of {size:,} bytes, more than the {bytecode.MAX_STRING:,} a payload string may have"
            )
    if kind != _EXPECTED[what] and kind != "invalid":
        # the verifier's own words for an element of the wrong type
        if what == "code":
            return VerifyError(f"code[{k}]: expected an instruction array, got {kind}")
        if what == "caps":
            return VerifyError(f"caps[{k}]: expected [name, [[param, type], ...]], got {kind}")
        return VerifyError(f"consts[{k}]: expected str, got {kind}")
    if exc is None:
        noun = "instruction (at most 50 bytes)" if what == "code" else "capability signature"
        return VerifyError(f"{what}[{k}]: more than {_WINDOW:,} bytes, longer than any valid {noun}")
    return _NotMsgpack(f"{what}[{k}]: {_describe(exc)}")


def _skip(buf: memoryview, pos: int, what: str) -> int:
    """The position after the value at ``pos``, found a window at a time without building it."""
    n = len(buf)
    unpacker = msgpack.Unpacker(**_UNPACK)
    fed = pos
    while True:
        if fed >= n:
            raise _NotMsgpack(f"the value of {what!r} is cut off by the end of the payload")
        step = fed + _WINDOW if fed + _WINDOW < n else n
        unpacker.feed(buf[fed:step])
        fed = step
        try:
            unpacker.skip()
        except msgpack.OutOfData:
            continue
        except Exception as exc:
            raise _NotMsgpack(f"the value of {what!r}: {_describe(exc)}") from None
        return pos + unpacker.tell()


def _array(buf: memoryview, pos: int, what: str) -> tuple[int, int]:
    family, count, start = _head(buf, pos, what)
    if family != _ARRAY:
        raise VerifyError(f"{what}: expected array, got {_kind(buf, pos)}")
    return count, start


def _head(buf: memoryview, pos: int, what: str) -> tuple[int, int, int]:
    """``(family, n, start)`` of the msgpack header at ``pos``: a map's or array's element count
    or a string's byte length, and where its contents start; ``_OTHER`` for other types."""
    n = len(buf)
    if pos >= n:
        raise _NotMsgpack(f"the payload ends where {what} should be")
    b = buf[pos]
    if 0xA0 <= b <= 0xBF:
        family, size, start = _STR, b & 0x1F, pos + 1
    elif 0x90 <= b <= 0x9F:
        return _ARRAY, b & 0x0F, pos + 1
    elif 0x80 <= b <= 0x8F:
        return _MAP, b & 0x0F, pos + 1
    elif 0xD9 <= b <= 0xDF:
        width = (1, 2, 4, 2, 4, 2, 4)[b - 0xD9]
        start = pos + 1 + width
        if start > n:
            raise _NotMsgpack(f"the payload ends inside the header of {what}")
        if width == 1:
            size = buf[pos + 1]
        elif width == 2:
            size = _U16.unpack_from(buf, pos + 1)[0]
        else:
            size = _U32.unpack_from(buf, pos + 1)[0]
        if b >= 0xDE:
            return _MAP, size, start
        if b >= 0xDC:
            return _ARRAY, size, start
        family = _STR
    else:
        if b == 0xC1:
            raise _NotMsgpack(f"{what}: 0xc1 is not a msgpack type")
        return _OTHER, 0, pos
    if start + size > n:
        raise _NotMsgpack(f"{what}: a string of {size:,} bytes where the payload has {n - start:,} left")
    return family, size, start


def _text(buf: memoryview, start: int, size: int, what: str) -> str:
    try:
        return str(buf[start : start + size], "utf-8")
    except UnicodeDecodeError as exc:
        raise _NotMsgpack(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _kind(buf: memoryview, pos: int) -> str:
    """The type of the msgpack object at ``pos``, in the verifier's words."""
    b = buf[pos]
    if b <= 0x7F or b >= 0xE0 or 0xCC <= b <= 0xD3:
        return "int"
    if b <= 0x8F or b in (0xDE, 0xDF):
        return "map"
    if b <= 0x9F or b in (0xDC, 0xDD):
        return "array"
    if b <= 0xBF or 0xD9 <= b <= 0xDB:
        return "str"
    if b == 0xC0:
        return "nil"
    if b in (0xC2, 0xC3):
        return "bool"
    if b in (0xCA, 0xCB):
        return "float"
    if 0xC4 <= b <= 0xC6:
        return "bin"
    if b == 0xC1:
        return "invalid"
    return "ext"


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
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    payload = memoryview(data)[HEADER_SIZE:end]  # not copied
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
    program = _program(data, HEADER_SIZE, end, header.minor > FORMAT_MINOR)
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
            header = read_header(f.read(HEADER_SIZE))
            # read again from the start, so that the file's bytes land in one
            # buffer instead of being copied into one (a header rewritten in
            # between is read_artifact's to refuse: it checks the bytes it gets)
            f.seek(0)
            return _read_upto(f, header.total_len + 1)
    except OSError as exc:
        raise UnreadableArtifact(
            f"cannot read: {exc.strerror or exc}", errno=exc.errno
        ) from exc


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
