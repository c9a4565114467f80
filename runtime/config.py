"""Configuration: the ``POLC_*`` environment variables and the agent's arguments, read strictly.

An unset variable means "not configured": the documented default applies.
A variable that is set is configuration, and configuration that cannot be
understood is an error naming the variable — never the default. Empty or
whitespace-only values are the common case: a template that expands to
nothing (``POLC_TRUST_FILE=${TRUST}``) must not turn signature checking off.

Each ``env_*`` reader returns None when the variable is unset, the parsed
value otherwise, and raises :class:`~polc.runtime.errors.ConfigError` (a
ValueError: ``NAME='value': why``) for anything else. :class:`AgentConfig`
resolves a PolicyAgent's arguments against them: arguments win, a variable
is read only when its argument is None. Standard library only: the CLI
(``polc run``) and the agent both use it.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .enforce.resident import DEFAULT_LINKED_BUDGET
from .errors import ConfigError, TrustConfigError

if TYPE_CHECKING:
    from .format.reader import Trust
    from .signing import TrustConfig

__all__ = [
    "DEFAULT_PULL_INTERVAL",
    "DEFAULT_RELOAD_INTERVAL",
    "MIN_SWEEP_INTERVAL",
    "SAFETY_SWEEP_MIN",
    "AgentConfig",
    "env_bool",
    "env_path",
    "env_seconds",
    "env_text",
    "env_url",
    "parse_seconds",
    "resolve_trust",
    "trust_from_env",
]

DEFAULT_RELOAD_INTERVAL = 5.0
# With inotify on, the stat sweep is only the safety net: it runs every
# max(SAFETY_SWEEP_MIN, reload_interval) seconds unless told otherwise.
SAFETY_SWEEP_MIN = 60.0
MIN_SWEEP_INTERVAL = 0.01
DEFAULT_PULL_INTERVAL = 5.0

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    return (os.environ if environ is None else environ).get(name)


def _empty(name: str, raw: str, what: str) -> ConfigError:
    return ConfigError(f"{name}={raw!r}: set but empty; give {what}")


def env_text(name: str, environ: Mapping[str, str] | None = None, *, what: str = "a value, or unset it") -> str | None:
    """The stripped value of ``name``; an error when it is set but blank."""
    raw = _raw(name, environ)
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        raise _empty(name, raw, what)
    return value


def env_path(name: str, environ: Mapping[str, str] | None = None, *, what: str = "a path, or unset it") -> str | None:
    """The value of ``name`` as a path, exactly as given.

    Blank is an error, and so is leading or trailing whitespace: ``"/srv/p "``
    names another directory than ``"/srv/p"``, and guessing which was meant
    could load the wrong policies.
    """
    raw = _raw(name, environ)
    if raw is None:
        return None
    if not raw.strip():
        raise _empty(name, raw, what)
    if raw != raw.strip():
        raise ConfigError(f"{name}={raw!r}: leading or trailing whitespace in a path; remove it")
    return raw


def env_url(name: str, environ: Mapping[str, str] | None = None, *, what: str = "a URL, or unset it") -> str | None:
    """The value of ``name`` as a URL, exactly as given: blank, whitespace around it, or a
    control character in it is an error (the scheme is checked where the URL is opened)."""
    raw = _raw(name, environ)
    if raw is None:
        return None
    if not raw.strip():
        raise _empty(name, raw, what)
    if raw != raw.strip():
        raise ConfigError(f"{name}={raw!r}: leading or trailing whitespace in a URL; remove it")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        raise ConfigError(f"{name}={raw!r}: a URL has no spaces or control characters")
    if "://" not in raw:
        raise ConfigError(f"{name}={raw!r}: expected a URL (s3://, http://, https:// or file://)")
    return raw


def env_bool(name: str, environ: Mapping[str, str] | None = None) -> bool | None:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case)."""
    raw = _raw(name, environ)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if not value:
        raise _empty(name, raw, "true or false, or unset it")
    raise ConfigError(f"{name}={raw!r}: expected true or false (or 1/0, yes/no, on/off)")


def parse_seconds(value: object, origin: str) -> float:
    """A finite number of seconds >= 0 that a thread can wait for; ``origin`` names the setting."""
    try:
        if isinstance(value, bool):
            raise TypeError
        # float() decides what it accepts (numbers, numeric strings, objects with __float__);
        # what it refuses is the TypeError or ValueError caught below.
        seconds = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}={value!r}: expected a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{origin}={value!r}: expected a number of seconds >= 0")
    if seconds > threading.TIMEOUT_MAX:
        # Event.wait() would raise OverflowError in the poller thread, which
        # would then die and never reload again.
        raise ConfigError(f"{origin}={value!r}: at most {threading.TIMEOUT_MAX:g} seconds")
    return seconds


