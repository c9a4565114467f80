"""Where SeaweedFS cannot run, its tests are skipped with the reason, and the rest still run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_without_a_runnable_weed_the_seaweedfs_tests_skip_and_say_why(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLC_", "PYTEST_"))}
    env["POLC_TEST_WEED"] = str(tmp_path / "no-such-weed")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(HERE / "test_s3_server.py"),
         str(HERE / "test_s3_origin.py"), "-k", "anonymous or bad_s3_urls"],
        capture_output=True, text=True, env=env, timeout=120, cwd=HERE.parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SKIPPED" in proc.stdout and f"SeaweedFS cannot run here: {tmp_path / 'no-such-weed'} version" in proc.stdout
    assert " passed" in proc.stdout  # the URL tests, which need no server, ran
