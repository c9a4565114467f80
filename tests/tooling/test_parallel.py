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


def _suite(tmp_path: Path) -> Path:
    """A small suite with the real tests/conftest.py: three files of 4, 5 and 6 tests."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    for name, count in (("a", 4), ("b", 5), ("c", 6)):
        body = "".join(f"def test_{name}{i}():\n    assert True\n\n" for i in range(count))
        (suite / f"test_{name}.py").write_text(body)
    return suite


def _collected(suite: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(suite), str(suite), *args],
                          cwd=suite, capture_output=True, text=True, timeout=300)  # fmt: skip


def _ids(r: subprocess.CompletedProcess[str]) -> list[str]:
    assert r.returncode == 0, r.stdout + r.stderr
    return [line for line in r.stdout.splitlines() if "::" in line]


def test_a_share_is_every_nth_test_in_collection_order(tmp_path):
    """Share K of N is items[K::N] of the collection: the N shares are even, each test in one."""
    suite = _suite(tmp_path)
    everything = _ids(_collected(suite))
    assert len(everything) == 15
    share = _ids(_collected(suite, "--shard=1/4"))
    assert share == everything[1::4]
    covered = sorted(t for k in range(4) for t in everything[k::4])
    assert covered == sorted(everything)


@pytest.mark.parametrize("value", ["2/2", "a/2"])
def test_a_bad_shard_is_a_usage_error(tmp_path, value):
    r = _collected(_suite(tmp_path), f"--shard={value}")
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
