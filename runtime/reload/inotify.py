"""Change notification for one policy directory through Linux inotify (``ctypes`` on libc).

Imported only on Linux, when a poller with inotify starts; nothing else of
polc needs it, and it needs nothing but the standard library.

What is watched (docs/runtime.md, "Change detection"):

* the policy directory itself (following a symlink to it): entries created,
  deleted, renamed in or out, closed after writing, their attributes
  changed; and the directory's own deletion, move or unmount;
* its parent, for the directory's name only: the directory replaced
  (``mv new policies``, ``rm -r policies; mkdir policies``, a symlink to it
  swapped) re-arms the watch on whatever the name points to now;
* when the directory holds a ``..data`` symlink (the layout of a Kubernetes
  ConfigMap or Secret volume), the directory it points to: a file rewritten
  there in place is reported under its own name. A ``..data`` swap (the
  way such volumes are updated) is reported as a change of every name, and
  the watch moves to the new target.

:meth:`Watcher.wait` blocks (without the GIL) until something happened or
the timeout passed, and returns a :class:`Changes`: the entry names that may
have changed, and whether the directory needs listing again or a full
sweep (the kernel's queue overflowed, a watch was re-armed). A watch that
cannot be (re-)armed raises :class:`WatchUnavailable`; the poller then falls
back to polling. Nothing here decides what a change means: the poller
examines every name reported exactly as it would have found it by polling.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import sys
import threading
from dataclasses import dataclass, field

__all__ = [
    "DATA_LINK",
    "NETWORK_FILESYSTEMS",
    "Changes",
    "WatchUnavailable",
    "Watcher",
    "filesystem_kind",
]

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000

ENTRY_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ATTRIB
SELF_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
DIR_MASK = ENTRY_EVENTS | SELF_EVENTS | IN_ONLYDIR | IN_EXCL_UNLINK
PARENT_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB | IN_ONLYDIR | IN_EXCL_UNLINK
DATA_MASK = IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | SELF_EVENTS | IN_ONLYDIR

DATA_LINK = "..data"  # the symlink a ConfigMap or Secret volume swaps on each update
SUFFIX = ".bin"

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_READ_SIZE = 64 * 1024
_POLL_MAX_MS = 86_400_000  # one day

# statfs f_type values of filesystems where inotify does not see changes
# made by other hosts (or by the server): polling is the only way there.
NETWORK_FILESYSTEMS = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x00C36400: "ceph",
    0x01021997: "9p",
    0x65735546: "fuse",
    0x47504653: "gpfs",
    0x0BD00BD0: "lustre",
}


class WatchUnavailable(OSError):
    """inotify cannot watch the directory (no inotify, a limit reached, a network filesystem)."""


@dataclass(slots=True)
class Changes:
    """What one wake-up reported: entry names that may have changed, and what else is needed."""

    names: set[str] = field(default_factory=set)
    relist: bool = False  # list the directory again (a ..data swap)
    full: bool = False  # a full step with the sweep (queue overflow, a watch re-armed)
    rearmed: bool = False  # the watch now follows another directory than before

    def __bool__(self) -> bool:
        return bool(self.names or self.relist or self.full)


class _Libc:
    """The three inotify calls, bound once (ENOSYS when libc lacks them)."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self.init1 = libc.inotify_init1
            self.add_watch = libc.inotify_add_watch
            self.rm_watch = libc.inotify_rm_watch
        except (OSError, AttributeError) as exc:
            raise WatchUnavailable(errno.ENOSYS, f"inotify is not available: {exc}") from None
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int


_libc: _Libc | None = None


def _get_libc() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def _errno_error(what: str, path: str | None = None) -> OSError:
    code = ctypes.get_errno()
    hint = ""
    if code == errno.ENOSPC:
        hint = " (the inotify watch limit is reached: fs.inotify.max_user_watches)"
    elif code == errno.EMFILE:
        hint = " (the inotify instance limit is reached: fs.inotify.max_user_instances)"
    message = f"{what}: {os.strerror(code)}{hint}"
    return OSError(code, message, path) if path else OSError(code, message)