def env_seconds(name: str, environ: Mapping[str, str] | None = None) -> float | None:
    raw = _raw(name, environ)
    if raw is None:
        return None
    if not raw.strip():
        raise _empty(name, raw, "a number of seconds, or unset it")
    return parse_seconds(raw, name)


def parse_budget(value: object, origin: str) -> int:
    """A number of linked modules: an int >= 0 (0: no bound); ``origin`` names the setting."""
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or not text.isascii():
            raise ConfigError(f"{origin}={value!r}: expected a number of modules >= 0 (0: no bound)")
        return int(text)
    if type(value) is not int or value < 0:
        raise ConfigError(f"{origin}={value!r}: expected a number of modules >= 0 (0: no bound)")
    return value


def resolve_trust(trust: Any) -> Trust | None:
    """The trust configuration an agent verifies with (None: signatures not required).

    ``None`` consults ``POLC_TRUST_FILE``: unset means no trust; set, it must
    name a readable trust file (blank is an error, never "no trust"). A path
    is loaded; anything else must be a trust object with a ``verify`` method.
    cryptography is imported only when trust is configured.
    """
    if trust is None:
        return trust_from_env()
    if isinstance(trust, (str, os.PathLike)):
        path = os.fspath(trust)
        if not path.strip():
            raise ConfigError(f"trust={path!r}: empty path of a trust file")
        from .signing import TrustConfig

        return TrustConfig.from_file(path)
    if not callable(getattr(trust, "verify", None)):
        raise TypeError(f"trust={trust!r}: expected a TrustConfig, a trust file's path, or None (POLC_TRUST_FILE)")
    trusted: Trust = trust
    return trusted


