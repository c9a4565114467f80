"""Large artifact trees for the start-up and change-detection benchmarks, built once and cached.

``build(n)`` writes ``n`` modules of 20 rules each (``tenant.s<i>``: hosts,
ports, paths and commands of their own, the shape of a tenant policy) and a
``_global`` through the runtime's own encoder and writer, without the
compiler, so 100,000 artifacts take about a minute instead of a compile.
A tree is kept under ``$POLC_BENCH_CACHE`` (default: the system temporary
directory, ``polc-bench-cache/``) and reused while its ``.complete`` marker
(a dot-file: agents skip it) says it was written whole by this version.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

VERSION = "1"
RULES = 20


def cache_root() -> Path:
    return Path(os.environ.get("POLC_BENCH_CACHE") or Path(tempfile.gettempdir()) / "polc-bench-cache")


def _rules(i: int):
    from polc.runtime import patterns
    from polc.runtime.catalog import BUILTINS
    from polc.runtime.format import opcodes as bc

    net, fs, exe = BUILTINS["network.outbound"], BUILTINS["fs.read"], BUILTINS["process.exec"]
    out = []
    line = 2
    for j in range(RULES):
        kind = j % 5
        if kind == 0:
            rule = (bc.ENTITLE, net, [patterns.compile_host(f"*.svc{j}.t{i}.example"), (bc.INT_RANGE, 443, 443)])
        elif kind == 1:
            rule = (bc.ENTITLE, net, [patterns.compile_host(f"api{j}.t{i}.example"), (bc.INT_RANGE, 8000, 8999)])
        elif kind == 2:
            rule = (bc.ENTITLE, fs, [(bc.STR_EXACT, f"tenants/t{i}"), (bc.PATH_GLOB, patterns.compile_path(f"d{j}/**"))])
        elif kind == 3:
            rule = (bc.DENY, net, [patterns.compile_host(f"bad{j}.t{i}.example"), (bc.ANY,)])
        else:
            rule = (bc.DENY, exe, [patterns.compile_command(f"tool{j}-t{i}")])
        out.append((rule[0], rule[1], line, 5, rule[2]))
        line += 1
    return out


def artifact(module: str, i: int) -> bytes:
    from polc.runtime.format import encode
    from polc.runtime.format.writer import pack_artifact

    payload = encode.build_payload(
        module=module,
        mode="enforce",
        compiler="bench",
        source=f"src/{module}.pol",
        source_digest=hashlib.sha256(module.encode()).hexdigest(),
        rules=_rules(i) if i >= 0 else [],
    )
    return pack_artifact(payload, verify=False)


def build(n: int, root: Path | None = None) -> Path:
    """The directory of ``n`` modules (and ``_global``), built if not cached."""
    d = (root or cache_root()) / f"startup-n{n}-k{RULES}-v{VERSION}"
    marker = d / ".complete"
    if marker.exists() and marker.read_text() == f"{n}\n":
        return d
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"tenant.s{i}"
        path = d / f"{name}.bin"
        path.write_bytes(artifact(name, i))
    (d / "_global.bin").write_bytes(artifact("_global", -1))
    marker.write_text(f"{n}\n")
    return d


if __name__ == "__main__":  # python benchmarks/startup_tree.py 100000
    import sys

    for arg in sys.argv[1:]:
        print(build(int(arg)))
