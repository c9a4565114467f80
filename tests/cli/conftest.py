"""The fixtures of the ``polc run`` end-to-end tests, from tests/support/sidecar.py.

``artifacts`` (the example policies compiled once per module), ``policy_dir``
(a fresh directory of them) and ``sidecar`` (starts real ``polc run``
processes, killed in teardown).
"""

from __future__ import annotations

from support.sidecar import artifacts, policy_dir, sidecar

__all__ = ["artifacts", "policy_dir", "sidecar"]
