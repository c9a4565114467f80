"""What reloading reports: :class:`ReloadResult` per step, :class:`ReloadEvent` per change,
:class:`ReloadFailure` per file that failed, and the event kinds.

The kinds are plain strings (``event.kind == "loaded"``, JSON as is), named
here and typed as :data:`EventKind`. Semantics: docs/runtime.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "EVENT_KINDS",
    "FAILED",
    "LOADED",
    "RECOVERED",
    "RELOADED",
    "REMOVED",
    "WATCH",
    "EventKind",
    "ReloadEvent",
    "ReloadFailure",
    "ReloadResult",
]

EventKind = Literal["loaded", "reloaded", "failed", "removed", "recovered", "watch"]
LOADED: Final = "loaded"  # first policy of a module in force
RELOADED: Final = "reloaded"  # a new policy of a loaded module in force
FAILED: Final = "failed"  # an artifact could not be loaded; the previous policy (if any) stays
REMOVED: Final = "removed"  # the file is gone; the previous policy stays
RECOVERED: Final = "recovered"  # the module had an error (failed or removed) and has none now
# How changes are detected changed (module None, file the policy directory):
# inotify fell back to polling, or works again; ``reason`` says what and why.
WATCH: Final = "watch"
EVENT_KINDS: Final[tuple[EventKind, ...]] = (LOADED, RELOADED, FAILED, REMOVED, RECOVERED, WATCH)


@dataclass(frozen=True, slots=True)
class ReloadFailure:
    """An artifact (or the directory itself, with ``module=None``) that could not be loaded."""

    file: str
    module: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "module": self.module, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one reload step did.

    ``changed``: modules loaded or reloaded (their new policy is active).
    ``removed``: modules whose file disappeared (their last policy stays
    active). ``failed``: files that failed in this step (the previous policy
    of each stays active).
    """

    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[ReloadFailure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": list(self.changed),
            "removed": list(self.removed),
            "failed": [f.to_dict() for f in self.failed],
        }


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    """Delivered to subscribers after each change is live.

    ``kind``: ``"loaded"`` (first policy of a module), ``"reloaded"``,
    ``"failed"`` (previous policy kept, ``reason`` says why), ``"removed"``
    (file gone, previous policy kept), ``"recovered"`` (the module had an
    error, from ``failed`` or ``removed``, and has none now: once per
    cleared error, after the ``loaded``/``reloaded`` that cleared it if a new
    policy did), ``"watch"`` (module None: change detection fell back to
    polling, ``reason`` says why). ``revision``/``rules`` describe the policy active for the
    module after the event (None/0 when none). Events are delivered in the
    order they were committed (docs/runtime.md).
    """

    kind: EventKind
    module: str | None
    file: str
    reason: str | None = None
    revision: str | None = None
    rules: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "module": self.module,
            "file": self.file,
            "reason": self.reason,
            "revision": self.revision,
            "rules": self.rules,
        }
