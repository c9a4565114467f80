"""The manifest of a published set: what it lists, its canonical bytes, its signature.

A manifest is one JSON object (docs/fleet.md has the schema)::

    {"format": 1, "set": "prod", "revision": 42, "issued": "2026-12-02T06:50:00Z",
     "modules": {"tenant.acme": {"object": "objects/<sha256>.bin", "sha256": "<sha256>",
                                 "size": 1234, "signer": "5b0c7e1a9d2f4c63"}},
     "signature": {"key_id": "<16 hex>", "ed25519": "<base64 of 64 bytes>"}}

The signature is Ed25519 over ``DOMAIN`` followed by the canonical bytes of
everything but ``signature``: JSON with sorted keys, no whitespace, ASCII
only. Parsing is strict (exact key sets, integers only, no duplicate keys,
no floats or NaN), so the canonical bytes of what was parsed are the bytes
that were signed: there is one way to write each manifest.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ManifestError
from ..format.opcodes import is_valid_module_name
from .origin import MAX_MANIFEST_SIZE, MAX_OBJECT_SIZE, object_name

__all__ = [
    "DOMAIN",
    "FORMAT",
    "MAX_MODULES",
    "MAX_REVISION",
    "Manifest",
    "ManifestSigner",
    "ManifestTrust",
    "ModuleEntry",
    "canonical",
    "issued_now",
    "parse_manifest",
    "sign_manifest",
    "verify_manifest",
]

FORMAT = 1
DOMAIN = b"polc-manifest-v1\n"
MAX_MODULES = 100_000
MAX_REVISION = 2**53 - 1  # exact in every JSON reader
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_KEY_ID = re.compile(r"[0-9a-f]{1,64}\Z")
_ISSUED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
_TOP = {"format", "set", "revision", "issued", "modules", "signature"}
_ENTRY = {"object", "sha256", "size", "signer"}
_SIG = {"key_id", "ed25519"}


class ManifestSigner(Protocol):
    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


class ManifestTrust(Protocol):
    """What verifying a manifest needs of a trust configuration (``TrustConfig``)."""

    def verify_manifest(self, key_id: str, signature: bytes, message: bytes) -> Any: ...


@dataclass(frozen=True, slots=True)
class ModuleEntry:
    object: str
    sha256: str
    size: int
    signer: str | None  # the key id in the artifact's signature block; None when unsigned


@dataclass(frozen=True, slots=True)
class Manifest:
    set: str
    revision: int
    issued: str
    modules: Mapping[str, ModuleEntry]
    key_id: str | None = None  # who signed it (None: unsigned)
    signature: bytes | None = None

    def body(self) -> dict[str, Any]:
        """Everything the signature covers, as JSON values."""
        return {
            "format": FORMAT,
            "set": self.set,
            "revision": self.revision,
            "issued": self.issued,
            "modules": {
                name: {"object": e.object, "sha256": e.sha256, "size": e.size, "signer": e.signer}
                for name, e in sorted(self.modules.items())
            },
        }

    def signed_message(self) -> bytes:
        return DOMAIN + canonical(self.body())

    def to_bytes(self) -> bytes:
        """The manifest file: the canonical body with its signature, and a newline."""
        doc = self.body()
        if self.signature is not None and self.key_id is not None:
            doc["signature"] = {"key_id": self.key_id, "ed25519": base64.b64encode(self.signature).decode("ascii")}
        return canonical(doc) + b"\n"


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def issued_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sign_manifest(manifest: Manifest, signer: ManifestSigner) -> Manifest:
    """The manifest signed by ``signer`` (a ``SigningKey``)."""
    unsigned = Manifest(manifest.set, manifest.revision, manifest.issued, manifest.modules)
    signature = signer.sign(unsigned.signed_message())
    return Manifest(manifest.set, manifest.revision, manifest.issued, manifest.modules, signer.key_id, signature)


# --------------------------------------------------------------------------- parsing


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ManifestError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_float(text: str) -> Any:
    raise ManifestError(f"a number that is not an integer: {text}")


def _reject_constant(text: str) -> Any:
    raise ManifestError(f"not a JSON number: {text}")


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ManifestError(f"{what} must be an integer in {lo}..{hi}, not {value!r}")
    return value


def _exact_keys(obj: Any, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ManifestError(f"{what} must be an object")
    missing, extra = keys - set(obj), set(obj) - keys
    if missing:
        raise ManifestError(f"{what}: missing {', '.join(sorted(missing))}")
    if extra:
        raise ManifestError(f"{what}: unknown field(s) {', '.join(sorted(extra))}")
    return obj


def parse_manifest(data: bytes) -> Manifest:
    """Parse a manifest strictly (the signature is not checked here). Raises ManifestError."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"manifest is {len(data)} bytes, more than {MAX_MANIFEST_SIZE}")
    try:
        text = data.decode("utf-8")
        doc = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_float=_reject_float, parse_constant=_reject_constant
        )
    except ManifestError as exc:
        raise ManifestError(f"manifest is not valid: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not valid: not a JSON object")
    keys = set(_TOP) if "signature" in doc else _TOP - {"signature"}
    try:
        _exact_keys(doc, keys, "manifest")
        if doc["format"] != FORMAT or isinstance(doc["format"], bool):
            raise ManifestError(f"unsupported manifest format {doc['format']!r} (this agent reads {FORMAT})")
        name = doc["set"]
        if not isinstance(name, str) or not _SET_NAME.match(name):
            raise ManifestError(f"bad set name {name!r}")
        revision = _int(doc["revision"], "revision", 1, MAX_REVISION)
        issued = doc["issued"]
        if not isinstance(issued, str) or not _ISSUED.match(issued):
            raise ManifestError(f"issued must be a UTC time YYYY-MM-DDTHH:MM:SSZ, not {issued!r}")
        mods = doc["modules"]
        if not isinstance(mods, dict):
            raise ManifestError("modules must be an object")
        if len(mods) > MAX_MODULES:
            raise ManifestError(f"{len(mods)} modules, more than {MAX_MODULES}")
        modules: dict[str, ModuleEntry] = {}
        for module, raw in mods.items():
            if not is_valid_module_name(module):
                raise ManifestError(f"bad module name {module!r}")
            entry = _exact_keys(raw, _ENTRY, f"module {module!r}")
            digest = entry["sha256"]
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise ManifestError(f"module {module!r}: sha256 must be 64 lower-case hex digits")
            if entry["object"] != object_name(digest):
                raise ManifestError(f"module {module!r}: object must be {object_name(digest)!r}")
            size = _int(entry["size"], f"module {module!r}: size", 1, MAX_OBJECT_SIZE)
            signer = entry["signer"]
            if signer is not None and (not isinstance(signer, str) or not _KEY_ID.match(signer)):
                raise ManifestError(f"module {module!r}: signer must be a key id or null")
            modules[module] = ModuleEntry(entry["object"], digest, size, signer)
        key_id: str | None = None
        signature: bytes | None = None
        if "signature" in doc:
            sig = _exact_keys(doc["signature"], _SIG, "signature")
            key_id = sig["key_id"]
            if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
                raise ManifestError("signature: key_id must be lower-case hex")
            if not isinstance(sig["ed25519"], str):
                raise ManifestError("signature: ed25519 must be base64 text")
            try:
                signature = base64.b64decode(sig["ed25519"], validate=True)
            except (binascii.Error, ValueError):
                raise ManifestError("signature: ed25519 is not base64") from None
            if len(signature) != 64:
                raise ManifestError(f"signature: an Ed25519 signature is 64 bytes, not {len(signature)}")
    except ManifestError as exc:
        raise ManifestError(f"manifest is not valid: {exc}") from None
    return Manifest(name, revision, issued, modules, key_id, signature)


def verify_manifest(data: bytes, trust: ManifestTrust) -> Manifest:
    """Parse a manifest and check its signature against ``trust``; raises ManifestError.

    The reason says which check failed: ``manifest is not signed``,
    ``manifest signature: signed by unknown key <id>``, ``manifest signature:
    key <id> may not sign manifests ...``, ``manifest signature: signature
    does not verify ...``.
    """
    from ..errors import SignatureError

    manifest = parse_manifest(data)
    if manifest.signature is None or manifest.key_id is None:
        raise ManifestError("manifest is not signed", reason="bad manifest signature")
    verify = getattr(trust, "verify_manifest", None)
    if not callable(verify):
        raise ManifestError(
            f"the trust configuration ({type(trust).__name__}) cannot verify manifests", reason="bad manifest signature"
        )
    try:
        verify(manifest.key_id, manifest.signature, manifest.signed_message())
    except SignatureError as exc:
        raise ManifestError(f"manifest signature: {exc}", reason="bad manifest signature") from None
    return manifest
