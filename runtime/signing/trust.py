"""Trust: the public keys an agent trusts, each allowed to sign a set of module-name patterns.

:class:`TrustConfig` is read from a trust file (TOML or JSON) or built from
objects; :meth:`TrustConfig.verify` is what the artifact reader calls when it
was given a trust configuration (``format.reader.Trust``). Module patterns
are dotted names whose segments may be ``*`` or ``**``
(:func:`module_pattern_matches`). The threat model is in docs/security.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..errors import BadSignatureError, KeyScopeError, TrustConfigError, UnknownKeyError, UnsignedArtifactError
from ..format.header import FLAG_SIGNED, HEADER_SIZE
from .block import artifact_parts, parse_signature_block
from .keys import PUBLIC_KEY_LEN, SigningKey, crypto, decode_public_key, key_id_for, load_public_key

__all__ = ["TrustConfig", "TrustedKey", "module_pattern_matches"]


# the segments of a module name as the verifier accepts them (format.opcodes.MODULE_NAME)
_NAME_SEGMENT = re.compile(r"[A-Za-z0-9_-]+\Z")


def _validate_pattern(pattern: str, where: str) -> tuple[str, ...]:
    if not isinstance(pattern, str) or not pattern:
        raise TrustConfigError(f"{where}: a module pattern must be a non-empty string")
    parts = tuple(pattern.split("."))
    for seg in parts:
        if seg in ("*", "**"):
            continue
        if not _NAME_SEGMENT.match(seg):
            raise TrustConfigError(
                f"{where}: bad module pattern {pattern!r}: segment {seg!r} is not a name, '*' or '**'"
            )
    return parts


def _match_parts(pat: Sequence[str], name: Sequence[str]) -> bool:
    if not pat:
        return not name
    head = pat[0]
    if head == "**":
        # one or more segments
        return any(_match_parts(pat[1:], name[i:]) for i in range(1, len(name) + 1))
    if not name:
        return False
    if head != "*" and head != name[0]:
        return False
    return _match_parts(pat[1:], name[1:])


def module_pattern_matches(pattern: str, module: str) -> bool:
    """Whether a dotted module name matches a key's module pattern.

    Patterns are dotted names whose segments may be ``*`` (exactly one
    segment) or ``**`` (one or more segments), as for host names: ``tenant.*``
    matches ``tenant.acme`` but neither ``tenant`` nor ``tenant.acme.billing``
    (that takes ``tenant.**``); ``_global`` matches only ``_global``; ``**``
    matches everything.  Matching is exact and case-sensitive otherwise —
    unlike ``fnmatch``, whose ``*`` crosses dots.
    """
    parts = _validate_pattern(pattern, "pattern")
    return _match_parts(parts, module.split("."))


# --------------------------------------------------------------------------
# trust configuration


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """One trusted public key and the modules it may sign."""

    key_id: str
    public_key: bytes
    modules: tuple[str, ...]
    name: str | None = None
    manifest: bool = False  # may sign a published set's manifest (docs/fleet.md)

    def allows(self, module: str) -> bool:
        name = module.split(".")
        return any(_match_parts(p.split("."), name) for p in self.modules)

    @property
    def label(self) -> str:
        return f"{self.key_id} ({self.name})" if self.name else self.key_id


_KEY_FIELDS = {"id", "name", "public_key", "public_key_file", "modules", "manifest"}


class TrustConfig:
    """The keys an agent trusts to sign artifacts, each for a set of modules.

    Build it from a trust file (:meth:`from_file`; TOML, or JSON by suffix)::

        # trust.toml
        [[key]]
        name = "platform"
        id = "5b0c7e1a9d2f4c63"                  # optional; checked when given
        public_key = "mC8y...base64 of the raw 32 bytes...="   # or a PEM block
        modules = ["_global", "tenant.*"]

        [[key]]
        name = "acme-ci"
        public_key_file = "keys/acme-ci.pub"     # relative to the trust file
        modules = ["tenant.acme"]

        [[key]]
        name = "publisher"
        public_key = "..."
        manifest = true                          # may sign a published set's manifest
                                                 # (modules may then be omitted)

    or from objects (:meth:`from_keys`).  Listing an old and a new key side by
    side is how keys rotate: artifacts re-signed by the new key load while
    those still signed by the old one keep loading; drop the old key (and
    restart) once every artifact is re-signed.

    Constructing one imports ``cryptography`` and parses every key, so a
    missing library or a bad key fails at agent construction, not at the
    first reload.
    """

    def __init__(self, keys: Iterable[TrustedKey], *, source: str | None = None) -> None:
        ed25519, _, invalid = crypto()
        self._invalid = invalid
        self.source = source
        self._keys: dict[str, TrustedKey] = {}
        self._verifiers: dict[str, Any] = {}
        for k in keys:
            where = f"{source}: key {k.name or k.key_id}" if source else f"key {k.name or k.key_id}"
            if len(k.public_key) != PUBLIC_KEY_LEN:
                raise TrustConfigError(f"{where}: public key must be {PUBLIC_KEY_LEN} raw bytes")
            if k.key_id != key_id_for(k.public_key):
                raise TrustConfigError(
                    f"{where}: id {k.key_id!r} does not match its public key (whose id is {key_id_for(k.public_key)})"
                )
            if not k.modules and not k.manifest:
                raise TrustConfigError(f"{where}: no modules; a key must be allowed to sign something")
            for p in k.modules:
                _validate_pattern(p, where)
            if k.key_id in self._keys:
                raise TrustConfigError(f"{where}: key {k.key_id} is listed twice")
            try:
                self._verifiers[k.key_id] = ed25519.Ed25519PublicKey.from_public_bytes(k.public_key)
            except ValueError as exc:
                raise TrustConfigError(f"{where}: invalid Ed25519 public key: {exc}") from exc
            self._keys[k.key_id] = k
        if not self._keys:
            raise TrustConfigError(f"{source or 'trust configuration'}: no keys")

    # -- construction --------------------------------------------------------

    @staticmethod
    def key(
        public_key: bytes | str | SigningKey,
        modules: Iterable[str] | str,
        *,
        name: str | None = None,
        manifest: bool = False,
    ) -> TrustedKey:
        """A :class:`TrustedKey` from raw bytes, base64/PEM text or a SigningKey."""
        if isinstance(public_key, SigningKey):
            name = name or public_key.name
            raw = public_key.public_key
        else:
            raw = decode_public_key(public_key, f"key {name or '?'}")
        mods = (modules,) if isinstance(modules, str) else tuple(modules)
        return TrustedKey(key_id_for(raw), raw, mods, name, manifest)

    @classmethod
    def from_keys(
        cls,
        keys: Mapping[Any, Iterable[str] | str] | Iterable[TrustedKey],
    ) -> TrustConfig:
        """From ``{public_key: modules}`` (keys as raw bytes, base64/PEM text or
        SigningKey objects) or from TrustedKey objects."""
        if isinstance(keys, Mapping):
            return cls([cls.key(pk, mods) for pk, mods in keys.items()])
        return cls(list(keys))

    @classmethod
    def from_data(cls, data: Mapping[str, Any], *, source: str = "trust", base: Path | None = None) -> TrustConfig:
        """From the parsed content of a trust file: ``{"key": [{...}, ...]}``
        (``"keys"`` is accepted as well)."""
        if not isinstance(data, Mapping):
            raise TrustConfigError(f"{source}: expected a table with a 'key' list")
        unknown = set(data) - {"key", "keys"}
        if unknown:
            raise TrustConfigError(f"{source}: unknown top-level field(s): {', '.join(sorted(unknown))}")
        entries = list(data.get("key", [])) + list(data.get("keys", []))
        keys = []
        for i, entry in enumerate(entries, 1):
            where = f"{source}: key #{i}"
            if not isinstance(entry, Mapping):
                raise TrustConfigError(f"{where}: expected a table")
            unknown = set(entry) - _KEY_FIELDS
            if unknown:
                raise TrustConfigError(
                    f"{where}: unknown field(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(_KEY_FIELDS))})"
                )
            name = entry.get("name")
            if name is not None and not isinstance(name, str):
                raise TrustConfigError(f"{where}: 'name' must be a string")
            if name:
                where = f"{source}: key {name!r}"
            has_inline, has_file = "public_key" in entry, "public_key_file" in entry
            if has_inline == has_file:
                raise TrustConfigError(f"{where}: give exactly one of 'public_key' and 'public_key_file'")
            if has_inline:
                if not isinstance(entry["public_key"], str):
                    raise TrustConfigError(f"{where}: 'public_key' must be a string")
                raw = decode_public_key(entry["public_key"], where)
            else:
                if not isinstance(entry["public_key_file"], str):
                    raise TrustConfigError(f"{where}: 'public_key_file' must be a string")
                pf = Path(entry["public_key_file"])
                if not pf.is_absolute() and base is not None:
                    pf = base / pf
                raw = load_public_key(pf)
            manifest = entry.get("manifest", False)
            if not isinstance(manifest, bool):
                raise TrustConfigError(f"{where}: 'manifest' must be true or false")
            modules = entry.get("modules", [] if manifest else None)
            if (
                isinstance(modules, str)
                or not isinstance(modules, (list, tuple))
                or not all(isinstance(m, str) for m in modules)
            ):
                raise TrustConfigError(f"{where}: 'modules' must be a list of module patterns")
            kid = key_id_for(raw)
            declared = entry.get("id")
            if declared is not None and declared != kid:
                raise TrustConfigError(f"{where}: id {declared!r} does not match its public key (whose id is {kid})")
            keys.append(TrustedKey(kid, raw, tuple(modules), name, manifest))
        return cls(keys, source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrustConfig:
        """Load a trust file: TOML, or JSON when the name ends in ``.json``."""
        if not os.fspath(path).strip():
            raise TrustConfigError(f"{os.fspath(path)!r}: empty path of a trust file")
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise TrustConfigError(f"{p}: cannot read trust file: {exc.strerror or exc}") from exc
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(raw)
            else:
                import tomllib

                data = tomllib.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError, JSONDecodeError
            raise TrustConfigError(f"{p}: not a valid trust file: {exc}") from exc
        return cls.from_data(data, source=str(p), base=p.parent)

    # -- queries -------------------------------------------------------------

    @property
    def keys(self) -> tuple[TrustedKey, ...]:
        return tuple(self._keys.values())

    def get(self, key_id: str) -> TrustedKey | None:
        return self._keys.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"TrustConfig({', '.join(k.label for k in self._keys.values())})"

    # -- the check -----------------------------------------------------------

    def verify(
        self,
        header: Any,
        signed_bytes: bytes | bytearray | memoryview,
        trailer: bytes | bytearray | memoryview,
        module: str,
    ) -> TrustedKey:
        """Check that a trusted key, allowed to sign ``module``, signed the artifact.

        ``header`` is the reader's parsed header (its ``flags`` attribute is
        consulted when present), ``signed_bytes`` the header and payload bytes
        exactly as read, ``trailer`` the bytes after the payload, ``module``
        the module the artifact is loaded as (its file name; the reader
        checks separately that the payload names the same module).  Returns
        the key that signed; raises a :class:`SignatureError` subclass:
        "artifact is not signed", "signature does not verify", "signed by
        unknown key <id>", "key <id> may not sign module '<m>'".
        """
        flags = getattr(header, "flags", None)
        if flags is None and isinstance(header, Mapping):
            flags = header.get("flags")
        if flags is not None and not flags & FLAG_SIGNED:
            raise UnsignedArtifactError("artifact is not signed")
        if not trailer:
            raise UnsignedArtifactError("artifact is not signed")
        block = parse_signature_block(trailer)
        trusted = self._keys.get(block.key_id)
        if trusted is None:
            raise UnknownKeyError(f"signed by unknown key {block.key_id}")
        msg = signed_bytes if isinstance(signed_bytes, bytes) else bytes(signed_bytes)
        try:
            self._verifiers[block.key_id].verify(block.signature, msg)
        except self._invalid:
            raise BadSignatureError(f"signature does not verify (claims key {trusted.label})") from None
        if not trusted.allows(module):
            raise KeyScopeError(f"key {trusted.label} may not sign module {module!r}")
        return trusted

    def verify_manifest(self, key_id: str, signature: bytes, message: bytes) -> TrustedKey:
        """Check that a trusted key marked ``manifest = true`` signed a manifest's canonical bytes.

        Raises UnknownKeyError ("signed by unknown key <id>"), KeyScopeError
        ("key <id> may not sign manifests") or BadSignatureError ("signature
        does not verify"). The scope is checked before the signature: a key
        without manifest scope never gets as far as being trusted.
        """
        trusted = self._keys.get(key_id)
        if trusted is None:
            raise UnknownKeyError(f"signed by unknown key {key_id}")
        if not trusted.manifest:
            raise KeyScopeError(f"key {trusted.label} may not sign manifests (its trust entry lacks manifest = true)")
        try:
            self._verifiers[key_id].verify(bytes(signature), bytes(message))
        except self._invalid:
            raise BadSignatureError(f"signature does not verify (claims key {trusted.label})") from None
        return trusted

    def verify_artifact(self, data: bytes | bytearray | memoryview, module: str) -> TrustedKey:
        """:meth:`verify` on a whole artifact's bytes (tools and tests)."""
        flags, plen, _ = artifact_parts(data)
        mv = memoryview(data)

        header = SimpleNamespace(flags=flags)
        return self.verify(header, mv[: HEADER_SIZE + plen], mv[HEADER_SIZE + plen :], module)
