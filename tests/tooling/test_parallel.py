"""tests/parallel.py and the ``--shard K/N`` option (tests/conftest.py): the shares of the suite
are even, together every collected test exactly once; the exit statuses combine as pytest's
own would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import parallel
import pytest

REPO = Path(__file__).resolve().parent.parent.parent


def _collected(*args: str) -> list[str]:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                       cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return [line for line in r.stdout.splitlines() if "::" in line]


def test_shares_are_even_and_cover_every_test_once():
    everything = _collected("tests/compiler", "tests/guard")
    shares = [_collected("tests/compiler", "tests/guard", f"--shard={k}/3") for k in range(3)]
    assert sorted(t for share in shares for t in share) == sorted(everything)
    assert len({t for share in shares for t in share}) == len(everything)  # none twice
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1, sizes
    # each file's tests are spread over the shares, in their order
    for share in shares:
        assert share == [t for t in everything if t in set(share)]


@pytest.mark.parametrize("value", ["2/2", "a/2", "1", "-1/2", "1/0"])
def test_a_bad_shard_is_a_usage_error(value):
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        f"--shard={value}", "tests/tooling/test_parallel.py"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 4, r.stdout + r.stderr
    assert "--shard takes K/N" in r.stderr


@pytest.mark.parametrize(
    ("codes", "expected"),
    [([0, 0], 0), ([0, 5], 0), ([5, 5], 5), ([1, 0], 1), ([0, 1], 1), ([5, 2], 2), ([3, 1], 3)],
)
def test_exit_statuses_combine(codes, expected):
    assert parallel.combined(codes) == expected


def test_the_runner_runs_shares_and_reports_a_failure(tmp_path):
    """Two shares of a small suite, one of them failing: both run, the failure is the status."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_a.py").write_text("def test_ok():\n    assert True\n")
    (suite / "test_b.py").write_text("def test_fails():\n    assert 1 == 2\n")
    (suite / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    env = {**os.environ, "POLC_TEST_JOBS": "2"}
    r = subprocess.run([sys.executable, str(REPO / "tests" / "parallel.py"), "-q", "--rootdir", str(suite), str(suite)],
                       cwd=suite, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 passed" in r.stdout and "1 failed" in r.stdout, r.stdout
    assert "2 shares" in r.stdout


def test_a_bad_job_count_is_refused():
    env = {**os.environ, "POLC_TEST_JOBS": "many"}
    r = subprocess.run([sys.executable, str(REPO / "tests" / "parallel.py"), "--collect-only", "-q"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert "POLC_TEST_JOBS must be a positive integer" in r.stderr
