"""The answer to one ``check``: :class:`Decision`, immutable and shared between checks."""

from __future__ import annotations

from typing import Any

__all__ = ["Decision"]

_Key = tuple[bool, str, str, "str | None", str, "str | None", bool]


class Decision:
    """The answer to one ``check``. Truthy when the request is allowed.

    ``effect`` is ``"allow"`` or ``"deny"``; an audited deny has
    ``allowed=True, effect="deny", audit=True``. ``rule`` is the deciding
    rule as ``file:line:col`` (None for "no entitlement" and request errors).
    ``revision`` is the revision of the artifact that decided (the module's
    own artifact for "no entitlement"), None when there is none.
    Decisions are immutable and shared between checks.
    """

    __slots__ = ("allowed", "audit", "effect", "module", "reason", "revision", "rule")

    allowed: bool
    effect: str
    reason: str
    rule: str | None
    module: str
    revision: str | None
    audit: bool

    def __init__(
        self,
        allowed: bool,
        effect: str,
        reason: str,
        rule: str | None = None,
        module: str = "",
        revision: str | None = None,
        audit: bool = False,
    ) -> None:
        s = object.__setattr__
        s(self, "allowed", allowed)
        s(self, "effect", effect)
        s(self, "reason", reason)
        s(self, "rule", rule)
        s(self, "module", module)
        s(self, "revision", revision)
        s(self, "audit", audit)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Decision is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Decision is immutable")

    def __bool__(self) -> bool:
        return self.allowed

    def _key(self) -> _Key:
        return (self.allowed, self.effect, self.reason, self.rule, self.module, self.revision, self.audit)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Decision:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "effect": self.effect,
            "reason": self.reason,
            "rule": self.rule,
            "module": self.module,
            "revision": self.revision,
            "audit": self.audit,
        }

    def __repr__(self) -> str:
        flags = ", audit=True" if self.audit else ""
        return (
            f"Decision(allowed={self.allowed}, effect={self.effect!r}, reason={self.reason!r}, "
            f"rule={self.rule!r}, module={self.module!r}, revision={self.revision!r}{flags})"
        )
