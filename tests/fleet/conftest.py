"""Fixtures of the fleet tests (publish and pull against real stores and HTTP servers)."""

from __future__ import annotations

from support.seaweed import seaweedfs

__all__ = ["seaweedfs"]
