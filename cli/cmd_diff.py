"""``polc diff OLD NEW [--only-widening] [--format text|json]``: what a policy change does.

OLD and NEW are artifact directories or source trees (compiled in memory).
The report (stdout) lists per module the rules added, removed and changed by
meaning, and the witness requests whose decision changes, each decided by
both sides' snapshots (the runtime's enforcer). Exit status: 0 no decision
changes (with ``--only-widening``: none from deny to allow); 1 some do; 2 a
side cannot be read (missing, a bad artifact, sources with errors).
"""

from __future__ import annotations

import json
import sys

import click

from polc.errors import EXIT_FAILED, EXIT_OK, failure
from polc.options import format_option


def _render(diff: object, only_widening: bool) -> str:
    from polc.compiler.diagnostics import visible
    from polc.compiler.diff import TreeDiff, summary

    assert isinstance(diff, TreeDiff)
    lines: list[str] = []
    for m in diff.modules:
        witnesses = [w for w in m.witnesses if w.widening or not only_widening]
        if only_widening and not witnesses:
            continue
        if m.status == "unchanged" and not witnesses:
            continue
        where = m.new_source or m.old_source
        head = f"{m.module} ({where}): {m.status}"
        if m.module == "_global":
            head += " (applies to every module, and alone to modules without a policy)"
        elif m.status == "removed":
            head += " (its requests are decided by _global alone)"
        lines.append(head)
        if m.mode is not None:
            lines.append(f"  mode: {m.mode[0]} \u2192 {m.mode[1]}")
        if m.governs is not None:
            lines.append(f"  governs: {', '.join(m.governs[0]) or '-'} \u2192 {', '.join(m.governs[1]) or '-'}")
        for r in m.added:
            lines.append(f"  + {r.text}  ({r.location})")
        for r in m.removed:
            lines.append(f"  - {r.text}  ({r.location})")
        for c in m.changed:
            lines.append(f"  ~ {c.old.text} \u2192 {c.new.text}  ({c.old.location} \u2192 {c.new.location})")
        if witnesses:
            lines.append("  decisions that change:")
            for w in witnesses:
                lines.append(f"    {w.text()}")
                lines.append(f"      old: {w.old.reason}" + (f" ({w.old.rule})" if w.old.rule else ""))
                lines.append(f"      new: {w.new.reason}" + (f" ({w.new.rule})" if w.new.rule else ""))
    governance = [g for g in diff.governance if g.widening or not only_widening]
    if governance:
        lines.append("governed packages that change:")
        lines.extend(f"  {g.text()}" for g in governance)
    s = summary(diff.modules, diff.governance)
    lines.append(
        f"{s['changed']} changed, {s['added']} added, {s['removed']} removed, {s['unchanged']} unchanged; "
        f"{s['decision_changes']} decision change(s): {s['widening']} widening (deny \u2192 allow), "
        f"{s['narrowing']} narrowing"
    )
    return "\n".join(visible(line) for line in lines)


@click.command("diff")
@click.argument("old", metavar="OLD")
@click.argument("new", metavar="NEW")
@click.option("--only-widening", is_flag=True, help="list (and fail on) only the changes from deny to allow")
@format_option("a report on stdout as text, or one JSON document")
def diff_cmd(old: str, new: str, only_widening: bool, fmt: str) -> None:
    """Compare two policy sets (artifact directories or source trees) by what they decide.

    \b
    Examples:
      polc diff policies-old policies           # two artifact directories
      git worktree add /tmp/base main && polc diff /tmp/base/policies-src policies-src
      polc diff --only-widening --format json old-src new-src

    Exit status: 0 no decision changes, 1 some decision changes, 2 error.
    """
    from polc.compiler.diff import DiffInputError, diff_sets, load_set

    try:
        result = diff_sets(load_set(old), load_set(new))
    except DiffInputError as exc:
        raise failure(exc) from None
    changes = [c for c in result.changes if c.widening or not only_widening]
    if fmt == "json":
        doc = result.as_dict()
        if only_widening:
            doc["only_widening"] = True
            for m in doc["modules"]:
                m["witnesses"] = [w for w in m["witnesses"] if w["widening"]]
            doc["governance"] = [g for g in doc["governance"] if g["widening"]]
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(_render(result, only_widening))
    sys.exit(EXIT_FAILED if changes else EXIT_OK)