def filesystem_kind(path: str) -> str | None:
    """The name of the network filesystem ``path`` is on, or None (local, or unknown)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        statfs = libc.statfs
    except (OSError, AttributeError):
        return None
    buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on 64-bit Linux
    statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    statfs.restype = ctypes.c_int
    if statfs(os.fsencode(path), buf) != 0:
        return None
    # f_type is the first field, a C long (``__fsword_t``) on every Linux ABI
    f_type = ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF
    return NETWORK_FILESYSTEMS.get(f_type)


class Watcher:
    """inotify watches on one policy directory, its parent and its ``..data`` target.

    Owned by one thread (the poller's), except :meth:`wake`, which any
    thread may call to end a :meth:`wait` early. Raises
    :class:`WatchUnavailable` when the directory cannot be watched at all.
    """

    def __init__(self, policy_dir: str) -> None:
        if not sys.platform.startswith("linux"):
            raise WatchUnavailable(errno.ENOSYS, f"inotify is Linux only (this is {sys.platform})")
        self.policy_dir = os.path.abspath(policy_dir)
        self._libc = _get_libc()
        self._dir_b = os.fsencode(self.policy_dir)
        parent, self._base = os.path.split(self.policy_dir)
        self._parent_b = os.fsencode(parent or "/")
        self._base_b = os.fsencode(self._base)
        self.closed = False
        self._close_lock = threading.Lock()  # wake() never writes to a descriptor closed meanwhile
        self.fd = self._wake_r = self._wake_w = -1
        self.dir_wd = -1
        self.parent_wd = -1
        self.data_wd = -1
        self.dir_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the directory watched
        self.data_target: str | None = None
        fd = self._libc.init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise WatchUnavailable(*_errno_error("inotify_init1").args)
        self.fd = fd
        try:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLIN)
            self._poll.register(self._wake_r, select.POLLIN)
            kind = filesystem_kind(self.policy_dir)
            if kind is not None:
                raise WatchUnavailable(
                    errno.EOPNOTSUPP,
                    f"{self.policy_dir} is on {kind}: inotify does not see changes made elsewhere",
                )
            self._arm_parent()
            self.arm_dir()
        except BaseException:
            self.close()
            raise

    # -- arming ------------------------------------------------------------

    def _add(self, path_b: bytes, mask: int) -> int:
        wd: int = self._libc.add_watch(self.fd, path_b, mask)
        if wd < 0:
            raise _errno_error("inotify_add_watch", os.fsdecode(path_b))
        return wd

    def _rm(self, wd: int) -> None:
        if wd >= 0:
            self._libc.rm_watch(self.fd, wd)  # EINVAL when the kernel removed it already: fine

    def _arm_parent(self) -> None:
        try:
            self.parent_wd = self._add(self._parent_b, PARENT_MASK)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE, errno.ENOMEM):
                raise WatchUnavailable(*exc.args) from None
            self.parent_wd = -1  # an unreadable parent: replacement is left to the sweep

    def arm_dir(self) -> bool:
        """(Re-)arm the watch on whatever the directory's path names now; True if it moved.

        A directory that does not exist now is not an error (the parent's
        watch sees it come back); a limit reached is :class:`WatchUnavailable`.
        """
        old = self.dir_wd
        try:
            st = os.stat(self._dir_b)
            wd = self._add(self._dir_b, DIR_MASK)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE, errno.ENOMEM, errno.ENOSYS):
                raise WatchUnavailable(*exc.args) from None
            self._rm(old)
            self.dir_wd = -1
            self.dir_id = None
            self._arm_data()
            return old != -1
        if old >= 0 and old != wd:
            self._rm(old)
        self.dir_wd = wd
        moved = self.dir_id != (st.st_dev, st.st_ino)
        self.dir_id = (st.st_dev, st.st_ino)
        self._arm_data()
        return moved

    def _arm_data(self) -> None:
        """Follow ``..data``: watch the directory it points to now (or nothing)."""
        target: str | None = None
        if self.dir_wd >= 0:
            link = os.path.join(self.policy_dir, DATA_LINK)
            try:
                if os.path.islink(link):
                    target = os.path.realpath(link)
                    if not os.path.isdir(target):
                        target = None
            except OSError:
                target = None
        if target == self.data_target and (target is None or self.data_wd >= 0):
            return
        self._rm(self.data_wd)
        self.data_wd = -1
        self.data_target = None
        if target is None:
            return
        try:
            self.data_wd = self._add(os.fsencode(target), DATA_MASK)
            self.data_target = target
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE, errno.ENOMEM):
                raise WatchUnavailable(*exc.args) from None
            # gone already (swapped again): the next swap event re-arms

    def still_armed(self) -> bool:
        """Does the watch follow what the directory's path names now? (the safety net asks)"""
        try:
            st = os.stat(self._dir_b)
        except OSError:
            return self.dir_wd < 0
        return self.dir_wd >= 0 and self.dir_id == (st.st_dev, st.st_ino)

    # -- waiting -----------------------------------------------------------

    def ready(self, timeout: float | None) -> bool:
        """Block (without the GIL) until events are queued, :meth:`wake` was called, or
        ``timeout`` seconds passed (None: forever); True unless the time ran out."""
        # poll(2) takes an int of milliseconds: a longer wait ends early, and the caller waits again
        ms = -1 if timeout is None else max(0, min(_POLL_MAX_MS, int(timeout * 1000 + 0.999)))
        return bool(self._poll.poll(ms))

    def read(self) -> Changes:
        """What the queued events say (possibly nothing: only woken, or events of no interest).

        Raises :class:`WatchUnavailable` when a watch must be re-armed and cannot be.
        """
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
        changes = Changes()
        self._drain(changes)
        return changes

    def wait(self, timeout: float | None) -> Changes | None:
        """:meth:`ready`, then :meth:`read`; None when the time ran out."""
        if not self.ready(timeout):
            return None
        return self.read()

    def _drain(self, changes: Changes) -> None:
        rearm = False
        while True:
            try:
                buf = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:  # pragma: no cover
                continue
            if not buf:
                break
            rearm |= self._parse(buf, changes)
        if rearm:
            changes.rearmed = self.arm_dir()
            changes.full = True

    def _parse(self, buf: bytes, changes: Changes) -> bool:
        """Fold one read's events into ``changes``; True when the directory watch must be re-armed."""
        rearm = False
        offset = 0
        size = _EVENT.size
        end = len(buf)
        while offset + size <= end:
            wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
            raw = buf[offset + size : offset + size + length].rstrip(b"\0")
            offset += size + length
            if mask & IN_Q_OVERFLOW:
                changes.full = True
                continue
            name = os.fsdecode(raw)
            if wd == self.dir_wd and wd >= 0:
                if mask & (SELF_EVENTS | IN_IGNORED):
                    rearm = True
                elif name == DATA_LINK:
                    self._arm_data()
                    changes.relist = True
                elif name.endswith(SUFFIX) and not name.startswith("."):
                    changes.names.add(name)
            elif wd == self.parent_wd and wd >= 0:
                if mask & IN_IGNORED:
                    self.parent_wd = -1
                    self._arm_parent()
                    rearm = True
                elif raw == self._base_b:
                    rearm = True
            elif wd == self.data_wd and wd >= 0:
                if mask & (SELF_EVENTS | IN_IGNORED):
                    if mask & IN_IGNORED:
                        self.data_wd = -1
                        self.data_target = None
                    self._arm_data()
                    changes.relist = True
                elif name.endswith(SUFFIX) and not name.startswith("."):
                    changes.names.add(name)
            # else: a watch removed earlier (an old ..data target, a directory moved away)
        return rearm

    def wake(self) -> None:
        """End a :meth:`wait` in progress (or the next one) early; safe from any thread."""
        with self._close_lock:
            if self.closed:
                return
            with contextlib.suppress(OSError):  # full: already woken
                os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Release the inotify instance and the wake pipe; idempotent."""
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
            fds = (self.fd, self._wake_r, self._wake_w)
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
