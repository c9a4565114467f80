"""Payload bytes: packing, unpacking whole, and the bounded reader ``read_artifact`` uses.

:func:`pack_payload` writes a payload map with its keys in the fixed order.
:func:`read_payload` / :func:`read_program` check, verify and link untrusted
payload bytes in bounded memory and time, a window at a time
(docs/artifact-format.md, "What reading a payload costs").
:func:`read_fields` reads a few fields of payload bytes without building the
rest; :func:`unpack_payload` unpacks accepted payload bytes whole. Every
failure is a ``MalformedPayload``.
"""

from __future__ import annotations

import gc
import struct
from collections.abc import Callable, Collection
from itertools import chain, islice
from typing import Any

import msgpack  # untyped: pyproject.toml tells mypy to ignore its missing stubs

from ..catalog import Capability
from ..errors import ArtifactError, MalformedPayload, VerifyError
from . import opcodes, verify
from .header import FORMAT_MINOR, MAX_PAYLOAD
from .opcodes import FIELD_KEYS, GOVERNS_KEY, PAYLOAD_KEYS, WRITTEN_KEYS
from .program import Program, Rule

__all__ = [
    "MAX_PAYLOAD_KEYS",
    "pack_payload",
    "read_fields",
    "read_payload",
    "read_program",
    "unpack_payload",
]


def pack_payload(payload: dict[str, Any]) -> bytes:
    """The msgpack bytes of a payload, keys in the order of docs/design.md.

    Deterministic: no timestamps, a fixed key order, and msgpack's smallest
    encodings; the same payload always gives the same bytes.
    """
    ordered = {k: payload[k] for k in WRITTEN_KEYS if k in payload}
    if len(ordered) != len(payload):
        extra = sorted(str(k) for k in payload if k not in ordered)
        raise MalformedPayload(f"payload: unknown keys {', '.join(extra)}")
    packed: bytes = msgpack.packb(ordered, use_bin_type=True)
    return packed


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
# constants and capabilities, bounded by opcodes.MAX_RULES, MAX_CONSTS
# and MAX_CAPS and costing about what a real artifact's do. Each call into the
# unpacker covers one window, so the GIL is never held for long. Limits per
# element keep even one window cheap: msgpack reserves the slots an array
# header announces before it reads them, so arrays inside elements are
# short; an element of ``code`` or ``caps`` that is longer than a window is
# refused (an instruction takes at most 50 bytes, a capability signature
# under 20 KB); and an element of ``consts`` cannot be a non-empty container.

_WINDOW = 32 * 1024
MAX_PAYLOAD_KEYS = 64  # keys of the payload map; format 1.0 has 8

_UNPACK = dict(use_list=False, raw=False, strict_map_key=True, max_buffer_size=MAX_PAYLOAD + _WINDOW, read_size=_WINDOW)
_ELEMENT_LIMITS: dict[str, dict[str, Any]] = {
    # [name, [[param, type], ...]]: the longest array is the parameter list
    "caps": dict(
        _UNPACK,
        max_array_len=opcodes.MAX_PARAMS,
        max_map_len=16,
        max_str_len=_WINDOW,
        max_bin_len=_WINDOW,
        max_ext_len=_WINDOW,
    ),
    # strings; a container here can only be empty
    "consts": dict(
        _UNPACK,
        max_array_len=0,
        max_map_len=0,
        max_str_len=opcodes.MAX_STRING,
        max_bin_len=_WINDOW,
        max_ext_len=_WINDOW,
    ),
    # [opcode, operand, ...]: at most 5 elements (up to 64 get the verifier's own message)
    "code": dict(_UNPACK, max_array_len=64, max_map_len=16,
                 max_str_len=_WINDOW, max_bin_len=_WINDOW, max_ext_len=_WINDOW),
    # package names (format 1.2): strings, as in consts
    GOVERNS_KEY: dict(_UNPACK, max_array_len=0, max_map_len=0,
                      max_str_len=opcodes.MAX_STRING, max_bin_len=_WINDOW, max_ext_len=_WINDOW),
}
_EXPECTED = {"caps": "array", "consts": "str", "code": "array", GOVERNS_KEY: "str"}
_STRINGS = frozenset({"consts", GOVERNS_KEY})  # arrays of strings: an element may be longer than a window

