"""The policy grammar, shipped as package data (grammar/policy.lark)."""
