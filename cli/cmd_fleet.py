"""``polc publish`` and ``polc pull``: a set of artifacts to an object store or HTTP directory, and back.

Start-up path: click and the runtime; never lark (the artifacts are compiled
already), never the HTTP server. ``boto3`` only for ``s3://`` URLs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

import click

from polc.errors import UsageOrIOError, VerificationFailed
from polc.options import format_option

log = logging.getLogger("polc")

# reasons of a failed pull that are I/O (exit 2); every other one is a verification failure (exit 1)
_IO_REASONS = frozenset(
    {"unreachable", "server error", "forbidden", "not found", "too large", "partial download", "bad response",
     "unavailable", "disk full", "io", "internal"}
)  # fmt: skip


def _log_to_stderr(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("polc: %(message)s"))
    logger = logging.getLogger("polc")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.WARNING if verbosity < 0 else (logging.DEBUG if verbosity > 0 else logging.INFO))


@click.command("publish")
@click.argument("artifact_dir", type=click.Path(file_okay=False))
@click.option(
    "--to",
    "to",
    required=True,
    metavar="URL",
    help="Where to publish: s3://bucket/prefix, or file:///dir (a directory an HTTP server serves).",
)
@click.option(
    "--sign",
    "sign",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="KEYFILE",
    help="Sign the manifest with this Ed25519 key; agents' trust files list it with manifest = true.",
)
@click.option(
    "--set",
    "set_name",
    default=None,
    metavar="NAME",
    help="The set's name (default: the one found at URL, else 'default').",
)
@click.option(
    "--revision",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="The new revision (default: the one found plus one); must be above the one found.",
)
@click.option("--endpoint", default=None, metavar="URL", help="The S3 endpoint of an s3:// URL [env AWS_ENDPOINT_URL].")
@format_option()
def publish_cmd(
    artifact_dir: str, to: str, sign: str | None, set_name: str | None, revision: int | None,
    endpoint: str | None, fmt: str,
) -> None:  # fmt: skip
    """Publish the artifacts of ARTIFACT_DIR as the next revision of a set.

    Each artifact is uploaded once, as an immutable object named by its
    SHA-256 (objects/<sha256>.bin; present ones are skipped); the signed
    manifest (manifest.json) is written last, so readers see the previous
    set or the new one, whole. Artifacts keep their own signatures (polc
    compile --sign). Prints what was published on stdout.
    """
    from polc.runtime.errors import ConfigError, FleetError, KeyFileError, SigningUnavailableError
    from polc.runtime.fleet.origin import open_store
    from polc.runtime.fleet.publish import publish
    from polc.runtime.signing import load_signing_key

    if sign is None:
        raise click.UsageError(
            "publish needs --sign KEYFILE: agents accept only a manifest signed by a key their trust file "
            "marks manifest = true"
        )
    to = _as_url(to, "--to")
    try:
        key = load_signing_key(sign)
        store = open_store(to, endpoint=endpoint)
        result = publish(artifact_dir, store, signer=key, set_name=set_name, revision=revision)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except (KeyFileError, SigningUnavailableError) as exc:
        raise UsageOrIOError(str(exc)) from None
    except FleetError as exc:
        if exc.reason in ("rollback", "wrong set", "bad manifest", "bad artifact", "empty set", "bad revision"):
            raise VerificationFailed(str(exc)) from None
        raise UsageOrIOError(str(exc)) from None
    if fmt == "json":
        doc = {
            "url": to, "set": result.set, "revision": result.revision, "previous": result.previous,
            "uploaded": result.uploaded, "skipped": result.skipped, "manifest_key": key.key_id,
        }  # fmt: skip
        click.echo(json.dumps(doc, sort_keys=True))
    else:
        click.echo(
            f"published set {result.set!r} revision {result.revision} to {to}: "
            f"{len(result.uploaded)} object(s) uploaded, {len(result.skipped)} already present"
        )


def _as_url(value: str, where: str) -> str:
    """A URL, or a local path made a file:// URL."""
    from polc.runtime.fleet.origin import file_url

    if not value or value != value.strip():
        raise click.BadParameter(f"{value!r}: empty, or whitespace around it", param_hint=where)
    if "://" in value:
        return value
    return file_url(value)


