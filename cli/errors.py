"""The exit statuses of every ``polc`` command, and the exceptions that end a command with one.

Exit statuses everywhere: 0 success; 1 policy or verification errors (and a
deny for ``polc eval``); 2 usage or I/O errors. As in click, the status is an
attribute of the exception class (``exit_code``): a command raises
:class:`UsageOrIOError` or :class:`VerificationFailed` and click prints the one
line and exits with the class's status, so no command spells a status itself.

An exception from the runtime or the compiler (a ``PolcError``) may carry its
own ``exit_code``; :func:`failure` turns any exception into the matching
:class:`CommandFailed`, honouring that attribute and falling back to the
status the caller names.
"""

from __future__ import annotations

from typing import IO, Any, ClassVar

import click

__all__ = [
    "EXIT_DENIED",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandFailed",
    "UsageOrIOError",
    "VerificationFailed",
    "exit_code_of",
    "failure",
]

EXIT_OK = 0
EXIT_FAILED = 1
"""Policy or verification errors: a source that does not compile, an artifact that does not verify."""
EXIT_DENIED = 1
"""``polc eval``: the decision is a deny."""
EXIT_USAGE = 2
"""Usage or I/O errors: bad arguments, a file that cannot be read, a missing extra."""

DEFAULT_PREFIX = "polc: error: "


class CommandFailed(click.ClickException):
    """Ends a command: ``prefix + message`` on stderr, then exit with :attr:`exit_code`.

    The prefix names who speaks: ``polc: error: `` by default, ``polc eval: ``
    or ``FILE: error: `` where the command's diagnostics are worded that way.
    """

    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(self, message: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(message)
        self.prefix = prefix

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"{self.prefix}{self.format_message()}", file=file, err=file is None)


class VerificationFailed(CommandFailed):
    """A policy or verification error (exit 1)."""

    exit_code: ClassVar[int] = EXIT_FAILED


class UsageOrIOError(CommandFailed):
    """A usage or I/O error (exit 2)."""

    exit_code: ClassVar[int] = EXIT_USAGE


_BY_EXIT_CODE: dict[int, type[CommandFailed]] = {EXIT_FAILED: VerificationFailed, EXIT_USAGE: UsageOrIOError}


def exit_code_of(exc: BaseException, default: int) -> int:
    """The exit status ``exc`` asks for with an integer ``exit_code`` attribute, else ``default``."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and not isinstance(code, bool) and code in _BY_EXIT_CODE:
        return code
    return default


def failure(
    exc: BaseException, *, default: int = EXIT_USAGE, message: str | None = None, prefix: str = DEFAULT_PREFIX
) -> CommandFailed:
    """The :class:`CommandFailed` to raise for ``exc`` (``raise failure(exc) from None``).

    Its class follows ``exc.exit_code`` when ``exc`` carries one, else
    ``default``; its message is ``message`` or ``str(exc)``.
    """
    cls = _BY_EXIT_CODE[exit_code_of(exc, default)]
    return cls(str(exc) if message is None else message, prefix=prefix)
