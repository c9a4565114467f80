"""Stage 3: IR -> artifact payload (docs/design.md) -> artifact bytes.

The payload is a plain dict with exactly the keys of the design; capabilities
are numbered in order of first use and string constants deduplicated in order
of first use, so the same IR always gives the same payload, and the artifact
writer's fixed key order makes the bytes reproducible (no timestamps).

``emit_artifact`` is the one place the compiler turns a payload into bytes.
"""

from __future__ import annotations

from polc import __version__
from polc.runtime.artifact import pack_artifact
from polc.runtime.bytecode import ANY, INT_RANGE, RULE

from .ir import IRModule

__all__ = ["build_payload", "emit_artifact", "generate"]


def build_payload(ir: IRModule) -> dict:
    caps: list = []
    cap_index: dict[str, int] = {}
    consts: list[str] = []
    const_index: dict[str, int] = {}
    code: list = []
    for r in ir.rules:
        cap = r.cap
        ci = cap_index.get(cap.name)
        if ci is None:
            ci = cap_index[cap.name] = len(caps)
            caps.append([cap.name, [[p.name, p.type] for p in cap.params]])
        code.append([RULE, r.effect, ci, r.line, r.col])
        for arg in r.args:
            op = arg[0]
            if op == ANY:
                code.append([ANY])
            elif op == INT_RANGE:
                code.append([INT_RANGE, arg[1], arg[2]])
            else:
                const = arg[1]
                k = const_index.get(const)
                if k is None:
                    k = const_index[const] = len(consts)
                    consts.append(const)
                code.append([op, k])
    return {
        "module": ir.name,
        "mode": ir.mode,
        "compiler": __version__,
        "source": ir.source,
        "source_digest": ir.source_digest,
        "caps": caps,
        "consts": consts,
        "code": code,
    }


def emit_artifact(payload: dict) -> bytes:
    """The artifact bytes of a payload (header + msgpack), verified by the runtime's reader."""
    return pack_artifact(payload)


def generate(ir: IRModule) -> bytes:
    return emit_artifact(build_payload(ir))
