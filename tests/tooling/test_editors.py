"""The editor interfaces: the TextMate grammar, and ``polc check --format json`` against its JSON Schema."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from polc.cli import cli
from polc.runtime.catalog import BUILTINS

from support import REPO

GRAMMAR = REPO / "editors" / "polc.tmLanguage.json"
SCHEMA = REPO / "docs" / "check-output.schema.json"


# --------------------------------------------------------------------------
# a small TextMate tokenizer: match / begin-end / include / captures, line by line


def _load() -> dict[str, Any]:
    return json.loads(GRAMMAR.read_text("utf-8"))


def _regexes(node: Any) -> list[str]:
    out = []
    if isinstance(node, dict):
        for key in ("match", "begin", "end"):
            if key in node:
                out.append(node[key])
        for v in node.values():
            out.extend(_regexes(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_regexes(v))
    return out


class TextMate:
    def __init__(self, grammar: dict[str, Any]) -> None:
        self.g = grammar
        self.compiled: dict[str, re.Pattern[str]] = {}

    def rx(self, text: str) -> re.Pattern[str]:
        if text not in self.compiled:
            self.compiled[text] = re.compile(text)
        return self.compiled[text]

    def flat(self, patterns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for p in patterns:
            if "include" in p:
                target = self.g["repository"][p["include"].lstrip("#")]
                out.extend(self.flat(target["patterns"]) if "patterns" in target and "match" not in target
                           and "begin" not in target else self.flat([target]))
            else:
                out.append(p)
        return out

    def tokens(self, text: str) -> list[tuple[str, str]]:
        """``(scope, text)`` for every scoped piece (captures included), in order; unscoped text is left out."""
        out: list[tuple[str, str]] = []
        stack: list[dict[str, Any]] = []
        for line in text.split("\n"):
            pos = 0
            while pos <= len(line):
                top = stack[-1] if stack else None
                patterns = self.flat(top.get("patterns", []) if top else self.g["patterns"])
                best: tuple[int, int, Any, dict[str, Any] | None] | None = None
                if top is not None:
                    m = self.rx(top["end"]).search(line, pos)
                    if m:
                        best = (m.start(), -1, m, None)
                for k, p in enumerate(patterns):
                    m = self.rx(p.get("match") or p["begin"]).search(line, pos)
                    if m and (best is None or m.start() < best[0]):
                        best = (m.start(), k, m, p)
                if best is None:
                    if top is not None and top.get("name") and line[pos:]:
                        out.append((top["name"], line[pos:]))
                    break
                _, _, m, p = best
                if top is not None and top.get("name") and m.start() > pos:
                    out.append((top["name"], line[pos:m.start()]))  # the inside of a begin/end rule
                if p is None:  # the end of the open begin/end rule
                    assert top is not None
                    self._emit(out, top.get("name"), m, top.get("endCaptures", {}))
                    stack.pop()
                elif "match" in p:
                    self._emit(out, p.get("name"), m, p.get("captures", {}))
                else:
                    self._emit(out, p.get("name"), m, p.get("beginCaptures", {}))
                    stack.append(p)
                if m.end() == pos and p is not None and "match" in p:
                    pos += 1
                else:
                    pos = max(m.end(), pos + (1 if m.end() == m.start() and p is None else 0))
                if pos >= len(line) and not m.group():
                    break
        return out

    @staticmethod
    def _emit(out: list[tuple[str, str]], name: str | None, m: re.Match[str], captures: dict[str, Any]) -> None:
        if name and m.group():
            out.append((name, m.group()))
        for group, spec in sorted(captures.items(), key=lambda kv: int(kv[0])):
            piece = m.group(int(group))
            if piece and "name" in spec:
                out.append((spec["name"], piece))


def _scopes_of(tokens: list[tuple[str, str]], text: str) -> list[str]:
    return [scope for scope, piece in tokens if piece == text]


def _keywords(lark_file: Path) -> list[str]:
    return re.findall(r'^[A-Z_]+:\s*"([a-z]+)"\s*$', lark_file.read_text("utf-8"), re.M)


def test_the_grammar_loads_and_every_regex_compiles() -> None:
    grammar = _load()
    assert grammar["scopeName"] == "source.polc" and "pol" in grammar["fileTypes"]
    regexes = _regexes(grammar)
    assert len(regexes) > 20
    for r in regexes:
        re.compile(r)


@pytest.mark.parametrize("lark_file", sorted((REPO / "grammar").glob("*.lark")), ids=lambda p: p.name)
def test_every_keyword_of_the_language_is_highlighted(lark_file: Path) -> None:
    words = _keywords(lark_file)
    if lark_file.name == "policy.lark":
        assert {"security", "module", "to", "entitle", "deny", "mode", "capability"} <= set(words)
    assert words, lark_file
    tm = TextMate(_load())
    for word in words:
        scopes = _scopes_of(tm.tokens(f" {word} "), word)
        assert scopes and scopes[0].split(".")[0] in ("keyword", "storage"), (word, scopes)
        # a keyword inside a dotted name is part of the name
        assert not any(s.startswith(("keyword", "storage")) for s in _scopes_of(tm.tokens(f"fs.{word}x"), word))


def test_capability_names_modes_types_strings_numbers_comments() -> None:
    tm = TextMate(_load())
    for name in BUILTINS:
        assert "support.function.capability.polc" in _scopes_of(tm.tokens(f"deny module to {name};"), name), name
    src = (REPO / "policies-src" / "tenant.initech.pol").read_text("utf-8")
    toks = tm.tokens(src)
    assert ("constant.language.mode.polc", "audit") in toks
    assert ("entity.name.namespace.module.polc", "tenant.initech") in toks
    assert ("string.quoted.double.polc", '"api.initech.com"') not in toks  # begin/end strings come in pieces
    assert ("punctuation.definition.string.begin.polc", '"') in toks
    assert ("keyword.operator.glob.polc", "**") in toks
    assert ("constant.numeric.integer.polc", "443") in toks
    # the block comment spans three lines and swallows the keywords in it
    comment_text = "".join(p for s, p in toks if s.startswith("comment") or s.startswith("punctuation.definition.c"))
    assert "enforce" in comment_text and "Initech is being onboarded" in comment_text
    assert not any(s.startswith("keyword") and p == "mode" for s, p in toks[:3])
    glob = tm.tokens((REPO / "policies-src" / "tenant.globex.pol").read_text("utf-8"))
    assert ("keyword.operator.range.polc", "..") in glob and ("constant.numeric.integer.polc", "8999") in glob
    assert ("comment.line.double-slash.polc", "// its database") in glob
    gw = tm.tokens((REPO / "policies-src" / "agent.gateway.pol").read_text("utf-8"))
    assert ("storage.type.capability.polc", "capability") in gw
    assert ("entity.name.function.capability.polc", "tool.call") in gw
    assert ("support.type.polc", "string") in gw
    assert ("constant.language.any.polc", "*") in gw
    bad = tm.tokens("capability x.y(a: strng);")
    assert ("invalid.illegal.type.polc", "strng") in bad
    assert ("invalid.illegal.escape.polc", "\\q") in tm.tokens('entitle module to env.read("a\\q");')


def test_editors_readme_says_how_to_install() -> None:
    text = (REPO / "editors" / "README.md").read_text("utf-8")
    for word in ("VS Code", "Sublime Text", "polc.tmLanguage.json", "polc check --format json"):
        assert word in text


# --------------------------------------------------------------------------
# polc check --format json and its schema


def validate(instance: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "$") -> list[str]:
    """The subset of JSON Schema the check schema uses: type, const, enum, required, properties,
    additionalProperties (false), items, minimum, $ref to #/$defs."""
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        return validate(instance, root["$defs"][ref.split("/")[-1]], root, where)
    errors: list[str] = []
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if "type" in schema:
        wanted = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any((t == "integer" and type(instance) is int) or (t != "integer" and type(instance) is types[t])
                 for t in wanted)
        if not ok:
            return [f"{where}: {instance!r} is not of type {wanted}"]
    if "const" in schema and (instance != schema["const"] or type(instance) is not type(schema["const"])):
        errors.append(f"{where}: {instance!r} is not {schema['const']!r}")
    if "enum" in schema and not any(instance == e and type(instance) is type(e) for e in schema["enum"]):
        errors.append(f"{where}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(instance, int) and instance < schema["minimum"]:
        errors.append(f"{where}: {instance} < {schema['minimum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{where}: missing {key}")
        props = schema.get("properties", {})
        for key, value in instance.items():
            if key in props:
                errors.extend(validate(value, props[key], root, f"{where}.{key}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected {key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors.extend(validate(item, schema["items"], root, f"{where}[{i}]"))
    return errors


def _schema() -> dict[str, Any]:
    schema = json.loads(SCHEMA.read_text("utf-8"))
    keywords = {"$schema", "title", "description", "type", "required", "additionalProperties", "properties",
                "items", "const", "enum", "minimum", "$ref", "$defs"}

    def used(node: Any) -> set[str]:
        if isinstance(node, dict):
            out = set()
            for k, v in node.items():
                if k not in ("properties", "$defs"):
                    out.add(k)
                    out |= used(v)
                else:
                    for sub in v.values():
                        out |= used(sub)
            return out
        if isinstance(node, list):
            return set().union(*(used(v) for v in node)) if node else set()
        return set()

    assert used(schema) <= keywords, used(schema) - keywords  # the validator below knows every keyword used
    return schema


def test_the_validator_can_fail() -> None:
    schema = _schema()
    good = json.loads(CliRunner().invoke(cli, ["check", str(REPO / "policies-src"), "--format", "json"]).stdout)
    assert validate(good, schema, schema) == []
    for broken in ({**good, "version": 2}, {**good, "extra": 1}, {k: v for k, v in good.items() if k != "ok"},
                   {**good, "diagnostics": [{"severity": "fatal"}]}, {**good, "exit_code": True}):
        assert validate(broken, schema, schema), broken


def test_real_check_output_validates_against_the_schema(tmp_path: Path) -> None:
    schema = _schema()
    bad = tmp_path / "policies-src"
    bad.mkdir()
    (bad / "a.pol").write_text("security module a {\n    entitle module to network.inbound(8080);\n"
                               "    capability tool.call(s: string);\n}\n"
                               "security module b { capability tool.call(s: int); entitle module to fs.read(\"x\"); "
                               "entitle module to fs.read(\"x\", *); }\n", "utf-8")
    (bad / "c.pol").write_text("security module c { entitle module to ; }\n", "utf-8")
    runs = [
        ["check", str(REPO / "policies-src"), "--format", "json"],
        ["check", str(bad), "--format", "json"],
        ["check", str(bad), "--format", "json", "--strict"],
        ["check", str(tmp_path / "missing"), "--format", "json"],
        ["compile", str(REPO / "policies-src"), "-o", str(tmp_path / "out"), "--format", "json"],
    ]
    seen_codes = set()
    for args in runs:
        r = subprocess.run([sys.executable, "-m", "polc", *args], capture_output=True, text=True, timeout=120,
                           check=False)
        doc = json.loads(r.stdout)
        assert validate(doc, schema, schema) == [], (args, doc)
        assert doc["version"] == 1 and doc["exit_code"] == r.returncode
        seen_codes.add(r.returncode)
    assert seen_codes == {0, 1, 2}
    notes = json.loads(subprocess.run([sys.executable, "-m", "polc", "check", str(bad), "--format", "json"],
                                      capture_output=True, text=True, timeout=120, check=False).stdout)
    assert any(d["notes"] for d in notes["diagnostics"]), "a diagnostic with notes was validated too"
