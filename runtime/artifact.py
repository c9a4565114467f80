"""TEMPORARY re-export, removed when the restructure lands.

The artifact file moved to ``polc.runtime.format``: ``header`` (layout,
``read_header``, ``build_header``, digest), ``payload`` (pack, unpack, the
bounded reader), ``reader`` (``Artifact``, ``read_artifact*``), ``writer``
(``pack_artifact``, ``write_atomic``); its errors to ``polc.runtime.errors``.
"""

from __future__ import annotations

from .catalog import Capability
from .errors import (
    ArtifactError,
    BadHeader,
    BadMagic,
    DigestMismatch,
    MalformedPayload,
    ModuleNameMismatch,
    PayloadTooLarge,
    TrailingData,
    Truncated,
    UnreadableArtifact,
    UnsupportedVersion,
    VerifyError,
)
from .format.header import (
    FLAG_SIGNED,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAGIC,
    MAX_PAYLOAD,
    MAX_TRAILER,
    Header,
    artifact_digest,
    build_header,
    read_header,
)
from .format.opcodes import ARTIFACT_SUFFIX, PAYLOAD_KEYS
from .format.payload import MAX_PAYLOAD_KEYS, pack_payload, read_payload, unpack_payload
from .format.program import Program, Rule
from .format.reader import Artifact, Trust, module_for_path, read_artifact, read_artifact_bytes, read_artifact_file
from .format.writer import fsync_dir, pack_artifact, process_umask, stage_file, write_atomic

__all__ = [
    "ARTIFACT_SUFFIX",
    "FLAG_SIGNED",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "HEADER_SIZE",
    "KNOWN_FLAGS",
    "MAGIC",
    "MAX_PAYLOAD",
    "MAX_PAYLOAD_KEYS",
    "MAX_TRAILER",
    "PAYLOAD_KEYS",
    "Artifact",
    "ArtifactError",
    "BadHeader",
    "BadMagic",
    "Capability",
    "DigestMismatch",
    "Header",
    "MalformedPayload",
    "ModuleNameMismatch",
    "PayloadTooLarge",
    "Program",
    "Rule",
    "TrailingData",
    "Truncated",
    "Trust",
    "UnreadableArtifact",
    "UnsupportedVersion",
    "VerifyError",
    "artifact_digest",
    "build_header",
    "fsync_dir",
    "module_for_path",
    "pack_artifact",
    "pack_payload",
    "process_umask",
    "read_artifact",
    "read_artifact_bytes",
    "read_artifact_file",
    "read_header",
    "read_payload",
    "stage_file",
    "unpack_payload",
    "write_atomic",
]
