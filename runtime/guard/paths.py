"""File-system requests: a path an operation names -> the (root, path) pairs a policy speaks of.

A path is made absolute (against the working directory the guard tracks
through ``os.chdir`` events, or the directory a ``dir_fd`` names), then
resolved: symlinks and ``..`` as the kernel would follow them
(``os.path.realpath``). Operations that act on a name itself (remove,
rename, link, mkdir, ...) resolve the directory holding it and keep its last
component, so removing a symlink is a write where the link is, not where it
points.

Resolving costs an ``lstat`` per path component, so a resolution is
reused, by the rule the runtime already applies to command lookups
(``patterns.RESOLVE_TTL``): for at most one second, and never after a
rename, removal, link, symlink creation, change of directory or of a
mode, owner, ACL or flags anywhere in this process (every one raises an audit event the guard sees, governed or
not). A path through ``/proc`` or ``/dev`` (``/proc/self/cwd``,
``/proc/self/fd/N``, ``/dev/fd/N``: a chdir, ``dup2`` or ``close`` changes where
it leads) is resolved every time. A symlink repointed
by code in this process is seen at once; one repointed by another process,
within a second. (The check and the operation remain two steps; see
docs/guard.md, "Limits".)

Roots: a configured root (``roots={"config": "/etc/myapp"}``) matches the
paths below its directory; every path is also ``fs.read("/", "etc/...")``
against the file-system root; a path below the base directory is offered as
every split of it into a root and a rest (``("tenants/acme", "x.txt")``,
``("tenants", "acme/x.txt")``, ``(".", "tenants/acme/x.txt")``), so a rule's
root may name any directory relative to the base.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Mapping

from ..patterns import RESOLVE_TTL

__all__ = ["PathResolver", "RootMap", "Undecidable"]

_MAX_REMEMBERED = 8192
_monotonic = time.monotonic


class Undecidable(Exception):
    """A request the guard cannot turn into a policy question; denied with this reason."""


def as_text(path: object) -> str:
    """The path an audit event carries, as text; no method of a hostile object runs."""
    t = type(path)
    if t is str:
        return str.__str__(path)
    if t is bytes:
        return os.fsdecode(path)  # type: ignore[arg-type]
    from pathlib import PurePath

    if t.__module__ == "pathlib" and isinstance(path, PurePath):
        return PurePath.__str__(path)
    raise Undecidable(f"a path of type {t.__name__} cannot be checked")


class PathResolver:
    """Absolute, resolved paths, with the working directory tracked and resolutions remembered."""

    def __init__(self) -> None:
        self._cwd: str | None = None
        self._real: dict[str, tuple[str, float]] = {}  # path -> (real path, reusable until)
        self.generation = 0  # one more at every changed()

    def chdir(self) -> None:
        """The working directory may have changed: read it again when next needed."""
        self._cwd = None

    def cwd(self) -> str:
        cwd = self._cwd
        if cwd is None:
            try:
                cwd = self._cwd = os.getcwd()
            except OSError as exc:
                raise Undecidable("the working directory is gone") from exc
        return cwd

    def absolute(self, path: str, dir_fd: object = None) -> str:
        if "\0" in path:
            raise Undecidable("path contains a NUL byte")
        if path.startswith("/"):
            return path
        if dir_fd is None:
            return self.cwd() + "/" + path if path else self.cwd()
        if type(dir_fd) is not int:
            raise Undecidable("dir_fd is not an integer")
        try:
            base = os.readlink(f"/proc/self/fd/{dir_fd}")
        except OSError as exc:
            raise Undecidable(f"the directory of dir_fd {dir_fd} cannot be found") from exc
        return base + "/" + path

    def real(self, path: str) -> str:
        """``os.path.realpath(path)`` of an absolute path, reused as the module docstring says."""
        remembered = self._real  # a resolution made across a changed() goes in the old table
        hit = remembered.get(path)
        now = _monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        real = posixpath.realpath(path)
        if "/proc/" in path or "/dev/" in path or path.endswith(("/proc", "/dev")):
            # through /proc/self/{cwd,root,fd/N} (/dev/fd, /dev/stdin, ...): another chdir, dup2
            # or close changes where it leads, with no event the guard sees
            return real
        if len(remembered) >= _MAX_REMEMBERED:
            remembered.clear()
        remembered[path] = (real, now + RESOLVE_TTL)
        return real

    def real_until(self, path: str) -> tuple[str, float, int]:
        """``real(path)``, until when (``time.monotonic()``) that resolution is reused, and the
        :attr:`generation` it belongs to (a later changed() ends it at once)."""
        generation = self.generation
        real = self.real(path)
        hit = self._real.get(path)
        return real, (hit[1] if hit is not None and hit[0] == real else 0.0), generation

    def changed(self) -> None:
        """Something in this process renamed, removed or linked a file, or changed directory:
        resolve everything again."""
        self.generation += 1
        self._real = {}

    def resolve(self, path: str, *, follow: bool = True) -> str:
        """The real location an operation on the absolute ``path`` reaches.

        ``follow=False``: the operation acts on the last component itself;
        the directory holding it is resolved, the name is kept.
        """
        if not follow:
            head, _, name = path.rstrip("/").rpartition("/")
            if name not in ("", ".", ".."):
                parent = self.real(head or "/")
                return (parent.rstrip("/") + "/" + name) if parent != "/" else "/" + name
        return self.real(path)


class RootMap:
    """Configured roots and the base directory: which (root, relative path) pairs a real path is."""

    def __init__(self, roots: Mapping[str, str], base: str) -> None:
        resolved = []
        for name, directory in roots.items():
            real = os.path.realpath(directory).rstrip("/") or "/"
            resolved.append((name, real))
        # the most specific (longest) directory first
        self.roots: tuple[tuple[str, str], ...] = tuple(sorted(resolved, key=lambda r: -len(r[1])))
        self.base = os.path.realpath(base).rstrip("/") or "/"

    def candidates(self, real: str) -> list[tuple[str, str]]:
        """Every (root, path) spelling of ``real``: configured roots first, then the base, then ``/``."""
        out: list[tuple[str, str]] = []
        for name, directory in self.roots:
            rel = _below(real, directory)
            if rel is not None:
                out.append((name, rel))
        rel = _below(real, self.base)
        if rel is not None:
            parts = rel.split("/") if rel else []
            out.append((".", rel))
            for i in range(1, len(parts) + 1):
                out.append(("/".join(parts[:i]), "/".join(parts[i:])))
        out.append(("/", real.lstrip("/")))
        return out


def _below(path: str, directory: str) -> str | None:
    if directory == "/":
        return path.lstrip("/")
    if path == directory:
        return ""
    if path.startswith(directory) and path[len(directory)] == "/":
        return path[len(directory) + 1 :]
    return None
