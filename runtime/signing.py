"""Ed25519-signed artifacts, trust configuration and the policy directory guard.

This is the runtime half of artifact signing (the threat model is in
``docs/security.md``).  Three things live here:

* the **signature block** (format v1) that a signed artifact carries as its
  trailer, and :func:`sign_artifact`, which turns an unsigned artifact into a
  signed one;
* :class:`TrustConfig`: the public keys an agent trusts, each allowed to sign
  a set of module-name patterns, and :meth:`TrustConfig.verify`, which the
  artifact reader calls when it was given a trust configuration;
* :func:`check_directory_permissions`, the start-up check that warns when
  someone other than root or the agent's own user can change the policies.

``cryptography`` (the ``sign`` extra) is imported lazily inside the functions
that need it, so ``import polc.runtime`` keeps needing msgpack alone.  When
signatures must be checked and it is missing, :class:`SigningUnavailableError`
says how to install it.

Signature block v1 (the artifact trailer; ``trailer length`` in the header is
its size, and bit 0 of the header's flags is set)::

    offset size  field
    0      1     block version        u8 (1)
    1      1     key id length (n)    u8, 1..64 (polc writes 16)
    2      n     key id               ASCII lower-case hex
    2+n    64    Ed25519 signature    over the header and the payload, as written

The signature covers the 56-byte header *as written* (magic, version, flags
with the signed bit set, payload length, the final trailer length, payload
digest) followed by the payload: clearing the signed flag, changing the
trailer length, the digest or any payload byte breaks it.  Ed25519 signatures
are deterministic, so signing stays reproducible: the same source, compiler
and key give byte-identical artifacts.

A key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public
key.  It only *selects* a trusted key; the signature is always checked against
the full public key from the trust configuration, so an id collision cannot
make a forged signature verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .artifact import FLAG_SIGNED, ArtifactError

__all__ = [
    "BLOCK_VERSION",
    "KEY_ID_LEN",
    "SIGNATURE_LEN",
    "TRAILER_LEN",
    "HEADER_LEN",
    "SignatureError",
    "UnsignedArtifactError",
    "BadSignatureError",
    "UnknownKeyError",
    "KeyScopeError",
    "SigningUnavailableError",
    "TrustConfigError",
    "KeyFileError",
    "SignatureBlock",
    "SigningKey",
    "TrustedKey",
    "TrustConfig",
    "key_id_for",
    "encode_signature_block",
    "parse_signature_block",
    "signer_key_id",
    "describe_trailer",
    "sign_artifact",
    "generate_signing_key",
    "load_signing_key",
    "load_public_key",
    "write_key_pair",
    "module_pattern_matches",
    "check_directory_permissions",
    "check_file_permissions",
]

BLOCK_VERSION = 1
KEY_ID_LEN = 16  # hex digits polc writes
MAX_KEY_ID_LEN = 64
SIGNATURE_LEN = 64
TRAILER_LEN = 2 + KEY_ID_LEN + SIGNATURE_LEN  # 82: the size polc always writes
PUBLIC_KEY_LEN = 32

# The fixed header of docs/design.md; kept here (not imported) only for the
# offsets sign_artifact rewrites: flags at 12, payload length at 16, trailer
# length at 20.
HEADER_LEN = 56
_HEADER_TAIL = struct.Struct(">III")  # flags, payload length, trailer length at offset 12

_INSTALL_HINT = "install it with: pip install 'polc[sign]'"
_HEX_ID = re.compile(r"[0-9a-f]{1,64}\Z")


# --------------------------------------------------------------------------
# errors


class SignatureError(ArtifactError):
    """An artifact was rejected by the trust configuration.

    Subclasses say why; ``str(exc)`` is the reason an operator reads in the
    reload log (``keeping previous: tenant.acme.bin: signature does not verify``).
    """


class UnsignedArtifactError(SignatureError):
    """Trust is configured and the artifact carries no signature."""


class BadSignatureError(SignatureError):
    """The signature block is malformed or the signature does not verify."""


class UnknownKeyError(SignatureError):
    """The artifact is signed by a key the trust configuration does not list."""


class KeyScopeError(SignatureError):
    """A trusted key signed a module it is not allowed to sign."""


class SigningUnavailableError(RuntimeError):
    """Signatures are needed but the ``cryptography`` package is not installed."""


class TrustConfigError(ValueError):
    """A trust file or trust object is malformed."""


class KeyFileError(ValueError):
    """A key file cannot be read or written."""


def _crypto():
    """Import the Ed25519 primitives of ``cryptography`` or explain what is missing."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - exercised with a blocked import
        raise SigningUnavailableError(
            f"signed artifacts need the 'cryptography' package ({exc}); {_INSTALL_HINT}"
        ) from exc
    return ed25519, serialization, InvalidSignature


