"""Writing artifacts: :func:`pack_artifact` and the atomic file writes.

:func:`pack_artifact` reads what it packs back through the runtime's own
reader, so a writer can never produce an artifact agents reject;
:func:`write_atomic` replaces a file so that readers see the old one or the
new one, never a mix (docs/artifact-format.md, "Writing").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

from .header import build_header
from .opcodes import OPTIONAL_KEYS
from .payload import pack_payload
from .reader import read_artifact

__all__ = ["format_minor", "fsync_dir", "pack_artifact", "process_umask", "stage_file", "write_atomic"]

# The minor of format 1 whose payloads need nothing newer: every payload key but
# OPTIONAL_KEYS' is 1.1's, and so is every capability type.
_BASE_MINOR = 1


def format_minor(payload: Mapping[str, Any]) -> int:
    """The oldest format minor that holds ``payload``: 1.1, or the minor of the newest optional key it has.

    So an artifact is readable by every agent that knows what it uses, and a
    payload without the newer keys is written byte for byte as before.
    """
    return max([_BASE_MINOR, *(minor for key, minor in OPTIONAL_KEYS.items() if key in payload)])


def pack_artifact(payload: dict[str, Any], *, flags: int = 0, trailer: bytes = b"", verify: bool = True) -> bytes:
    """Header (of the oldest minor that holds the payload: :func:`format_minor`) + msgpack payload + trailer.

    With ``verify`` (the default) the payload is read back through the same
    verifier the runtime uses, so a writer can never produce an artifact the
    runtime rejects; a failure raises :class:`MalformedPayload`.
    """
    body = pack_payload(payload)
    data = build_header(body, flags=flags, trailer_len=len(trailer), minor=format_minor(payload)) + body + trailer
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
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


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
