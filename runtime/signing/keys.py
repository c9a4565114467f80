"""Signing keys: Ed25519 private keys, key ids, key files (``polc keygen``, ``polc compile --sign``).

``cryptography`` (the ``sign`` extra) is imported lazily inside the functions
that need it, so importing this module needs msgpack alone; when it is
missing, :class:`~polc.runtime.errors.SigningUnavailableError` says how to
install it.

A key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public
key. It only *selects* a trusted key; the signature is always checked against
the full public key from the trust configuration, so an id collision cannot
make a forged signature verify.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import KeyFileError, SigningUnavailableError, TrustConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "KEY_ID_LEN",
    "PUBLIC_KEY_LEN",
    "SigningKey",
    "crypto",
    "decode_public_key",
    "generate_signing_key",
    "key_id_for",
    "load_public_key",
    "load_signing_key",
    "write_key_pair",
]

KEY_ID_LEN = 16  # hex digits polc writes
PUBLIC_KEY_LEN = 32

_INSTALL_HINT = "install it with: pip install 'polc[sign]'"


def crypto() -> tuple[ModuleType, ModuleType, type[Exception]]:
    """Import the Ed25519 primitives of ``cryptography`` or explain what is missing.

    ``(ed25519, serialization, InvalidSignature)``: the modules and the exception.
    """
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - exercised with a blocked import
        raise SigningUnavailableError(
            f"signed artifacts need the 'cryptography' package ({exc}); {_INSTALL_HINT}"
        ) from exc
    return ed25519, serialization, InvalidSignature


def key_id_for(public_key: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key: 16 hex digits of its SHA-256."""
    if len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, not {len(public_key)}")
    return hashlib.sha256(public_key).hexdigest()[:KEY_ID_LEN]


class SigningKey:
    """An Ed25519 private key with its key id; what ``polc compile --sign`` uses."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, private_key: Any, name: str | None = None) -> None:
        ed25519, serialization, _ = crypto()
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise TypeError("SigningKey needs an Ed25519PrivateKey")
        self._key: Ed25519PrivateKey = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id: str = key_id_for(self.public_key)
        self.name = name

    @classmethod
    def from_seed(cls, seed: bytes, name: str | None = None) -> SigningKey:
        """A key from its raw 32-byte private seed (tests, HSM exports)."""
        ed25519, _, _ = crypto()
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed), name)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(bytes(data))

    def private_pem(self) -> bytes:
        _, serialization, _ = crypto()
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        _, serialization, _ = crypto()
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode("ascii")

    def __repr__(self) -> str:  # never shows key material
        return f"SigningKey(key_id={self.key_id!r}, name={self.name!r})"


def generate_signing_key(name: str | None = None) -> SigningKey:
    ed25519, _, _ = crypto()
    return SigningKey(ed25519.Ed25519PrivateKey.generate(), name)


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load a private key written by ``polc keygen`` (PKCS#8 PEM, unencrypted)
    or any unencrypted PEM/DER Ed25519 private key."""
    ed25519, serialization, _ = crypto()
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read signing key: {exc.strerror or exc}") from exc
    loader = (
        serialization.load_pem_private_key if data.lstrip().startswith(b"-----") else serialization.load_der_private_key
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


def decode_public_key(value: str | bytes, where: str) -> bytes:
    """Raw 32 bytes from base64 of the raw key, a PEM public key, or raw bytes."""
    if isinstance(value, bytes):
        if len(value) == PUBLIC_KEY_LEN:
            return value
        value = value.decode("ascii", "replace")
    text = value.strip()
    if text.startswith("-----"):
        ed25519, serialization, _ = crypto()
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except ValueError as exc:
            raise TrustConfigError(f"{where}: not a PEM public key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise TrustConfigError(f"{where}: not an Ed25519 public key ({type(key).__name__})")
        raw: bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return raw
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TrustConfigError(f"{where}: public key is neither PEM nor base64: {exc}") from exc
    if len(raw) != PUBLIC_KEY_LEN:
        raise TrustConfigError(f"{where}: an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, base64 gave {len(raw)}")
    return raw


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """Raw 32-byte public key from a ``.pub`` file (PEM, as ``polc keygen`` writes,
    or one line of base64)."""
    p = Path(path)
    try:
        text = p.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustConfigError(f"{p}: cannot read public key: {exc}") from exc
    return decode_public_key(text, str(p))


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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
