"""Helpers the tests share (pytest puts ``tests/`` on ``sys.path``, so they import as ``support.*``).

    artifacts.py  hand-built artifacts (rule lists, payloads) through the shipped encoder and writer
    agent.py      artifacts from small rule specs, written atomically or in place; waiting on a condition
    sidecar.py    the ``polc run`` end-to-end harness: a real subprocess, a real HTTP client
    memory.py     the peak of traced allocations while a function runs
    guard.py      the guard's tests: counting loopback HTTP servers, compiling the test tree, a child's environment

``REPO`` is the repository's root, wherever a test file sits below ``tests/``.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
