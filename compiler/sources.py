"""The source tree on disk: which files, under what names, their bytes, and a cheap look inside.

- :func:`walk_sources` / :func:`find_sources`: the ``.pol`` files named by the
  arguments (files, directories searched recursively, ``-`` for standard input);
  test files (``*.test.pol``, ``polc test``) found in a directory are not sources.
- :func:`find_tests`: the test files (``*.test.pol``) named by the arguments.
- :func:`recorded_name` / :func:`recorded_names`: the source name each
  artifact records, relative to the source root, never an absolute build path.
- :func:`default_out_dir`: ``policies/`` beside the first source directory.
- :func:`read_sources`: every file's bytes, read once; a FIFO or device found
  in a directory is refused rather than read.
- :func:`scan_modules`: the ``security module NAME`` headers of a file found by
  a byte scan, so an unchanged file with up-to-date artifacts is never parsed.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat as stat_mod
import sys
from collections.abc import Iterable, Sequence

from .errors import UsageError

__all__ = [
    "STDIN",
    "STDIN_NAME",
    "TEST_SUFFIX",
    "Walked",
    "default_out_dir",
    "find_sources",
    "find_tests",
    "line_col",
    "name_clash",
    "read_sources",
    "recorded_name",
    "recorded_names",
    "scan_modules",
    "walk_sources",
]

STDIN = "-"
"""The source argument that means "read one source from standard input" (``polc check -``)."""
STDIN_NAME = "<stdin>"
TEST_SUFFIX = ".test.pol"
"""Test files (``polc test``): found beside or below the sources, never compiled as sources."""

Walked = tuple[str, int, str | None]
"""``(path as given, index of the argument that named it, path below that directory or None)``."""


def find_sources(srcs: Sequence[str]) -> list[str]:
    """The ``.pol`` files named by ``srcs`` (files, or directories searched recursively).

    Paths are returned as given (joined with ``/`` under a directory),
    directories in sorted order, each file once. Raises :class:`UsageError`
    for a missing source.
    """
    return [p for p, _, _ in walk_sources(srcs)]


def walk_sources(srcs: Sequence[str], skip: Iterable[str] = ()) -> list[Walked]:
    """``(path as given, index of the argument that named it, path below that directory)`` of every source.

    The last item is ``None`` for a file argument. ``-`` (standard input) is
    passed through as it is; files whose real path is in ``skip`` are left out.
    """
    out: list[Walked] = []
    seen: set[str] = set(skip)

    def add(p: str, i: int, below: str | None, key: str | None = None) -> None:
        if key is None:
            key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append((p.replace(os.sep, "/"), i, below))

    for i, src in enumerate(srcs):
        if src == STDIN:
            out.append((STDIN, i, None))
        elif os.path.isdir(src):
            found = []
            top = src.replace(os.sep, "/")
            for root, dirs, files in os.walk(src):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                rel_root = os.path.relpath(root, src)
                for f in files:
                    if f.endswith(".pol") and not f.endswith(TEST_SUFFIX) and not f.startswith("."):
                        rel = (f if rel_root == "." else os.path.join(rel_root, f)).replace(os.sep, "/")
                        found.append((posixpath.join(top, rel), rel))
            # os.walk does not descend into symlinked directories, so below the directory's
            # real path only a symlinked file has a real path other than its place
            real_top = os.path.realpath(src)
            islink = os.path.islink
            for p, rel in sorted(found):
                add(p, i, rel, None if islink(p) else posixpath.join(real_top, rel))
        elif os.path.exists(src):
            add(src, i, None)
        else:
            raise UsageError(f"no such file or directory: {src}")
    return out


def find_tests(srcs: Sequence[str]) -> list[str]:
    """The test files (``*.test.pol``) named by ``srcs``: files as given, directories searched recursively.

    Sorted within each directory, each file once, hidden files and directories
    skipped (as :func:`walk_sources` does). Raises :class:`UsageError` for a
    missing argument.
    """
    out: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append(p.replace(os.sep, "/"))

    for src in srcs:
        if os.path.isdir(src):
            found: list[str] = []
            for root, dirs, files in os.walk(src):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(os.path.join(root, f) for f in files if f.endswith(TEST_SUFFIX) and not f.startswith("."))
            for p in sorted(found):
                add(p)
        elif os.path.exists(src):
            if src.endswith(TEST_SUFFIX):
                add(src)
        else:
            raise UsageError(f"no such file or directory: {src}")
    return out


def recorded_names(walked: Sequence[Walked], srcs: Sequence[str], source_root: str | None) -> dict[str, str]:
    """:func:`recorded_name` of every walked file; one path computation per directory argument."""
    names: dict[str, str] = {}
    prefixes: dict[int, str | None] = {}
    for f, i, below in walked:
        src = srcs[i]
        if src == STDIN:
            names[f] = f
            continue
        if below is not None:
            if i not in prefixes:
                prefixes[i] = _directory_prefix(src, source_root)
            prefix = prefixes[i]
            if prefix is not None:
                names[f] = prefix + below
                continue
        names[f] = recorded_name(f, src, source_root)
    return names


def _directory_prefix(src: str, source_root: str | None) -> str | None:
    """The directory's own name: what every file below it is recorded under (``None``: outside the root)."""
    if source_root is None:
        prefix: str | None = os.path.basename(os.path.abspath(src))
    else:
        prefix = os.path.relpath(os.path.abspath(src), os.path.abspath(source_root))
        prefix = None if prefix.split(os.sep)[0] == os.pardir else prefix
    if prefix is None:
        return None
    return "" if prefix in ("", ".") else prefix.replace(os.sep, "/") + "/"