@click.command("pull")
@click.argument("url")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="The mirror directory (an agent's policy directory).",
)
@click.option(
    "--trust",
    "trust_file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="The trust file: a key with manifest = true, and the artifacts' keys [env POLC_TRUST_FILE].",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True, max=86400),
    default=None,
    metavar="SECONDS",
    help="Seconds between pulls, with +-20% jitter [env POLC_PULL_INTERVAL; default 5].",
)
@click.option("--once", is_flag=True, help="Pull once and exit: 0 in force, 1 refused, 2 origin or disk error.")
@click.option("--endpoint", default=None, metavar="URL", help="The S3 endpoint of an s3:// URL [env AWS_ENDPOINT_URL].")
@click.option("--set", "set_name", default=None, metavar="NAME", help="Refuse manifests of any other set.")
@click.option("-v", "--verbose", count=True, help="More output.")
@click.option("-q", "--quiet", count=True, help="Less output (warnings only).")
@format_option()
def pull_cmd(
    url: str, output: str, trust_file: str | None, interval: float | None, once: bool, endpoint: str | None,
    set_name: str | None, verbose: int, quiet: int, fmt: str,
) -> None:  # fmt: skip
    """Mirror the published set at URL into DIR, verified, switched whole, kept when the origin fails.

    URL: s3://bucket/prefix, http(s)://host/prefix (the manifest is
    <prefix>/manifest.json) or file:///dir. Each pull is one conditional GET
    of the manifest; only objects not already in DIR are fetched. Without
    --once it pulls forever (SIGTERM or SIGINT stops it).
    """
    from polc.runtime.config import env_seconds, resolve_trust
    from polc.runtime.errors import ConfigError, FleetError, PolcError, SigningUnavailableError
    from polc.runtime.fleet.puller import DEFAULT_PULL_INTERVAL, Puller, PullLoop

    _log_to_stderr(verbose - quiet)
    url = _as_url(url, "URL")
    try:
        if interval is None:
            interval = env_seconds("POLC_PULL_INTERVAL") or DEFAULT_PULL_INTERVAL
        trust = resolve_trust(trust_file)
        if trust is None:
            raise click.UsageError("pull needs a trust file: --trust FILE or POLC_TRUST_FILE")
        puller = Puller(url, output, trust=trust, endpoint=endpoint, set_name=set_name)
    except (ConfigError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    except SigningUnavailableError as exc:
        raise UsageOrIOError(str(exc)) from None
    except (FleetError, PolcError) as exc:
        raise UsageOrIOError(str(exc)) from None

    def report(result: Any) -> None:
        if not once and result.outcome == "unchanged":
            return  # an idle cycle: nothing to say
        status = puller.status()
        if fmt == "json":
            click.echo(json.dumps({"outcome": result.outcome, "fetched": list(result.fetched), **status},
                                  sort_keys=True))  # fmt: skip
        elif result.outcome == "failed":
            pass  # the puller logged the warning
        else:
            click.echo(
                f"revision {status['revision']} of set {status['set']!r} in force in {output} ({result.outcome}, "
                f"{len(result.fetched)} object(s) fetched)"
            )

    if once:
        result = puller.cycle()
        report(result)
        if not result.ok:
            cls = UsageOrIOError if result.reason in _IO_REASONS else VerificationFailed
            raise cls(result.error or "pull failed")
        return
    loop = PullLoop(puller.cycle, interval, start_offset=puller.mirror.in_force is not None, on_cycle=report)

    def stop(signum: int, frame: FrameType | None) -> None:
        loop.stop(timeout=0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("pulling %s into %s every %gs", url, os.path.abspath(output), interval)
    loop.run_forever()
