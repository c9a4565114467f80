"""What examining one file found: an :data:`Outcome`, decided without touching any state.

The poller examines every file that may have changed, then commits all the
outcomes of a phase at once (:meth:`Poller.commit`). No outcome (None)
means the file is unchanged.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..enforce import LinkedModule, link
from ..errors import ArtifactError
from ..format import reader as _reader
from .filestate import FileKey, FileState, is_racy, stat_key

if TYPE_CHECKING:
    from ..enforce.resident import Residency
    from ..format.reader import Trust

__all__ = ["Failed", "NewPolicy", "Outcome", "SamePolicy", "Touched", "examine"]


@dataclass(frozen=True, slots=True)
class _Seen:
    name: str  # the file name, ``<module>.bin``
    module: str
    key: FileKey  # its stat key, or ("error", errno)
    racy: bool  # changed too recently for the stat to be trusted
    content: bytes | None  # SHA-256 of the bytes read (None: not read)


@dataclass(frozen=True, slots=True)
class Touched(_Seen):
    """The very bytes read last time (or the same failure again): only the stat moved."""


@dataclass(frozen=True, slots=True)
class SamePolicy(_Seen):
    """A valid artifact whose payload equals the policy in force: nothing to swap."""


@dataclass(frozen=True, slots=True)
class NewPolicy(_Seen):
    """A valid artifact with a new policy, verified and linked, ready to swap in."""

    linked: LinkedModule


@dataclass(frozen=True, slots=True)
class Failed(_Seen):
    """The file could not be statted, read or verified; the previous policy stays."""

    reason: str


Outcome = Touched | SamePolicy | NewPolicy | Failed


def examine(
    name: str,
    path: str,
    state: FileState | None,
    in_force: LinkedModule | None,
    trust: Trust | None,
    now_ns: int,
    residency: Residency | None = None,
) -> Outcome | None:
    """One file: None when unchanged, else what it holds now.

    ``state`` is what the last step recorded of the file, ``in_force`` the
    policy of its module now. A file is read only when its stat differs from
    the recorded one or was racy; verified only when its bytes differ from the
    last bytes read; linked only when its payload differs from the policy in force.
    With ``residency``, the linked module keeps its verified payload and its
    tables only while the residency keeps it linked (enforce/resident.py).
    """
    module = name[: -len(".bin")]
    try:
        st = os.stat(path)  # follows symlinks: ..data swaps show up here
    except OSError as exc:
        err_key: FileKey = ("error", exc.errno)
        if state is not None and state.key == err_key:
            return None
        return Failed(name, module, err_key, False, None, f"cannot read: {exc.strerror or exc}")
    key = stat_key(st)
    if state is not None and state.key == key and not state.racy:
        return None
    racy = is_racy(st, now_ns)
    try:
        data = _reader.read_artifact_bytes(path)
    except ArtifactError as exc:
        reason = str(exc)
        if state is not None and state.key == key and state.error == reason:
            return Touched(name, module, key, racy, state.content)  # re-read, same failure
        return Failed(name, module, key, racy, None, reason)
    content = hashlib.sha256(data).digest()
    if state is not None and state.content == content:
        return Touched(name, module, key, racy, content)
    try:
        art = _reader.read_artifact(data, expected_module=module, trust=trust)
    except ArtifactError as exc:
        return Failed(name, module, key, racy, content, str(exc))
    if in_force is not None and in_force.digest == art.digest_hex:
        return SamePolicy(name, module, key, racy, content)
    return NewPolicy(name, module, key, racy, content, link(art, data, residency))
