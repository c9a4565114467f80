"""TEMPORARY re-export, removed when the restructure lands.

The instruction set moved to ``polc.runtime.format``: ``opcodes`` (constants,
limits, module names), ``program`` (``Rule``, ``Program``), ``verify``
(verifier, ``Linker``), ``link_fast`` (the fast linker), ``arguments``
(argument validity), ``encode`` (``assemble``, ``build_payload``) and
``disasm`` (listings); ``VerifyError`` to ``polc.runtime.errors``.
"""

from __future__ import annotations

from .errors import VerifyError
from .format.arguments import _VALID_ARGS, _VALID_COMMAND_ARGS, ANY_ARG, _fast_host_ok
from .format.arguments import decode_arg as _decode_arg
from .format.disasm import disassemble, format_arg, format_rule, printable, quote
from .format.encode import assemble
from .format.link_fast import link_fast_part as _link_fast_part
from .format.opcodes import (
    ALLOWED_OPS,
    ANY,
    ARG_OPS,
    CONST_OPS,
    DENY,
    EFFECT_NAMES,
    EFFECTS_BY_NAME,
    ENTITLE,
    FIELD_KEYS,
    HOST_CIDR,
    HOST_EXACT,
    HOST_WILD,
    INT_RANGE,
    MAX_CAPS,
    MAX_CONSTS,
    MAX_MODULE_NAME_LEN,
    MAX_NAME_LEN,
    MAX_PARAMS,
    MAX_RULES,
    MAX_STRING,
    MODES,
    OPCODE_NAMES,
    OPCODES_BY_NAME,
    OPERAND_COUNTS,
    PATH_GLOB,
    PAYLOAD_KEYS,
    RULE,
    STR_EXACT,
    STR_GLOB,
    is_valid_module_name,
)
from .format.program import Program, Rule
from .format.verify import (
    _VALID_CAPS,
    Linker,
    _link_fast,
    _link_reference,
    check_caps_count,
    check_code_count,
    check_consts_count,
    make_program,
    verify_caps,
    verify_consts,
    verify_field,
    verify_payload,
)
from .format.verify import link_reference_part as _link_reference_part
from .format.verify import verify_caps as _verify_caps

__all__ = [
    "ALLOWED_OPS",
    "ANY",
    "ANY_ARG",
    "ARG_OPS",
    "CONST_OPS",
    "DENY",
    "EFFECTS_BY_NAME",
    "EFFECT_NAMES",
    "ENTITLE",
    "FIELD_KEYS",
    "HOST_CIDR",
    "HOST_EXACT",
    "HOST_WILD",
    "INT_RANGE",
    "MAX_CAPS",
    "MAX_CONSTS",
    "MAX_MODULE_NAME_LEN",
    "MAX_NAME_LEN",
    "MAX_PARAMS",
    "MAX_RULES",
    "MAX_STRING",
    "MODES",
    "OPCODES_BY_NAME",
    "OPCODE_NAMES",
    "OPERAND_COUNTS",
    "PATH_GLOB",
    "PAYLOAD_KEYS",
    "RULE",
    "STR_EXACT",
    "STR_GLOB",
    "_VALID_ARGS",
    "_VALID_CAPS",
    "_VALID_COMMAND_ARGS",
    "Linker",
    "Program",
    "Rule",
    "VerifyError",
    "_decode_arg",
    "_fast_host_ok",
    "_link_fast",
    "_link_fast_part",
    "_link_reference",
    "_link_reference_part",
    "_verify_caps",
    "assemble",
    "check_caps_count",
    "check_code_count",
    "check_consts_count",
    "disassemble",
    "format_arg",
    "format_rule",
    "is_valid_module_name",
    "make_program",
    "printable",
    "quote",
    "verify_caps",
    "verify_consts",
    "verify_field",
    "verify_payload",
]
