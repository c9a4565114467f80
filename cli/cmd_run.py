"""``polc run``: the sidecar agent with an HTTP decision API.

Start-up path: click, the runtime (msgpack) and uvicorn. Never lark: the
compiler is not needed to enforce compiled artifacts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import sys
from typing import Any

import click

from polc.errors import UsageOrIOError

log = logging.getLogger("polc.run")

_DEFAULT_LISTEN = "127.0.0.1:8181"


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR and not record.name.startswith(("polc.run", "polc.server")):
            message = f"error: {message}"
        return f"polc: {message}"


class _QuietStart(logging.Filter):
    """Drop the agent's per-module "loaded X (N rules)" lines of the first load unless -v.

    A directory of thousands of tenants would otherwise print thousands of
    lines at every start; the start-up summary says how many loaded, and
    failures (warnings) always pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.started = False  # set once the start-up summary is printed

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name != "polc" or self.started


def _configure_logging(verbosity: int) -> logging.Handler:
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    if verbosity < -2:
        level = logging.CRITICAL
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    for name in ("polc", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("polc").setLevel(level)
    # uvicorn's own chatter ("Started server process ...") only with -v.
    logging.getLogger("uvicorn.error").setLevel(logging.DEBUG if verbosity > 0 else logging.WARNING)
    return handler


_JSON_HEADER = "-H 'content-type: application/json'"


def _auth_header(token_file: str | None) -> str:
    if not token_file:
        return ""
    return f' -H "authorization: Bearer $(cat {shlex.quote(os.path.abspath(token_file))})"'


def _example_curl(url: str, modules: dict[str, Any], token_file: str | None = None) -> str:
    if "tenant.acme" in modules:
        body = {"module": "tenant.acme", "capability": "network.outbound", "args": ["api.acme.com", 443]}
    else:
        names = sorted(m for m in modules if m != "_global") or ["my.module"]
        body = {"module": names[0], "capability": "network.outbound", "args": ["example.com", 443]}
    auth = _auth_header(token_file)
    return f"curl -s {url}/v1/check {_JSON_HEADER}{auth} -d {shlex.quote(json.dumps(body))}"


_MAX_TOKEN = 4096


def _read_token(path: str, where: str) -> bytes:
    """The bearer token in ``path``: one line of visible ASCII; surrounding whitespace is dropped."""
    if not path.strip():
        raise UsageOrIOError(f"{where} is empty; name the file that holds the bearer token")
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_TOKEN + 1)
            mode = os.fstat(f.fileno()).st_mode
    except OSError as exc:
        raise UsageOrIOError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    token = data.strip()
    if len(data) > _MAX_TOKEN:
        raise UsageOrIOError(f"token file {path}: longer than {_MAX_TOKEN} bytes")
    if not token:
        raise UsageOrIOError(f"token file {path} is empty; an empty token would let every client in")
    if any(b < 0x21 or b > 0x7E for b in token):
        raise UsageOrIOError(f"token file {path}: the token must be one line of visible ASCII characters (no spaces)")
    if len(token) < 16:
        log.warning("token file %s: the token is only %d characters; use 32 or more random ones", path, len(token))
    if mode & 0o077:
        log.warning("unsafe permissions: token file %s is readable by group or others (chmod 600 it)", path)
    return token


_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _check_host_names(names: tuple[str, ...]) -> list[str]:
    """``--allow-host`` values: ``*``, a DNS name or an IP address (IPv6 with or without brackets)."""
    import ipaddress

    out = []
    for name in names:
        text = name.strip()
        bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            if text != "*" and not _HOST_NAME.fullmatch(text):
                raise click.BadParameter(
                    f"{name!r} is not a host name or an IP address", param_hint="--allow-host"
                ) from None
        out.append(bare)
    return out


