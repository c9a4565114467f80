"""polc.errors: exit statuses on exception classes, and an exception's own exit_code honoured."""

from __future__ import annotations

import click
from click.testing import CliRunner

from polc.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    CommandFailed,
    UsageOrIOError,
    VerificationFailed,
    exit_code_of,
    failure,
)


class _Carries(ValueError):
    exit_code = EXIT_FAILED


def test_the_exit_code_attribute_decides_else_the_default() -> None:
    assert exit_code_of(_Carries("x"), EXIT_USAGE) == EXIT_FAILED
    assert exit_code_of(ValueError("x"), EXIT_USAGE) == EXIT_USAGE
    bogus = ValueError("x")
    bogus.exit_code = True  # type: ignore[attr-defined]  # a bool is not a status
    assert exit_code_of(bogus, EXIT_USAGE) == EXIT_USAGE
    bogus.exit_code = 7  # type: ignore[attr-defined]  # not a status polc uses
    assert exit_code_of(bogus, EXIT_FAILED) == EXIT_FAILED


def test_failure_picks_the_class_of_the_status() -> None:
    assert type(failure(ValueError("bad"))) is UsageOrIOError
    assert type(failure(ValueError("bad"), default=EXIT_FAILED)) is VerificationFailed
    got = failure(_Carries("bad"))
    assert type(got) is VerificationFailed and got.message == "bad"
    assert failure(ValueError("raw"), message="shown").message == "shown"


def test_a_command_that_raises_prints_one_line_and_exits_with_the_class_status() -> None:
    @click.command()
    @click.argument("kind")
    def cmd(kind: str) -> None:
        if kind == "usage":
            raise UsageOrIOError("no such file: x")
        raise VerificationFailed("digest mismatch", prefix="x.bin: error: ")

    runner = CliRunner()
    r = runner.invoke(cmd, ["usage"])
    assert r.exit_code == EXIT_USAGE == 2
    assert r.stderr == "polc: error: no such file: x\n" and r.stdout == ""
    r = runner.invoke(cmd, ["bad"])
    assert r.exit_code == EXIT_FAILED == 1
    assert r.stderr == "x.bin: error: digest mismatch\n"
    assert issubclass(UsageOrIOError, CommandFailed) and issubclass(CommandFailed, click.ClickException)
