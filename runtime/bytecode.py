"""The rule instruction set of artifact format 1 (see docs/design.md).

This module holds the opcode table; the structural verifier that turns a
payload's ``code`` into rules lives here too.
"""

from __future__ import annotations

# Rule header: RULE effect cap line col
RULE = 0x01
# Argument instructions, one per capability parameter.
ANY = 0x10
HOST_EXACT = 0x11
HOST_WILD = 0x12
HOST_CIDR = 0x13
INT_RANGE = 0x20
PATH_GLOB = 0x30
STR_EXACT = 0x40
STR_GLOB = 0x41

DENY = 0
ENTITLE = 1

OPCODE_NAMES: dict[int, str] = {
    RULE: "RULE",
    ANY: "ANY",
    HOST_EXACT: "HOST_EXACT",
    HOST_WILD: "HOST_WILD",
    HOST_CIDR: "HOST_CIDR",
    INT_RANGE: "INT_RANGE",
    PATH_GLOB: "PATH_GLOB",
    STR_EXACT: "STR_EXACT",
    STR_GLOB: "STR_GLOB",
}
