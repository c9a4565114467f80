"""polc compile --sign: artifacts are signed, and the signer is part of up to date."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("cryptography")

from polc.cli import cli
from polc.runtime.format.reader import read_artifact_file
from polc.runtime.signing import TrustConfig, signer_key_id

SRC = """
security module tenant.acme {
    entitle module to network.outbound("*.acme.com", 443);
}
"""


def run(*args: str):
    r = CliRunner().invoke(cli, list(args))
    return r


@pytest.fixture()
def tree(tmp_path: Path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "tenant.acme.pol").write_text(SRC)
    for name in ("plat", "other"):
        assert run("keygen", name, "-o", str(tmp_path / "keys")).exit_code == 0
    return tmp_path


def test_compile_sign_and_up_to_date_follows_the_signer(tree: Path):
    src, out = str(tree / "src"), str(tree / "out")
    art = tree / "out" / "tenant.acme.bin"
    plat, other = str(tree / "keys" / "plat.key"), str(tree / "keys" / "other.key")

    r = run("compile", src, "-o", out, "--sign", plat)
    assert r.exit_code == 0, r.output
    assert "compiled 1" in r.stderr
    signed = art.read_bytes()
    plat_id = signer_key_id(signed)
    assert plat_id is not None
    trust = TrustConfig.from_keys({(tree / "keys" / "plat.pub").read_text(): ["tenant.*"]})
    assert read_artifact_file(art, trust=trust).module == "tenant.acme"

    r = run("compile", src, "-o", out, "--sign", plat)
    assert "up to date 1" in r.stderr and art.read_bytes() == signed

    r = run("compile", src, "-o", out, "--sign", plat, "--force")
    assert art.read_bytes() == signed  # deterministic: a forced re-sign is byte-identical

    r = run("compile", src, "-o", out, "--sign", other)
    assert "compiled 1" in r.stderr
    assert signer_key_id(art.read_bytes()) not in (None, plat_id)

    r = run("compile", src, "-o", out)
    assert "compiled 1" in r.stderr
    assert signer_key_id(art.read_bytes()) is None


def test_compile_sign_with_a_bad_key_is_a_usage_error(tree: Path):
    (tree / "bad.key").write_text("nope")
    r = run("compile", str(tree / "src"), "-o", str(tree / "out"), "--sign", str(tree / "bad.key"))
    assert r.exit_code == 2
    assert "not a private key" in r.stderr
    assert not (tree / "out" / "tenant.acme.bin").exists()


def test_inspect_shows_signer_and_verifies_with_trust(tree: Path):
    src, out = str(tree / "src"), str(tree / "out")
    assert run("compile", src, "-o", out, "--sign", str(tree / "keys" / "plat.key")).exit_code == 0
    art = str(tree / "out" / "tenant.acme.bin")
    plat_id = signer_key_id((tree / "out" / "tenant.acme.bin").read_bytes())

    r = run("inspect", art)
    assert r.exit_code == 0
    assert f"key id {plat_id} (not verified" in r.stdout

    trust = tree / "trust.toml"
    trust.write_text(
        '[[key]]\nname = "platform"\npublic_key_file = "keys/plat.pub"\nmodules = ["tenant.*"]\n'
    )
    r = run("inspect", art, "--trust", str(trust))
    assert r.exit_code == 0, r.output
    assert "(verified: trusted key platform)" in r.stdout
    r = run("inspect", art, "--trust", str(trust), "--json")
    import json

    sig = json.loads(r.stdout)["signature"]
    assert sig["verified"] is True and sig["key_id"] == plat_id and sig["signer"] == "platform"

    trust.write_text(
        '[[key]]\nname = "other"\npublic_key_file = "keys/other.pub"\nmodules = ["tenant.*"]\n'
    )
    r = run("inspect", art, "--trust", str(trust))
    assert r.exit_code == 1
    assert f"signed by unknown key {plat_id}" in r.stderr

    r = run("inspect", art, "--trust", str(tree / "missing.toml"))
    assert r.exit_code == 2 and "cannot read trust file" in r.stderr


def test_run_with_trust_but_without_cryptography_says_how_to_install(tmp_path: Path):
    import subprocess
    import sys

    pytest.importorskip("uvicorn")
    (tmp_path / "p").mkdir()
    trust = tmp_path / "trust.toml"
    trust.write_text('[[key]]\npublic_key = "' + "A" * 43 + '="\nmodules = ["tenant.acme"]\n')
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from polc.cli import cli\n"
        f"cli(['run', {str(tmp_path / 'p')!r}, '--trust', {str(trust)!r}, '--listen', '127.0.0.1:0'],"
        " prog_name='polc')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "pip install 'polc[sign]'" in r.stderr
    assert "Traceback" not in r.stderr
