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


# -- shares of the suite (tests/parallel.py runs one process per share) -----------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shard", default=None, metavar="K/N",
                     help="run only share K (0-based) of N of the collected tests (tests/parallel.py)")  # fmt: skip


def _shard(value: str) -> tuple[int, int]:
    k, sep, n = value.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise pytest.UsageError(f"--shard takes K/N with 0 <= K < N, not {value!r}")
    return int(k), int(n)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    value = config.getoption("--shard")
    if value is None:
        return
    k, n = _shard(value)
    # every n-th test in collection order: neighbours (a file's tests, a directory's files) cost
    # alike, so the shares come out even; a module or session fixture is set up in each share
    # that uses it. Every share computes the same split from the same collection.
    keep = items[k::n]
    deselected = [item for i, item in enumerate(items) if i % n != k]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = keep


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
