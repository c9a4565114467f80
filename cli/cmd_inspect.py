"""``polc inspect FILE.bin``: verify one artifact and disassemble it.

Verification is exactly the runtime's (``read_artifact`` with the file-name
check), so ``polc inspect`` accepts a file if and only if an agent would
load it. Output goes to stdout (text for people, ``--format json`` for
machines); a bad artifact prints ``FILE: error: <reason>`` on stderr and
exits 1; a file that cannot be read, or bad usage, exits 2.

Signatures: ``polc.runtime.signing.describe_trailer(header, trailer) ->
dict`` (``{"key_id": ..., "algorithm": "ed25519", ...}``) fills the
``signature`` section without verifying anything; ``--trust FILE`` makes the
reader verify the signature against a trust file as an agent would.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import click

from polc.errors import EXIT_FAILED, failure
from polc.options import format_option
from polc.runtime.errors import ArtifactError, UnreadableArtifact
from polc.runtime.format.disasm import disassemble, format_rule, printable, quote
from polc.runtime.format.header import FLAG_SIGNED, HEADER_SIZE, MAGIC, payload_view
from polc.runtime.format.opcodes import ANY, INT_RANGE, OPCODE_NAMES
from polc.runtime.format.payload import read_fields
from polc.runtime.format.reader import Artifact, module_for_path, read_artifact, read_artifact_bytes


def _signature_info(art: Artifact) -> dict[str, Any]:
    """What is known about the signature block, without verifying it."""
    info: dict[str, Any] = {
        "signed": art.header.signed,
        "trailer_length": art.header.trailer_len,
        "key_id": None,
        "verified": None,  # set by inspect_cmd when --trust verified it
    }
    if not art.header.signed:
        return info
    try:
        signing = importlib.import_module("polc.runtime.signing")
        describe = signing.describe_trailer
    except (ImportError, AttributeError):
        return info
    try:
        extra = describe(art.header, art.trailer)
    except Exception as exc:  # a description must not break inspect
        info["error"] = f"{type(exc).__name__}: {exc}"
        return info
    if isinstance(extra, dict):
        info.update(extra)
    return info


def _flag_names(flags: int) -> list[str]:
    names = []
    if flags & FLAG_SIGNED:
        names.append("signed")
    return names


def build_report(path: str, data: bytes, art: Artifact) -> dict[str, Any]:
    """Everything ``polc inspect`` shows, as plain JSON-able data."""
    code = read_fields(payload_view(data, art.header), ("code",))["code"]
    h = art.header
    return {
        "file": path,
        "verified": True,
        "header": {
            "magic": MAGIC.hex(),
            "format": h.version,
            "major": h.major,
            "minor": h.minor,
            "flags": h.flags,
            "flag_names": _flag_names(h.flags),
            "payload_length": h.payload_len,
            "trailer_length": h.trailer_len,
            "size": art.size,
        },
        "digest": {"algorithm": "sha256", "hex": art.digest_hex, "status": "ok"},
        "revision": art.revision,
        "module": art.module,
        "mode": art.mode,
        "compiler": art.compiler,
        "source": art.source,
        "source_digest": art.source_digest,
        "governs": list(art.governs),
        "signature": _signature_info(art),
        "capabilities": [
            {
                "index": k,
                "name": cap.name,
                "signature": cap.signature(),
                "builtin": cap is _builtin(cap.name),
                "params": [{"name": p.name, "type": p.type} for p in cap.params],
            }
            for k, cap in enumerate(art.caps)
        ],
        "consts": list(art.consts),
        "rules": [
            {
                "index": r.index,
                "effect": r.effect_name,
                "capability": r.cap.name,
                "location": r.location(art.source),
                "line": r.line,
                "col": r.col,
                "args": [_arg_json(p.name, a) for p, a in zip(r.cap.params, r.args, strict=False)],
                "text": format_rule(r, art.source),
            }
            for r in art.rules
        ],
        "code": disassemble(code, art.caps, art.consts),
    }


def _builtin(name: str) -> object:
    from polc.runtime.catalog import BUILTINS

    return BUILTINS.get(name)


def _arg_json(param: str, arg: tuple[Any, ...]) -> dict[str, Any]:
    op = arg[0]
    out: dict[str, Any] = {"param": param, "op": OPCODE_NAMES[op]}
    if op == INT_RANGE:
        out["lo"], out["hi"] = arg[1], arg[2]
    elif op != ANY:
        out["value"] = arg[1]
    return out


def render_text(report: dict[str, Any]) -> str:
    p = printable
    h = report["header"]
    sig = report["signature"]
    lines = [
        f"file:          {p(report['file'])}",
        f"format:        {h['format']}  (magic {h['magic']})",
        f"flags:         {h['flags']:#x}" + (f" ({', '.join(h['flag_names'])})" if h["flag_names"] else ""),
        f"size:          {h['size']} bytes = header {HEADER_SIZE} + payload {h['payload_length']}"
        f" + trailer {h['trailer_length']}",
        f"digest:        sha256:{report['digest']['hex']} ({report['digest']['status']})",
        f"revision:      {report['revision']}",
        f"module:        {report['module']}",
        f"mode:          {report['mode']}",
        f"compiler:      {p(report['compiler'])}",
        f"source:        {p(report['source'])}",
        f"source digest: sha256:{report['source_digest']}",
    ]
    if report["governs"]:  # package names are checked dotted Python names: nothing to escape
        lines.append(f"governs:       {', '.join(report['governs'])}")
    if sig["signed"]:
        key = sig.get("key_id")
        lines.append(
            f"signature:     {sig['trailer_length']}-byte block"
            + (f", key id {p(str(key))}" if key is not None else "")
            + (
                f" (verified: trusted key {p(str(sig.get('signer') or key))})"
                if sig.get("verified")
                else " (not verified; give --trust FILE to verify)"
            )
        )
    else:
        lines.append("signature:     none")
    lines.append("")
    lines.append(f"capabilities ({len(report['capabilities'])}):")
    for cap in report["capabilities"]:
        kind = "built-in" if cap["builtin"] else "declared"
        lines.append(f"  [{cap['index']}] {cap['signature']}  ({kind})")
    lines.append("")
    lines.append(f"constants ({len(report['consts'])}):")
    for k, c in enumerate(report["consts"]):
        lines.append(f"  [{k}] {quote(c)}")
    lines.append("")
    lines.append(f"rules ({len(report['rules'])}):")
    for r in report["rules"]:
        lines.append(f"  {r['index']:>4}  {r['text']}")
    lines.append("")
    lines.append(f"code ({len(report['code'])} instructions):")
    for ins in report["code"]:
        operands = " ".join(str(v) for v in ins["operands"])
        comment = f"  ; {ins['comment']}" if ins["comment"] else ""
        lines.append(f"  {ins['offset']:>5}  {ins['op']:<11} {operands}{comment}".rstrip())
    return "\n".join(lines) + "\n"


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@format_option()
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--trust",
    "trust_file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Also require a signature by a key of this trust file (docs/security.md).",
)
def inspect_cmd(file: str, fmt: str, as_json: bool, trust_file: str | None) -> None:
    """Verify the artifact FILE.bin and disassemble it.

    The file is checked exactly as the runtime checks it, including that
    its module name matches its file name. Exits 1 for a bad artifact and
    2 when the file cannot be read.
    """
    shown = printable(file)
    trust = None
    if trust_file is not None:
        from polc.runtime.signing import SigningUnavailableError, TrustConfig, TrustConfigError

        try:
            trust = TrustConfig.from_file(trust_file)
        except (TrustConfigError, SigningUnavailableError) as exc:
            raise failure(exc) from None
    try:
        data = read_artifact_bytes(file)
        art = read_artifact(data, expected_module=module_for_path(file), trust=trust, file_name=os.path.basename(file))
    except UnreadableArtifact as exc:
        raise failure(exc, prefix=f"{shown}: error: ") from None
    except ArtifactError as exc:
        raise failure(exc, default=EXIT_FAILED, message=printable(str(exc)), prefix=f"{shown}: error: ") from None
    report = build_report(os.fspath(file), data, art)
    if trust is not None:  # read_artifact verified it
        signer = trust.get(report["signature"].get("key_id") or "")
        report["signature"]["verified"] = True
        report["signature"]["signer"] = signer.name if signer else None
    if as_json or fmt == "json":
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(report), nl=False)
