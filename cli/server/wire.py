"""The HTTP wire layer of the decision API: what comes in, what goes out, and its limits.

Request bodies (JSON, UTF-8, with repeated keys refused), the check and batch
request shapes, the request headers the application reads (``Host``,
``Origin``, ``Content-Type``, the status query), and the JSON answers. Every
refusal is an :class:`HTTPError` with the status and message the client sees.
Nothing here knows about routes, the agent or the event loop; the contract is
``docs/http-api.md``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

DEFAULT_MAX_BODY = 1 << 20  # bytes
DEFAULT_MAX_BATCH = 1000  # requests per /v1/check/batch
# Longest string accepted in module, capability or an argument (PATH_MAX). The
# agent's decision cache keeps request strings as keys, so this bounds what a
# client can make it retain (cache entries x argument sizes).
MAX_STRING = 4096

JSON_TYPE = b"application/json"
_CHECK_FIELDS = frozenset(("module", "capability", "args"))

# ASGI's three callables' types.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = dict[bytes, list[bytes]]
"""Request headers the application reads: lower-case name -> every value sent, in order."""
CheckRequest = tuple[str, str, tuple[Any, ...]]
"""``(module, capability, args)`` of one check."""


# --------------------------------------------------------------------------- errors


class HTTPError(Exception):
    """An error answered to the client as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, *, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, message)