_MAP, _ARRAY, _STR, _OTHER = range(4)
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class _NotMsgpack(Exception):
    """Raised inside read_payload; becomes ``MalformedPayload("payload is not valid msgpack: ...")``."""


def read_payload(
    payload: bytes | bytearray | memoryview, *, allow_unknown_keys: bool = False, minor: int = FORMAT_MINOR
) -> Program:
    """Check, verify and link payload bytes in bounded memory and time; raise :class:`MalformedPayload`.

    Accepts exactly the payloads of docs/artifact-format.md, like
    ``verify.verify_payload(unpack_payload(payload))``, within the limits of
    that page, which add two rules for the top-level map: at most
    ``MAX_PAYLOAD_KEYS`` keys, and no key twice. ``minor``: the format minor
    the artifact's header gives (a key of a later minor is refused).
    """
    if not isinstance(payload, (bytes, bytearray)):
        payload = bytes(payload)
    return read_program(payload, 0, len(payload), allow_unknown_keys, minor)


def read_fields(payload: bytes | bytearray | memoryview, keys: Collection[str]) -> dict[str, Any]:
    """The values of ``keys`` in a payload map, unpacked; every other value skipped without being built.

    For tools that need a few fields of a payload whose digest matched (the
    compiler's up-to-date check: ``module``, ``compiler``, ``source``,
    ``source_digest``, ``caps``; ``polc inspect``'s listing: ``code``). A key
    the payload lacks is absent from the result. The top-level map is checked
    (at most ``MAX_PAYLOAD_KEYS`` string keys, each once, nothing after it),
    and each value asked for must have the type the format gives it before
    anything of it is built: a string field (``FIELD_KEYS``) a string of at
    most ``MAX_STRING`` bytes; ``caps``, ``consts`` and ``code`` arrays within
    the format's counts, unpacked a window at a time with the per-element
    limits :func:`read_payload` uses. So what is built costs what such a value
    may cost in a valid artifact, whatever the bytes hold. Values are not
    verified further (a capability's parameter types, an instruction's
    operands). Raises :class:`MalformedPayload`.
    """
    try:
        if len(payload) <= _FIELDS_WHOLE_MAX:
            found = _fields_whole(bytes(payload), keys)
            if found is not None:
                return found
        return _fields(memoryview(payload), keys)
    except VerifyError as exc:
        message = f"malformed payload: {exc}"
    except _NotMsgpack as exc:
        message = f"payload is not valid msgpack: {exc}"
    except RecursionError:
        message = "malformed payload: nested too deeply"
    raise MalformedPayload(message)


# Up to this size a payload is unpacked whole when that is safe (see
# _read_whole) and the fields picked from it; beyond it, walking the map and
# skipping what is not asked for is faster (17 us against 22 us at 3.4 KB).
_FIELDS_WHOLE_MAX = 4 * 1024


def _fields_whole(data: bytes, keys: Collection[str]) -> dict[str, Any] | None:
    """:func:`read_fields` of a small payload unpacked whole; None when the walk must decide."""
    if data.count(b"\xdc") + data.count(b"\xdd") > _WHOLE_CLAIMS:  # (see _too_many_claims)
        return None
    try:
        obj = msgpack.unpackb(data, **_WHOLE_LIMITS)
    except Exception:
        return None
    if type(obj) is not dict or len(obj) != _map_count(data, 0) or {*map(type, obj)} != _STR_ONLY:
        return None  # not a map, a key given twice, or a key that is not a string
    found = {}
    for key in keys:
        if key in obj:
            value = obj[key]
            # of another type than the format's: the walk words the error (no
            # array of a payload this small can exceed the format's counts)
            if type(value) is not _TYPES.get(key, type(value)):
                return None
            found[key] = value
    return found