def _source_dir(src: str) -> str:
    """The source directory of an argument: the directory itself, or the one holding the file."""
    return src if os.path.isdir(src) else (os.path.dirname(src) or ".")


def recorded_name(path: str, src: str, source_root: str | None = None) -> str:
    """The source name an artifact records for ``path``, found under the argument ``src``.

    Relative to ``source_root`` when one is given (``path`` must be under it),
    else to the parent of the argument's source directory, so that
    ``polc compile policies-src`` records ``policies-src/tenant.acme.pol``
    however the directory is spelled (``./policies-src``, an absolute path, or
    ``.`` inside it) and from whatever working directory. ``/``-separated;
    ``.`` and ``..`` are resolved lexically against the working directory.
    Raises :class:`UsageError` for a path outside ``source_root``.
    """
    full = os.path.abspath(path)
    if source_root is not None:
        base = os.path.abspath(source_root)
        rel = os.path.relpath(full, base)
        if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
            raise UsageError(f"{path} is not under the source root {source_root}")
    else:
        base = os.path.dirname(os.path.abspath(_source_dir(src)))
        rel = os.path.relpath(full, base)
    return rel.replace(os.sep, "/")


def name_clash(recorded: dict[str, str]) -> str | None:
    """A usage error if two source files would be recorded under one name."""
    seen: dict[str, str] = {}
    for f, name in recorded.items():
        other = seen.setdefault(name, f)
        if other != f:
            return (f"{other} and {f} would both be recorded as {name} in their artifacts: "
                    f"pass --source-root to name them apart")
    return None


def default_out_dir(srcs: Sequence[str]) -> str:
    """``policies/`` beside the first source directory (for a file: beside its directory)."""
    first = next((s for s in srcs if s != STDIN), ".")
    parent = os.path.dirname(os.path.abspath(_source_dir(first)))
    out = os.path.join(parent, "policies")
    rel = os.path.relpath(out)
    return out if rel.startswith("..") else rel


def read_stdin() -> bytes:
    """All of standard input, as bytes."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        if sys.stdin is None:
            raise OSError("standard input is closed")
        return sys.stdin.read().encode("utf-8", "surrogateescape")
    data: bytes = stream.read()
    return data


def read_sources(walked: Sequence[Walked], srcs: Sequence[str], stdin: bytes | None) -> dict[str, bytes]:
    """Every walked file's bytes (``-`` from ``stdin``, or standard input when ``None``).

    Raises :class:`UsageError` for a file that cannot be read, or that was
    found in a directory and is not a regular file.
    """
    datas: dict[str, bytes] = {}
    for f, i, below in walked:
        try:
            if srcs[i] == STDIN:
                datas[f] = stdin if stdin is not None else read_stdin()
                continue
            if below is None:  # named on the command line: may be /dev/stdin or a pipe
                with open(f, "rb") as fh:
                    datas[f] = fh.read()
                continue
            # found in a directory: a FIFO or device there must not hang or flood the compile
            fd = os.open(f, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as fh:
                if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                    raise UsageError(f"cannot read {f}: not a regular file")
                datas[f] = fh.read()
        except OSError as exc:
            raise UsageError(f"cannot read {f}: {exc.strerror or exc}") from None
    return datas


# A header may have comments between its words. Headers inside comments or
# strings are found too: a false hit only means the file is parsed (it never has
# an up-to-date artifact), while a missed header could hide a failing module.
_HEADER_SCAN = re.compile(
    rb"\bsecurity(?:\s|//[^\n]*\n|/\*.*?\*/)+module(?:\s|//[^\n]*\n|/\*.*?\*/)+"
    rb"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)",
    re.S,
)


def scan_modules(data: bytes) -> list[tuple[str, int]]:
    """``(module name, byte offset)`` of every ``security module NAME`` header, cheaply."""
    return [(m.group(1).decode("ascii"), m.start(1)) for m in _HEADER_SCAN.finditer(data) if m.group(1)]


def line_col(data: bytes, offset: int) -> tuple[int, int]:
    """The 1-based line and column of a byte offset."""
    line = data.count(b"\n", 0, offset) + 1
    return line, offset - (data.rfind(b"\n", 0, offset) + 1) + 1
