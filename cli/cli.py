"""The ``polc`` command line.

Subcommands live in their own modules and are imported only when invoked, so
``polc run`` and ``polc eval`` never pay for importing lark, and ``polc
compile`` never pays for the HTTP server.
"""

from __future__ import annotations

import importlib
from typing import cast

import click

from polc import __version__

# name -> "module:attribute"
_COMMANDS = {
    "compile": "polc.cmd_compile:compile_cmd",
    "check": "polc.cmd_compile:check_cmd",
    "inspect": "polc.cmd_inspect:inspect_cmd",
    "eval": "polc.cmd_eval:eval_cmd",
    "run": "polc.cmd_run:run_cmd",
    "keygen": "polc.cmd_keygen:keygen_cmd",
    "fmt": "polc.cmd_fmt:fmt_cmd",
    "diff": "polc.cmd_diff:diff_cmd",
    "suggest": "polc.cmd_suggest:suggest_cmd",
    "publish": "polc.cmd_fleet:publish_cmd",
    "pull": "polc.cmd_fleet:pull_cmd",
    "test": "polc.cmd_test:test_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(_COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            return None  # command not built yet
        return cast(click.Command, getattr(module, attr))


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="polc")
def cli() -> None:
    """Compile capability policies and enforce them with hot reload."""


def main() -> None:
    cli(prog_name="polc")
