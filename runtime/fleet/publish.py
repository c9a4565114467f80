"""``polc publish``: upload a directory of artifacts as a set, objects first, the manifest last.

Every artifact becomes an immutable object named by the SHA-256 of its bytes
(``objects/<sha256>.bin``), uploaded only when the store does not hold it
yet; then one manifest is written (``manifest.json``), so a reader sees the
previous complete set or the new complete set, never a mixture. The new
revision must be above the one found in the store.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactError, FleetError, ManifestError
from ..format.reader import module_for_path, read_artifact
from ..signing.block import signer_key_id
from .manifest import MAX_REVISION, Manifest, ManifestSigner, ModuleEntry, issued_now, parse_manifest, sign_manifest
from .origin import MANIFEST_NAME, MAX_OBJECT_SIZE, Store, object_name

__all__ = ["DEFAULT_SET", "PublishResult", "publish", "read_set"]

DEFAULT_SET = "default"
OBJECT_TYPE = "application/octet-stream"
MANIFEST_TYPE = "application/json"


@dataclass
class PublishResult:
    set: str
    revision: int
    previous: int | None
    manifest: Manifest
    uploaded: list[str] = field(default_factory=list)  # module names whose object was uploaded
    skipped: list[str] = field(default_factory=list)  # already in the store


def read_set(artifact_dir: str | os.PathLike[str]) -> dict[str, bytes]:
    """The artifacts of a directory (``*.bin``, not starting with a dot), each checked to be a
    well-formed artifact of the module its name says. Raises FleetError."""
    root = Path(artifact_dir)
    try:
        names = sorted(e.name for e in os.scandir(root) if e.name.endswith(".bin") and not e.name.startswith("."))
    except OSError as exc:
        raise FleetError(f"{root}: cannot list the artifact directory: {exc.strerror or exc}", reason="io") from None
    out: dict[str, bytes] = {}
    for name in names:
        path = root / name
        try:
            if path.stat().st_size > MAX_OBJECT_SIZE:
                raise FleetError(f"{path}: larger than {MAX_OBJECT_SIZE} bytes", reason="bad artifact")
            data = path.read_bytes()
        except OSError as exc:
            raise FleetError(f"{path}: cannot read: {exc.strerror or exc}", reason="io") from None
        module = module_for_path(name)
        try:
            read_artifact(data, expected_module=module, file_name=name)
        except ArtifactError as exc:
            raise FleetError(f"{path}: not a valid artifact: {exc}", reason="bad artifact") from None
        out[module] = data
    if not out:
        raise FleetError(f"{root}: no artifacts (*.bin) to publish", reason="empty set")
    return out


def publish(
    artifact_dir: str | os.PathLike[str],
    store: Store,
    *,
    signer: ManifestSigner,
    set_name: str | None = None,
    revision: int | None = None,
) -> PublishResult:
    """Publish the artifacts of ``artifact_dir`` to ``store`` as the next revision of the set.

    ``set_name`` defaults to the set found in the store, else ``default``; a
    different name than the one found is refused (one set per prefix).
    ``revision`` defaults to the one found plus one; one not above it is
    refused. Raises FleetError (OriginError for the store).
    """
    artifacts = read_set(artifact_dir)
    where = f"{store.url.rstrip('/')}/{MANIFEST_NAME}"
    found = store.read(MANIFEST_NAME)
    previous: Manifest | None = None
    if found is not None:
        try:
            previous = parse_manifest(found)
        except ManifestError as exc:
            raise FleetError(f"{where}: {exc}; refusing to publish over it", reason="bad manifest") from None
    if set_name is None:
        set_name = previous.set if previous is not None else DEFAULT_SET
    elif previous is not None and previous.set != set_name:
        raise FleetError(
            f"{where}: holds set {previous.set!r}, not {set_name!r}; publish each set under its own prefix",
            reason="wrong set",
        )
    floor = previous.revision if previous is not None else 0
    if revision is None:
        revision = floor + 1
    if not 1 <= revision <= MAX_REVISION:
        raise FleetError(f"revision {revision} is out of range 1..{MAX_REVISION}", reason="bad revision")
    if revision <= floor:
        raise FleetError(f"revision {revision} is not above {floor} found at {where}", reason="rollback")

    result_entries: dict[str, ModuleEntry] = {}
    uploaded: list[str] = []
    skipped: list[str] = []
    for module, data in artifacts.items():
        digest = hashlib.sha256(data).hexdigest()
        name = object_name(digest)
        result_entries[module] = ModuleEntry(name, digest, len(data), signer_key_id(data))
        if store.exists(name):
            skipped.append(module)
            continue
        store.put(name, data, OBJECT_TYPE)
        uploaded.append(module)
    manifest = sign_manifest(Manifest(set_name, revision, issued_now(), result_entries), signer)
    store.put(MANIFEST_NAME, manifest.to_bytes(), MANIFEST_TYPE)
    return PublishResult(set_name, revision, floor or None, manifest, uploaded, skipped)
