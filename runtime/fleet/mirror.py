"""The local mirror of a published set: the directory an agent enforces, switched whole.

Layout of a mirror directory ``DIR`` (every name the poller must not load
starts with a dot; the poller loads ``*.bin`` not starting with one)::

    DIR/tenant.acme.bin -> ..data/tenant.acme.bin     one symlink per module
    DIR/..data -> ..set-42-<token>                     the set in force
    DIR/..set-42-<token>/tenant.acme.bin               the exact signed bytes
    DIR/.polc-fleet/manifest.json                      the signed manifest in force
    DIR/.polc-fleet/etag                               its ETag (absent: none known)
    DIR/.polc-fleet/floor.json                         the highest revision ever accepted

A switch writes a complete new ``..set-*`` directory, then renames a new
``..data`` symlink over the old one: one atomic rename changes every module
at once (the layout Kubernetes uses for ConfigMap volumes, which the poller
already follows). Where symlinks cannot be made, the ``files`` layout keeps
plain ``DIR/<module>.bin`` files, each replaced by an atomic rename, all
renames done back to back after every new file is written and synced.

The manifest, ETag and floor are written after the switch, so an ETag is
never recorded for a set that is not on disk. On open, the files in force
are hashed against the manifest on disk: if they match, that manifest's
revision, digests and ETag are in force; if not (a crash mid-switch in the
``files`` layout, a hand edit), the ETag is dropped so the next pull fetches
the whole manifest again and repairs the set. The floor is the higher of
``floor.json`` and the manifest on disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import FleetError, ManifestError
from .manifest import Manifest, parse_manifest

__all__ = ["DATA_LINK", "STATE_DIR", "Floor", "Layout", "Mirror", "write_file"]

DATA_LINK = "..data"
SET_PREFIX = "..set-"
STATE_DIR = ".polc-fleet"
SUFFIX = ".bin"

Layout = Literal["auto", "symlink", "files"]


@dataclass(frozen=True, slots=True)
class Floor:
    """The highest revision this directory ever accepted, of which set, with which manifest digest."""

    set: str
    revision: int
    sha256: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, synced, renamed over."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256_file(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


class Mirror:
    """One mirror directory: what is in force there, and the switch to a new set.

    Opening reads the directory only (nothing is fetched). ``in_force`` is
    the manifest whose files are on disk (None: none, or the files do not
    match it), ``etag`` its ETag, ``floor`` the highest revision accepted.
    """

    def __init__(self, directory: str | os.PathLike[str], *, layout: Layout = "auto") -> None:
        self.root = Path(directory)
        self.state = self.root / STATE_DIR
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.state.mkdir(exist_ok=True)
        except OSError as exc:
            raise FleetError(f"{self.root}: cannot create the mirror directory: {exc.strerror or exc}",
                             reason="io") from None  # fmt: skip
        self.layout: Literal["symlink", "files"] = self._choose_layout(layout)
        self.in_force: Manifest | None = None
        self.manifest_sha256: str | None = None
        self.etag: str | None = None
        self.floor: Floor | None = None
        self.problem: str | None = None  # why the files on disk do not match the manifest
        self._sweep_debris()
        self._load()

    # -- opening -------------------------------------------------------------

    def _choose_layout(self, layout: Layout) -> Literal["symlink", "files"]:
        data = self.root / DATA_LINK
        if layout != "auto":
            return layout
        if data.is_symlink():
            return "symlink"
        if any(p.suffix == SUFFIX and p.is_file() and not p.is_symlink() for p in self._module_paths()):
            return "files"  # a plain directory already: keep it so
        probe = self.root / f".polc-symlink-probe-{os.getpid()}"
        try:
            os.symlink(".", probe)
        except OSError:
            return "files"
        os.unlink(probe)
        return "symlink"

    def _sweep_debris(self) -> None:
        """What a switch that crashed left: sets nothing points at, temporary links and files."""
        data = self.root / DATA_LINK
        current = os.readlink(data) if data.is_symlink() else None
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for name in names:
            path = self.root / name
            if name.startswith(SET_PREFIX) and name != current:
                shutil.rmtree(path, ignore_errors=True)
            elif name.startswith(f"{DATA_LINK}.tmp-") or (
                name.startswith(".") and (".bin.link-" in name or ".bin.new-" in name or ".tmp-" in name)
            ):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _module_paths(self) -> list[Path]:
        try:
            return [self.root / n for n in os.listdir(self.root) if n.endswith(SUFFIX) and not n.startswith(".")]
        except OSError:
            return []

    def _load(self) -> None:
        raw = self._read_state("manifest.json")
        floor_raw = self._read_state("floor.json")
        if floor_raw is not None:
            try:
                doc = json.loads(floor_raw)
                self.floor = Floor(str(doc["set"]), int(doc["revision"]), str(doc["sha256"]))
            except (ValueError, KeyError, TypeError):
                # unreadable floor: the manifest on disk gives it; never lower than what that says
                self.problem = f"{self.state / 'floor.json'}: unreadable; using the manifest on disk"
        if raw is None:
            return
        try:
            manifest = parse_manifest(raw)
        except ManifestError as exc:
            self.problem = f"{self.state / 'manifest.json'}: {exc}"
            return
        sha = hashlib.sha256(raw).hexdigest()
        if self.floor is None or manifest.revision > self.floor.revision:
            self.floor = Floor(manifest.set, manifest.revision, sha)
        for module, entry in manifest.modules.items():
            got = _sha256_file(self.root / (module + SUFFIX))
            if got != entry.sha256:
                self.problem = f"{module}{SUFFIX}: on disk does not match revision {manifest.revision}"
                return
        self.in_force = manifest
        self.manifest_sha256 = sha
        etag = self._read_state("etag")
        self.etag = etag.decode("ascii", "replace") if etag else None

    def _read_state(self, name: str) -> bytes | None:
        try:
            return (self.state / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.problem = f"{self.state / name}: {exc.strerror or exc}"
            return None

    # -- what is present -------------------------------------------------------

    def local_object(self, sha256: str) -> Path | None:
        """A file in force with this digest (verified when the mirror was opened or switched)."""
        if self.in_force is None:
            return None
        for module, entry in self.in_force.modules.items():
            if entry.sha256 == sha256:
                return self.root / (module + SUFFIX)
        return None

    # -- the switch ------------------------------------------------------------

    def switch(
        self,
        manifest: Manifest,
        manifest_bytes: bytes,
        etag: str | None,
        objects: Mapping[str, bytes],
        *,
        around: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        """Put ``manifest``'s set in force: ``objects`` maps module -> new bytes; every other
        module of the manifest is taken from the set in force (by digest).

        Everything is written and synced first; ``around(commit)`` (default:
        call it) runs the commit — the renames and the state — so an agent can
        hold its step lock over it. Raises OSError (the set in force is kept).
        """
        if self.layout == "symlink":
            staged = self._stage_set(manifest, objects)
            commit = lambda: self._commit_symlink(manifest, manifest_bytes, etag, staged)  # noqa: E731
        else:
            staged_files = self._stage_files(manifest, objects)
            commit = lambda: self._commit_files(manifest, manifest_bytes, etag, staged_files)  # noqa: E731
        (around or (lambda f: f()))(commit)

    def _source_for(self, sha256: str) -> Path:
        src = self.local_object(sha256)
        if src is None:
            raise FleetError(f"object {sha256} is neither fetched nor in force", reason="internal")
        return src

    def _stage_set(self, manifest: Manifest, objects: Mapping[str, bytes]) -> Path:
        target = self.root / f"{SET_PREFIX}{manifest.revision}-{time.time_ns():x}"
        target.mkdir()
        try:
            for module, entry in manifest.modules.items():
                dst = target / (module + SUFFIX)
                data = objects.get(module)
                if data is None:
                    src = self._source_for(entry.sha256).resolve()
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copyfile(src, dst)
                else:
                    write_file(dst, data)
            _fsync_dir(target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return target

    def _commit_symlink(self, manifest: Manifest, raw: bytes, etag: str | None, staged: Path) -> None:
        previous = os.readlink(self.root / DATA_LINK) if (self.root / DATA_LINK).is_symlink() else None
        link_tmp = self.root / f"{DATA_LINK}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link_tmp)
        try:
            os.symlink(staged.name, link_tmp)
            os.replace(link_tmp, self.root / DATA_LINK)  # the switch: every module at once
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(link_tmp)
            shutil.rmtree(staged, ignore_errors=True)
            raise
        old = self.in_force.modules if self.in_force is not None else {}
        for module in manifest.modules:
            path = self.root / (module + SUFFIX)
            want = f"{DATA_LINK}/{module}{SUFFIX}"
            if path.is_symlink() and os.readlink(path) == want:
                continue
            tmp = self.root / f".{module}{SUFFIX}.link-{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(want, tmp)
            os.replace(tmp, path)
        for module in old:
            if module not in manifest.modules:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.root / (module + SUFFIX))
        for path in self._module_paths():  # links into ..data whose module left the set
            if path.is_symlink() and os.readlink(path).startswith(DATA_LINK + "/") and not path.exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        _fsync_dir(self.root)
        self._record(manifest, raw, etag)
        keep = {staged.name, previous}
        for entry in os.listdir(self.root):  # the set before the previous one, and debris
            if entry.startswith(SET_PREFIX) and entry not in keep:
                shutil.rmtree(self.root / entry, ignore_errors=True)

    def _stage_files(self, manifest: Manifest, objects: Mapping[str, bytes]) -> list[tuple[Path, Path]]:
        staged: list[tuple[Path, Path]] = []
        try:
            for module, data in objects.items():
                final = self.root / (module + SUFFIX)
                tmp = self.root / f".{module}{SUFFIX}.new-{os.getpid()}"
                write_file(tmp, data)
                staged.append((tmp, final))
            _fsync_dir(self.root)
        except BaseException:
            for tmp, _ in staged:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        return staged

    def _commit_files(self, manifest: Manifest, raw: bytes, etag: str | None, staged: list[tuple[Path, Path]]) -> None:
        for tmp, final in staged:
            os.replace(tmp, final)
        old = self.in_force.modules if self.in_force is not None else {}
        for module in old:
            if module not in manifest.modules:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.root / (module + SUFFIX))
        _fsync_dir(self.root)
        self._record(manifest, raw, etag)

    def _record(self, manifest: Manifest, raw: bytes, etag: str | None) -> None:
        """After a switch: the manifest, its ETag and the floor, each written atomically."""
        sha = hashlib.sha256(raw).hexdigest()
        self.in_force = manifest
        self.manifest_sha256 = sha
        self.problem = None
        if self.floor is None or manifest.revision >= self.floor.revision:
            self.floor = Floor(manifest.set, manifest.revision, sha)
        write_file(self.state / "manifest.json", raw)
        floor = {"set": self.floor.set, "revision": self.floor.revision, "sha256": self.floor.sha256}
        write_file(self.state / "floor.json", json.dumps(floor, sort_keys=True).encode() + b"\n")
        self.record_etag(etag)

    def record_etag(self, etag: str | None) -> None:
        """Record the ETag of the manifest in force (None: forget it)."""
        self.etag = etag
        if etag is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state / "etag")
        else:
            write_file(self.state / "etag", etag.encode("ascii", "replace"))
        with contextlib.suppress(OSError):
            _fsync_dir(self.state)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
