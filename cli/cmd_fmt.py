"""``polc fmt PATH... [--check] [--diff]``: rewrite policy sources and test files in the canonical layout.

Files are rewritten in place, each atomically (a temporary file in the same
directory, fsynced, given the file's mode, renamed over it); a symlink is
followed and its target rewritten. ``--check`` and ``--diff`` change nothing:
``--check`` names on stdout every file that would change, ``--diff`` prints a
unified diff of each. A file with syntax errors gets its diagnostics on stderr
and is left untouched. ``-`` formats standard input to standard output.

Exit status: 0 nothing to do (or everything rewritten); 1 a file would change
(``--check``/``--diff``) or has syntax errors; 2 usage or I/O errors.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import stat
import sys

import click

from polc.errors import EXIT_FAILED, EXIT_OK, UsageOrIOError

_SUFFIX = ".pol"


def find_files(paths: tuple[str, ...]) -> list[str]:
    """Every ``*.pol`` file (``*.test.pol`` included) named by ``paths``, hidden ones skipped, each once."""
    out: list[str] = []
    seen: set[str] = set()
    for p in paths:
        if os.path.isdir(p):
            found: list[str] = []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(os.path.join(root, f) for f in files if f.endswith(_SUFFIX) and not f.startswith("."))
            candidates = sorted(found)
        elif os.path.lexists(p):
            candidates = [p]
        else:
            raise UsageOrIOError(f"no such file or directory: {p}")
        for c in candidates:
            key = os.path.realpath(c)
            if key not in seen:
                seen.add(key)
                out.append(c.replace(os.sep, "/"))
    return out


def write_keeping_mode(path: str, data: bytes) -> None:
    """Replace ``path``'s contents atomically, keeping its permission bits (a symlink's target is rewritten)."""
    from polc.runtime.format.writer import fsync_dir, stage_file

    target = os.path.realpath(path)
    mode = stat.S_IMODE(os.stat(target).st_mode)
    directory = os.path.dirname(target)
    tmp = stage_file(directory, data, prefix=".polc-fmt-")
    try:
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def _diff(path: str, old: str, new: str) -> str:
    a, b = (path, path) if path.startswith("/") or path.startswith("<") else (f"a/{path}", f"b/{path}")
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), a, b))


@click.command("fmt")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--check", is_flag=True, help="change nothing; name the files that would change (exit 1 if any)")
@click.option("--diff", "show_diff", is_flag=True, help="change nothing; print a unified diff (exit 1 if any)")
@click.option("-q", "--quiet", is_flag=True, help="no summary line")
def fmt_cmd(paths: tuple[str, ...], check: bool, show_diff: bool, quiet: bool) -> None:
    """Format policy sources and test files (*.pol, *.test.pol) in one canonical layout.

    \b
    Examples:
      polc fmt policies-src                 # rewrite in place
      polc fmt --check policies-src         # CI: exit 1 and name the files that would change
      polc fmt --diff policies-src/tenant.acme.pol
      polc fmt - < a.pol                    # standard input to standard output
    """
    from polc.compiler.diagnostics import render_all, visible
    from polc.compiler.fmt import FormatError, format_source

    dry = check or show_diff
    if "-" in paths:
        if len(paths) != 1:
            raise UsageOrIOError("'-' (standard input) cannot be formatted together with files")
        raw = sys.stdin.buffer.read()
        _format_stdin(raw, dry, show_diff)
        return
    files = find_files(paths)
    changed = unchanged = failed = 0
    for path in files:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device cannot be rewritten (nor read safely)
                raise UsageOrIOError(f"{path}: not a regular file")
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise UsageOrIOError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            col = exc.start - (before.rfind(b"\n") + 1) + 1
            line = before.count(b"\n") + 1
            click.echo(visible(f"{path}:{line}:{col}: error: the file is not valid UTF-8"), err=True)
            failed += 1
            continue
        try:
            result = format_source(text, path)
        except FormatError as exc:
            click.echo(f"polc fmt: error: {visible(str(exc))}", err=True)
            failed += 1
            continue
        if result.text is None:
            click.echo(render_all(result.diagnostics, {path: text}), err=True)
            failed += 1
            continue
        if not result.changed:
            unchanged += 1
            continue
        changed += 1
        if check:
            click.echo(f"would reformat {visible(path)}")
        if show_diff:
            click.echo(_diff(visible(path), text, result.text), nl=False)
        if not dry:
            try:
                write_keeping_mode(path, result.text.encode("utf-8"))
            except OSError as exc:
                raise UsageOrIOError(f"{path}: cannot write: {exc.strerror or exc}") from None
    if not quiet:
        verb = "would reformat" if dry else "reformatted"
        click.echo(f"{verb} {changed}, unchanged {unchanged}, failed {failed}", err=True)
    sys.exit(EXIT_FAILED if failed or (dry and changed) else EXIT_OK)


def _format_stdin(raw: bytes, dry: bool, show_diff: bool) -> None:
    from polc.compiler.diagnostics import render_all
    from polc.compiler.fmt import FormatError, format_source

    name = "<stdin>"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        click.echo(f"{name}:1:1: error: the input is not valid UTF-8", err=True)
        sys.exit(EXIT_FAILED)
    try:
        result = format_source(text, name)
    except FormatError as exc:
        click.echo(f"polc fmt: error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if result.text is None:
        click.echo(render_all(result.diagnostics, {name: text}), err=True)
        sys.exit(EXIT_FAILED)
    if show_diff:
        click.echo(_diff(name, text, result.text), nl=False)
    elif not dry:
        click.echo(result.text, nl=False)
    sys.exit(EXIT_FAILED if dry and result.changed else EXIT_OK)

