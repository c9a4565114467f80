"""polc.runtime (and `polc eval`) import without lark, click or the compiler."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN_RUNTIME = ("lark", "click", "polc.compiler", "cryptography")


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.splitlines()[-1]))


def _loaded(mods: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in mods)


def test_runtime_imports_with_msgpack_alone():
    mods = _modules_after(
        "import polc.runtime\n"
        "from polc.runtime import PolicyAgent, Decision, ReloadResult, ReloadEvent, ReloadFailure, PolicyLoadError"
    )
    for name in FORBIDDEN_RUNTIME:
        assert not _loaded(mods, name), name
    assert "msgpack" in mods


def test_runtime_works_without_lark_and_click_importable(tmp_path):
    """Even with lark and click made unimportable, an agent loads and decides."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('lark', 'click'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from polc.runtime import PolicyAgent
agent = PolicyAgent({str(tmp_path)!r}, reload=False).start()
print(agent.check('m', 'threads.create').reason)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "no entitlement"


def test_polc_eval_never_imports_lark():
    mods = _modules_after("import polc.cli, polc.cmd_eval")
    assert not _loaded(mods, "lark") and not _loaded(mods, "polc.compiler")


def test_polc_eval_command_import_time_has_no_lark(tmp_path):
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "polc", "eval", str(tmp_path), "m", "threads.create"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr  # denied: no entitlement
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "polc.runtime.agent" in imported
    assert not any(m == "lark" or m.startswith("lark.") for m in imported)
    assert not any(m.startswith("polc.compiler") for m in imported)
