"""Helpers shared by the runtime tests (enforcer, agent, reload, eval).

Artifacts are built from small rule specs through the same encoder and
writer the compiler uses (``format.encode.build_payload`` +
``format.writer.pack_artifact``), so these tests need no compiler. A spec rule is ``(effect, capability, args)`` with
``args`` in source form: ``"*"`` for any, a host/string/path pattern as a
str, a port/int as an int or an inclusive ``(lo, hi)`` pair; omitted trailing
arguments are ``"*"``.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from polc.runtime import patterns
from polc.runtime.catalog import BUILTINS, Capability
from polc.runtime.format import encode
from polc.runtime.format import opcodes as bc
from polc.runtime.format.writer import pack_artifact, write_atomic

EFFECTS = {"deny": bc.DENY, "entitle": bc.ENTITLE}


def encode_arg(ptype: str, arg: object) -> tuple:
    if arg == "*":
        return (bc.ANY,)
    if ptype == "host":
        return patterns.compile_host(arg)  # type: ignore[arg-type]
    if ptype in ("port", "int"):
        lo, hi = (arg, arg) if isinstance(arg, int) else arg  # type: ignore[misc]
        return (bc.INT_RANGE, lo, hi)
    if ptype == "path":
        return (bc.PATH_GLOB, patterns.compile_path(arg))  # type: ignore[arg-type]
    if ptype == "command":
        return patterns.compile_command(arg)  # type: ignore[arg-type]
    return patterns.compile_string(arg)  # type: ignore[arg-type]


def payload(
    module: str, rules, *, mode: str = "enforce", caps: dict | None = None, source: str | None = None, governs=()
) -> dict:
    catalog = dict(BUILTINS)
    catalog.update(caps or {})
    asm = []
    for i, (effect, cap_name, args) in enumerate(rules):
        cap: Capability = catalog[cap_name]
        args = list(args) + ["*"] * (cap.arity - len(args))
        enc = [encode_arg(p.type, a) for p, a in zip(cap.params, args)]
        asm.append((EFFECTS[effect], cap, i + 2, 5, enc))
    return encode.build_payload(
        module=module,
        mode=mode,
        compiler="test",
        source=source or f"src/{module}.pol",
        source_digest=hashlib.sha256(repr(rules).encode()).hexdigest(),
        rules=asm,
        governs=governs,
    )


def artifact_bytes(module: str, rules, **kw) -> bytes:
    return pack_artifact(payload(module, rules, **kw))


def write_artifact(directory: Path, module: str, rules, **kw) -> Path:
    path = Path(directory) / f"{module}.bin"
    write_atomic(path, artifact_bytes(module, rules, **kw))
    return path


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite a file's bytes in place (same inode)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
