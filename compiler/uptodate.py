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

A file in the output directory is as hostile as any input, so the payload is
never unpacked whole (a small file of tiny containers would cost up to 80
times its size in objects). It is walked instead: the keys of its top-level
map; the four recorded strings; the capability signatures one at a time,
each compared and dropped; every other value skipped without building it.
What is alive at once is the file's bytes, the payload, the unpacker's copy of
it and one string: about three times the file's size, whatever it holds.
"""

from __future__ import annotations

from typing import Any

import msgpack

from polc import __version__
from polc.runtime.artifact import HEADER_SIZE, ArtifactError, artifact_digest, read_artifact_bytes, read_header
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
    wanted = {"module": module, "compiler": __version__, "source": source, "source_digest": digest}
    return _payload_matches(payload, wanted, decls) and signer_key_id(data) == signer


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

    def at(self, family: frozenset[int]) -> bool:
        """Is the next value of one of these msgpack types (by its first byte)?"""
        pos = self.unpacker.tell()
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
        self.unpacker.skip()

    @property
    def done(self) -> bool:
        """Has every byte been read?"""
        pos: int = self.unpacker.tell()
        return pos == len(self.buf)


def _payload_matches(payload: bytes, wanted: dict[str, str], decls: Declarations) -> bool:
    """Do the payload's recorded strings equal ``wanted`` and its capability signatures ``decls``?

    A recorded field that is missing compares unequal; ``caps`` may be missing
    (no capability used). A key given twice, or anything that is not msgpack
    where it is read, means no.
    """
    try:
        walk = _Walk(payload)
        count: int = walk.unpacker.read_map_header()
        seen: set[Any] = set()
        for _ in range(count):
            if not walk.at(_KEY):
                return False
            key = walk.unpacker.unpack()
            if key in seen:
                return False
            seen.add(key)
            if key in _RECORDED:
                if walk.string() != wanted[key]:
                    return False
            elif key == "caps":
                if not all(_cap_current(walk, decls) for _ in range(walk.array())):
                    return False
            else:
                walk.skip()
        return walk.done and seen >= _RECORDED
    except Exception:  # msgpack's errors for bytes that are not what they claim: rebuild
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
