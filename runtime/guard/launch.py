"""Installing the guard from the environment ``polc guard`` prepares (its boot ``sitecustomize``).

``POLC_GUARD_CONFIG`` holds one JSON object; it is read as hostile input:
at most 64 KiB, only the known keys, each of its type, paths absolute.
Anything else stops the interpreter with exit status 2 and the reason on
stderr, before the program runs: a program ``polc guard`` starts never runs
unguarded.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import logging
import math
import os
import sys
from typing import Any

__all__ = ["CONFIG_VAR", "ConfigError", "boot", "encode_config", "parse_config"]

CONFIG_VAR = "POLC_GUARD_CONFIG"
_MAX_CONFIG = 64 << 10
_KEYS = {
    "policy_dir": str,
    "reload_interval": float,
    "roots": dict,
    "mode": str,
    "observe": str,
    "unlisted": str,
    "base": str,
}


class ConfigError(ValueError):
    """The guard's configuration in the environment is unusable."""


def encode_config(config: dict[str, Any]) -> str:
    parse_config(json.dumps(config))  # what is handed on must read back
    return json.dumps(config, separators=(",", ":"))


def _absolute(key: str, value: object) -> str:
    if type(value) is not str or not value or "\0" in value or not value.startswith("/"):
        raise ConfigError(f"{key} must be an absolute path")
    return value


def parse_config(text: str | None) -> dict[str, Any]:
    if text is None:
        raise ConfigError(f"{CONFIG_VAR} is not set")
    if len(text) > _MAX_CONFIG:
        raise ConfigError(f"{CONFIG_VAR} is longer than {_MAX_CONFIG} characters")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{CONFIG_VAR} is not JSON ({exc})") from None
    if type(data) is not dict:
        raise ConfigError(f"{CONFIG_VAR} must be a JSON object")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{CONFIG_VAR}: unknown key {unknown[0]!r}")
    out: dict[str, Any] = {}
    out["policy_dir"] = _absolute("policy_dir", data.get("policy_dir"))
    out["base"] = _absolute("base", data.get("base"))
    interval = data.get("reload_interval", 5.0)
    if type(interval) not in (int, float) or not math.isfinite(interval) or interval < 0:
        raise ConfigError("reload_interval must be a number of seconds >= 0")
    out["reload_interval"] = float(interval)
    mode = data.get("mode", "enforce")
    if mode not in ("enforce", "audit"):
        raise ConfigError("mode must be 'enforce' or 'audit'")
    out["mode"] = mode
    unlisted = data.get("unlisted", "allow")
    if unlisted not in ("allow", "global"):
        raise ConfigError("unlisted must be 'allow' or 'global'")
    out["unlisted"] = unlisted
    observe = data.get("observe")
    out["observe"] = None if observe is None else _absolute("observe", observe)
    roots = data.get("roots", {})
    if type(roots) is not dict or len(roots) > 256:
        raise ConfigError("roots must be an object of at most 256 names")
    for name, directory in roots.items():
        if not name or len(name) > 255 or name in (".", "/"):
            raise ConfigError(f"root name {name[:60]!r} is not usable")
        _absolute(f"root {name[:60]}", directory)
    out["roots"] = dict(roots)
    return out


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            message = f"error: {message}"
        return f"polc: {message}"


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logger = logging.getLogger("polc")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)


def _fail(message: str) -> None:
    sys.stderr.write(f"polc guard: error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


def _chain_sitecustomize(boot_dir: str) -> None:
    """Run the sitecustomize this directory shadows, if there is one further along sys.path."""
    path = [p for p in sys.path if os.path.abspath(p or ".") != boot_dir]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def boot(boot_dir: str) -> None:
    """Start an agent on the configured directory and install the guard; exit 2 if either fails."""
    try:
        config = parse_config(os.environ.get(CONFIG_VAR))
    except ConfigError as exc:
        _fail(str(exc))
        return
    _configure_logging()
    try:
        from polc.runtime import PolicyAgent

        logger = logging.getLogger("polc")
        logger.setLevel(logging.WARNING)  # the first load's per-module lines: failures only
        try:
            agent = PolicyAgent(config["policy_dir"], reload_interval=config["reload_interval"]).start()
        finally:
            logger.setLevel(logging.INFO)
        agent.guard(
            roots=config["roots"],
            mode=config["mode"],
            observe=config["observe"],
            unlisted=config["unlisted"],
            base=config["base"],
        )
    except Exception as exc:
        _fail(f"cannot start the guard: {type(exc).__name__}: {exc}")
        return
    try:
        _chain_sitecustomize(boot_dir)
    except Exception as exc:  # the shadowed sitecustomize's own error, reported as site.py would
        sys.stderr.write(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{type(exc).__name__}: {exc}\n")
