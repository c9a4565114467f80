"""``polc compile`` and ``polc check``.

Diagnostics and the summary go to stderr; with ``--format json`` a single
JSON document (diagnostics, modules, summary) goes to stdout instead. Exit
status: 0 ok, 1 policy errors (or warnings under ``--strict``), 2 usage or
I/O problems.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from polc.errors import failure
from polc.options import format_option

F = TypeVar("F", bound=Callable[..., Any])


def _common(f: F) -> F:
    f = format_option("text diagnostics on stderr, or one JSON document on stdout")(f)
    f = click.option("-q", "--quiet", count=True, help="less output (no summary)")(f)
    f = click.option("-v", "--verbose", count=True, help="more output (one line per module)")(f)
    f = click.option("--strict", is_flag=True, help="treat warnings as errors")(f)
    f = click.option(
        "-j",
        "--jobs",
        type=click.IntRange(min=0),
        default=1,
        show_default=True,
        help="worker processes; 0 = one per core",
    )(f)
    f = click.argument("srcs", nargs=-1, required=True, metavar="SRC...")(f)
    return f


def _run(
    srcs: tuple[str, ...],
    out: str | None,
    jobs: int,
    force: bool,
    strict: bool,
    verbose: int,
    quiet: int,
    fmt: str,
    write: bool,
    sign: str | None = None,
    source_root: str | None = None,
    stdin_name: str | None = None,
    wait: bool = True,
) -> None:
    from polc.compiler.build import compile_paths
    from polc.compiler.diagnostics import visible

    key = None
    if sign is not None:
        from polc.runtime.signing import KeyFileError, SigningUnavailableError, load_signing_key

        try:
            key = load_signing_key(sign)
        except (KeyFileError, SigningUnavailableError) as exc:
            raise failure(exc) from None
    report = compile_paths(
        list(srcs),
        out,
        jobs=jobs,
        force=force,
        strict=strict,
        write=write,
        sign_key=key,
        source_root=source_root,
        stdin_name=stdin_name,
        wait=wait,
        on_wait=lambda message: click.echo(f"polc: {visible(message)}", err=True),
    )
    verbosity = verbose - quiet
    if fmt == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
        if report.fatal:
            click.echo(f"polc: error: {visible(report.fatal)}", err=True)
        sys.exit(report.exit_code)
    if report.diagnostics:
        click.echo(report.render_diagnostics(), err=True)
    if report.fatal:
        click.echo(f"polc: error: {visible(report.fatal)}", err=True)
        sys.exit(report.exit_code)  # a usage or I/O problem
    if verbosity > 0:
        if report.removed_debris:
            click.echo(
                f"removed {report.removed_debris} temporary file(s) of interrupted compiles from {report.out_dir}",
                err=True,
            )
        for m in report.modules:
            where = f" -> {m.artifact}" if m.artifact and m.status != "failed" else ""
            click.echo(visible(f"{m.status}: {m.module} ({m.source}){where}"), err=True)
    if verbosity >= 0:
        click.echo(report.summary(), err=True)
    sys.exit(report.exit_code)


@click.command("compile")
@_common
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="output directory [default: policies/ beside the source directory]",
)
@click.option("--force", is_flag=True, help="rewrite artifacts even when up to date")
@click.option(
    "--sign",
    "sign",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="KEYFILE",
    help="sign every artifact with this Ed25519 key (from polc keygen)",
)
@click.option(
    "--source-root",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="record source paths relative to DIR [default: the parent of each SRC's directory, "
    "so 'polc compile policies-src' records policies-src/NAME.pol]",
)
@click.option(
    "--no-wait", "no_wait", is_flag=True, help="fail (exit 2) instead of waiting when another compile is writing to OUT"
)
def compile_cmd(
    srcs: tuple[str, ...],
    out: str | None,
    jobs: int,
    force: bool,
    strict: bool,
    verbose: int,
    quiet: int,
    fmt: str,
    sign: str | None,
    source_root: str | None,
    no_wait: bool,
) -> None:
    """Compile policy sources (files or directories of *.pol) into NAME.bin artifacts.

    Artifacts record each source's path relative to the source root, so one
    tree gives the same bytes however SRC is spelled and from any directory.
    One compile at a time writes to OUT (a lock on OUT/.polc-compile.lock):
    a second one waits for it, saying so on stderr, or with --no-wait fails.
    """
    _run(
        srcs,
        out,
        jobs,
        force,
        strict,
        verbose,
        quiet,
        fmt,
        write=True,
        sign=sign,
        source_root=source_root,
        wait=not no_wait,
    )


@click.command("check")
@_common
@click.option(
    "--stdin-filename",
    default=None,
    metavar="NAME",
    help="the name of the source read from '-' in diagnostics [default: <stdin>]; "
    "a file of that name among SRC is replaced by it",
)
def check_cmd(
    srcs: tuple[str, ...], jobs: int, strict: bool, verbose: int, quiet: int, fmt: str, stdin_filename: str | None
) -> None:
    """Check policy sources without writing anything.

    SRC '-' reads one source from standard input (for editors and hooks):

    \b
      polc check - < policies-src/tenant.acme.pol
      polc check - --stdin-filename policies-src/tenant.acme.pol policies-src
    """
    _run(srcs, None, jobs, False, strict, verbose, quiet, fmt, write=False, stdin_name=stdin_filename)
