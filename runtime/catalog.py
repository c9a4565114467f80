"""Argument types and the built-in capability catalog.

Both the compiler (to type-check rules) and the runtime (to type-check
requests and to verify artifacts) read this module; it is the single
definition of what a capability looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

# The argument types of the language (docs/compiler.md, "The language").
HOST = "host"
PORT = "port"
PATH = "path"
STRING = "string"
INT = "int"
# The program of process.exec: a path compared as the file it names, or a
# bare name (artifact format 1.1; runtime/patterns.py, docs/design.md).
COMMAND = "command"
TYPES: frozenset[str] = frozenset({HOST, PORT, PATH, STRING, INT, COMMAND})

PORT_MIN, PORT_MAX = 0, 65535
# int arguments are carried as msgpack signed 64-bit integers.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Capability:
    name: str
    params: tuple[Param, ...]

    @property
    def arity(self) -> int:
        return len(self.params)

    def signature(self) -> str:
        inner = ", ".join(f"{p.name}: {p.type}" for p in self.params)
        return f"{self.name}({inner})"


def _cap(name: str, *params: tuple[str, str]) -> Capability:
    return Capability(name, tuple(Param(n, t) for n, t in params))


BUILTINS: dict[str, Capability] = {
    c.name: c
    for c in (
        _cap("network.outbound", ("host", HOST), ("port", PORT)),
        _cap("network.listen", ("port", PORT)),
        _cap("fs.read", ("root", STRING), ("path", PATH)),
        _cap("fs.write", ("root", STRING), ("path", PATH)),
        _cap("process.exec", ("command", COMMAND)),
        _cap("threads.create"),
        _cap("env.read", ("name", STRING)),
        # a native library (ctypes and other loaders): its resolved file, relative to '/'
        _cap("native.load", ("library", PATH)),
    )
}

# Built-ins whose path parameters have no root argument: they name a file by its
# absolute path, which rules and requests give relative to the file-system root
# ('/usr/lib/libssl.so.3' is "usr/lib/libssl.so.3"). Sources may write those rule
# arguments with the leading '/', which the compiler drops.
ROOTED_AT_SLASH: frozenset[str] = frozenset({"native.load"})

# Signatures that artifacts of an earlier format minor wrote for a built-in
# capability whose parameter types have since become more specific. The
# verifier reads them as the current built-in (format 1.0 declared
# process.exec's parameter as a string; since 1.1 it is a command).
LEGACY_SIGNATURES: dict[str, Capability] = {
    "process.exec": _cap("process.exec", ("command", STRING)),
}

GLOBAL_MODULE = "_global"
