"""The constants of artifact format 1: opcodes, effects, payload keys, modes, limits, names.

Everything here is a plain value of docs/artifact-format.md; the only polc
module it imports is ``catalog`` (for the parameter types), so any module
may import it: ``patterns`` does, for the opcodes its ``compile_*`` functions
return, without reaching the verifier.
"""

from __future__ import annotations

import keyword
import re

from ..catalog import COMMAND, HOST, INT, PATH, PORT, STRING

__all__ = [
    "ALLOWED_OPS",
    "ANY",
    "ARG_OPS",
    "ARTIFACT_SUFFIX",
    "CONST_OPS",
    "DENY",
    "EFFECTS_BY_NAME",
    "EFFECT_NAMES",
    "ENTITLE",
    "FIELD_KEYS",
    "GOVERNS_KEY",
    "GOVERNS_MINOR",
    "HOST_CIDR",
    "HOST_EXACT",
    "HOST_WILD",
    "INT_RANGE",
    "MAX_CAPS",
    "MAX_CONSTS",
    "MAX_GOVERNS",
    "MAX_MODULE_NAME_LEN",
    "MAX_NAME_LEN",
    "MAX_PARAMS",
    "MAX_RULES",
    "MAX_STRING",
    "MODES",
    "MODULE_NAME",
    "OPCODES_BY_NAME",
    "OPCODE_NAMES",
    "OPERAND_COUNTS",
    "OPTIONAL_KEYS",
    "PACKAGE_NAME",
    "PATH_GLOB",
    "PAYLOAD_KEYS",
    "RULE",
    "STR_EXACT",
    "STR_GLOB",
    "WRITTEN_KEYS",
    "is_valid_module_name",
    "package_name_problem",
]

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
OPCODES_BY_NAME: dict[str, int] = {v: k for k, v in OPCODE_NAMES.items()}

# Every instruction is a msgpack array ``[opcode, operand, ...]`` with a fixed
# operand count per opcode.
OPERAND_COUNTS: dict[int, int] = {
    RULE: 4,  # effect, cap, line, col
    ANY: 0,
    HOST_EXACT: 1,  # const index
    HOST_WILD: 1,
    HOST_CIDR: 1,
    INT_RANGE: 2,  # lo, hi (signed)
    PATH_GLOB: 1,
    STR_EXACT: 1,
    STR_GLOB: 1,
}
# Argument opcodes whose single operand indexes the constant pool.
CONST_OPS: frozenset[int] = frozenset({HOST_EXACT, HOST_WILD, HOST_CIDR, PATH_GLOB, STR_EXACT, STR_GLOB})
ARG_OPS: frozenset[int] = frozenset(OPCODE_NAMES) - {RULE}

# Which argument opcodes each parameter type accepts (design.md).
ALLOWED_OPS: dict[str, frozenset[int]] = {
    HOST: frozenset({ANY, HOST_EXACT, HOST_WILD, HOST_CIDR}),
    PORT: frozenset({ANY, INT_RANGE}),
    INT: frozenset({ANY, INT_RANGE}),
    PATH: frozenset({ANY, PATH_GLOB}),
    STRING: frozenset({ANY, STR_EXACT, STR_GLOB}),
    COMMAND: frozenset({ANY, STR_EXACT, STR_GLOB}),
}

EFFECT_NAMES: dict[int, str] = {DENY: "deny", ENTITLE: "entitle"}
EFFECTS_BY_NAME: dict[str, int] = {v: k for k, v in EFFECT_NAMES.items()}

# The payload map: exactly these keys, in this order when written.
PAYLOAD_KEYS: tuple[str, ...] = (
    "module",
    "mode",
    "compiler",
    "source",
    "source_digest",
    "caps",
    "consts",
    "code",
)
# The payload's string fields, in the order they are checked and written.
FIELD_KEYS: tuple[str, ...] = PAYLOAD_KEYS[:5]
# Keys a payload may hold besides PAYLOAD_KEYS, each from the format minor that
# added it on; written after them, and only when they say something, so a
# payload without them is byte for byte what the earlier minor wrote.
GOVERNS_KEY = "governs"  # the Python package names a module's `governs` statement binds
GOVERNS_MINOR = 2  # format 1.2
OPTIONAL_KEYS: dict[str, int] = {GOVERNS_KEY: GOVERNS_MINOR}
WRITTEN_KEYS: tuple[str, ...] = (*PAYLOAD_KEYS, *OPTIONAL_KEYS)

# The values of ``mode``: the compiler's ``mode`` statement and the verifier
# both accept exactly these.
MODES: tuple[str, ...] = ("enforce", "audit")

# An artifact file is ``NAME.bin``, NAME its module.
ARTIFACT_SUFFIX = ".bin"

MAX_NAME_LEN = 255
# NAME.bin must fit the 255-byte file-name limit of common filesystems.
MAX_MODULE_NAME_LEN = MAX_NAME_LEN - len(ARTIFACT_SUFFIX)

# How much one artifact may hold (docs/artifact-format.md, "Limits"). Each is
# far beyond what a policy written by people needs (the largest benchmarked
# module has 10,000 rules), and together they bound what any file costs to
# read and link. The compiler refuses a module that would exceed one.
MAX_RULES = 100_000
MAX_PARAMS = 64  # parameters of one capability
MAX_CAPS = 10_000  # entries of ``caps``
MAX_CONSTS = 1_000_000  # entries of ``consts``
MAX_STRING = 64 * 1024  # bytes of any string of the payload (a host name is at most 253)
MAX_GOVERNS = 1024  # names in ``governs``

# A dotted name: parts of letters, digits, '_' and '-' joined by single dots.
# Module names and capability names both have this shape.
MODULE_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


# A Python package's dotted import name, as `governs` names it: ASCII identifiers
# joined by single dots. (Python allows non-ASCII identifiers, normalised to
# NFKC; a package name is ASCII in practice, and one spelling per name keeps
# the lookup a plain string comparison.)
PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def package_name_problem(name: str) -> str | None:
    """Why ``name`` is not a dotted Python package name (None if it is one): what the
    compiler reports and the verifier refuses, in the same words."""
    if name == "":
        return "an empty name"
    if len(name) > MAX_NAME_LEN:
        return f"{len(name)} characters, more than {MAX_NAME_LEN}"
    if PACKAGE_NAME.fullmatch(name) is None:
        return "not a dotted Python name (identifiers of ASCII letters, digits and '_', joined by single dots)"
    for part in name.split("."):
        if keyword.iskeyword(part):
            return f"'{part}' is a Python keyword, which no module name can be"
    return None


def is_valid_module_name(name: object) -> bool:
    """A dotted module name: letters, digits, ``_``, ``-``; no empty part; at most 251 chars.

    251 so that ``NAME.bin`` fits a 255-byte file name. The compiler should
    check module names with this function before it generates anything.
    """
    return type(name) is str and 0 < len(name) <= MAX_MODULE_NAME_LEN and MODULE_NAME.fullmatch(name) is not None
