"""`make test` runs the policies' own tests (`polc test policies-src --coverage --fail-under 100`)
and the test suite; both run, and it fails when either does, with pytest's status when pytest failed.

Stand-in `polc` and `python` executables (BIN=...) record their arguments and
exit with the status they are told, so the Makefile's own logic is tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _fake(path: Path, name: str) -> None:
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$FAKE_LOG"\nexit "${{{name.upper()}_RC:-0}}"\n')
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("polc_rc", "python_rc", "error"),
    [(0, 0, None), (1, 0, "Error 1"), (0, 1, "Error 1"), (0, 5, "Error 5"), (1, 5, "Error 5"), (2, 0, "Error 2")],
)
def test_make_test_runs_both_and_fails_when_either_fails(tmp_path, polc_rc, python_rc, error):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir / "polc", "polc")
    _fake(bin_dir / "python", "python")
    stamp = tmp_path / "stamp"
    stamp.touch()
    log = tmp_path / "log"
    env = {**os.environ, "FAKE_LOG": str(log), "POLC_RC": str(polc_rc), "PYTHON_RC": str(python_rc)}
    p = subprocess.run(["make", "-s", "-C", str(REPO), "test", f"BIN={bin_dir}", f"STAMP={stamp}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert log.read_text().splitlines() == [
        "polc test policies-src --coverage --fail-under 100",
        "python tests/parallel.py -q",
    ]
    if error is None:
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode != 0
        assert error in p.stderr
