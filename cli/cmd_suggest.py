"""``polc suggest OBSERVATIONS.jsonl [--module NAME] [-o DIR] [--force]``: draft policies from what the guard saw.

Without ``-o`` the drafted sources go to stdout; with it, each module is
written to ``DIR/NAME.pol`` with its test file ``DIR/NAME.test.pol`` (each
atomically; an existing file is kept unless ``--force``). Bad lines of the
log get ``file:line:1: error:`` diagnostics on stderr and are left out.
Before anything is written the drafts are compiled and every observation is
decided with them by the runtime's enforcer: a draft that does not decide
what was observed is an error, never written.

Exit status: 0 drafted; 1 some lines were bad (the drafts of the rest are
still written), nothing to draft, or a draft that disagrees with the log;
2 usage or I/O errors.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from polc.errors import EXIT_FAILED, EXIT_OK, UsageOrIOError, VerificationFailed

if TYPE_CHECKING:
    from polc.compiler.suggest import Draft


@click.command("suggest")
@click.argument("observations", metavar="OBSERVATIONS.jsonl")
@click.option("--module", "only", default=None, metavar="NAME", help="draft only this module")
@click.option("-o", "--out", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="write NAME.pol and NAME.test.pol per module into DIR [default: the sources to stdout]")
@click.option("--force", is_flag=True, help="overwrite existing files in DIR")
def suggest_cmd(observations: str, only: str | None, out: str | None, force: bool) -> None:
    """Draft policy sources from the guard's observation log (JSON Lines).

    \b
    Examples:
      polc guard policies --mode audit --observe seen.jsonl -- python -m myservice
      polc suggest seen.jsonl                       # the drafts on stdout
      polc suggest seen.jsonl -o drafts/            # drafts/NAME.pol and drafts/NAME.test.pol
      polc check drafts/
    """
    from polc.compiler.diagnostics import render_all, visible
    from polc.compiler.suggest import draft_modules, read_observations, verify_drafts

    try:
        fh = open(observations, "rb")  # noqa: SIM115  (closed below; a FIFO is read as it comes)
    except OSError as exc:
        raise UsageOrIOError(f"{observations}: cannot read: {exc.strerror or exc}") from None
    with fh:
        try:
            obs, diags, lines, bad = read_observations(fh, observations)
        except OSError as exc:
            raise UsageOrIOError(f"{observations}: cannot read: {exc.strerror or exc}") from None
    if diags:
        click.echo(render_all(diags, None), err=True)
    drafts = draft_modules(obs, os.path.basename(observations), only)
    if not drafts:
        what = f"for module {only} " if only else ""
        raise VerificationFailed(f"no observations {what}to draft from in {visible(observations)}")
    problems = verify_drafts(drafts)
    if problems:
        raise VerificationFailed("the drafts do not decide the observations as observed:\n  "
                                 + "\n  ".join(visible(p) for p in problems))
    if out is None:
        click.echo("\n".join(d.source for d in drafts), nl=False)
    else:
        _write(out, drafts, force)
    click.echo(f"drafted {len(drafts)} module(s) from {sum(len(d.observations) for d in drafts)} distinct "
               f"observation(s); {lines} line(s) read, {bad} bad", err=True)
    sys.exit(EXIT_FAILED if bad else EXIT_OK)


def _write(out: str, drafts: list[Draft], force: bool) -> None:
    from polc.runtime.format.writer import write_atomic

    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise UsageOrIOError(f"{out}: cannot create: {exc.strerror or exc}") from None
    files: list[tuple[str, str]] = []
    for d in drafts:
        files.append((os.path.join(out, f"{d.module}.pol"), d.source))
        files.append((os.path.join(out, f"{d.module}.test.pol"), d.test))
    if not force:
        existing = [p for p, _ in files if os.path.lexists(p)]
        if existing:
            raise UsageOrIOError(f"{existing[0]} exists; pass --force to overwrite the drafts in {out}")
    for path, text in files:
        try:
            write_atomic(path, text.encode("utf-8"))
        except OSError as exc:
            raise UsageOrIOError(f"{path}: cannot write: {exc.strerror or exc}") from None
        click.echo(f"wrote {path}", err=True)
