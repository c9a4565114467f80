""".ci/run: lint and type checks run before the tests, and a failure of either fails the run.

A stand-in ``make`` first on PATH records the targets .ci/run asks for and
fails the ones named in ``FAIL``, so the script's own logic is what is tested.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run_ci(tmp_path: Path, fail: str) -> tuple[int, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "make.log"
    fake = bin_dir / "make"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {str(log)!r}\n'
        'for t in $FAIL; do [ "$1" = "$t" ] && exit 2; done\n'
        "exit 0\n"
    )
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAIL=fail)
    r = subprocess.run([str(REPO / ".ci" / "run")], capture_output=True, text=True, timeout=60, env=env)
    targets = log.read_text().split() if log.exists() else []
    return r.returncode, targets


def test_ci_runs_lint_then_the_tests(tmp_path: Path) -> None:
    code, targets = _run_ci(tmp_path, fail="")
    assert code == 0
    assert targets == ["lint", "test"]


@pytest.mark.parametrize("fail", ["lint", "test", "lint test"])
def test_ci_fails_when_lint_or_the_tests_fail(tmp_path: Path, fail: str) -> None:
    code, targets = _run_ci(tmp_path, fail=fail)
    assert code != 0
    assert targets == ["lint", "test"]  # the tests run (and report) even when lint failed
