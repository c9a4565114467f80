"""The ``POLC_*`` readers now live in :mod:`polc.runtime.config`; this module re-exports them.

TEMPORARY re-export, removed when the restructure lands.
"""

from __future__ import annotations

from .config import env_bool, env_path, env_seconds, env_text, parse_seconds

__all__ = ["env_bool", "env_path", "env_seconds", "env_text", "parse_seconds"]