def _fields(buf: memoryview, keys: Collection[str]) -> dict[str, Any]:
    n = len(buf)
    count, pos = _payload_map(buf)
    seen: set[str] = set()
    out: dict[str, Any] = {}
    for _ in range(count):
        key, pos = _key(buf, pos, seen)
        if key in keys:
            pos, out[key] = _field(buf, pos, key)
        else:
            pos = _skip(buf, pos, key[:100])
    if pos != n:
        raise _NotMsgpack(f"{n - pos} byte{'s' if n - pos != 1 else ''} after the payload map")
    return out


def _payload_map(buf: memoryview) -> tuple[int, int]:
    """``(number of keys, position of the first)`` of the payload's top-level map, checked."""
    n = len(buf)
    if n == 0:
        raise _NotMsgpack("the payload is empty")
    family, count, pos = _head(buf, 0, "the payload")
    if family != _MAP:
        # not a payload, but say "not valid msgpack" if it is not even that
        if family == _STR and count <= opcodes.MAX_STRING:
            _text(buf, pos, count, "the payload")
        end = _skip(buf, 0, "the payload")
        if end != n:
            raise _NotMsgpack(f"{n - end} byte{'s' if n - end != 1 else ''} after the first object")
        raise VerifyError(f"payload: expected map, got {_kind(buf, 0)}")
    if count > MAX_PAYLOAD_KEYS:
        raise VerifyError(f"payload: a map of {count:,} keys, more than the {MAX_PAYLOAD_KEYS} a payload may have")
    return count, pos


def _key(buf: memoryview, pos: int, seen: set[str]) -> tuple[str, int]:
    """The payload key at ``pos`` (a string, not in ``seen``; added to it) and the position after it."""
    family, size, at = _head(buf, pos, "a payload key")
    if family != _STR:
        raise _NotMsgpack(f"a key of the payload map is {_kind(buf, pos)}, not a string")
    _check_string(size, "a payload key")
    key = _text(buf, at, size, "a payload key")
    if key in seen:
        raise VerifyError(f"payload: key {key[:100]!r} appears twice")
    seen.add(key)
    return key, at + size


def _string(buf: memoryview, pos: int, key: str) -> tuple[str, int]:
    """The string field ``key`` at ``pos`` (at most MAX_STRING bytes) and the position after it."""
    family, size, at = _head(buf, pos, key)
    if family != _STR:
        raise VerifyError(f"{key}: expected str, got {_kind(buf, pos)}")
    _check_string(size, key)
    return _text(buf, at, size, key), at + size


# The most elements read_fields builds of each array: the format's counts (an
# instruction takes at most 1 + MAX_PARAMS entries of ``code``).
_ARRAY_COUNTS = {
    "caps": opcodes.MAX_CAPS,
    "consts": opcodes.MAX_CONSTS,
    "code": opcodes.MAX_RULES * (1 + opcodes.MAX_PARAMS),
    GOVERNS_KEY: opcodes.MAX_GOVERNS,
}
_STR_ONLY = {str}
_TYPES: dict[str, type] = {**dict.fromkeys(FIELD_KEYS, str), **dict.fromkeys(_ARRAY_COUNTS, tuple)}


def _field(buf: memoryview, pos: int, key: str) -> tuple[int, Any]:
    """``(end, value)`` of the value of ``key`` at ``pos``, checked to be of its type before it is built."""
    if key in _FIELD_SET:
        _skip(buf, pos, key)  # a value cut off is refused as any other value is
        text, end = _string(buf, pos, key)
        return end, text
    limit = _ARRAY_COUNTS.get(key)
    if limit is not None:
        count, start = _array(buf, pos, key)
        if count > limit:
            raise VerifyError(f"{key}: {count:,} entries, more than the {limit:,} an artifact may hold")
        pieces: list[tuple[Any, ...]] = []
        end = _elements(buf, start, count, key, lambda chunk, first, final: pieces.append(chunk))
        return end, _joined(pieces)
    end = _skip(buf, pos, key[:100])
    return end, _value(buf[pos:end], key[:100])


