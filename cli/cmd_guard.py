"""``polc guard POLICY_DIR [options] -- COMMAND [ARGS...]``: run a Python program with the guard installed.

The program is started with exec (same process, signals and exit status), its
environment carrying the guard's configuration (``POLC_GUARD_CONFIG``) and
the guard's boot directory first on ``PYTHONPATH``: its ``sitecustomize``
starts an agent on POLICY_DIR and installs the guard before the program's
own imports, in the program and in every Python child that inherits the
environment. Reload, denial and "would deny" lines go to stderr; the
program's stdout is its own. Start-up path: click and the standard library.
"""

from __future__ import annotations

import os
import shutil
import sys

import click

from polc.errors import UsageOrIOError


def _roots(values: tuple[str, ...]) -> dict[str, str]:
    roots: dict[str, str] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        name = name.strip()
        if not sep or not name or not directory:
            raise click.BadParameter(f"{value!r}: give NAME=DIR", param_hint="--root")
        if name in (".", "/"):
            raise click.BadParameter(
                f"{name!r} is reserved (the base directory and the file-system root)", param_hint="--root"
            )
        if name in roots:
            raise click.BadParameter(f"root {name!r} given twice", param_hint="--root")
        roots[name] = os.path.abspath(directory)
    return roots


def _program(command: tuple[str, ...]) -> list[str]:
    """The argv to exec: a ``.py`` script runs with this interpreter; anything else is found on PATH."""
    first = command[0]
    if first.endswith(".py") and os.path.isfile(first):
        return [sys.executable, *command]
    if "/" in first:
        if not os.path.isfile(first):
            raise UsageOrIOError(f"{first}: no such program")
        return list(command)
    found = shutil.which(first)
    if found is None:
        raise UsageOrIOError(f"{first}: command not found on PATH")
    return [found, *command[1:]]


@click.command("guard")
@click.argument("policy_dir", type=click.Path(file_okay=False))
@click.option(
    "--reload-interval",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between polls of POLICY_DIR; 0 loads once.",
)
@click.option(
    "--root",
    "roots",
    multiple=True,
    metavar="NAME=DIR",
    help="A directory fs.read/fs.write rules name as NAME (repeatable). Other roots are relative to the "
    "working directory.",
)
@click.option("--mode", type=click.Choice(["enforce", "audit"]), default="enforce", show_default=True,
              help="audit: log 'would deny' and let the operation happen.")  # fmt: skip
@click.option(
    "--observe",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Append every distinct operation the guard sees to FILE (JSON lines).",
)
@click.option(
    "--unlisted",
    type=click.Choice(["allow", "global"]),
    default="allow",
    show_default=True,
    help="global: third-party packages no module governs get _global's rules alone.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def guard_cmd(
    policy_dir: str,
    reload_interval: float,
    roots: tuple[str, ...],
    mode: str,
    observe: str | None,
    unlisted: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND (a Python script, `python -m MODULE` or a console script) with the guard installed.

    Operations of the Python packages POLICY_DIR's modules govern (files,
    sockets, processes, threads, the environment, native libraries) are
    decided with those policies, reloaded while the program runs; a denied
    one raises PolicyDenied before it happens. Put `--` before COMMAND.
    """
    from polc.runtime.guard.launch import CONFIG_VAR, encode_config
    from polc.runtime.guard.launch import __file__ as launch_file

    if not os.path.isdir(policy_dir):
        raise UsageOrIOError(f"{policy_dir}: not a directory")
    base = os.getcwd()
    config = {
        "policy_dir": os.path.abspath(policy_dir),
        "reload_interval": reload_interval,
        "roots": _roots(roots),
        "mode": mode,
        "observe": os.path.abspath(observe) if observe is not None else None,
        "unlisted": unlisted,
        "base": base,
    }
    argv = _program(command)
    boot_dir = os.path.join(os.path.dirname(os.path.abspath(launch_file)), "boot")
    env = dict(os.environ)
    env[CONFIG_VAR] = encode_config(config)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = boot_dir + (os.pathsep + existing if existing else "")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        raise UsageOrIOError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
