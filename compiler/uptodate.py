"""Is an artifact in the output directory the one this compiler would write now?

Up to date means: ``OUT/NAME.bin`` passes the runtime's envelope checks
(``format.header.read_envelope``: a valid header, exactly the length it
declares, the payload digest it declares), and its payload records the same
module, compiler version, source name and source digest; every capability
signature it carries is still the current one (a declaration elsewhere in
the tree may have changed); and it is signed by the key given (by no key
without one).

The bytecode is not verified again here (10,000 artifacts must be checked in
well under 2 s): the runtime verifies at load, and an artifact recording this
source digest and compiler version came from this compiler. Any problem means
"rebuild".

A file in the output directory is as hostile as any input, so its payload is
read with the runtime's ``format.payload.read_fields``: only the five fields
compared are built, each checked to be of its type first (a string, an array
within the format's count read a window at a time), and every other value is
skipped without being built; memory stays a small multiple of the file's size
whatever it holds. A payload that the runtime's reader would refuse at its top
level (a key given twice, bytes after the map) means "rebuild", which is
conservative: this compiler never writes one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat as stat_mod
from typing import Any

import msgpack

from polc import __version__
from polc.runtime.errors import ArtifactError
from polc.runtime.format.header import read_envelope
from polc.runtime.format.payload import read_fields
from polc.runtime.format.reader import read_artifact_bytes
from polc.runtime.signing import signer_key_id

from .checker import Declarations

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "RACY_NS",
    "Manifest",
    "Place",
    "StatKey",
    "declarations_key",
    "settled",
    "stat_key",
    "up_to_date",
]

_FIELDS = ("module", "compiler", "source", "source_digest", "caps")
"""The payload's fields the check compares."""


def up_to_date(
    path: str, module: str, source: str, digest: str, decls: Declarations, signer: str | None = None
) -> bool:
    """Does ``path`` hold the artifact this compiler would write for ``module`` now?"""
    try:
        envelope = read_envelope(read_artifact_bytes(path))
        p = read_fields(envelope.payload, _FIELDS)
    except ArtifactError:
        return False
    return (
        p.get("module") == module
        and p.get("compiler") == __version__
        and p.get("source") == source
        and p.get("source_digest") == digest
        and _caps_current(p.get("caps", ()), decls)
        and signer_key_id(envelope.data) == signer
    )


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


# --------------------------------------------------------------------------
# The stat manifest: up to date without reading what has not changed

MANIFEST_NAME = ".polc-uptodate"
"""The manifest in the output directory (a '.' name: agents never load it)."""
MANIFEST_VERSION = 1
RACY_NS = 2_000_000_000
"""A file changed less than this long before its stat was taken is not recorded: on a file
system with coarse timestamps (2 s on FAT) a later edit in the same tick could keep them."""
_MANIFEST_MAX = 64 << 20

StatKey = tuple[int, int, int, int, int]
"""``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``"""
Place = tuple[str, int, int]
"""``(module, line, col)`` of a module's header in its source."""


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(key: StatKey, now_ns: int) -> bool:
    """Did the file last change at least :data:`RACY_NS` before ``now_ns`` (when it was statted)?"""
    return max(key[3], key[4]) <= now_ns - RACY_NS


def declarations_key(decls: Declarations) -> str:
    """A digest of the tree's declarations: a manifest recorded under others is not used."""
    parts = [(n, [(p.name, p.type) for p in d.cap.params]) for n, d in sorted(decls.caps.items())]
    return hashlib.sha256(repr((parts, sorted(decls.broken))).encode()).hexdigest()


