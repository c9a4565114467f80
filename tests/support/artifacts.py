"""Hand-built artifacts for the artifact, fuzz and inspect tests.

They go through ``format.encode.build_payload`` and
``format.writer.pack_artifact``, the same encoder and writer the compiler
uses, but do not need the compiler. ``compiled_artifacts``
adds the real ones compiled from ``policies-src/`` once the compiler exists.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from polc.runtime.catalog import BUILTINS, Capability, Param
from polc.runtime.format import encode
from polc.runtime.format import opcodes as bc
from polc.runtime.format.writer import pack_artifact

from . import REPO

POLICIES_SRC = REPO / "policies-src"

NET = BUILTINS["network.outbound"]
LISTEN = BUILTINS["network.listen"]
FS_READ = BUILTINS["fs.read"]
EXEC = BUILTINS["process.exec"]
THREADS = BUILTINS["threads.create"]
TOOL_CALL = Capability("tool.call", (Param("server", "string"), Param("tool", "string")))
COUNTER = Capability("quota.set", (Param("limit", "int"),))

ACME_SOURCE = b"""security module tenant.acme {
    entitle module to network.outbound("*.acme.com", 443);
    entitle module to network.outbound("api.partner.com", 443);
    entitle module to fs.read("tenants/acme", "**");
    deny module to process.exec;
}
"""

# (effect, cap, line, col, args) in the decoded form of format.program.Rule
ACME_RULES = [
    (bc.ENTITLE, NET, 2, 5, [(bc.HOST_WILD, "*.acme.com"), (bc.INT_RANGE, 443, 443)]),
    (bc.ENTITLE, NET, 3, 5, [(bc.HOST_EXACT, "api.partner.com"), (bc.INT_RANGE, 443, 443)]),
    (bc.ENTITLE, FS_READ, 4, 5, [(bc.STR_EXACT, "tenants/acme"), (bc.PATH_GLOB, "**")]),
    (bc.DENY, EXEC, 5, 5, [(bc.ANY,)]),
]

RICH_RULES = ACME_RULES + [
    (bc.DENY, NET, 6, 5, [(bc.HOST_CIDR, "10.0.0.0/8"), (bc.ANY,)]),
    (bc.DENY, NET, 7, 5, [(bc.HOST_CIDR, "2001:db8::/32"), (bc.INT_RANGE, 8000, 8999)]),
    (bc.ENTITLE, LISTEN, 8, 5, [(bc.INT_RANGE, 0, 65535)]),
    (bc.ENTITLE, THREADS, 9, 5, []),
    (bc.ENTITLE, TOOL_CALL, 10, 5, [(bc.STR_GLOB, "mcp-*"), (bc.STR_EXACT, "search")]),
    (bc.DENY, COUNTER, 11, 5, [(bc.INT_RANGE, -(2**63), 2**63 - 1)]),
    (bc.ENTITLE, FS_READ, 12, 5, [(bc.STR_GLOB, "tmp?"), (bc.PATH_GLOB, "logs/**/*.txt")]),
]


def make_payload(
    module: str = "tenant.acme",
    rules=ACME_RULES,
    *,
    mode: str = "enforce",
    source: str | None = None,
    source_bytes: bytes = ACME_SOURCE,
) -> dict:
    return encode.build_payload(
        module=module,
        mode=mode,
        compiler="0.1.0",
        source=source if source is not None else f"{module}.pol",
        source_digest=hashlib.sha256(source_bytes).hexdigest(),
        rules=rules,
    )


def make_artifact(module: str = "tenant.acme", rules=ACME_RULES, **kw) -> bytes:
    return pack_artifact(make_payload(module, rules, **kw))


def big_rules(n: int = 1000) -> list:
    """``n`` rules in the shape of a large tenant policy (many distinct constants)."""
    out = []
    for i in range(n):
        k = i % 4
        if k == 0:
            out.append((bc.ENTITLE, NET, i + 1, 5, [(bc.HOST_WILD, f"*.svc{i}.acme.com"), (bc.INT_RANGE, 443, 443)]))
        elif k == 1:
            out.append((bc.ENTITLE, FS_READ, i + 1, 5, [(bc.STR_EXACT, f"tenants/t{i}"), (bc.PATH_GLOB, f"data/{i}/**")]))
        elif k == 2:
            out.append((bc.DENY, NET, i + 1, 5, [(bc.HOST_EXACT, f"bad{i}.example.com"), (bc.ANY,)]))
        else:
            out.append((bc.ENTITLE, TOOL_CALL, i + 1, 5, [(bc.STR_GLOB, f"srv{i}-*"), (bc.STR_EXACT, f"tool{i}")]))
    return out


def compiled_artifacts(tmp_dir: Path) -> list[Path]:
    """Compile ``policies-src/`` with the real compiler into ``tmp_dir``; [] if it cannot yet."""
    sources = sorted(p for p in POLICIES_SRC.glob("*.pol") if not p.name.endswith(".test.pol")) if POLICIES_SRC.is_dir() else []
    if not sources:
        return []
    try:
        from click.testing import CliRunner

        from polc.cli import cli
    except ImportError:
        return []
    result = CliRunner().invoke(cli, ["compile", os.fspath(POLICIES_SRC), "-o", os.fspath(tmp_dir)])
    if result.exit_code != 0:
        return []
    return sorted(tmp_dir.glob("*.bin"))