# --------------------------------------------------------------------------
# key ids and the signature block


def key_id_for(public_key: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key: 16 hex digits of its SHA-256."""
    if len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, not {len(public_key)}")
    return hashlib.sha256(public_key).hexdigest()[:KEY_ID_LEN]


@dataclass(frozen=True, slots=True)
class SignatureBlock:
    version: int
    key_id: str
    signature: bytes


def encode_signature_block(key_id: str, signature: bytes) -> bytes:
    """Encode a v1 signature block (the artifact trailer)."""
    if not _HEX_ID.match(key_id):
        raise ValueError(f"key id must be 1..{MAX_KEY_ID_LEN} lower-case hex digits: {key_id!r}")
    if len(signature) != SIGNATURE_LEN:
        raise ValueError(f"an Ed25519 signature is {SIGNATURE_LEN} bytes, not {len(signature)}")
    kid = key_id.encode("ascii")
    return bytes((BLOCK_VERSION, len(kid))) + kid + bytes(signature)


def parse_signature_block(trailer: bytes | bytearray | memoryview) -> SignatureBlock:
    """Parse a trailer as a signature block; :class:`BadSignatureError` when malformed.

    Needs no ``cryptography``: the artifact reader and ``polc inspect`` use it
    to show who signed an artifact even when nothing verifies it.
    """
    t = bytes(trailer)
    if not t:
        raise UnsignedArtifactError("artifact is not signed")
    if len(t) < 2:
        raise BadSignatureError(f"malformed signature block: {len(t)} bytes")
    version, n = t[0], t[1]
    if version != BLOCK_VERSION:
        if version > BLOCK_VERSION:
            raise BadSignatureError(
                f"signature block version {version} is newer than this polc supports ({BLOCK_VERSION})"
            )
        raise BadSignatureError(f"malformed signature block: version {version}")
    if not 1 <= n <= MAX_KEY_ID_LEN:
        raise BadSignatureError(f"malformed signature block: key id length {n}")
    if len(t) != 2 + n + SIGNATURE_LEN:
        raise BadSignatureError(
            f"malformed signature block: {len(t)} bytes, expected {2 + n + SIGNATURE_LEN}"
        )
    try:
        key_id = t[2 : 2 + n].decode("ascii")
    except UnicodeDecodeError:
        key_id = ""
    if not _HEX_ID.match(key_id):
        raise BadSignatureError("malformed signature block: key id is not lower-case hex")
    return SignatureBlock(version, key_id, t[2 + n :])


def describe_trailer(header: Any, trailer: bytes | bytearray | memoryview) -> dict[str, Any]:
    """What ``polc inspect`` shows about a signature block, without verifying it.

    Raises :class:`SignatureError` for a malformed block.
    """
    block = parse_signature_block(trailer)
    return {"algorithm": "ed25519", "block_version": block.version, "key_id": block.key_id}


def signer_key_id(data: bytes | bytearray | memoryview) -> str | None:
    """Key id of the signer of a whole artifact's bytes, None when unsigned or malformed.

    A cheap look at the header and trailer for tools (``polc inspect``, the
    compiler's up-to-date check); it verifies nothing.
    """
    mv = memoryview(data)
    if len(mv) < HEADER_LEN:
        return None
    flags, plen, tlen = _HEADER_TAIL.unpack_from(mv, 12)
    if not flags & FLAG_SIGNED or not tlen or len(mv) != HEADER_LEN + plen + tlen:
        return None
    try:
        return parse_signature_block(mv[HEADER_LEN + plen :]).key_id
    except SignatureError:
        return None


# --------------------------------------------------------------------------
# signing keys


class SigningKey:
    """An Ed25519 private key with its key id; what ``polc compile --sign`` uses."""

    __slots__ = ("_key", "public_key", "key_id", "name")

    def __init__(self, private_key: Any, name: str | None = None) -> None:
        ed25519, serialization, _ = _crypto()
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise TypeError("SigningKey needs an Ed25519PrivateKey")
        self._key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id: str = key_id_for(self.public_key)
        self.name = name

    @classmethod
    def from_seed(cls, seed: bytes, name: str | None = None) -> SigningKey:
        """A key from its raw 32-byte private seed (tests, HSM exports)."""
        ed25519, _, _ = _crypto()
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed), name)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(bytes(data))

    def private_pem(self) -> bytes:
        _, serialization, _ = _crypto()
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        _, serialization, _ = _crypto()
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode("ascii")

    def __repr__(self) -> str:  # never shows key material
        return f"SigningKey(key_id={self.key_id!r}, name={self.name!r})"


def generate_signing_key(name: str | None = None) -> SigningKey:
    ed25519, _, _ = _crypto()
    return SigningKey(ed25519.Ed25519PrivateKey.generate(), name)


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load a private key written by ``polc keygen`` (PKCS#8 PEM, unencrypted)
    or any unencrypted PEM/DER Ed25519 private key."""
    ed25519, serialization, _ = _crypto()
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read signing key: {exc.strerror or exc}") from exc
    loader = (
        serialization.load_pem_private_key
        if data.lstrip().startswith(b"-----")
        else serialization.load_der_private_key
    )
    try:
        key = loader(data, password=None)
    except TypeError as exc:  # encrypted key
        raise KeyFileError(f"{p}: encrypted signing keys are not supported") from exc
    except ValueError as exc:
        raise KeyFileError(f"{p}: not a private key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{p}: not an Ed25519 private key ({type(key).__name__})")
    return SigningKey(key, p.stem)


def _decode_public_key(value: str | bytes, where: str) -> bytes:
    """Raw 32 bytes from base64 of the raw key, a PEM public key, or raw bytes."""
    if isinstance(value, bytes):
        if len(value) == PUBLIC_KEY_LEN:
            return value
        value = value.decode("ascii", "replace")
    text = value.strip()
    if text.startswith("-----"):
        ed25519, serialization, _ = _crypto()
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except ValueError as exc:
            raise TrustConfigError(f"{where}: not a PEM public key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise TrustConfigError(f"{where}: not an Ed25519 public key ({type(key).__name__})")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TrustConfigError(f"{where}: public key is neither PEM nor base64: {exc}") from exc
    if len(raw) != PUBLIC_KEY_LEN:
        raise TrustConfigError(
            f"{where}: an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, base64 gave {len(raw)}"
        )
    return raw


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """Raw 32-byte public key from a ``.pub`` file (PEM, as ``polc keygen`` writes,
    or one line of base64)."""
    p = Path(path)
    try:
        text = p.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustConfigError(f"{p}: cannot read public key: {exc}") from exc
    return _decode_public_key(text, str(p))


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write a file created with ``mode`` from the start (never readable by
    others, not even briefly); refuse to replace an existing one unless forced."""
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError as exc:
            raise KeyFileError(f"{path} exists; use --force to overwrite it") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.unlink(path)
            raise
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_key_pair(
    key: SigningKey, directory: str | os.PathLike[str], name: str, *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub`` (PEM, 0644).

    Both are checked before either is written, so a refusal leaves nothing
    half-done.
    """
    d = Path(directory)
    key_path, pub_path = d / f"{name}.key", d / f"{name}.pub"
    if not force:
        for p in (key_path, pub_path):
            if p.exists() or p.is_symlink():
                raise KeyFileError(f"{p} exists; use --force to overwrite it")
    _write_new(key_path, key.private_pem(), 0o600, force)
    _write_new(pub_path, key.public_pem(), 0o644, force)
    return key_path, pub_path


# --------------------------------------------------------------------------
# signing an artifact


def _split(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    mv = memoryview(data)
    if len(mv) < HEADER_LEN:
        raise ArtifactError(f"not an artifact: {len(mv)} bytes, the header alone is {HEADER_LEN}")
    flags, plen, tlen = _HEADER_TAIL.unpack_from(mv, 12)
    if len(mv) != HEADER_LEN + plen + tlen:
        raise ArtifactError(
            f"not a whole artifact: {len(mv)} bytes, header says {HEADER_LEN + plen + tlen}"
        )
    return flags, plen, tlen


def sign_artifact(data: bytes | bytearray | memoryview, key: SigningKey) -> bytes:
    """Return ``data`` (a whole artifact, as ``pack_artifact`` wrote it) signed by ``key``.

    The header's flags get the signed bit and its trailer length becomes the
    size of the signature block *before* signing, so the signature covers the
    header exactly as written.  An artifact that is already signed is re-signed
    (its old block is dropped).  Nothing else of the header or payload changes,
    so ``revision`` and the payload digest stay the same.
    """
    flags, plen, _ = _split(data)
    body = bytearray(memoryview(data)[: HEADER_LEN + plen])
    block_len = 2 + len(key.key_id) + SIGNATURE_LEN
    struct.pack_into(">I", body, 12, flags | FLAG_SIGNED)
    struct.pack_into(">I", body, 20, block_len)
    signature = key.sign(bytes(body))
    trailer = encode_signature_block(key.key_id, signature)
    assert len(trailer) == block_len
    return bytes(body) + trailer


# --------------------------------------------------------------------------
# module-name patterns


# the segments of a module name as runtime/bytecode.py accepts them
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

    def allows(self, module: str) -> bool:
        name = module.split(".")
        return any(_match_parts(p.split("."), name) for p in self.modules)

    @property
    def label(self) -> str:
        return f"{self.key_id} ({self.name})" if self.name else self.key_id


_KEY_FIELDS = {"id", "name", "public_key", "public_key_file", "modules"}


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

    or from objects (:meth:`from_keys`).  Listing an old and a new key side by
    side is how keys rotate: artifacts re-signed by the new key load while
    those still signed by the old one keep loading; drop the old key (and
    restart) once every artifact is re-signed.

    Constructing one imports ``cryptography`` and parses every key, so a
    missing library or a bad key fails at agent construction, not at the
    first reload.
    """

    def __init__(self, keys: Iterable[TrustedKey], *, source: str | None = None) -> None:
        ed25519, _, invalid = _crypto()
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
                    f"{where}: id {k.key_id!r} does not match its public key "
                    f"(whose id is {key_id_for(k.public_key)})"
                )
            if not k.modules:
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
    ) -> TrustedKey:
        """A :class:`TrustedKey` from raw bytes, base64/PEM text or a SigningKey."""
        if isinstance(public_key, SigningKey):
            name = name or public_key.name
            raw = public_key.public_key
        else:
            raw = _decode_public_key(public_key, f"key {name or '?'}")
        mods = (modules,) if isinstance(modules, str) else tuple(modules)
        return TrustedKey(key_id_for(raw), raw, mods, name)

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
                    f"{where}: unknown field(s): {', '.join(sorted(unknown))} "
                    f"(known: {', '.join(sorted(_KEY_FIELDS))})"
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
                raw = _decode_public_key(entry["public_key"], where)
            else:
                if not isinstance(entry["public_key_file"], str):
                    raise TrustConfigError(f"{where}: 'public_key_file' must be a string")
                pf = Path(entry["public_key_file"])
                if not pf.is_absolute() and base is not None:
                    pf = base / pf
                raw = load_public_key(pf)
            modules = entry.get("modules")
            if isinstance(modules, str) or not isinstance(modules, (list, tuple)) or not all(
                isinstance(m, str) for m in modules
            ):
                raise TrustConfigError(f"{where}: 'modules' must be a list of module patterns")
            kid = key_id_for(raw)
            declared = entry.get("id")
            if declared is not None and declared != kid:
                raise TrustConfigError(
                    f"{where}: id {declared!r} does not match its public key (whose id is {kid})"
                )
            keys.append(TrustedKey(kid, raw, tuple(modules), name))
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrustConfig | None:
        """The trust file named by ``POLC_TRUST_FILE``, or None when it is unset.

        Set, it must name a trust file: a blank value (a template that
        expanded to nothing) raises :class:`TrustConfigError` instead of
        silently turning signature checks off.
        """
        from ._env import env_path

        try:
            path = env_path("POLC_TRUST_FILE", environ, what="the trust file (unset it to run without signature checks)")
        except ValueError as exc:
            raise TrustConfigError(str(exc)) from None
        return None if path is None else cls.from_file(path)

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
            raise BadSignatureError(
                f"signature does not verify (claims key {trusted.label})"
            ) from None
        if not trusted.allows(module):
            raise KeyScopeError(f"key {trusted.label} may not sign module {module!r}")
        return trusted

    def verify_artifact(self, data: bytes | bytearray | memoryview, module: str) -> TrustedKey:
        """:meth:`verify` on a whole artifact's bytes (tools and tests)."""
        flags, plen, _ = _split(data)
        mv = memoryview(data)

        header = SimpleNamespace(flags=flags)
        return self.verify(header, mv[: HEADER_LEN + plen], mv[HEADER_LEN + plen :], module)


# --------------------------------------------------------------------------
# the directory guard


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
    path: str | os.PathLike[str], *, suffix: str = ".bin", euid: int | None = None
) -> list[str]:
    """Warnings about who besides root and this process can change the policies.

    Checks the policy directory (writable by group/others, or owned by another
    non-root user: they can drop, replace or delete artifacts), its parent
    directories (writable by group/others without the sticky bit: they can
    rename the whole directory away and put their own in its place; their
    owners are not checked, as a home or deploy directory above the policies
    is usually owned by someone else), and
    every ``*.bin`` in it (writable or owned likewise: rewritable in place).
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
    try:
        with os.scandir(d) as it:
            names = sorted(e.name for e in it if e.name.endswith(suffix))
    except OSError:
        return problems
    for name in names:
        problems.extend(check_file_permissions(d / name, euid=euid))
    return problems
