"""What a user installs: the built wheel's files and metadata, and what a type checker sees in it.

The wheel is built once per session with ``pip wheel --no-deps
--no-build-isolation`` (setuptools comes from the test extra, so no network)
from a copy of the source tree, so the build never writes into the checkout.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# source directory -> the package it installs as (pyproject's package-dir)
PACKAGE_DIRS = {"cli": "polc", "compiler": "polc.compiler", "runtime": "polc.runtime", "grammar": "polc.grammar"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    for name in PACKAGE_DIRS:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "--quiet", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (built,) = out.glob("polc-*.whl")
    return built


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel unpacked as a site directory (what pip install puts in site-packages)."""
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(z.read(name))


def test_wheel_ships_py_typed_the_license_and_the_grammar(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "polc/py.typed" in names
    assert "polc/runtime/py.typed" in names
    assert "polc/grammar/policy.lark" in names
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    with zipfile.ZipFile(wheel) as z:
        text = z.read(license_file).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_wheel_holds_every_package_of_the_source_tree(wheel: Path) -> None:
    """A package directory missing from pyproject's package list would be missing from the wheel."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    expected = []
    for directory, package in PACKAGE_DIRS.items():
        for init in sorted((REPO / directory).rglob("__init__.py")):
            rel = init.parent.relative_to(REPO / directory)
            dotted = ".".join((package, *rel.parts))
            expected.append(dotted.replace(".", "/") + "/__init__.py")
    missing = [name for name in expected if name not in names]
    assert not missing, f"packages not in the wheel (add them to pyproject's packages): {missing}"
    # and every module of those packages
    for directory, package in PACKAGE_DIRS.items():
        for module in sorted((REPO / directory).rglob("*.py")):
            rel = module.relative_to(REPO / directory)
            assert "/".join((*package.split("."), *rel.parts)) in names, module


def test_wheel_metadata_names_the_license_and_classifiers(wheel: Path) -> None:
    meta = _metadata(wheel)
    assert meta["Name"] == "polc"
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.11"
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the expression says it
    assert meta["Summary"] and meta.get_payload().startswith("# polc")  # README as the description
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"server", "sign"} <= extras


def test_mypy_strict_sees_decision_in_a_user_script(installed: Path, tmp_path: Path) -> None:
    """A service type-checked with --strict against the installed polc sees Decision, not Any."""
    script = tmp_path / "service.py"
    script.write_text(
        "from polc.runtime import Decision, PolicyAgent\n"
        "\n"
        "\n"
        "def allowed(agent: PolicyAgent) -> bool:\n"
        '    decision = agent.check("tenant.acme", "network.outbound", "api.acme.com", 443)\n'
        "    reveal_type(decision)\n"
        "    same: Decision = decision\n"
        "    return bool(same)\n"
        "\n"
        "\n"
        'reveal_type(PolicyAgent("policies", reload=False))\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYPY", "PYTHON"))}
    env["PYTHONPATH"] = str(installed)  # found as an installed package: needs py.typed
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
         "--config-file", os.devnull, str(script)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    revealed = re.findall(r'Revealed type is "([^"]+)"', out)
    assert len(revealed) == 2, out
    assert re.fullmatch(r"polc\.runtime\.[\w.]*\bDecision", revealed[0]), out
    assert re.fullmatch(r"polc\.runtime\.[\w.]*\bPolicyAgent", revealed[1]), out
    assert "Any" not in out


def test_wheel_ships_the_c_accelerators_where_a_compiler_is_found(wheel: Path) -> None:
    """setup.py's optional extensions: built when a C compiler is at hand (POLC_ACCEL in
    docs/runtime.md, POLC_GUARD_ACCEL in docs/guard.md)."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler: the wheel is pure Python (the accelerator is optional)")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert [n for n in names if re.fullmatch(r"polc/runtime/enforce/_accel\..*\.so", n)], names
    assert [n for n in names if re.fullmatch(r"polc/runtime/guard/_hook\..*\.so", n)], names
