"""Every exception the runtime raises on purpose, under one root.

Catch :class:`PolcError` to catch them all. Each class keeps the built-in
base it had before it moved here (``ValueError``, ``RuntimeError``, ...), so
code that catches the built-in keeps working.

This module imports nothing: every other runtime module may import it.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "BadHeader",
    "BadMagic",
    "BadSignatureError",
    "DigestMismatch",
    "KeyFileError",
    "KeyScopeError",
    "MalformedPayload",
    "ModuleNameMismatch",
    "PatternError",
    "PayloadTooLarge",
    "PolcError",
    "SignatureError",
    "SigningUnavailableError",
    "TrailingData",
    "Truncated",
    "TrustConfigError",
    "UnknownKeyError",
    "UnreadableArtifact",
    "UnsignedArtifactError",
    "UnsupportedVersion",
    "VerifyError",
]


class PolcError(Exception):
    """The root of every exception polc raises on purpose."""


# ---------------------------------------------------------------------------
# The artifact format: what ``read_artifact`` and the writers raise
# (docs/artifact-format.md, "Verification order").


class ArtifactError(PolcError):
    """Root of every artifact failure. ``str(e)`` is the precise message,
    ``e.reason`` a short fixed phrase for logs and metrics."""

    reason = "bad artifact"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class BadMagic(ArtifactError):
    reason = "bad magic"


class UnsupportedVersion(ArtifactError):
    reason = "unsupported format version"

    def __init__(self, message: str, *, major: int, minor: int) -> None:
        super().__init__(message)
        self.major = major
        self.minor = minor


class BadHeader(ArtifactError):
    """Unknown flag bits, or a trailer that does not agree with the flags."""

    reason = "bad header"


class Truncated(ArtifactError):
    reason = "truncated"


class TrailingData(ArtifactError):
    reason = "trailing data"


class PayloadTooLarge(ArtifactError):
    reason = "payload too large"


class DigestMismatch(ArtifactError):
    reason = "checksum mismatch"


class MalformedPayload(ArtifactError):
    reason = "malformed payload"


class ModuleNameMismatch(ArtifactError):
    reason = "module name mismatch"


class UnreadableArtifact(ArtifactError):
    """The file could not be read; ``__cause__`` is the OSError, ``errno`` its errno."""

    reason = "unreadable"

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class VerifyError(PolcError, ValueError):
    """A payload that is not a well-formed format-1 payload.

    The reader re-raises it as :class:`MalformedPayload`; it escapes only
    from the verifier's own functions (``verify_payload`` and its pieces).
    """


# ---------------------------------------------------------------------------
# Patterns


class PatternError(PolcError, ValueError):
    """A rule argument that is not a valid pattern; the message is for people."""


# ---------------------------------------------------------------------------
# Signatures and trust (docs/security.md)


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


class SigningUnavailableError(PolcError, RuntimeError):
    """Signatures are needed but the ``cryptography`` package is not installed."""


class TrustConfigError(PolcError, ValueError):
    """A trust file or trust object is malformed."""


class KeyFileError(PolcError, ValueError):
    """A key file cannot be read or written."""


# --------------------------------------------------------------------------
# Configuration and loading of the agent (runtime/config.py, runtime/agent.py)

import typing  # noqa: E402 - kept in this section, so each section of the file stays self-contained

if typing.TYPE_CHECKING:
    from .events import ReloadFailure

__all__ += ["ConfigError", "PolicyLoadError"]


class ConfigError(PolcError, ValueError):
    """A setting that is given but cannot be used: an argument, or a ``POLC_*`` variable that
    is set but blank or malformed. The message names the setting and the value."""


class PolicyLoadError(PolcError):
    """A strict start-up met bad artifacts (or no directory); ``failures`` lists each."""

    def __init__(self, failures: list[ReloadFailure]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  {f.file}: {f.reason}" for f in self.failures)
        super().__init__(f"{len(self.failures)} policy artifact(s) failed to load:\n{lines}")


# --------------------------------------------------------------------------
# Fleets: pulling a published set from an origin (runtime/fleet/)

__all__ += ["FleetError", "ManifestError", "OriginError", "RollbackError"]


class FleetError(PolcError):
    """Root of every failure to publish or pull a set. ``str(e)`` is the precise
    message, ``e.reason`` a short fixed phrase for status and metrics."""

    reason = "fleet error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class OriginError(FleetError):
    """The origin (or store) did not deliver: unreachable, a 5xx, 403, 404, a body
    too large or cut short. ``reason`` is one of ``unreachable``, ``server error``,
    ``forbidden``, ``not found``, ``too large``, ``partial download``,
    ``bad response``, ``unavailable``; ``status`` the HTTP status when there was one."""

    reason = "origin error"

    def __init__(self, message: str, *, reason: str | None = None, status: int | None = None) -> None:
        super().__init__(message, reason=reason)
        self.status = status


class ManifestError(FleetError):
    """A manifest that is malformed or whose signature does not verify."""

    reason = "bad manifest"


class RollbackError(FleetError):
    """A manifest whose revision is not above the highest this agent has accepted."""

    reason = "rollback"
