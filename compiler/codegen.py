"""Stage 3: IR -> artifact payload (docs/design.md) -> artifact bytes.

The payload is encoded by the runtime's one encoder
(``polc.runtime.format.encode``): capabilities are numbered in order of first
use and string constants deduplicated in order of first use, so the same IR
always gives the same payload, and the artifact writer's fixed key order
makes the bytes reproducible (no timestamps).

``emit_artifact`` is the one place the compiler turns a payload into bytes.
"""

from __future__ import annotations

from typing import Any

from polc import __version__
from polc.runtime.format import encode
from polc.runtime.format.writer import pack_artifact

from .ir import IRModule

__all__ = ["build_payload", "emit_artifact", "generate"]


def build_payload(ir: IRModule) -> dict[str, Any]:
    return encode.build_payload(
        module=ir.name,
        mode=ir.mode,
        compiler=__version__,
        source=ir.source,
        source_digest=ir.source_digest,
        rules=((r.effect, r.cap, r.line, r.col, r.args) for r in ir.rules),
        governs=ir.governs,
    )


def emit_artifact(payload: dict[str, Any]) -> bytes:
    """The artifact bytes of a payload (header + msgpack), verified by the runtime's reader."""
    return pack_artifact(payload)


def generate(ir: IRModule) -> bytes:
    return emit_artifact(build_payload(ir))
