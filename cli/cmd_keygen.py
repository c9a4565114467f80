"""``polc keygen NAME``: write an Ed25519 key pair for signing artifacts."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@click.command("keygen")
@click.argument("name")
@click.option(
    "-o",
    "--output-dir",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write NAME.key and NAME.pub into (created if missing).",
)
@click.option("--force", is_flag=True, help="Overwrite existing NAME.key / NAME.pub.")
def keygen_cmd(name: str, output_dir: Path, force: bool) -> None:
    """Write an Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub.

    Prints the key id on stdout; a trust-file entry for the key goes to
    stderr.  Sign with `polc compile --sign NAME.key`; list NAME.pub in the
    agent's trust file (see docs/security.md).
    """
    from polc.runtime.signing import (
        KeyFileError,
        SigningUnavailableError,
        generate_signing_key,
        write_key_pair,
    )

    if not _NAME.match(name):
        raise click.BadParameter(
            "use letters, digits, '_', '-' and '.', not starting with '.' or '-'", param_hint="NAME"
        )
    try:
        key = generate_signing_key(name)
        output_dir.mkdir(parents=True, exist_ok=True)
        key_path, pub_path = write_key_pair(key, output_dir, name, force=force)
    except (KeyFileError, SigningUnavailableError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key.key_id)
    err = sys.stderr
    print(f"wrote {key_path} (private, mode 0600) and {pub_path}", file=err)
    print("trust file entry:", file=err)
    print("  [[key]]", file=err)
    print(f'  name = "{name}"', file=err)
    print(f'  id = "{key.key_id}"', file=err)
    print(f'  public_key = "{key.public_key_b64}"', file=err)
    print('  modules = ["tenant.example"]', file=err)
