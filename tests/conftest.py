"""Shared fixtures. Keep them general: every part of polc's tests may use them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline anywhere: CI shares two cores, and a slow example
# is not a failure. Tests that need fewer or more examples say so themselves.
settings.register_profile("polc", deadline=None)
settings.load_profile("polc")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "policies-src"


@pytest.fixture
def examples_dir() -> Path:
    """The repository's example policy sources (policies-src/)."""
    return EXAMPLES


@pytest.fixture
def write_tree(tmp_path: Path) -> Callable[..., Path]:
    """Write ``{relative path: text}`` under ``tmp_path/<root>`` and return that directory."""

    def write(files: dict[str, str | bytes], root: str = "policies-src") -> Path:
        base = tmp_path / root
        base.mkdir(parents=True, exist_ok=True)
        for rel, content in files.items():
            p = base / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content, encoding="utf-8")
        return base

    return write


@pytest.fixture
def polc_cmd() -> list[str]:
    """argv prefix that runs the installed ``polc`` in a real subprocess."""
    return [sys.executable, "-m", "polc"]


@pytest.fixture
def chdir(tmp_path: Path):
    """Run the test inside ``tmp_path``."""
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)
