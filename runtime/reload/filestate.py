"""What the reloader records of each ``*.bin`` file: its stat key, and whether that stat can be trusted.

A file is re-read only when its stat key ``(st_mtime_ns, st_size, st_ino,
st_ctime_ns)`` differs from the recorded one — equality only, never "newer
than" — or when the recorded stat was *racy*: taken so soon after the file
last changed that a rewrite within the same timestamp tick could leave an
identical stat (git's "racily clean" problem). A racy file is re-read on
every step until its stat is old enough to be trusted.
"""

from __future__ import annotations

import os
from typing import Final, Protocol

__all__ = [
    "RACY_FINE_NS",
    "RACY_NS",
    "ErrorKey",
    "FileKey",
    "FileState",
    "StatKey",
    "SweepEntry",
    "is_racy",
    "stat_key",
]

# A file changed this recently when it was statted is re-read on the next
# step even if its stat key did not change (same-tick rewrites). RACY_NS
# covers filesystems with coarse (1-2 s) timestamps; RACY_FINE_NS is used
# when the ctime has sub-millisecond digits (ext4, xfs, btrfs, tmpfs: ns
# fields, but stamped from the kernel's coarse clock, one tick <= 10 ms).
RACY_NS = 2_000_000_000
RACY_FINE_NS = 50_000_000

StatKey = tuple[int, int, int, int]  # (st_mtime_ns, st_size, st_ino, st_ctime_ns)
ErrorKey = tuple[str, "int | None"]  # ("error", errno): the file could not be statted
FileKey = StatKey | ErrorKey
# What the sweep stats, per file whose recorded stat can be trusted:
# (name, mtime_ns, size, ino, ctime_ns); the path is the directory's and the name.
SweepEntry = tuple[str, int, int, int, int]
ERROR: Final = "error"


class _Stat(Protocol):
    @property
    def st_ctime_ns(self) -> int: ...


class FileState:
    """What the last step saw of one ``*.bin`` file (changed only by the step that owns it)."""

    __slots__ = ("content", "error", "ino", "key", "racy")

    def __init__(self, key: FileKey, racy: bool, content: bytes | None, error: str | None) -> None:
        self.key = key  # (mtime_ns, size, ino, ctime_ns), or ("error", errno)
        self.ino = key[2] if len(key) == 4 else None
        self.racy = racy  # changed too recently for its stat to be trusted
        self.content = content  # SHA-256 of the bytes last read
        self.error = error  # reason the current file state failed, or None

    def __repr__(self) -> str:
        return f"FileState({self.key!r}, racy={self.racy}, error={self.error!r})"


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def is_racy(st: _Stat, now_ns: int) -> bool:
    """True when ``st`` changed too recently for an unchanged stat to prove an unchanged file.

    ``now_ns`` is taken before the stat, so the test errs on the racy side.
    The window is RACY_FINE_NS when the ctime has sub-millisecond digits
    (the filesystem keeps fine timestamps), else RACY_NS (coarse clocks,
    FAT's 2 s, NFS servers rounding to seconds or milliseconds).
    """
    ctime = st.st_ctime_ns
    return ctime >= now_ns - (RACY_FINE_NS if ctime % 1_000_000 else RACY_NS)