@click.command("run")
# POLC_POLICY_DIR and POLC_LISTEN are read in run_cmd, not by click: click
# takes a variable that is set but empty for unset, and would fall back to
# the default without a word.
@click.argument("policy_dir", required=False, type=click.Path(file_okay=False))
@click.option(
    "--listen",
    default=None,
    metavar="HOST:PORT",
    help="Address to serve the decision API on; loopback unless told otherwise. Port 0 picks a free one"
    f" [env POLC_LISTEN; default {_DEFAULT_LISTEN}].",
)
@click.option(
    "--reload-interval",
    "-reload-interval",
    "reload_interval",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Seconds between polls of POLICY_DIR [env POLC_RELOAD_INTERVAL; default 5]. 0 disables reloading.",
)
@click.option(
    "--no-reload", is_flag=True, help="Verify artifacts once at start-up and never poll [env POLC_RELOAD=false]."
)
@click.option(
    "--no-inotify",
    is_flag=True,
    help="Find changes by polling every --reload-interval only, never through inotify [env POLC_INOTIFY=false].",
)
@click.option(
    "--sweep-interval",
    type=click.FloatRange(min=0.01),
    default=None,
    metavar="SECONDS",
    help="While inotify watches POLICY_DIR, seconds between safety-net sweeps of every file "
    "[env POLC_SWEEP_INTERVAL; default the larger of 60 and the reload interval].",
)
@click.option("--strict", is_flag=True, default=None, help="Fail start-up if any artifact is bad.")
@click.option(
    "--trust",
    "trust_file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Require every artifact to be signed by a key in this trust file [env POLC_TRUST_FILE].",
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1),
    default=1 << 20,
    show_default=True,
    metavar="BYTES",
    help="Largest request body accepted (413 above).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    metavar="N",
    help="Most checks in one /v1/check/batch request (413 above).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Require 'Authorization: Bearer TOKEN' (TOKEN: the content of FILE) on every endpoint but /healthz "
    "[env POLC_TOKEN_FILE].",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests whose Host header names NAME (repeatable; '*': any). "
    "localhost and the listening address are always answered.",
)
@click.option(
    "--allow-origin",
    "allow_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Answer browser requests from pages of ORIGIN, e.g. https://ops.example.com (repeatable; default: none).",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0, min_open=True, max=86400),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Close a connection whose request line and headers take longer (408).",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True, max=86400),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Close a connection whose request body takes longer after its headers (408), "
    "or that has not read an answer for this long.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    metavar="N",
    help="Most open client connections; beyond it a new one is answered 503 and closed.",
)
@click.option(
    "--source",
    default=None,
    metavar="URL",
    help="Pull the published set at URL (s3://bucket/prefix, http(s)://host/prefix, file:///dir) into POLICY_DIR,"
    " verified and switched whole; needs a trust file with a manifest key [env POLC_SOURCE; docs/fleet.md].",
)
@click.option(
    "--pull-interval",
    type=click.FloatRange(min=0, min_open=True, max=86400),
    default=None,
    metavar="SECONDS",
    help="Seconds between pulls of --source, with +-20% jitter [env POLC_PULL_INTERVAL; default 5].",
)
@click.option(
    "--endpoint",
    default=None,
    metavar="URL",
    help="The S3 endpoint of an s3:// --source [env POLC_SOURCE_ENDPOINT, AWS_ENDPOINT_URL].",
)
@click.option("-v", "--verbose", count=True, help="More output (-v lists every module loaded at start-up).")
@click.option("-q", "--quiet", count=True, help="Less output (-q: warnings only).")
def run_cmd(
    policy_dir: str | None,
    listen: str | None,
    reload_interval: float | None,
    no_reload: bool,
    no_inotify: bool,
    sweep_interval: float | None,
    strict: bool | None,
    trust_file: str | None,
    max_body: int,
    max_batch: int,
    token_file: str | None,
    allow_hosts: tuple[str, ...],
    allow_origins: tuple[str, ...],
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    source: str | None,
    pull_interval: float | None,
    endpoint: str | None,
    verbose: int,
    quiet: int,
) -> None:
    """Serve policy decisions over HTTP from the artifacts in POLICY_DIR [env POLC_POLICY_DIR].

    \b
    Endpoints (docs/http-api.md):
      POST /v1/check         {"module", "capability", "args": [...]}
      POST /v1/check/batch   {"requests": [...]}
      POST /policy/reload    reload now (as does SIGHUP)
      GET  /v1/status[?module=NAME], /healthz, /metrics
    Every POST needs 'Content-Type: application/json'. SIGTERM or SIGINT stops cleanly.
    """
    from polc.runtime.config import env_path, env_text

    listen_from = "--listen"
    try:  # set but blank or malformed: an error naming the variable, never the default
        if policy_dir is None:
            policy_dir = env_path("POLC_POLICY_DIR", what="the policy directory, or unset it")
        if listen is None:
            listen = env_text("POLC_LISTEN", what="HOST:PORT, or unset it")
            if listen is None:
                listen = _DEFAULT_LISTEN
            else:
                listen_from = "POLC_LISTEN"
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not policy_dir:
        raise click.UsageError("give POLICY_DIR or set POLC_POLICY_DIR")
    if no_reload and reload_interval:
        raise click.UsageError("--no-reload and --reload-interval contradict each other")
    from polc.server.serve import ServerExtraMissing, require_server_extra

    try:
        require_server_extra()
    except ServerExtraMissing as exc:
        raise UsageOrIOError(str(exc)) from None
    from polc.runtime import PolicyAgent
    from polc.runtime.errors import PolcError
    from polc.server.app import DecisionApp
    from polc.server.guard import Limits
    from polc.server.listen import bind, is_loopback, parse_listen, url_of
    from polc.server.metrics import Metrics
    from polc.server.serve import serve
    from polc.server.wire import parse_origin

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        if listen_from == "POLC_LISTEN":
            raise click.UsageError(f"POLC_LISTEN={os.environ['POLC_LISTEN']!r}: {exc}") from None
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    for hint, value in (("--header-timeout", header_timeout), ("--body-timeout", body_timeout)):
        if not math.isfinite(value):
            raise click.BadParameter(f"{value} is not a number of seconds", param_hint=hint)
    hosts = _check_host_names(allow_hosts)
    try:
        origins = [parse_origin(o) for o in allow_origins]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow-origin") from None

    handler = _configure_logging(verbose - quiet)

    token_where = "--token-file"
    if token_file is None and "POLC_TOKEN_FILE" in os.environ:
        token_file, token_where = os.environ["POLC_TOKEN_FILE"], "POLC_TOKEN_FILE"
    token = _read_token(token_file, token_where) if token_file is not None else None

    reload: bool | None = None
    if no_reload or reload_interval == 0:
        reload = False
    try:
        agent = PolicyAgent(
            policy_dir,
            reload_interval=reload_interval or None,
            reload=reload,
            strict=strict,
            trust=trust_file,
            inotify=False if no_inotify else None,
            sweep_interval=sweep_interval,
            source=source,
            pull_interval=pull_interval,
            endpoint=endpoint,
        )
    except ValueError as exc:  # e.g. POLC_RELOAD_INTERVAL=soon, POLC_TRUST_FILE= (blank), an unreadable trust file
        raise click.UsageError(str(exc)) from None
    except RuntimeError as exc:  # signing.SigningUnavailableError: trust without the sign extra
        raise click.ClickException(str(exc)) from None
    except PolcError as exc:  # fleet: the mirror directory cannot be made, s3:// without boto3
        raise UsageOrIOError(str(exc)) from None
    quiet_start = _QuietStart()
    if verbose <= 0:
        handler.addFilter(quiet_start)
    # Reload messages ("reloaded tenant.acme (14 rules)", "reload failed, keeping
    # previous: ...") are the agent's own, on the "polc" logger; the events feed
    # the metrics and the reload endpoint's view of removed files.
    metrics = Metrics()
    agent.subscribe(metrics.on_event)

    try:
        sock = bind(host, port)
    except OSError as exc:
        raise UsageOrIOError(f"cannot listen on {listen}: {exc.strerror or exc}", prefix="polc: ") from None
    url = url_of(sock)
    app = DecisionApp(
        agent,
        max_body=max_body,
        max_batch=max_batch,
        metrics=metrics,
        listen=url.removeprefix("http://"),
        allow_hosts=[host, *hosts],
        allow_origins=origins,
        token=token,
    )
    limits = Limits(header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections)
    if not is_loopback(host):
        if token is None:
            log.warning("listening on %s, not loopback: the decision API has no authentication (--token-file)", url)
        else:
            log.warning("listening on %s, not loopback: no TLS, the bearer token crosses the network in clear", url)
    log.debug("loading %s", os.path.abspath(policy_dir))

    def on_ready() -> None:
        status = agent.status()
        modules = status.get("modules") or {}
        active = sum(1 for m in modules.values() if m.get("revision"))
        watch = status.get("watch") or {}
        if status.get("reload") and watch.get("mode") == "inotify":
            every = f"reload on change, safety sweep every {watch.get('sweep_interval'):g}s"
        elif status.get("reload"):
            interval = status.get("reload_interval")
            every = f"reload every {interval:g}s" if isinstance(interval, (int, float)) else "reload on"
        else:
            every = "reloading off"
        noun = "module" if active == 1 else "modules"
        loading = status.get("loading")
        if loading:
            every += f"; {loading['text']} in the background"
        log.info("listening on %s (%d %s, %s)", url, active, noun, every)
        log.info("try: %s", _example_curl(url, modules, token_file))
        log.info(
            "reload now: curl -s -X POST %s%s %s/policy/reload (or kill -HUP %d)",
            _JSON_HEADER,
            _auth_header(token_file),
            url,
            os.getpid(),
        )
        quiet_start.started = True
        bad = sorted(str(e["module"] or e["file"]) for e in metrics.errors(status))
        if bad:
            log.warning("not in force: %s (see %s/v1/status)", ", ".join(bad), url)

    def on_start_error(exc: BaseException) -> int:
        log.error("start-up failed: %s", exc)
        return 1

    status = serve(
        app,
        sock,
        start_agent=agent.start,
        stop_agent=agent.stop,
        on_ready=on_ready,
        on_start_error=on_start_error,
        limits=limits,
    )
    if status == 0:
        log.info("stopped")
    sys.exit(status)
