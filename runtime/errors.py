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
# Enforcement: a denied operation (PolicyAgent.require, the guard)

if typing.TYPE_CHECKING:
    from .enforce.decision import Decision

__all__ += ["PolicyDenied"]

_EACCES = 13  # errno.EACCES on every platform CPython supports; this module imports nothing
_SHOWN_ARGS = 8  # a message quotes at most this many arguments ...
_SHOWN_CHARS = 200  # ... and at most this many characters of each string


def _shown(value: object) -> str:
    """One request argument for a message: no method of the value runs (it may be hostile)."""
    t = type(value)
    if t is str:
        text = str.__str__(value)
        if len(text) > _SHOWN_CHARS:
            return repr(text[:_SHOWN_CHARS]) + "..."
        return repr(text)
    if t is int:
        n = int.__index__(value)  # type: ignore[arg-type]  # t is int: value is an int
        return str(n) if n.bit_length() <= 128 else f"<int of {n.bit_length()} bits>"
    if value is None or t is bool or t is float:
        return repr(value)
    return f"<{t.__name__}>"


class PolicyDenied(PolcError, PermissionError):
    """An operation the policy denies: raised by :meth:`PolicyAgent.require
    <polc.runtime.PolicyAgent.require>` and, before the operation happens, by the guard.

    ``decision`` is the deny :class:`~polc.runtime.Decision`; ``package`` the
    Python package whose frame the policy denied (None for an explicit
    ``require``), ``module`` the security module that decided, ``capability``
    and ``args`` the request, ``site`` the Python call site as ``file:line``
    (None when unknown). ``errno`` is ``EACCES``; ``str(e)`` reads::

        polc: vendorlib may not network.outbound('api.evil.com', 443): denied by
        policies-src/_global.pol:5:5 (vendorlib/client.py:42)

    (on one line). ``args`` is the request's arguments (a property: the
    message stays in the exception's own arguments, which ``str`` reads).
    """

    decision: Decision
    package: str | None
    module: str
    capability: str
    site: str | None

    def __init__(
        self,
        decision: Decision,
        module: str,
        capability: str,
        args: tuple[object, ...] = (),
        *,
        package: str | None = None,
        site: str | None = None,
    ) -> None:
        args = tuple(args)
        who = package if package is not None else module
        shown = ", ".join(map(_shown, args[:_SHOWN_ARGS])) + (", ..." if len(args) > _SHOWN_ARGS else "")
        why = f"denied by {decision.rule}" if decision.rule else decision.reason
        where = f" ({site})" if site is not None else ""
        message = f"polc: {who} may not {capability}({shown}): {why}{where}"
        super().__init__(message)
        self.errno = _EACCES
        self.decision = decision
        self.package = package
        self.module = module
        self.capability = capability
        # The exception's own arguments (the C slot behind BaseException.args, which str()
        # reads) stay the message; the request's arguments are ``request_args``, and ``args``
        # by the documented name (a property over BaseException's descriptor, below).
        self.request_args = args
        self.site = site

    @property
    def args(self) -> tuple[object, ...]:
        return self.request_args

    @args.setter
    def args(self, value: tuple[object, ...]) -> None:  # code that assigns e.args sets the message's slot
        BaseException.__dict__["args"].__set__(self, value)

    @property
    def message(self) -> str:
        return BaseException.__str__(self)

    def __str__(self) -> str:
        return BaseException.__str__(self)

    def __reduce__(self) -> tuple[object, ...]:
        d = self.decision
        fields = (d.allowed, d.effect, d.reason, d.rule, d.module, d.revision, d.audit)
        return (_rebuild_denied, (fields, self.module, self.capability, self.request_args, self.package, self.site))


def _rebuild_denied(
    fields: tuple[typing.Any, ...],
    module: str,
    capability: str,
    args: tuple[object, ...],
    package: str | None,
    site: str | None,
) -> PolicyDenied:
    from .enforce.decision import Decision

    return PolicyDenied(Decision(*fields), module, capability, args, package=package, site=site)
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
