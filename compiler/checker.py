"""Stage 2: semantic checks of the syntax tree, lowering to the IR (compiler/ir.py).

Capabilities are the built-in catalog (``polc.runtime.catalog.BUILTINS``) plus
the ``capability`` declarations of the whole source tree: a declaration in
any module may be used by every module, a built-in cannot be redeclared, and
two different declarations of one name are an error (an identical
re-declaration is fine). Rule arguments are validated and normalised with
``polc.runtime.patterns`` -- the same functions the artifact verifier uses --
so the compiler never accepts a pattern the runtime would refuse.

Every problem becomes a diagnostic; nothing here raises for bad input. The
warnings about a module's rules (duplicates, shadowed entitles) are
compiler/lint.py's.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from polc.runtime import patterns
from polc.runtime.catalog import (
    BUILTINS,
    COMMAND,
    GLOBAL_MODULE,
    HOST,
    INT,
    PATH,
    PORT,
    ROOTED_AT_SLASH,
    STRING,
    TYPES,
    Capability,
    Param,
)
from polc.runtime.format import opcodes
from polc.runtime.format.opcodes import (
    ANY,
    DENY,
    ENTITLE,
    HOST_WILD,
    INT_RANGE,
    MAX_GOVERNS,
    MAX_MODULE_NAME_LEN,
    MAX_NAME_LEN,
    MODES,
    PATH_GLOB,
    is_valid_module_name,
    package_name_problem,
)

from .ast import (
    AnyArg,
    CapabilityDecl,
    GovernsStmt,
    IntArg,
    ModeStmt,
    Module,
    Node,
    RangeArg,
    Rule,
    SourceFile,
    StrArg,
)
from .diagnostics import ERROR, NOTE, WARNING, Diagnostic, did_you_mean
from .ir import IRArg, IRModule, IRRule
from .lint import lint_rules

_STDLIB: frozenset[str] = frozenset(sys.stdlib_module_names)

__all__ = ["MODES", "Declarations", "check_module", "collect_declarations", "governed_names"]

# "did you mean" for words a person may reach for first.
CAPABILITY_SYNONYMS = {
    "inbound": "listen",
    "ingress": "listen",
    "accept": "listen",
    "bind": "listen",
    "serve": "listen",
    "server": "listen",
    "egress": "outbound",
    "connect": "outbound",
    "out": "outbound",
    "outgoing": "outbound",
    "open": "read",
    "load": "read",
    "get": "read",
    "save": "write",
    "put": "write",
    "create": "write",
    "run": "exec",
    "execute": "exec",
    "spawn": "exec",
    "start": "create",
    "spawn_thread": "create",
    "get_env": "read",
    "getenv": "read",
    "dlopen": "load",
    "loadlibrary": "load",
    "cdll": "load",
}
TYPE_SYNONYMS = {
    "str": "string",
    "text": "string",
    "integer": "int",
    "number": "int",
    "num": "int",
    "hostname": "host",
    "domain": "host",
    "ip": "host",
    "address": "host",
    "file": "path",
    "filename": "path",
    "dir": "path",
    "directory": "path",
    "glob": "path",
}
MODE_SYNONYMS = {
    "enforcing": "enforce",
    "enforced": "enforce",
    "strict": "enforce",
    "block": "enforce",
    "auditing": "audit",
    "audited": "audit",
    "dryrun": "audit",
    "dry_run": "audit",
    "warn": "audit",
    "report": "audit",
    "log": "audit",
    "permissive": "audit",
    "monitor": "audit",
}
_TYPE_WORDS = {
    HOST: "a host pattern (a string such as \"*.example.com\" or \"10.0.0.0/8\") or '*'",
    PORT: "a port (a number 0..65535 or a range such as 8000..8999) or '*'",
    PATH: "a path pattern (a string such as \"logs/**\") or '*'",
    STRING: "a string (exact, or a glob with '*' and '?') or '*'",
    INT: "an integer or a range such as 1..10, or '*'",
    COMMAND: "a command (an absolute path such as \"/usr/bin/git\", or a bare name such as \"git\"; "
             "'*' and '?' are wildcards) or '*'",
}


def _clip(name: str, n: int = 60) -> str:
    """A long name shortened for a message (the caret shows where it is)."""
    return name if len(name) <= n else name[: n - 3] + "..."


def _what(arg: Node) -> str:
    if isinstance(arg, StrArg):
        return "a string"
    if isinstance(arg, IntArg):
        return "a number"
    if isinstance(arg, RangeArg):
        return "a range"
    return "'*'"


# --------------------------------------------------------------------------
# declarations (tree-wide)


@dataclass(frozen=True, slots=True)
class DeclaredCap:
    cap: Capability
    file: str
    line: int
    col: int


@dataclass(slots=True)
class Declarations:
    """The capabilities declared anywhere in the tree, first declaration wins."""

    caps: dict[str, DeclaredCap] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    """Names whose declarations are invalid: their uses are not checked again."""

    def lookup(self, name: str) -> Capability | None:
        cap = BUILTINS.get(name)
        if cap is not None:
            return cap
        d = self.caps.get(name)
        return d.cap if d is not None else None

    def names(self) -> list[str]:
        return [*BUILTINS, *self.caps]


def _diag(sev: str, node: Node, msg: str, module: str | None, length: int | None = None) -> Diagnostic:
    if length is None:
        length = max(1, node.end_col - node.col)
    return Diagnostic(sev, node.file, node.line, node.col, msg, length, module)


def collect_declarations(files: Iterable[SourceFile]) -> tuple[Declarations, list[Diagnostic]]:
    """Check every ``capability`` declaration of the tree and build the table."""
    decls = Declarations()
    diags: list[Diagnostic] = []
    for f in files:
        for m in f.modules:
            mod = m.name.text
            for st in m.body:
                if isinstance(st, CapabilityDecl):
                    _declare(st, mod, decls, diags)
    return decls, diags


def _declare(st: CapabilityDecl, mod: str, decls: Declarations, diags: list[Diagnostic]) -> None:
    name = st.name.text
    if len(name) > MAX_NAME_LEN:
        diags.append(
            _diag(
                ERROR, st.name,
                f"capability name '{_clip(name)}' is too long: {len(name)} characters, "
                f"at most {MAX_NAME_LEN}",
                mod,
            )
        )
        decls.broken.add(name)
        return
    if name in BUILTINS:
        diags.append(
            _diag(
                ERROR, st.name,
                f"capability '{name}' is built in and cannot be redefined "
                f"(built-in signature: {BUILTINS[name].signature()})",
                mod,
            )
        )
        return
    ok = True
    params: list[Param] = []
    seen: dict[str, Node] = {}
    for p in st.params:
        pname, ptype = p.name.text, p.type.text
        if "." in pname:
            diags.append(
                _diag(ERROR, p.name, f"parameter name '{_clip(pname)}' must be a simple name, without '.'", mod)
            )
            ok = False
        elif len(pname) > MAX_NAME_LEN:
            diags.append(
                _diag(
                    ERROR, p.name,
                    f"parameter name '{_clip(pname)}' is too long: {len(pname)} characters, at most {MAX_NAME_LEN}",
                    mod,
                )
            )
            ok = False
        elif pname in seen:
            diags.append(
                _diag(ERROR, p.name, f"duplicate parameter '{pname}' in the declaration of '{name}'", mod)
            )
            ok = False
        seen[pname] = p.name
        if ptype not in TYPES:
            hint = did_you_mean(ptype, TYPES, synonyms=TYPE_SYNONYMS)
            if not hint:
                hint = "; the types are " + ", ".join(sorted(TYPES))
            diags.append(_diag(ERROR, p.type, f"unknown type '{ptype}'{hint}", mod))
            ok = False
        params.append(Param(pname, ptype))
    if len(params) > opcodes.MAX_PARAMS:
        # the runtime's limit (docs/artifact-format.md, "Limits")
        diags.append(
            _diag(
                ERROR, st.name,
                f"capability '{_clip(name)}' declares {len(params)} parameters, "
                f"more than the {opcodes.MAX_PARAMS} a capability may have",
                mod,
            )
        )
        ok = False
    if not ok:
        if name not in decls.caps:
            decls.broken.add(name)
        return
    cap = Capability(name, tuple(params))
    first = decls.caps.get(name)
    if first is None:
        decls.caps[name] = DeclaredCap(cap, st.name.file, st.name.line, st.name.col)
        decls.broken.discard(name)
        return
    if first.cap != cap:
        note = Diagnostic(NOTE, first.file, first.line, first.col, f"'{name}' first declared here", len(name))
        diags.append(
            Diagnostic(
                ERROR, st.name.file, st.name.line, st.name.col,
                f"conflicting declaration of capability '{cap.signature()}': "
                f"already declared as '{first.cap.signature()}' at {first.file}:{first.line}:{first.col}",
                max(1, st.name.end_col - st.name.col), mod, (note,),
            )
        )


# --------------------------------------------------------------------------
# modules


def check_module(
    module: Module, decls: Declarations, *, source: str, source_digest: str
) -> tuple[IRModule, list[Diagnostic]]:
    """Check one module; the IR is meaningful only if no error was reported."""
    mod = module.name.text
    diags: list[Diagnostic] = []
    if not is_valid_module_name(mod):
        # the runtime's own rule (the artifact is written as NAME.bin)
        if len(mod) > MAX_MODULE_NAME_LEN:
            msg = (f"module name '{_clip(mod)}' is too long: {len(mod)} characters, at most "
                   f"{MAX_MODULE_NAME_LEN} (its artifact is written as NAME.bin)")
        else:
            msg = f"invalid module name '{_clip(mod)}'"
        diags.append(_diag(ERROR, module.name, msg, mod))
    mode = "enforce"
    mode_at: ModeStmt | None = None
    rules: list[IRRule] = []
    rule_nodes: list[Rule] = []
    governs: dict[str, StrArg] = {}
    for st in module.body:
        if isinstance(st, Rule):
            ir = _check_rule(st, decls, mod, diags)
            if ir is not None:
                rules.append(ir)
                rule_nodes.append(st)
        elif isinstance(st, ModeStmt):
            value = st.value.text
            if value not in MODES:
                hint = did_you_mean(value, MODES, synonyms=MODE_SYNONYMS) or "; a mode is 'enforce' or 'audit'"
                diags.append(_diag(ERROR, st.value, f"unknown mode '{value}'{hint}", mod))
            elif mode_at is not None:
                diags.append(
                    _diag(
                        ERROR, st,
                        f"mode set twice in module '{mod}' (first at line {mode_at.line})",
                        mod,
                    )
                )
            else:
                mode, mode_at = value, st
        elif isinstance(st, GovernsStmt):
            _check_governs(st, mod, governs, diags)
        # capability declarations were checked tree-wide by collect_declarations
    if len(rules) > opcodes.MAX_RULES:
        # the runtime's limit (docs/artifact-format.md, "Limits")
        diags.append(
            _diag(
                ERROR, module.name,
                f"module '{_clip(mod)}' has {len(rules):,} rules, more than the "
                f"{opcodes.MAX_RULES:,} an artifact may hold; split it into several modules",
                mod,
            )
        )
    if len(governs) > MAX_GOVERNS:
        # the runtime's limit (docs/artifact-format.md, "Limits")
        diags.append(
            _diag(
                ERROR, module.name,
                f"module '{_clip(mod)}' governs {len(governs):,} packages, more than the "
                f"{MAX_GOVERNS:,} an artifact may name",
                mod,
            )
        )
    lint_rules(rules, rule_nodes, mod, diags)
    return IRModule(mod, mode, source, source_digest, tuple(rules), tuple(sorted(governs))), diags


# --------------------------------------------------------------------------
# governs


def _package_hint(name: str) -> str:
    """A "did you mean" for a package name that is not a dotted Python name, when one is near."""
    guess = name.strip()
    for suffix in ("/__init__.py", ".py", "/"):
        if guess.endswith(suffix):
            guess = guess[: -len(suffix)]
    guess = guess.replace("/", ".").replace("-", "_").replace(" ", "_")
    if guess != name and package_name_problem(guess) is None:
        return f"; did you mean '{guess}'? (the name Python imports, as in 'import {guess}')"
    return ""


def _check_governs(st: GovernsStmt, mod: str, seen: dict[str, StrArg], diags: list[Diagnostic]) -> None:
    """The names of one ``governs`` statement; the valid ones are added to ``seen``."""
    if mod == GLOBAL_MODULE:
        diags.append(
            _diag(
                ERROR, st,
                f"{GLOBAL_MODULE} cannot govern a package: its rules apply to every governed package already; "
                "put this statement in the module of the package's own policy",
                mod,
            )
        )
        return
    for arg in st.names:
        name = arg.value
        if arg.bad_escape is not None:
            diags.append(
                _diag(ERROR, arg, f"unknown escape '{arg.bad_escape}' in a string; the escapes are \\\" and \\\\", mod)
            )
            continue
        problem = package_name_problem(name)
        if problem is not None:
            diags.append(
                _diag(ERROR, arg, f"invalid package name \"{_clip(name)}\": {problem}{_package_hint(name)}", mod)
            )
            continue
        if name == mod:
            diags.append(
                _diag(
                    WARNING, arg,
                    f"module '{mod}' governs the package '{name}' by its own name already; this name adds nothing",
                    mod,
                )
            )
            continue
        first = seen.get(name)
        if first is not None:
            diags.append(
                _diag(WARNING, arg, f"package '{name}' is already governed by this module (line {first.line})", mod)
            )
            continue
        if name.split(".", 1)[0] in _STDLIB:
            diags.append(
                _diag(
                    WARNING, arg,
                    f"'{name}' is (part of) the standard library: every program's use of it becomes subject "
                    f"to this module's rules",
                    mod,
                )
            )
        seen[name] = arg


def governed_names(module: Module) -> list[StrArg]:
    """The valid package names of a module's ``governs`` statements, each once, in source order:
    what it claims, for the tree-wide check of claims (compiler/pipeline.py)."""
    if module.name.text == GLOBAL_MODULE:
        return []
    out: dict[str, StrArg] = {}
    for st in module.body:
        if isinstance(st, GovernsStmt):
            for arg in st.names:
                name = arg.value
                if arg.bad_escape is None and package_name_problem(name) is None and name != module.name.text:
                    out.setdefault(name, arg)
    return list(out.values())


def _check_rule(st: Rule, decls: Declarations, mod: str, diags: list[Diagnostic]) -> IRRule | None:
    name = st.cap.text
    cap = decls.lookup(name)
    if cap is None:
        if name in decls.broken:
            return None  # its declaration is already reported
        hint = did_you_mean(name, decls.names(), synonyms=CAPABILITY_SYNONYMS)
        diags.append(_diag(ERROR, st.cap, f"unknown capability '{_clip(name)}'{hint}", mod))
        return None
    given = st.args or ()
    ok = True
    if len(given) > cap.arity:
        extra = given[cap.arity]
        takes = {0: "no arguments", 1: "1 argument"}.get(cap.arity, f"{cap.arity} arguments")
        diags.append(
            _diag(
                ERROR, extra,
                f"wrong number of arguments: {cap.signature()} takes {takes}, got {len(given)}",
                mod,
            )
        )
        ok = False
    args: list[IRArg] = []
    for param, arg in zip(cap.params, given, strict=False):  # omitted trailing arguments are '*'
        lowered = _lower_arg(cap, param, arg, mod, diags)
        if lowered is None:
            ok = False
        else:
            args.append(lowered)
    if not ok:
        return None
    args.extend([(ANY,)] * (cap.arity - len(args)))
    effect = ENTITLE if st.effect == "entitle" else DENY
    return IRRule(effect, cap, st.line, st.col, tuple(args))


def _lower_arg(cap: Capability, param: Param, arg: Node, mod: str, diags: list[Diagnostic]) -> IRArg | None:
    t = param.type
    if isinstance(arg, AnyArg):
        return (ANY,)
    try:
        if isinstance(arg, StrArg):
            if arg.bad_escape is not None:
                diags.append(
                    _diag(
                        ERROR, arg,
                        f"unknown escape '{arg.bad_escape}' in a string; the escapes are \\\" and \\\\",
                        mod,
                    )
                )
                return None
            if t == HOST:
                lowered = patterns.compile_host(arg.value)
                if lowered == (HOST_WILD, "*"):
                    diags.append(
                        _diag(
                            WARNING, arg,
                            'the host pattern "*" matches exactly one DNS label (such as localhost), not every '
                            "host; write * without quotes for any host",
                            mod,
                        )
                    )
                return lowered
            if t == PATH:
                value = arg.value
                if cap.name in ROOTED_AT_SLASH and value.startswith("/"):
                    value = value.lstrip("/")  # an absolute path: relative to '/', as the rule stores it
                    if not value:
                        raise patterns.PatternError('invalid path pattern "/": empty; use "**" for any path')
                return (PATH_GLOB, patterns.compile_path(value))
            if t == STRING:
                if arg.value == "":
                    raise patterns.PatternError(
                        'invalid pattern "": an empty string matches nothing a request names; '
                        "write * for any value"
                    )
                return patterns.compile_string(arg.value)
            if t == COMMAND:
                return patterns.compile_command(arg.value)
        elif isinstance(arg, IntArg):
            if t in (PORT, INT):
                patterns.check_range(t, arg.value, arg.value)
                return (INT_RANGE, arg.value, arg.value)
        elif isinstance(arg, RangeArg) and t in (PORT, INT):
            patterns.check_range(t, arg.lo, arg.hi)
            return (INT_RANGE, arg.lo, arg.hi)
    except patterns.PatternError as exc:
        diags.append(_diag(ERROR, arg, f"{exc} (parameter '{param.name}' of {cap.name})", mod))
        return None
    diags.append(
        _diag(
            ERROR, arg,
            f"wrong argument type: parameter '{param.name}' of {cap.signature()} is {t}, "
            f"expecting {_TYPE_WORDS.get(t, t)}; got {_what(arg)}",
            mod,
        )
    )
    return None