def clip(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- JSON bodies


def parse_json(body: bytes) -> Any:
    """Decode a request body; any failure is a 400 naming what is wrong."""
    if not body.strip():
        raise bad_request("request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")  # RFC 8259: JSON on the wire is UTF-8
    except UnicodeDecodeError as exc:
        raise bad_request(f"request body is not UTF-8 text (byte {exc.start})") from None
    try:
        return _decode(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise bad_request("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal with too many digits
        raise bad_request(f"malformed JSON: {exc}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key is refused: parsers disagree on which one wins (Python's
    # the last, others the first), so a proxy or log reading the body could
    # see a different request than the one decided.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise bad_request(f"duplicate key {clip(key)!r} in a JSON object")
            seen.add(key)
    return obj


_decode = json.JSONDecoder(object_pairs_hook=_unique_keys).decode


def json_type(value: Any) -> str:
    """How an error message names the JSON type of ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # pragma: no cover - json.loads makes nothing else


def parse_check(obj: Any, where: str = "") -> CheckRequest:
    """Validate one check request object and return ``(module, capability, args)``.

    Structure is the caller's business (400): an object with a non-empty string
    ``module`` and ``capability`` and an optional array ``args`` of strings and
    integers. Whether those values fit the capability's signature is policy's
    business: a wrong arity or a string where a port is expected is a deny with
    a reason (200), exactly as ``PolicyAgent.check`` answers it in process.
    """
    prefix = f"{where}." if where else ""
    if not isinstance(obj, dict):
        raise bad_request(f"{where or 'request body'} must be a JSON object, not {json_type(obj)}")
    unknown = obj.keys() - _CHECK_FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise bad_request(f"{prefix}{name}: unknown field (expected module, capability, args)")
    for name in ("module", "capability"):
        if name not in obj:
            raise bad_request(f"{prefix}{name}: missing required field")
        value = obj[name]
        if not isinstance(value, str):
            raise bad_request(f"{prefix}{name}: must be a string, not {json_type(value)}")
        if not value:
            raise bad_request(f"{prefix}{name}: must not be empty")
        if len(value) > MAX_STRING:
            raise bad_request(f"{prefix}{name}: longer than {MAX_STRING} characters")
    args = obj.get("args", [])
    if not isinstance(args, list):
        raise bad_request(f"{prefix}args: must be an array, not {json_type(args)}")
    for i, value in enumerate(args):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise bad_request(f"{prefix}args[{i}]: must be a string or an integer, not {json_type(value)}")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise bad_request(f"{prefix}args[{i}]: longer than {MAX_STRING} characters")
    return obj["module"], obj["capability"], tuple(args)


def parse_batch(obj: Any, max_batch: int) -> list[CheckRequest]:
    """Validate a batch request object and return its checks (413 beyond ``max_batch``)."""
    if not isinstance(obj, dict):
        raise bad_request(f"request body must be a JSON object, not {json_type(obj)}")
    unknown = obj.keys() - {"requests"}
    if unknown:
        raise bad_request(f"{sorted(unknown)[0]}: unknown field (expected requests)")
    if "requests" not in obj:
        raise bad_request("requests: missing required field")
    requests = obj["requests"]
    if not isinstance(requests, list):
        raise bad_request(f"requests: must be an array, not {json_type(requests)}")
    if len(requests) > max_batch:
        raise HTTPError(413, f"requests: {len(requests)} checks in one batch; at most {max_batch}")
    return [parse_check(item, f"requests[{i}]") for i, item in enumerate(requests)]


# --------------------------------------------------------------------------- answers


def decision_dict(decision: Any) -> dict[str, Any]:
    """A ``Decision`` as the JSON object ``/v1/check`` answers."""
    return {
        "allowed": bool(decision.allowed),
        "effect": decision.effect,
        "reason": decision.reason,
        "rule": decision.rule,
        "revision": decision.revision,
        "audit": bool(decision.audit),
        "module": decision.module,
    }


def failure_dict(failure: Any) -> dict[str, Any]:
    """A ``ReloadFailure`` as the JSON object ``/policy/reload`` answers."""
    return {"file": failure.file, "module": failure.module, "reason": failure.reason}


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; what JSON cannot say (a path, a timestamp) is given as its ``str``."""
    return _encode(obj).encode()


# --------------------------------------------------------------------------- request headers

# Request headers the application looks at; ASGI servers give names in lower case.
_WANTED = frozenset(
    (
        b"host",
        b"origin",
        b"sec-fetch-site",
        b"content-type",
        b"content-length",
        b"authorization",
        b"access-control-request-method",
    )
)


def request_headers(scope: Scope) -> Headers:
    """The headers of ``scope`` the application reads, every value of each."""
    out: Headers = {}
    for name, value in scope.get("headers", ()):
        if name in _WANTED:
            if name in out:
                out[name].append(value)
            else:
                out[name] = [value]
    return out


_JSON_TYPES = frozenset((b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"))


def check_json_type(values: list[bytes] | None) -> None:
    """415 unless the ``Content-Type`` values say one UTF-8 ``application/json``."""
    # A browser sends a cross-site POST without asking first only with a
    # "simple" type (text/plain, form encodings): requiring JSON makes every
    # cross-site POST a CORS preflight, which fails unless --allow-origin says so.
    if values is not None and len(values) == 1 and values[0] in _JSON_TYPES:
        return
    hint = "send Content-Type: application/json (curl -H 'Content-Type: application/json')"
    if not values:
        raise HTTPError(415, f"a POST needs a JSON body: {hint}")
    if len(values) > 1:
        raise HTTPError(415, "more than one Content-Type header")
    text = values[0].decode("latin-1")
    media, *params = text.split(";")
    if media.strip().lower() != "application/json":
        raise HTTPError(415, f"Content-Type {clip(media.strip())!r} is not accepted: {hint}")
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise HTTPError(415, f"charset {clip(value.strip())!r} is not accepted: application/json is UTF-8")


def module_filter(query: bytes) -> set[str] | None:
    """``module=NAME`` parameters of ``GET /v1/status`` (None: no filter)."""
    if not query:
        return None
    try:
        pairs = parse_qsl(
            query.decode("ascii"), keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=1000
        )
    except (UnicodeDecodeError, ValueError):
        raise bad_request("malformed query string (expected module=NAME&module=NAME...)") from None
    names = set()
    for key, value in pairs:
        if key != "module":
            raise bad_request(f"{clip(key)}: unknown query parameter (expected module)")
        if not value:
            raise bad_request("module: must not be empty")
        names.add(value)
    return names


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def as_ip(text: str) -> IPAddress | None:
    """``text`` as an IP address, or None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_name(value: bytes) -> str | None:
    """The host part of a Host header, lower-cased and unbracketed; None if malformed."""
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        name, rest = text[1:end], text[end + 1 :]
        if end < 0 or as_ip(name) is None:
            return None
    else:
        name, sep, rest = text.partition(":")
        rest = sep + rest
    if rest and not (rest[0] == ":" and rest[1:].isdigit()):
        return None
    return name or None


def parse_origin(text: str) -> str:
    """An ``--allow-origin`` value as browsers spell origins: ``scheme://host[:port]``."""
    raw = text.strip()
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not an origin: {text!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"not an origin: {text!r}; expected http://HOST[:PORT] or https://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an origin has no path, query or fragment: {text!r}")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")