class Manifest:
    """What a compile found up to date, keyed by each file's stat, so the next compile need not
    read an unchanged source or artifact again.

    An entry records a source (by the name its artifacts record) with its stat key, its
    digest and, for each of its modules, the header's place and the artifact's stat key,
    taken *before* the source was read and the artifact checked. It is used only by a
    compile of the same compiler version, signer and tree-wide declarations, and only when
    the source and every one of its artifacts still have exactly those stat keys (device,
    inode, size, modification and change times in nanoseconds). The trade: a source or
    artifact changed without changing any of these is taken as unchanged. Every write,
    truncation, rename over it and ``utime`` sets the change time, which no unprivileged
    call sets back; files changed within :data:`RACY_NS` of their stat are not recorded.
    ``--force`` and ``--strict`` never read it. The manifest is as hostile as the artifacts
    beside it: it is read bounded, any malformed part is a miss, and a miss means the full
    check (:func:`up_to_date`). It is read only when it is a regular file owned by this user
    and writable by no one else.
    """

    def __init__(self, header: list[Any], decls: str, files: dict[str, Any]) -> None:
        self.header = header
        self.decls = decls
        self.files = files
        self.new: dict[str, Any] = {}
        self._loaded = (decls, files)

    @classmethod
    def load(cls, out: str, header: list[Any]) -> Manifest:
        """The manifest of ``out`` recorded under ``header`` (the format, compiler version and
        signer), or an empty one. The declarations it was recorded under are known only once
        the tree's are: :meth:`declared` says whether they are the same."""
        files: dict[str, Any] = {}
        decls = ""
        try:
            fd = os.open(os.path.join(out, MANIFEST_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return cls(header, decls, files)
        try:
            with open(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                # a regular file of ours that no one else may write (else it is not read at all)
                if stat_mod.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022:
                    data = fh.read(_MANIFEST_MAX + 1)
                    if len(data) <= _MANIFEST_MAX:
                        got = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, max_bin_len=1 << 20)
                        if (
                            type(got) is list and len(got) == 3 and got[0] == header
                            and type(got[1]) is str and type(got[2]) is dict
                            and all(type(v) is bytes for v in got[2].values())
                        ):
                            decls, files = got[1], got[2]
        except (OSError, ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            decls, files = "", {}
        return cls(header, decls, files)

    def declared(self, decls: str) -> bool:
        """Were the entries recorded under the declarations of digest ``decls``? From now on
        the manifest is recorded under those (entries recorded under others are dropped)."""
        same = decls == self.decls
        if not same:
            self.decls, self.files = decls, {}
        return same

    def lookup(self, source: str, key: StatKey, out: str) -> tuple[str, list[Place]] | None:
        """``(digest, places)`` when ``source`` and its artifacts are as recorded, else None."""
        blob = self.files.get(source)
        if blob is None:
            return None
        try:
            skey, digest, mods = msgpack.unpackb(blob, use_list=False)
            if type(digest) is not str or skey != key or not mods:
                return None
            places: list[Place] = []
            prefix = os.path.join(out, "")
            for name, line, col, akey in mods:
                if type(name) is not str or type(line) is not int or type(col) is not int:
                    return None
                if akey != stat_key(os.stat(prefix + name + ".bin", follow_symlinks=False)):
                    return None
                places.append((name, line, col))
        except (OSError, TypeError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return None
        self.new[source] = blob
        return digest, places

    def record(self, source: str, key: StatKey, digest: str, mods: list[tuple[str, int, int, StatKey]]) -> None:
        # one bytes object per entry: the loaded manifest holds no object the cyclic GC walks
        self.new[source] = msgpack.packb([key, digest, [[n, ln, c, a] for n, ln, c, a in mods]])

    def save(self, out: str) -> None:
        """Write what this compile recorded (atomically), unless it is what was read."""
        decls, files = self._loaded
        if self.new == files and (decls == self.decls or not files):
            return
        from polc.runtime.format.writer import process_umask, stage_file

        data = msgpack.packb([self.header, self.decls, self.new], use_bin_type=True)
        tmp = stage_file(out, data, prefix=".polc-compile-")
        try:
            os.chmod(tmp, 0o644 & ~process_umask())  # never group-writable, whatever the umask: else unread
            os.replace(tmp, os.path.join(out, MANIFEST_NAME))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