def trust_from_env(environ: Mapping[str, str] | None = None) -> TrustConfig | None:
    """The trust file named by ``POLC_TRUST_FILE``, loaded; None when the variable is unset.

    Set, it must name a trust file: a blank value (a template that expanded
    to nothing) raises :class:`~polc.runtime.errors.TrustConfigError` instead
    of silently turning signature checks off. The signing package (and with
    it cryptography) is imported only when the variable is set; it never
    imports this module, so the environment is read here and only here.
    """
    try:
        path = env_path("POLC_TRUST_FILE", environ, what="the trust file (unset it to run without signature checks)")
    except ConfigError as exc:
        raise TrustConfigError(str(exc)) from None
    if path is None:
        return None
    from .signing import TrustConfig

    return TrustConfig.from_file(path)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """A PolicyAgent's settings, resolved: arguments, then ``POLC_*`` variables, then defaults."""

    policy_dir: str
    reload_interval: float
    reload: bool  # reloading on: reload requested and an interval > 0
    strict: bool
    trust: Trust | None
    cache_size: int
    inotify: bool = True  # wake the poller through inotify where it works (Linux)
    sweep_interval: float = SAFETY_SWEEP_MIN  # the safety-net sweep's period while inotify works
    background_load: bool | None = None  # None: in the background above a size (agent.py)
    source: str | None = None  # the published set to pull (docs/fleet.md)
    pull_interval: float = DEFAULT_PULL_INTERVAL
    endpoint: str | None = None  # the S3 endpoint of an s3:// source
    linked_budget: int = DEFAULT_LINKED_BUDGET  # modules kept linked at once (0: every one)

    @classmethod
    def resolve(
        cls,
        policy_dir: str | os.PathLike[str] | None = None,
        *,
        reload_interval: float | None = None,
        reload: bool | None = None,
        strict: bool | None = None,
        trust: Any = None,
        cache_size: int = 65536,
        inotify: bool | None = None,
        sweep_interval: float | None = None,
        background_load: bool | None = None,
        source: str | None = None,
        pull_interval: float | None = None,
        endpoint: str | None = None,
        linked_budget: int | None = None,
    ) -> AgentConfig:
        """Resolve the agent's arguments (raises ConfigError, or TypeError for ``trust``)."""
        if policy_dir is None:
            policy_dir = env_path("POLC_POLICY_DIR", what="the policy directory, or unset it")
            if policy_dir is None:
                raise ConfigError("no policy directory: pass policy_dir or set POLC_POLICY_DIR")
        directory = os.fspath(policy_dir)
        if not directory.strip():
            raise ConfigError(f"policy_dir={directory!r}: empty path")
        if reload_interval is None:
            env_interval = env_seconds("POLC_RELOAD_INTERVAL")
            interval = DEFAULT_RELOAD_INTERVAL if env_interval is None else env_interval
        else:
            interval = parse_seconds(reload_interval, "reload_interval")
        if reload is None:
            env_reload = env_bool("POLC_RELOAD")
            reload = True if env_reload is None else env_reload
        if cache_size < 0:
            raise ConfigError(f"cache_size={cache_size!r}: expected a number >= 0")
        if inotify is None:
            env_inotify = env_bool("POLC_INOTIFY")
            inotify = True if env_inotify is None else env_inotify
        elif not isinstance(inotify, bool):
            raise ConfigError(f"inotify={inotify!r}: expected True, False or None (POLC_INOTIFY)")
        if sweep_interval is None:
            env_sweep = env_seconds("POLC_SWEEP_INTERVAL")
            origin = "POLC_SWEEP_INTERVAL"
            given: object = _raw(origin, None)
            sweep = max(SAFETY_SWEEP_MIN, interval) if env_sweep is None else env_sweep
        else:
            origin = "sweep_interval"
            given = sweep_interval
            sweep = parse_seconds(sweep_interval, origin)
        if sweep < MIN_SWEEP_INTERVAL:
            raise ConfigError(
                f"{origin}={given!r}: the safety-net sweep cannot be turned off; give at least {MIN_SWEEP_INTERVAL:g} s"
            )
        if background_load is not None and not isinstance(background_load, bool):
            raise ConfigError(f"background_load={background_load!r}: expected True, False or None")
        if linked_budget is None:
            raw_budget = _raw("POLC_LINKED_BUDGET", None)
            if raw_budget is not None and not raw_budget.strip():
                raise _empty("POLC_LINKED_BUDGET", raw_budget, "a number of modules, or unset it")
            budget = DEFAULT_LINKED_BUDGET if raw_budget is None else parse_budget(raw_budget, "POLC_LINKED_BUDGET")
        else:
            budget = parse_budget(linked_budget, "linked_budget")
        src, pull, ep = _resolve_source(source, pull_interval, endpoint)
        resolved_trust = resolve_trust(trust)
        if src is not None and not callable(getattr(resolved_trust, "verify_manifest", None)):
            raise ConfigError(
                f"source={src!r}: pulling a set needs a trust configuration with a key allowed to sign "
                "manifests (manifest = true): pass trust= or set POLC_TRUST_FILE"
            )
        keys = getattr(resolved_trust, "keys", ())
        if src is not None and not callable(keys) and not any(getattr(k, "manifest", False) for k in keys):
            raise ConfigError(
                f"source={src!r}: the trust configuration lists no key with manifest = true; no manifest could verify"
            )
        return cls(
            policy_dir=directory,
            reload_interval=interval,
            reload=bool(reload) and interval > 0,
            strict=bool(strict),
            trust=resolved_trust,
            cache_size=int(cache_size),
            inotify=inotify,
            sweep_interval=sweep,
            background_load=background_load,
            source=src,
            pull_interval=pull,
            endpoint=ep,
            linked_budget=budget,
        )


def _resolve_source(
    source: str | None, pull_interval: float | None, endpoint: str | None
) -> tuple[str | None, float, str | None]:
    """``source``, ``pull_interval``, ``endpoint``: arguments, then ``POLC_SOURCE``,
    ``POLC_PULL_INTERVAL``, ``POLC_SOURCE_ENDPOINT``, then the defaults."""
    if source is None:
        source = env_url("POLC_SOURCE", what="the URL of the published set, or unset it")
    elif not isinstance(source, str) or not source.strip() or source != source.strip():
        raise ConfigError(f"source={source!r}: expected a URL without surrounding whitespace")
    if pull_interval is None:
        env_pull = env_seconds("POLC_PULL_INTERVAL")
        pull = DEFAULT_PULL_INTERVAL if env_pull is None else env_pull
        origin = "POLC_PULL_INTERVAL"
    else:
        pull = parse_seconds(pull_interval, "pull_interval")
        origin = "pull_interval"
    if pull <= 0:
        raise ConfigError(f"{origin}={pull!r}: the pull interval must be above 0")
    if endpoint is None:
        endpoint = env_url("POLC_SOURCE_ENDPOINT", what="the S3 endpoint URL, or unset it")
        if source is None:
            endpoint = None  # an endpoint alone configures nothing; the variable may be set fleet-wide
    elif not isinstance(endpoint, str) or not endpoint.strip() or endpoint != endpoint.strip():
        raise ConfigError(f"endpoint={endpoint!r}: expected a URL without surrounding whitespace")
    elif source is None:
        raise ConfigError(f"endpoint={endpoint!r}: an endpoint needs a source (source= or POLC_SOURCE)")
    return source, pull, endpoint
