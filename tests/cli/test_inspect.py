"""``polc inspect``: verification exactly as the runtime does it, a disassembly, JSON for machines."""

from __future__ import annotations

import json
import struct

import pytest
from click.testing import CliRunner

from polc.cli import cli
from polc.runtime.format.reader import read_artifact_file
from polc.runtime.format.writer import pack_artifact, write_atomic

from support.artifacts import RICH_RULES, compiled_artifacts, make_artifact, make_payload


def run(*args):
    result = CliRunner().invoke(cli, ["inspect", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def acme(tmp_path):
    path = tmp_path / "tenant.acme.bin"
    write_atomic(path, make_artifact("tenant.acme", RICH_RULES, mode="audit"))
    return path


def test_text_output(acme):
    code, out, err = run(acme)
    assert code == 0 and err == ""
    art = read_artifact_file(acme)
    assert f"file:          {acme}" in out
    assert "format:        1.1  (magic 89504f4c430d0a1a)" in out  # no governs: written as 1.1
    assert f"digest:        sha256:{art.digest_hex} (ok)" in out
    assert f"revision:      {art.revision}" in out
    assert "module:        tenant.acme\n" in out
    assert "mode:          audit\n" in out
    assert "source:        tenant.acme.pol\n" in out
    assert "signature:     none" in out
    assert "[5] tool.call(server: string, tool: string)  (declared)" in out
    assert "[0] network.outbound(host: host, port: port)  (built-in)" in out
    assert (
        '     0  tenant.acme.pol:2:5  ENTITLE network.outbound HOST_WILD "*.acme.com" INT_RANGE 443..443\n'
        in out
    )
    assert "     3  tenant.acme.pol:5:5  DENY process.exec ANY\n" in out
    assert '     4  tenant.acme.pol:6:5  DENY network.outbound HOST_CIDR "10.0.0.0/8" ANY\n' in out
    # the instruction-level listing
    assert "      0  RULE        1 0 2 5  ; rule 0: entitle network.outbound at 2:5\n" in out
    assert '      1  HOST_WILD   0  ; "*.acme.com"\n' in out
    assert "      2  INT_RANGE   443 443  ; 443..443\n" in out
    assert "     10  ANY\n" in out


def test_json_round_trips(acme):
    code, out, err = run(acme, "--format", "json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report == json.loads(run(acme, "--json")[1])
    art = read_artifact_file(acme)
    assert report["verified"] is True
    assert report["digest"] == {"algorithm": "sha256", "hex": art.digest_hex, "status": "ok"}
    assert report["header"]["format"] == "1.1" and report["header"]["size"] == art.size
    assert report["module"] == "tenant.acme" and report["mode"] == "audit"
    assert report["signature"]["signed"] is False and report["signature"]["key_id"] is None
    assert [r["location"] for r in report["rules"]] == [r.location(art.source) for r in art.rules]
    assert report["rules"][0]["args"] == [
        {"param": "host", "op": "HOST_WILD", "value": "*.acme.com"},
        {"param": "port", "op": "INT_RANGE", "lo": 443, "hi": 443},
    ]
    assert report["rules"][3]["args"] == [{"param": "command", "op": "ANY"}]
    assert report["consts"] == list(art.consts)
    assert report["code"][0] == {
        "offset": 0,
        "op": "RULE",
        "operands": [1, 0, 2, 5],
        "comment": "rule 0: entitle network.outbound at 2:5",
    }
    assert sum(1 for i in report["code"] if i["op"] == "RULE") == len(art.rules)
    assert json.loads(json.dumps(report)) == report


def test_bad_artifact_exits_1_with_the_reason(acme):
    data = bytearray(acme.read_bytes())
    data[-1] ^= 1
    acme.write_bytes(bytes(data))
    code, out, err = run(acme)
    assert code == 1 and out == ""
    assert err.startswith(f"{acme}: error: checksum mismatch: the computed SHA-256 is ")
    acme.write_bytes(bytes(data[:100]))
    code, out, err = run(acme, "--json")
    assert code == 1 and out == ""
    assert err.startswith(f"{acme}: error: truncated artifact: header declares")


def test_renamed_artifact_exits_1(acme):
    other = acme.with_name("tenant.globex.bin")
    acme.rename(other)
    code, out, err = run(other)
    assert code == 1 and out == ""
    assert err == f"{other}: error: artifact is for module 'tenant.acme' but the file is named tenant.globex.bin\n"


def test_newer_major_exits_1(acme):
    data = bytearray(acme.read_bytes())
    struct.pack_into(">HH", data, 8, 3, 1)
    acme.write_bytes(bytes(data))
    code, _, err = run(acme)
    assert code == 1
    assert err.endswith("error: artifact format 3.1 is newer than this polc supports (1.x); upgrade polc\n")


def test_io_and_usage_errors_exit_2(tmp_path):
    code, out, err = run(tmp_path / "missing.bin")
    assert code == 2 and out == ""
    assert err == f"{tmp_path / 'missing.bin'}: error: cannot read: No such file or directory\n"
    code, _, err = run(tmp_path)
    assert code == 2 and "error: cannot read" in err
    code, _, err = run(tmp_path / "x.bin", "--format", "yaml")
    assert code == 2
    code, _, _ = run()
    assert code == 2


def test_text_output_escapes_control_characters(tmp_path):
    payload = make_payload("tenant.acme", RICH_RULES, source="evil\x1b[31m.pol")
    payload["compiler"] = "0.1.0\x07"
    path = tmp_path / "tenant.acme.bin"
    path.write_bytes(pack_artifact(payload))
    code, out, _ = run(path)
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "evil\\u001b[31m.pol:2:5" in out
    assert json.loads(run(path, "--json")[1])["source"] == "evil\x1b[31m.pol"


def test_every_compiled_policy(tmp_path):
    """Every artifact compiled from policies-src/ inspects, disassembles and round-trips as JSON."""
    paths = compiled_artifacts(tmp_path)
    assert paths, "polc compile policies-src/ produced no artifact"
    for path in paths:
        art = read_artifact_file(path)
        code, out, err = run(path)
        assert code == 0, err
        assert f"module:        {art.module}\n" in out
        for rule in art.rules:
            location = rule.location(art.source)
            assert f"  {location}  {rule.effect_name.upper()} {rule.cap.name}" in out
        assert f"code ({sum(1 + r.cap.arity for r in art.rules)} instructions):" in out
        code, out, err = run(path, "--format", "json")
        assert code == 0, err
        report = json.loads(out)
        assert report["module"] == art.module and report["revision"] == art.revision
        assert len(report["rules"]) == len(art.rules)
        assert all(r["location"].startswith(art.source + ":") for r in report["rules"])
