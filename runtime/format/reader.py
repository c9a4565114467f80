"""Reading artifacts: :class:`Artifact` and ``read_artifact*``, what the runtime loads with.

The reader checks, in order and before unpacking anything: the length of the
header, the magic, the version, the flags, the declared lengths, the exact
file length, and the digest (``header.read_envelope``). Only then is the
payload read, in pieces of bounded size each verified structurally before
the next is unpacked (``payload.read_program``), and its module name compared
with the file name. Every failure raises one subclass of
:class:`~polc.runtime.errors.ArtifactError` with a message for people and a
short ``reason``; what a failure *means* is the caller's business (the agent
keeps the previous policy, ``polc inspect`` exits 1).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, BinaryIO, Protocol

from ..errors import ModuleNameMismatch, UnreadableArtifact
from .header import FORMAT_MINOR, HEADER_SIZE, Header, read_envelope, read_header
from .opcodes import ARTIFACT_SUFFIX
from .payload import read_program
from .program import Program

__all__ = [
    "Artifact",
    "Trust",
    "module_for_path",
    "read_artifact",
    "read_artifact_bytes",
    "read_artifact_file",
]


class Trust(Protocol):
    """What ``read_artifact(trust=...)`` calls (implemented by ``signing.TrustConfig``)."""

    def verify(self, header: Header, signed_bytes: bytes, trailer: bytes, module: str) -> Any: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Artifact(Program):
    """A verified artifact, ready to link: its :class:`Program` and where it came from. Immutable.

    The fields it adds to Program's are keyword-only.
    """

    header: Header
    revision: str
    """The first 12 hex digits of the digest."""
    digest_hex: str
    trailer: bytes
    size: int
    """The file's length in bytes."""


_PROGRAM_FIELDS = attrgetter(*(f.name for f in fields(Program)))


def read_artifact(
    data: bytes | bytearray | memoryview,
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
    header, data, _, trailer = read_envelope(data)
    end = HEADER_SIZE + header.payload_len
    # With a trust configuration and a known module, the signature is checked
    # before the payload is unpacked, so bytes no trusted key signed are never
    # parsed. The module-name check below then binds the payload to that name.
    if trust is not None and expected_module is not None:
        trust.verify(header, bytes(data[:end]), trailer, expected_module)
    program = read_program(data, HEADER_SIZE, end, header.minor > FORMAT_MINOR, header.minor)
    if expected_module is not None and program.module != expected_module:
        if file_name is None:
            file_name = expected_module + ARTIFACT_SUFFIX
        raise ModuleNameMismatch(f"artifact is for module {program.module!r} but the file is named {file_name}")
    if trust is not None and expected_module is None:
        trust.verify(header, bytes(data[:end]), trailer, program.module)
    digest_hex = header.digest.hex()
    return Artifact(
        *_PROGRAM_FIELDS(program),
        header=header,
        revision=digest_hex[:12],
        digest_hex=digest_hex,
        trailer=trailer,
        size=len(data),
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
        raise UnreadableArtifact(f"cannot read: {exc.strerror or exc}", errno=exc.errno) from exc


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


def _read_upto(f: BinaryIO, want: int) -> bytes:
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
