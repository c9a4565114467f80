"""The directory's raw listing, kept between polls, and what changed between two listings.

A poll that finds the directory's own stat changed must learn which
entries changed. Listing it with ``os.scandir`` costs a ``DirEntry`` and
several bytecodes per name, with the GIL, at every change: about 1 us per
name idle and several times that against a thread that keeps the GIL busy
(100,000 names: 0.5-0.9 s). Here the listing is read with ``getdents64``
(``ctypes`` on libc, Linux with glibc 2.30 or later): one call fills a
buffer with every entry's record (inode, offset, length, type, name)
without the GIL, and the poller keeps that buffer. The next listing is
compared with it byte for byte (``memcmp`` speed): the entries that
changed lie between the two buffers' common prefix and common suffix, and
only those records are decoded in Python.

Record boundaries: a record's length depends on its name, so a position
in the buffer is not known to start a record without walking there from
the start. :class:`Listing` keeps *marks*: the offset of every
MARK_EVERY-th record (found by a regular expression that matches
MARK_EVERY records at a time, in C). The changed region is widened to the
marks around it, which start records in both buffers (the bytes before
the first difference are the same, so is the walk up to them; in the
common suffix, the walk of the new buffer is followed until it lands on a
mark of the old one shifted by the difference in length, from where the
two are the same bytes, so the same records).

Nothing here decides what a change means. :func:`diff` returns the
records of the changed region of each buffer; anything unexpected (no
``getdents64``, a record that does not parse) returns None, and the poller
lists the directory with ``os.scandir`` as it always did.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import os
import re
import sys
from typing import Any

__all__ = ["DT_DIR", "DT_LNK", "DT_REG", "DT_UNKNOWN", "MARK_EVERY", "Entry", "Listing", "diff", "mark", "read_raw"]

DT_UNKNOWN = 0
DT_DIR = 4
DT_REG = 8
DT_LNK = 10

MARK_EVERY = 64
_HEADER = 19  # d_ino (8), d_off (8), d_reclen (2), d_type (1); then the name, NUL, padding to 8
_MIN_BUF = 32 * 1024
_MAX_BUF = 8 * 1024 * 1024
_CMP_CHUNK = 64 * 1024

Entry = tuple[int, int]  # (inode, d_type) of one name in a changed region


def _record_pattern() -> bytes:
    # A record of a name of length 8q + r: the header, the name (no NUL), one
    # NUL, then (4 - r) mod 8 padding bytes of any value (the total is a multiple of 8).
    tails = [rb"[^\0]{%d}\0(?s:.){%d}" % (r, (4 - r) % 8) for r in range(8)]
    return rb"(?s:.){19}(?:[^\0]{8})*(?:" + b"|".join(tails) + rb")"


_MARKS = re.compile(rb"(?:" + _record_pattern() + rb"){1,%d}" % MARK_EVERY)


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.getdents64: Any = libc.getdents64  # AttributeError when libc lacks it
        self.getdents64.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        self.getdents64.restype = ctypes.c_ssize_t


_libc: _Libc | None = None
_unavailable = not sys.platform.startswith("linux")


def _get_libc() -> _Libc | None:
    global _libc, _unavailable
    if _libc is None and not _unavailable:
        try:
            _libc = _Libc()
        except (OSError, AttributeError):
            _unavailable = True
    return _libc


def read_raw(path: str, size_hint: int = 0) -> bytes | None:
    """Every record of the directory ``path``, as ``getdents64`` returns them; None
    where that call is not available. Raises OSError as listing the directory would."""
    libc = _get_libc()
    if libc is None:
        return None
    size = min(_MAX_BUF, max(_MIN_BUF, size_hint + _MIN_BUF))
    buf = ctypes.create_string_buffer(size)
    parts: list[bytes] = []
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            n = libc.getdents64(fd, buf, size)  # without the GIL
            if n < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                raise OSError(code, os.strerror(code), path)
            if n == 0:
                break
            parts.append(ctypes.string_at(buf, n))
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Listing:
    """One raw listing and the offsets of every MARK_EVERY-th record in it (and its end)."""

    __slots__ = ("marks", "raw")

    def __init__(self, raw: bytes, marks: list[int]) -> None:
        self.raw = raw
        self.marks = marks


def mark(raw: bytes) -> Listing | None:
    """The marks of ``raw`` (a regular expression walks MARK_EVERY records per match);
    None when the records do not parse."""
    marks = [0]
    match = _MARKS.match
    pos = 0
    end = len(raw)
    while pos < end:
        m = match(raw, pos)
        if m is None:
            return None
        pos = m.end()
        marks.append(pos)
    return Listing(raw, marks)


class _Malformed(Exception):
    pass


def _records(raw: bytes, start: int, stop: int, out: dict[str, Entry], offsets: list[int] | None) -> int:
    """Decode the records from ``start`` until the walk reaches ``stop`` (or, when
    ``offsets`` is given, appends each record's offset and returns where it stopped)."""
    pos = start
    end = len(raw)
    find = raw.find
    decode = os.fsdecode
    while pos < stop:
        if pos + _HEADER + 2 > end:
            raise _Malformed
        reclen = raw[pos + 16] | raw[pos + 17] << 8
        if reclen < 24 or reclen & 7 or pos + reclen > end:
            raise _Malformed
        nul = find(b"\0", pos + _HEADER, pos + reclen)
        if nul <= pos + _HEADER:
            raise _Malformed
        if offsets is not None:
            offsets.append(pos)
        out[decode(raw[pos + _HEADER : nul])] = (int.from_bytes(raw[pos : pos + 8], sys.byteorder), raw[pos + 18])
        pos += reclen
    return pos


def _common_prefix(a: bytes, b: bytes, limit: int) -> int:
    lo = 0
    while lo < limit:
        hi = min(limit, lo + _CMP_CHUNK)
        if a[lo:hi] != b[lo:hi]:
            while hi - lo > 1:  # the first difference is in [lo, hi)
                mid = (lo + hi) // 2
                if a[lo:mid] == b[lo:mid]:
                    lo = mid
                else:
                    hi = mid
            return lo
        lo = hi
    return limit


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    la, lb = len(a), len(b)
    n = 0  # a[la-n:] == b[lb-n:]
    while n < limit:
        m = min(limit, n + _CMP_CHUNK)
        if a[la - m : la - n] != b[lb - m : lb - n]:
            while m - n > 1:
                mid = (n + m) // 2
                if a[la - mid : la - n] == b[lb - mid : lb - n]:
                    n = mid
                else:
                    m = mid
            return n
        n = m
    return limit


def diff(old: Listing, raw: bytes) -> tuple[Listing, dict[str, Entry], dict[str, Entry]] | None:
    """The new listing (marked), and the records of the changed region in the old and
    in the new buffer (name -> (inode, type)); None when a record does not parse.

    A name in neither dict is in both listings with the same record. The
    regions include up to MARK_EVERY unchanged records on either side.
    """
    a = old.raw
    if raw == a:
        return Listing(raw, old.marks), {}, {}
    la, lb = len(a), len(raw)
    p = _common_prefix(a, raw, min(la, lb))
    s = _common_suffix(a, raw, min(la, lb) - p)
    marks = old.marks
    i = bisect.bisect_right(marks, p) - 1  # marks[i] <= p starts a record in both
    start = marks[i]
    delta = lb - la
    tail = la - s  # old[tail:] == new[tail + delta:]
    new_offsets: list[int] = []
    olds: dict[str, Entry] = {}
    news: dict[str, Entry] = {}
    try:
        # the new buffer: walk from `start` until landing on an old mark (shifted)
        # in the common suffix; the old one: from `start` to that mark
        j = bisect.bisect_left(marks, tail, lo=i)
        pos = start
        while True:
            target = marks[j] + delta
            pos = _records(raw, pos, target, news, new_offsets)
            if pos == target:
                break
            j += 1  # overshot the mark: the next one
            while marks[j] + delta < pos:
                j += 1
        if _records(a, start, marks[j], olds, None) != marks[j]:
            raise _Malformed
    except (_Malformed, IndexError):
        return None
    mid = new_offsets[MARK_EVERY::MARK_EVERY]
    new_marks = marks[: i + 1] + mid + [m + delta for m in marks[j:]]
    return Listing(raw, new_marks), olds, news