def _value(piece: memoryview, what: str) -> Any:
    """The one msgpack value ``piece`` holds (``_skip`` found its end), every limit bounded by its length."""
    n = len(piece)
    try:
        return msgpack.unpackb(
            piece,
            use_list=False,
            raw=False,
            strict_map_key=True,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n // 2,
            max_ext_len=n,
        )
    except Exception as exc:
        raise _NotMsgpack(f"the value of {what!r}: {_describe(exc)}") from None


def read_program(
    data: bytes | bytearray, start: int, end: int, allow_unknown_keys: bool, minor: int = FORMAT_MINOR
) -> Program:
    """The payload ``data[start:end]``, read whole when that is safe and by windows otherwise.

    What :func:`read_payload` and ``read_artifact`` (which does not copy the
    payload out of the artifact's bytes) call; raises :class:`MalformedPayload`.
    """
    try:
        program = None
        if end - start <= _WHOLE_MAX:
            program = _read_whole(data, start, end, allow_unknown_keys, minor)
        if program is None:
            program = _read_payload(memoryview(data)[start:end], allow_unknown_keys, minor)
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
    use_list=False,
    raw=False,
    strict_map_key=True,
    max_array_len=8192,
    max_map_len=MAX_PAYLOAD_KEYS,
    max_str_len=_WHOLE_MAX,
    max_bin_len=_WHOLE_MAX,
    max_ext_len=_WHOLE_MAX,
)


def _read_whole(
    data: bytes | bytearray, start: int, end: int, allow_unknown_keys: bool, minor: int
) -> Program | None:
    if _too_many_claims(data, start, end):
        return None
    program: Program | None = _paused(_whole, data, start, end, allow_unknown_keys, minor)
    return program


def _too_many_claims(data: bytes | bytearray, start: int, end: int) -> bool:
    """More than _WHOLE_CLAIMS bytes of ``data[start:end]`` that could be array headers msgpack reserves for."""
    claims = 0
    for marker in (b"\xdc", b"\xdd"):
        at = data.find(marker, start, end)
        while at >= 0:
            claims += 1
            if claims > _WHOLE_CLAIMS:
                return True
            at = data.find(marker, at + 1, end)
    return False


def _whole(data: bytes | bytearray, start: int, end: int, allow_unknown_keys: bool, minor: int) -> Program | None:
    try:
        obj = msgpack.unpackb(data[start:end], **_WHOLE_LIMITS)  # a copy of at most 64 KiB
    except Exception:
        return None
    if type(obj) is not dict or len(obj) != _map_count(data, start):
        return None  # not a map, or a key given twice (the last one would win)
    if allow_unknown_keys and not all(type(k) is str for k in obj):
        return None  # (without unknown keys, verify_payload sees that every key is a known one)
    return verify.verify_payload(obj, allow_unknown_keys=allow_unknown_keys, minor=minor)


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
    count: int
    if b == 0xDE:
        count = _U16.unpack_from(data, pos + 1)[0]
        return count
    if b == 0xDF:
        count = _U32.unpack_from(data, pos + 1)[0]
        return count
    return -1


def _read_payload(buf: memoryview, allow_unknown_keys: bool, minor: int) -> Program:
    n = len(buf)
    count, pos = _payload_map(buf)
    seen: set[str] = set()
    fields: dict[str, str] = {}
    caps: tuple[Capability, ...] = ()
    consts: tuple[str, ...] = ()
    rules: list[Rule] | None = None
    governs: tuple[str, ...] = ()
    code_at = -1  # where ``code`` is, when it came before caps or consts
    for _ in range(count):
        key, pos = _key(buf, pos, seen)
        if key in _FIELD_SET:
            text, pos = _string(buf, pos, key)
            fields[key] = verify.verify_field(key, text)
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
        elif key == GOVERNS_KEY:
            pos, governs = _read_governs(buf, pos, minor)
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
    return verify.make_program([fields[k] for k in FIELD_KEYS], caps, consts, rules, governs)


