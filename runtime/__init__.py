"""Runtime: the artifact format, verifier, enforcer and reloading agent. Needs msgpack only.

The public API::

    from polc.runtime import PolicyAgent

    with PolicyAgent("policies", reload_interval=5.0) as agent:
        decision = agent.check("tenant.acme", "network.outbound", "api.acme.com", 443)
        if not decision:
            raise PermissionError(decision.reason)
"""

from .agent import (
    DEFAULT_RELOAD_INTERVAL,
    PolicyAgent,
    PolicyLoadError,
    ReloadEvent,
    ReloadFailure,
    ReloadResult,
)
from .enforcer import Decision, Snapshot

__all__ = [
    "DEFAULT_RELOAD_INTERVAL",
    "Decision",
    "PolicyAgent",
    "PolicyLoadError",
    "ReloadEvent",
    "ReloadFailure",
    "ReloadResult",
    "Snapshot",
]
