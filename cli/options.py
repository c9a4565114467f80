"""Options shared by several commands, declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("text", "json")


def format_option(help: str = "Output format.") -> Callable[[F], F]:
    """``--format text|json`` (default ``text``), passed to the command as ``fmt``.

    ``polc eval``, ``polc inspect``, ``polc compile`` and ``polc check`` take
    it; ``help`` says where each command writes what.
    """
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="text",
        show_default=True,
        help=help,
    )
