"""Runtime: the artifact format, verifier, enforcer and reloading agent. Needs msgpack only.

The public API::

    from polc.runtime import PolicyAgent

    with PolicyAgent("policies", reload_interval=5.0) as agent:
        decision = agent.check("tenant.acme", "network.outbound", "api.acme.com", 443)
        if not decision:
            raise PermissionError(decision.reason)
"""

# The agent and the enforcer are imported on first use (PEP 562), so tools
# that only read or write artifacts (polc compile, polc inspect) do not pay
# for them at start-up: about 40 ms of `import polc.runtime.artifact`.
_EXPORTS = {
    "DEFAULT_RELOAD_INTERVAL": "agent",
    "PolicyAgent": "agent",
    "PolicyLoadError": "agent",
    "ReloadEvent": "agent",
    "ReloadFailure": "agent",
    "ReloadResult": "agent",
    "Decision": "enforcer",
    "Snapshot": "enforcer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'polc.runtime' has no attribute {name!r}")
    # An import statement, not importlib.import_module: the latter bypasses
    # `python -X importtime`, which tests/test_layering.py reads.
    from . import agent, enforcer

    value = getattr(agent if module == "agent" else enforcer, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
