"""Runtime: the artifact format, verifier, enforcer and reloading agent. Needs msgpack only.

The public API::

    from polc.runtime import PolicyAgent

    with PolicyAgent("policies", reload_interval=5.0) as agent:
        decision = agent.check("tenant.acme", "network.outbound", "api.acme.com", 443)
        if not decision:
            raise PermissionError(decision.reason)
"""

# Type checkers read the imports below (they treat TYPE_CHECKING as true);
# at run time __getattr__ imports the names on first use. Not `from typing
# import TYPE_CHECKING`: `import polc.runtime` does not import typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .agent import PolicyAgent
    from .config import DEFAULT_RELOAD_INTERVAL
    from .enforce import Decision, Snapshot
    from .errors import PolicyDenied, PolicyLoadError
    from .events import ReloadEvent, ReloadFailure, ReloadResult

# The agent and the enforcer are imported on first use (PEP 562), so tools
# that only read or write artifacts (polc compile, polc inspect) do not pay
# for them at start-up: `import polc.runtime.agent` takes about 75 ms,
# `import polc.runtime.format.reader` about 40 ms of that.
_EXPORTS = {
    "DEFAULT_RELOAD_INTERVAL": "config",
    "PolicyAgent": "agent",
    "PolicyDenied": "errors",
    "PolicyLoadError": "errors",
    "ReloadEvent": "events",
    "ReloadFailure": "events",
    "ReloadResult": "events",
    "Decision": "enforce",
    "Snapshot": "enforce",
}

__all__ = [
    "DEFAULT_RELOAD_INTERVAL",
    "Decision",
    "PolicyAgent",
    "PolicyDenied",
    "PolicyLoadError",
    "ReloadEvent",
    "ReloadFailure",
    "ReloadResult",
    "Snapshot",
]


if not TYPE_CHECKING:  # type checkers see the names imported above, and no catch-all

    def __getattr__(name: str) -> object:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'polc.runtime' has no attribute {name!r}")
        # Import statements, not importlib.import_module: the latter bypasses
        # `python -X importtime`, which tests/test_layering.py reads. The agent
        # first, so that `polc.runtime.agent` is always among what a lookup imports.
        from . import agent, config, enforce, errors, events

        modules = {"agent": agent, "config": config, "enforce": enforce, "errors": errors, "events": events}
        value = getattr(modules[module], name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
