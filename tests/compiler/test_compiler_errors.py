"""The compiler's exceptions are polc's, and carry the exit status polc gives them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from polc.compiler import CompileError, UsageError, compile_paths, compile_source
from polc.runtime.errors import PolcError


def test_usage_error_is_a_polc_error_with_exit_code_2(tmp_path):
    assert issubclass(UsageError, PolcError) and UsageError.exit_code == 2
    report = compile_paths([str(tmp_path / "missing")], str(tmp_path / "out"))
    assert report.fatal == f"no such file or directory: {tmp_path / 'missing'}"
    assert report.exit_code == UsageError.exit_code


def test_compile_error_is_a_polc_error_with_exit_code_1():
    assert issubclass(CompileError, PolcError) and CompileError.exit_code == 1
    with pytest.raises(PolcError) as info:
        compile_source("security module m { entitle module to nothing.here; }", "m.pol").check()
    assert isinstance(info.value, CompileError) and info.value.exit_code == 1
    assert "unknown capability 'nothing.here'" in str(info.value)


def test_write_tables_entry_point_refuses_other_arguments():
    r = subprocess.run([sys.executable, "-m", "polc.compiler.grammar"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage: python -m polc.compiler.grammar --write-tables" in r.stderr
