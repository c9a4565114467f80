"""The encoder: rules in their decoded form -> the payload's ``caps``, ``consts`` and ``code``.

The one encoder of the format. The compiler's code generation
(``compiler/codegen.py``) and the test helpers build every payload with
:func:`build_payload`; ``verify_payload`` (or ``read_artifact``) of the
result gives the same rules back. The writer (``writer.pack_artifact``) then
turns the payload into artifact bytes.

Deterministic: capabilities and constants are numbered in order of first use
and nothing depends on time or on dict iteration beyond insertion order, so
the same rules always give the same payload, and the writer's fixed key
order makes the bytes reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..catalog import Capability
from .opcodes import CONST_OPS, GOVERNS_KEY, RULE

__all__ = ["EncodableRule", "assemble", "build_payload"]

EncodableRule = tuple[int, Capability, int, int, Sequence[tuple[Any, ...]]]
"""``(effect, capability, line, col, args)``, ``args`` in the decoded form of ``Rule.args``."""


def assemble(rules: Iterable[EncodableRule]) -> tuple[list[Any], list[str], list[Any]]:
    """Encode rules as the payload's ``caps``, ``consts`` and ``code``.

    Each rule is ``(effect, capability, line, col, args)`` with ``args`` in
    the decoded form of ``Rule`` (``(HOST_WILD, "*.acme.com")``,
    ``(INT_RANGE, 443, 443)``, ``(ANY,)``): a constant argument becomes
    ``[op, index into consts]``, any other instruction is written as given.
    Capabilities and constants are numbered in order of first use.
    """
    cap_index: dict[str, int] = {}
    caps: list[Any] = []
    const_index: dict[str, int] = {}
    consts: list[str] = []
    code: list[Any] = []
    # locals: the compiler encodes every rule of every module through here
    emit = code.append
    cap_of = cap_index.get
    const_of = const_index.get
    pooled = CONST_OPS
    for effect, cap, line, col, args in rules:
        c = cap_of(cap.name)
        if c is None:
            c = cap_index[cap.name] = len(caps)
            caps.append([cap.name, [[p.name, p.type] for p in cap.params]])
        emit([RULE, effect, c, line, col])
        for arg in args:
            op = arg[0]
            if op in pooled:
                const = arg[1]
                k = const_of(const)
                if k is None:
                    k = const_index[const] = len(consts)
                    consts.append(const)
                emit([op, k])
            else:
                emit([*arg])
    return caps, consts, code


def build_payload(
    *,
    module: str,
    mode: str,
    compiler: str,
    source: str,
    source_digest: str,
    rules: Iterable[EncodableRule],
    governs: Iterable[str] = (),
) -> dict[str, Any]:
    """The payload of one module: its fields and its rules encoded by :func:`assemble`.

    A plain dict with exactly the payload keys, in the order they are written;
    ``governs`` (the package names a ``governs`` statement binds) is written
    sorted, each name once, and only when there is one (format 1.2): a module
    without it gets the payload format 1.1 wrote.
    """
    caps, consts, code = assemble(rules)
    payload: dict[str, Any] = {
        "module": module,
        "mode": mode,
        "compiler": compiler,
        "source": source,
        "source_digest": source_digest,
        "caps": caps,
        "consts": consts,
        "code": code,
    }
    names = sorted(set(governs))
    if names:
        payload[GOVERNS_KEY] = names
    return payload
