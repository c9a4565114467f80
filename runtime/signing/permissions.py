"""The policy directory guard: who besides root and this process can change the policies.

An agent checks this at start-up and warns (docs/security.md): a policy
directory, a parent of it, an artifact or the trust file that someone else
can write lets them replace the policy, signed or not.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["check_artifact_permissions", "check_directory_permissions", "check_file_permissions"]


def _owner_problem(st: os.stat_result, euid: int) -> str | None:
    uid = getattr(st, "st_uid", None)  # tolerate stat stand-ins without owners
    if isinstance(uid, int) and uid not in (0, euid):
        return f"owned by uid {uid}, not root or this process (uid {euid})"
    return None


def _mode_problem(st: os.stat_result) -> str | None:
    bits = getattr(st, "st_mode", 0) & 0o022
    if not bits:
        return None
    who = " and ".join(w for w, b in (("group", 0o020), ("others", 0o002)) if bits & b)
    return f"writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"


def check_file_permissions(path: str | os.PathLike[str], *, euid: int | None = None) -> list[str]:
    """Problems with one file that others could rewrite (an artifact, the trust file)."""
    euid = os.geteuid() if euid is None else euid
    try:
        st = os.stat(path)
    except OSError:
        return []  # missing or unreadable files are reported by whoever reads them
    return [f"{path}: {p}" for p in (_mode_problem(st), _owner_problem(st, euid)) if p]


def check_directory_permissions(
    path: str | os.PathLike[str], *, suffix: str = ".bin", euid: int | None = None, files: bool = True
) -> list[str]:
    """Warnings about who besides root and this process can change the policies.

    Checks the policy directory (writable by group/others, or owned by another
    non-root user: they can drop, replace or delete artifacts), its parent
    directories (writable by group/others without the sticky bit: they can
    rename the whole directory away and put their own in its place; their
    owners are not checked, as a home or deploy directory above the policies
    is usually owned by someone else), and
    every ``*.bin`` in it (writable or owned likewise: rewritable in place;
    ``files=False`` leaves those to :func:`check_artifact_permissions`).
    Symlinks are followed, as the agent follows them.  Returns one message per
    problem, empty when the directory is guarded; a missing directory gives no
    message (the agent reports that itself).
    """
    euid = os.geteuid() if euid is None else euid
    problems: list[str] = []
    d = Path(path)
    try:
        st = os.stat(d)
    except OSError:
        return problems
    for p in (_mode_problem(st), _owner_problem(st, euid)):
        if p:
            problems.append(f"policy directory {d}: {p}")
    try:
        real = d.resolve()
    except OSError:
        real = d
    for parent in real.parents:
        try:
            pst = os.stat(parent)
        except OSError:
            continue
        if getattr(pst, "st_mode", 0) & 0o022 and not pst.st_mode & stat.S_ISVTX:
            problems.append(
                f"parent directory {parent}: {_mode_problem(pst)}; whoever can write it can "
                f"replace the policy directory"
            )
    if files:
        problems.extend(check_artifact_permissions(d, suffix=suffix, euid=euid))
    return problems


def check_artifact_permissions(
    path: str | os.PathLike[str], *, suffix: str = ".bin", euid: int | None = None
) -> list[str]:
    """The per-file part of :func:`check_directory_permissions`: every ``*.bin`` in the
    directory that others could rewrite in place (one ``stat`` each)."""
    euid = os.geteuid() if euid is None else euid
    d = Path(path)
    try:
        with os.scandir(d) as it:
            names = sorted(e.name for e in it if e.name.endswith(suffix))
    except OSError:
        return []
    prefix = os.path.join(str(d), "")  # str(d / name), without a Path per file
    problems: list[str] = []
    for name in names:
        problems.extend(check_file_permissions(prefix + name, euid=euid))
    return problems