_FIELD_SET = frozenset(FIELD_KEYS)


def _read_caps(buf: memoryview, pos: int) -> tuple[int, tuple[Capability, ...]]:
    count, start = _array(buf, pos, "caps")
    verify.check_caps_count(count)
    pieces: list[tuple[Any, ...]] = []
    end = _elements(buf, start, count, "caps", lambda chunk, first, final: pieces.append(chunk))
    return end, verify.verify_caps(_joined(pieces))


def _read_consts(buf: memoryview, pos: int) -> tuple[int, tuple[str, ...]]:
    count, start = _array(buf, pos, "consts")
    verify.check_consts_count(count)
    pieces: list[tuple[Any, ...]] = []
    end = _elements(
        buf,
        start,
        count,
        "consts",
        lambda chunk, first, final: pieces.append(verify.verify_consts(chunk, first)),
    )
    return end, _joined(pieces)


def _read_governs(buf: memoryview, pos: int, minor: int) -> tuple[int, tuple[str, ...]]:
    verify.check_governs_minor(minor)
    count, start = _array(buf, pos, GOVERNS_KEY)
    verify.check_governs_count(count)
    pieces: list[tuple[str, ...]] = []

    def take(chunk: tuple[Any, ...], first: int, final: bool) -> None:
        pieces.append(verify.verify_governs(chunk, first, pieces[-1][-1] if pieces else None))

    end = _elements(buf, start, count, GOVERNS_KEY, take)
    return end, _joined(pieces)


def _read_code(
    buf: memoryview, pos: int, caps: tuple[Capability, ...], consts: tuple[str, ...]
) -> tuple[int, list[Rule]]:
    count, start = _array(buf, pos, "code")
    linker = verify.Linker(caps, consts)
    verify.check_code_count(count, linker.tail - 1)
    end = _elements(buf, start, count, "code", lambda chunk, first, final: linker.feed(chunk, final))
    return end, linker.rules


def _joined(pieces: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    if len(pieces) == 1:
        return pieces[0]
    return tuple(chain.from_iterable(pieces))


def _elements(
    buf: memoryview, start: int, count: int, what: str, take: Callable[[tuple[Any, ...], int, bool], None]
) -> int:
    """Unpack the ``count`` elements of array ``what`` from ``start`` on, a window at a time.

    ``take(chunk, index of its first element, final)`` gets them in order, in
    pieces; returns the position after the last element.
    """
    if count == 0:
        return start
    n = len(buf)
    bounded = what not in _STRINGS
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
            used: int = unpacker.tell()
            return start + used
        if not got and bounded:
            raise _locate(buf, start, count, what)  # an element longer than a window


def _piece(unpacker: Any, done: int, count: int, take: Callable[[tuple[Any, ...], int, bool], None]) -> int:
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
    bounded = what not in _STRINGS
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
    if size > opcodes.MAX_STRING:
        raise VerifyError(
            f"{what}: a string of {size:,} bytes, more than the {opcodes.MAX_STRING:,} a payload string may have"
        )


def _bad_element(buf: memoryview, at: int, what: str, k: int, exc: BaseException | None) -> Exception:
    kind = _kind(buf, at)
    if kind == "str" and what in _STRINGS:
        size = _head(buf, at, f"{what}[{k}]")[1]
        if size > opcodes.MAX_STRING:
            return VerifyError(
                f"{what}[{k}]: a string of {size:,} bytes, "
                f"more than the {opcodes.MAX_STRING:,} a payload string may have"
            )
    if kind != _EXPECTED[what] and kind != "invalid":
        # the verifier's own words for an element of the wrong type
        if what == "code":
            return VerifyError(f"code[{k}]: expected an instruction array, got {kind}")
        if what == "caps":
            return VerifyError(f"caps[{k}]: expected [name, [[param, type], ...]], got {kind}")
        return VerifyError(f"{what}[{k}]: expected str, got {kind}")
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
        used: int = unpacker.tell()
        return pos + used


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
