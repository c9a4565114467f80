"""Is an artifact in the output directory the one this compiler would write now?

Up to date means: ``OUT/NAME.bin`` has a valid header (the runtime's
``read_header``), exactly the length it declares and the payload digest it
declares, and its payload records the same module, compiler version, source
name and source digest; every capability signature it carries is still the
current one (a declaration elsewhere in the tree may have changed); and it is
signed by the key given (by no key without one).

The bytecode is not verified again here (10,000 artifacts must be checked in
well under 2 s): the runtime verifies at load, and an artifact recording this
source digest and compiler version came from this compiler. Any problem means
"rebuild".

A file in the output directory is as hostile as any input, so its payload is
never unpacked beyond a bounded cost. A small payload (at most 64 KiB, with
few array headers that could make msgpack reserve room ahead) is unpacked in
one call, as the runtime's reader does with small payloads: its objects cost
at most about 80 times its size, and what msgpack reserves ahead for array
headers at most 32 headers' worth (about 20 MiB in all). Any other is walked: the keys of its top-level map; the
four recorded strings; the capability signatures one at a time, each compared
and dropped; every other value skipped without being built. What is alive at
once is then the file's bytes and a few copies of the payload: a small
multiple of the file's size, whatever it holds. The decisions are the same
either way, except that the walk does not look inside the values it skips
(the bytecode is not checked here anyway).
"""

from __future__ import annotations

from typing import Any

import msgpack

from polc import __version__
from polc.runtime.artifact import (
    HEADER_SIZE,
    ArtifactError,
    artifact_digest,
    read_artifact_bytes,
    read_header,
    unpack_payload,
)
from polc.runtime.signing import signer_key_id

from .checker import Declarations

__all__ = ["up_to_date"]

_RECORDED = frozenset({"module", "compiler", "source", "source_digest"})
"""The payload's string fields the check compares."""


def up_to_date(
    path: str, module: str, source: str, digest: str, decls: Declarations, signer: str | None = None
) -> bool:
    """Does ``path`` hold the artifact this compiler would write for ``module`` now?"""
    try:
        data = read_artifact_bytes(path)
        header = read_header(data)
    except ArtifactError:
        return False
    if len(data) != header.total_len:
        return False
    payload = data[HEADER_SIZE : HEADER_SIZE + header.payload_len]
    if artifact_digest(payload, header.major, header.minor) != header.digest:
        return False
    if _small(payload):
        try:
            p = unpack_payload(payload)
        except ArtifactError:
            return False
        matches = (
            isinstance(p, dict)
            and p.get("module") == module
            and p.get("compiler") == __version__
            and p.get("source") == source
            and p.get("source_digest") == digest
            and _caps_current(p.get("caps", ()), decls)
        )
    else:
        wanted = {"module": module, "compiler": __version__, "source": source, "source_digest": digest}
        matches = _walk_matches(payload, wanted, decls)
    return matches and signer_key_id(data) == signer


_WHOLE_MAX = 64 * 1024
_WHOLE_CLAIMS = 32


def _small(payload: bytes) -> bool:
    """Is unpacking ``payload`` whole cheap whatever it holds?

    Its objects cost at most about 80 times its size; and msgpack reserves the
    slots an array header announces before reading them, which only a 16- or
    32-bit array header (``0xdc``, ``0xdd``) can make large: a real payload has
    a few such bytes (its operands included), so more than ``_WHOLE_CLAIMS``
    goes to the walk.
    """
    return len(payload) <= _WHOLE_MAX and payload.count(b"\xdc") + payload.count(b"\xdd") <= _WHOLE_CLAIMS


def _caps_current(caps: Any, decls: Declarations) -> bool:
    """Is every ``[name, [[param, type], ...]]`` still the signature polc would write?"""
    try:
        for name, params in caps:
            current = decls.lookup(name)
            if current is None or [(p.name, p.type) for p in current.params] != [tuple(x) for x in params]:
                return False
    except (TypeError, ValueError):
        return False
    return True


# msgpack's first bytes of a str (fixstr, str 8/16/32) and of a str or bin (a map key).
_STR = frozenset(range(0xA0, 0xC0)) | {0xD9, 0xDA, 0xDB}
_KEY = _STR | {0xC4, 0xC5, 0xC6}


class _Walk:
    """A cursor over payload bytes: strings unpacked one at a time, containers by their headers."""

    __slots__ = ("buf", "unpacker")

    def __init__(self, buf: bytes) -> None:
        n = len(buf)
        self.buf = buf
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(n, 1),
                                         max_str_len=n, max_bin_len=n, max_array_len=n, max_map_len=n // 2,
                                         max_ext_len=n)
        self.unpacker.feed(buf)

    @property
    def pos(self) -> int:
        pos: int = self.unpacker.tell()
        return pos

    def at(self, family: frozenset[int]) -> bool:
        """Is the next value of one of these msgpack types (by its first byte)?"""
        pos = self.pos
        return pos < len(self.buf) and self.buf[pos] in family

    def string(self) -> str | None:
        """The next value if it is a string (consumed either way)."""
        if self.at(_STR):
            value: str = self.unpacker.unpack()
            return value
        self.unpacker.skip()
        return None

    def array(self) -> int:
        """The length of the array that comes next (``ValueError`` if none does)."""
        n: int = self.unpacker.read_array_header()
        return n

    def skip(self) -> None:
        """Step over the next value without building it."""
        self.unpacker.skip()


def _walk_matches(payload: bytes, wanted: dict[str, str], decls: Declarations) -> bool:
    """:func:`up_to_date`'s comparison, walking the payload instead of unpacking it.

    Decides as unpacking whole does: a recorded field that is missing compares
    unequal, ``caps`` may be missing (no capability used), of a key given twice
    the last value counts, and bytes that are not msgpack where they are read
    mean no.
    """
    try:
        walk = _Walk(payload)
        count: int = walk.unpacker.read_map_header()
        equal: dict[str, bool] = {}
        caps_ok = True
        for _ in range(count):
            if not walk.at(_KEY):
                return False
            key = walk.unpacker.unpack()
            if key in _RECORDED:
                equal[key] = walk.string() == wanted[key]
            elif key == "caps":
                start = walk.pos
                walk.skip()
                caps_ok = _caps_match(payload[start : walk.pos], decls)
            else:
                walk.skip()
        return walk.pos == len(payload) and len(equal) == len(_RECORDED) and all(equal.values()) and caps_ok
    except Exception:  # msgpack's errors for bytes that are not what they claim: rebuild
        return False


def _caps_match(caps: bytes, decls: Declarations) -> bool:
    """:func:`_caps_current` of the packed ``caps`` array, one signature at a time."""
    walk = _Walk(caps)
    try:
        return all(_cap_current(walk, decls) for _ in range(walk.array()))
    except Exception:  # not an array of arrays, or not msgpack
        return False


def _cap_current(walk: _Walk, decls: Declarations) -> bool:
    """Is the next ``[name, [[param, type], ...]]`` still the signature polc would write for ``name``?"""
    if walk.array() != 2:
        return False
    name = walk.string()
    current = decls.lookup(name) if name is not None else None
    if current is None or walk.array() != len(current.params):
        return False
    return all(walk.array() == 2 and walk.string() == p.name and walk.string() == p.type for p in current.params)
