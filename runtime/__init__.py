"""Runtime: the artifact format, verifier, enforcer and reloading agent. Needs msgpack only."""
