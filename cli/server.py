"""The HTTP decision API of ``polc run``: a plain ASGI application served by uvicorn.

No web framework: six routes, JSON in and out, a Prometheus text exposition.
Everything here runs on the event loop thread except reloads, which go to a
worker thread (``asyncio.to_thread``) so a slow directory never stalls
decisions; ``PolicyAgent.check`` takes microseconds and is called inline.

Two layers keep hostile clients out. The application refuses what a browser
could send on behalf of a hostile page (wrong Host, foreign Origin, non-JSON
POST) and, with a token, anyone without it. Below it, :func:`guarded_protocol`
gives every connection of ``polc run`` deadlines for its headers, its body and
reading its answers, bounds its headers, and caps the number of connections.

The wire format is documented in ``docs/http-api.md``; keep the two in step.
This module imports uvicorn only inside :func:`serve` and
:func:`guarded_protocol`, so the request parsing and the application can be
unit-tested (and imported, or mounted in another ASGI server) without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import parse_qsl

from polc import __version__

log = logging.getLogger("polc.server")

DEFAULT_MAX_BODY = 1 << 20  # bytes
DEFAULT_MAX_BATCH = 1000  # requests per /v1/check/batch
# Longest string accepted in module, capability or an argument (PATH_MAX). The
# agent's decision cache keeps request strings as keys, so this bounds what a
# client can make it retain (cache entries x argument sizes).
MAX_STRING = 4096
# Connection limits of `polc run` (see Limits and docs/http-api.md).
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a request line and headers to arrive
DEFAULT_BODY_TIMEOUT = 30.0  # seconds for a body to arrive (and for a stalled client to read an answer)
DEFAULT_MAX_CONNECTIONS = 512
MAX_HEADER_BYTES = 64 * 1024  # request line and headers of one request (431 above)

_JSON = b"application/json"
_PROM = b"text/plain; version=0.0.4; charset=utf-8"
_CHECK_FIELDS = frozenset(("module", "capability", "args"))

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


# --------------------------------------------------------------------------- errors


class HTTPError(Exception):
    """An error answered to the client as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, *, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def _bad(message: str) -> HTTPError:
    return HTTPError(400, message)


# --------------------------------------------------------------------------- request parsing


def parse_json(body: bytes) -> Any:
    """Decode a request body; any failure is a 400 naming what is wrong."""
    if not body.strip():
        raise _bad("request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")  # RFC 8259: JSON on the wire is UTF-8
    except UnicodeDecodeError as exc:
        raise _bad(f"request body is not UTF-8 text (byte {exc.start})") from None
    try:
        return _decode(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise _bad("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal with too many digits
        raise _bad(f"malformed JSON: {exc}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key is refused: parsers disagree on which one wins (Python's
    # the last, others the first), so a proxy or log reading the body could
    # see a different request than the one decided.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _bad(f"duplicate key {_clip(key)!r} in a JSON object")
            seen.add(key)
    return obj


_decode = json.JSONDecoder(object_pairs_hook=_unique_keys).decode


def _clip(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def parse_check(obj: Any, where: str = "") -> tuple[str, str, tuple[Any, ...]]:
    """Validate one check request object and return ``(module, capability, args)``.

    Structure is the caller's business (400): an object with a non-empty string
    ``module`` and ``capability`` and an optional array ``args`` of strings and
    integers. Whether those values fit the capability's signature is policy's
    business: a wrong arity or a string where a port is expected is a deny with
    a reason (200), exactly as ``PolicyAgent.check`` answers it in process.
    """
    prefix = f"{where}." if where else ""
    if not isinstance(obj, dict):
        raise _bad(f"{where or 'request body'} must be a JSON object, not {_json_type(obj)}")
    unknown = obj.keys() - _CHECK_FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise _bad(f"{prefix}{name}: unknown field (expected module, capability, args)")
    for name in ("module", "capability"):
        if name not in obj:
            raise _bad(f"{prefix}{name}: missing required field")
        value = obj[name]
        if not isinstance(value, str):
            raise _bad(f"{prefix}{name}: must be a string, not {_json_type(value)}")
        if not value:
            raise _bad(f"{prefix}{name}: must not be empty")
        if len(value) > MAX_STRING:
            raise _bad(f"{prefix}{name}: longer than {MAX_STRING} characters")
    args = obj.get("args", [])
    if not isinstance(args, list):
        raise _bad(f"{prefix}args: must be an array, not {_json_type(args)}")
    for i, value in enumerate(args):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _bad(f"{prefix}args[{i}]: must be a string or an integer, not {_json_type(value)}")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise _bad(f"{prefix}args[{i}]: longer than {MAX_STRING} characters")
    return obj["module"], obj["capability"], tuple(args)


def parse_batch(obj: Any, max_batch: int) -> list[tuple[str, str, tuple[Any, ...]]]:
    if not isinstance(obj, dict):
        raise _bad(f"request body must be a JSON object, not {_json_type(obj)}")
    unknown = obj.keys() - {"requests"}
    if unknown:
        raise _bad(f"{sorted(unknown)[0]}: unknown field (expected requests)")
    if "requests" not in obj:
        raise _bad("requests: missing required field")
    requests = obj["requests"]
    if not isinstance(requests, list):
        raise _bad(f"requests: must be an array, not {_json_type(requests)}")
    if len(requests) > max_batch:
        raise HTTPError(413, f"requests: {len(requests)} checks in one batch; at most {max_batch}")
    return [parse_check(item, f"requests[{i}]") for i, item in enumerate(requests)]


def _json_type(value: Any) -> str:
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


def decision_dict(decision: Any) -> dict[str, Any]:
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
    return {"file": failure.file, "module": failure.module, "reason": failure.reason}


# --------------------------------------------------------------------------- metrics


@dataclass
class Metrics:
    """Counters behind ``GET /metrics``, and what the reload events tell.

    Check and HTTP counters are touched only on the event loop thread;
    ``on_event`` runs on the agent's reloader thread and takes ``lock``.
    Reload counts come from the agent's own status, so ``/metrics`` and
    ``/v1/status`` never disagree.
    """

    checks: dict[str, int] = field(default_factory=lambda: {"allow": 0, "deny": 0})
    audit_would_deny: int = 0
    http: dict[tuple[str, int], int] = field(default_factory=dict)
    # Connections the server closed for a limit (reason -> count), and the
    # number open now; both touched only on the event loop thread.
    rejected: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_success: float | None = None
    removed: set[str] = field(default_factory=set)  # modules whose file is gone (policy kept)
    started: float = field(default_factory=time.time)

    def count_decision(self, decision: Any) -> None:
        effect = decision.effect
        self.checks[effect] = self.checks.get(effect, 0) + 1
        if decision.audit:
            self.audit_would_deny += 1

    def count_http(self, handler: str, status: int) -> None:
        key = (handler, status)
        self.http[key] = self.http.get(key, 0) + 1

    def count_rejected(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def on_event(self, event: Any) -> None:
        with self.lock:
            if event.kind == "removed":
                self.removed.add(event.module)
            else:
                self.removed.discard(event.module)
            if event.kind in ("loaded", "reloaded"):
                self.last_success = time.time()

    def errors(self, status: dict[str, Any]) -> list[dict[str, Any]]:
        """Artifacts in the directory that are not in force now: ``[{"module", "file", "reason"}]``.

        A module whose file was deleted keeps its last policy by design; that is
        reported as ``removed``, not as an error.
        """
        with self.lock:
            removed = set(self.removed)
        out = []
        for name, info in (status.get("modules") or {}).items():
            if info.get("last_error") and name not in removed:
                out.append({"module": name, "file": info.get("file"), "reason": info["last_error"]})
        if status.get("directory_error"):
            out.append({"module": None, "file": status.get("policy_dir"), "reason": status["directory_error"]})
        return out

    def render(self, status: dict[str, Any], ready: bool) -> bytes:
        modules = status.get("modules") or {}
        active = sum(1 for m in modules.values() if m.get("revision"))
        errors = sum(1 for e in self.errors(status) if e["module"] is not None)
        reloads = status.get("reloads") or {}
        with self.lock:
            last = self.last_success
        lines = [
            "# HELP polc_build_info polc version serving decisions.",
            "# TYPE polc_build_info gauge",
            f'polc_build_info{{version="{_label(__version__)}"}} 1',
            "# HELP polc_ready 1 once the first load of the policy directory completed.",
            "# TYPE polc_ready gauge",
            f"polc_ready {1 if ready else 0}",
            "# HELP polc_checks_total Decisions answered over HTTP, by effect (audit-mode denies count as deny).",
            "# TYPE polc_checks_total counter",
        ]
        for effect in sorted(self.checks):
            lines.append(f'polc_checks_total{{effect="{_label(effect)}"}} {self.checks[effect]}')
        lines += [
            "# HELP polc_checks_audit_total Denies reported but not enforced because the deciding module is in audit mode.",
            "# TYPE polc_checks_audit_total counter",
            f"polc_checks_audit_total {self.audit_would_deny}",
            "# HELP polc_reloads_total Artifact load attempts since start, by outcome (one per artifact version).",
            "# TYPE polc_reloads_total counter",
            f'polc_reloads_total{{status="ok"}} {int(reloads.get("ok", 0))}',
            f'polc_reloads_total{{status="failed"}} {int(reloads.get("failed", 0))}',
            "# HELP polc_last_successful_reload_timestamp_seconds Unix time an artifact last loaded successfully (0: never).",
            "# TYPE polc_last_successful_reload_timestamp_seconds gauge",
            f"polc_last_successful_reload_timestamp_seconds {_num(last or 0)}",
            "# HELP polc_active_modules Modules with a policy in force.",
            "# TYPE polc_active_modules gauge",
            f"polc_active_modules {active}",
            "# HELP polc_module_errors Modules whose artifact in the directory is not in force (failed to load; the previous policy, if any, stays).",
            "# TYPE polc_module_errors gauge",
            f"polc_module_errors {errors}",
            "# HELP polc_policy_dir_available 0 while the policy directory cannot be read (everything loaded stays in force).",
            "# TYPE polc_policy_dir_available gauge",
            f"polc_policy_dir_available {0 if status.get('directory_error') else 1}",
            "# HELP polc_http_requests_total HTTP requests answered, by handler and status code.",
            "# TYPE polc_http_requests_total counter",
        ]
        for (handler, code), n in sorted(self.http.items()):
            lines.append(f'polc_http_requests_total{{handler="{handler}",code="{code}"}} {n}')
        lines += [
            "# HELP polc_http_connections_rejected_total Connections closed by the server for a limit, by reason.",
            "# TYPE polc_http_connections_rejected_total counter",
        ]
        for reason in REJECT_REASONS:
            lines.append(f'polc_http_connections_rejected_total{{reason="{reason}"}} {self.rejected.get(reason, 0)}')
        lines += [
            "# HELP polc_http_connections Connections open now (polc run only).",
            "# TYPE polc_http_connections gauge",
            f"polc_http_connections {self.connections}",
            "# HELP polc_start_time_seconds Unix time the process started serving.",
            "# TYPE polc_start_time_seconds gauge",
            f"polc_start_time_seconds {_num(self.started)}",
        ]
        return ("\n".join(lines) + "\n").encode()


# Why the server closed a connection (label values of polc_http_connections_rejected_total).
REJECT_REASONS = ("connection_limit", "header_timeout", "body_timeout", "send_timeout", "headers_too_large", "bad_request")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(float(value))


# --------------------------------------------------------------------------- the application


@dataclass(frozen=True)
class _Route:
    handler: str  # metrics label
    methods: tuple[str, ...]


_ROUTES = {
    "/v1/check": _Route("check", ("POST",)),
    "/v1/check/batch": _Route("batch", ("POST",)),
    "/policy/reload": _Route("reload", ("POST",)),
    "/v1/status": _Route("status", ("GET", "HEAD")),
    "/healthz": _Route("healthz", ("GET", "HEAD")),
    "/metrics": _Route("metrics", ("GET", "HEAD")),
}


class DecisionApp:
    """The ASGI application. ``agent`` is a started (or starting) ``PolicyAgent``.

    Requests a browser could send on behalf of a hostile page are refused (see
    docs/http-api.md, "Browsers, other hosts and tokens"): a ``Host`` that is
    not ``localhost``, the address the connection arrived on, ``listen``'s host
    or one of ``allow_hosts`` (421; ``"*"`` allows any); an ``Origin`` not in
    ``allow_origins`` (403); a POST whose ``Content-Type`` is not
    ``application/json`` (415). With ``token``, every endpoint but ``/healthz``
    needs ``Authorization: Bearer TOKEN`` (401).

    Mounted under a prefix in another ASGI application, the routes are
    relative to ``scope["root_path"]``.
    """

    def __init__(
        self,
        agent: Any,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_batch: int = DEFAULT_MAX_BATCH,
        metrics: Metrics | None = None,
        listen: str | None = None,
        allow_hosts: Iterable[str] = (),
        allow_origins: Iterable[str] = (),
        token: str | bytes | None = None,
    ):
        self.agent = agent
        self.max_body = max_body
        self.max_batch = max_batch
        self.metrics = metrics or Metrics()
        self.listen = listen
        self._reload_lock: asyncio.Lock | None = None

        hosts = ["localhost", *allow_hosts]
        port: int | None = None
        if listen:
            host, port = parse_listen(listen)
            hosts.append(host)
        self._any_host = "*" in hosts
        self._host_names: set[str] = set()
        self._host_ips: set[Any] = set()
        for name in hosts:
            ip = _as_ip(name.strip("[]"))
            if ip is None:
                self._host_names.add(name.lower())
            elif not ip.is_unspecified:  # 0.0.0.0 names no host; the arrival address covers it
                self._host_ips.add(ip)
        # Host header values accepted without parsing (the common ones).
        exact = set(self._host_names) | {f"[{ip}]" if ip.version == 6 else str(ip) for ip in self._host_ips}
        if port:
            exact |= {f"{h}:{port}" for h in exact}
        self._host_exact = frozenset(h.encode() for h in exact)
        self._origins = frozenset(parse_origin(o) for o in allow_origins)
        if isinstance(token, str):
            token = token.encode()
        self._token = hashlib.sha256(token).digest() if token else None

    # ASGI entry point
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets are not served
            return
        method = scope["method"]
        path = _route_path(scope)
        route = _ROUTES.get(path)
        handler = route.handler if route else "other"
        cors: list[tuple[bytes, bytes]] = []
        try:
            req = _request_headers(scope)
            self._check_host(req.get(b"host"), scope)
            cors = self._check_origin(req)
            if method == "OPTIONS" and cors and route is not None and b"access-control-request-method" in req:
                status, body, ctype, headers = 204, b"", _JSON, _preflight(route)
            else:
                if self._token is not None and handler != "healthz":
                    self._check_token(req.get(b"authorization"))
                if route is None:
                    raise HTTPError(404, f"no such endpoint: {_clip(path)}")
                if method not in route.methods:
                    raise HTTPError(
                        405,
                        f"method {_clip(method)} not allowed on {path}; use {' or '.join(route.methods)}",
                        headers=[(b"allow", ", ".join(route.methods).encode())],
                    )
                if method == "POST":
                    _check_json_type(req.get(b"content-type"))
                status, body, ctype, headers = await getattr(self, "_" + handler)(scope, receive, req)
        except HTTPError as exc:
            status, ctype, headers = exc.status, _JSON, exc.headers
            body = _dumps({"error": exc.message, "status": exc.status})
        except Exception:  # a bug here must not take the server down
            log.exception("internal error answering %s %s", method, path)
            status, ctype, headers = 500, _JSON, []
            body = _dumps({"error": "internal error; see the server log", "status": 500})
        self.metrics.count_http(handler, status)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                    *cors,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ----- who may ask

    def _check_host(self, values: list[bytes] | None, scope: Scope) -> None:
        """421 unless Host names this server (DNS rebinding: a hostile name resolving to us)."""
        if values is None or self._any_host:
            return  # no Host at all: HTTP/1.0, never a browser
        if len(values) > 1:
            raise _bad("more than one Host header")
        value = values[0]
        if value in self._host_exact:
            return
        name = _host_name(value)
        if name is None:
            raise _bad("malformed Host header")
        if name in self._host_names:
            return
        ip = _as_ip(name)
        if ip is not None:
            if ip in self._host_ips:
                return
            server = scope.get("server")
            if server and ip == _as_ip(str(server[0])):
                return  # the address this connection arrived on
        raise HTTPError(
            421,
            f"Host {_clip(name)!r} is not served here (allowed: localhost, the listening address"
            " and --allow-host names)",
        )

    def _check_origin(self, req: dict[bytes, list[bytes]]) -> list[tuple[bytes, bytes]]:
        """403 for a request a browser sent from a page not on the allow list.

        Returns the CORS headers to add when the origin is allowed.
        """
        values = req.get(b"origin")
        if values is None:
            site = req.get(b"sec-fetch-site")
            if site and site[0].lower() in (b"cross-site", b"same-site"):
                raise HTTPError(403, "cross-site requests are refused (no Origin on the allow list)")
            return []
        if len(values) == 1:
            origin = values[0].strip()
            if origin.decode("latin-1").lower() in self._origins:
                return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        shown = _clip(b", ".join(values).decode("latin-1"))
        raise HTTPError(403, f"requests from origin {shown!r} are refused (see --allow-origin)")

    def _check_token(self, values: list[bytes] | None) -> None:
        challenge = b'Bearer realm="polc"'
        if not values:
            raise HTTPError(
                401, "this endpoint needs an Authorization: Bearer token", headers=[(b"www-authenticate", challenge)]
            )
        ok = False
        if len(values) == 1:
            scheme, _, credential = values[0].strip().partition(b" ")
            if scheme.lower() == b"bearer":
                # Compare digests: constant time, and the length is not revealed either.
                ok = hmac.compare_digest(hashlib.sha256(credential.strip()).digest(), self._token)  # type: ignore[arg-type]
        if not ok:
            raise HTTPError(
                401, "invalid bearer token", headers=[(b"www-authenticate", challenge + b', error="invalid_token"')]
            )

    # ----- the body

    async def _read_body(self, req: dict[bytes, list[bytes]], receive: Receive) -> bytes:
        """Read the request body, refusing (413) anything over ``max_body`` without buffering it."""
        lengths = req.get(b"content-length")
        if lengths:
            try:
                declared = {int(value) for value in lengths}
            except ValueError:
                raise _bad("invalid Content-Length header") from None
            if len(declared) > 1 or min(declared) < 0:
                raise _bad("invalid Content-Length header")
            if declared.pop() > self.max_body:
                raise self._too_big()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_big()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_big(self) -> HTTPError:
        # The client may still be sending: close the connection after answering.
        return HTTPError(413, f"request body larger than {self.max_body} bytes", headers=[(b"connection", b"close")])

    # ----- handlers: each returns (status, body, content type, extra headers)

    def _loading(self) -> HTTPError:
        # Before the first load every check would be a deny for the wrong
        # reason; say "not yet" instead, so callers can retry.
        return HTTPError(
            503, "policies are still loading; retry shortly (GET /healthz says when)", headers=[(b"retry-after", b"1")]
        )

    async def _check(self, scope: Scope, receive: Receive, req: dict[bytes, list[bytes]]):
        module, capability, args = parse_check(parse_json(await self._read_body(req, receive)))
        if not self.agent.ready:
            raise self._loading()
        decision = self.agent.check(module, capability, *args)
        self.metrics.count_decision(decision)
        return 200, _dumps(decision_dict(decision)), _JSON, []

    async def _batch(self, scope: Scope, receive: Receive, req: dict[bytes, list[bytes]]):
        requests = parse_batch(parse_json(await self._read_body(req, receive)), self.max_batch)
        if not self.agent.ready:
            raise self._loading()
        check = self.agent.check
        count = self.metrics.count_decision
        results = []
        for module, capability, args in requests:
            decision = check(module, capability, *args)
            count(decision)
            results.append(decision_dict(decision))
        return 200, _dumps({"results": results}), _JSON, []

    async def _reload(self, scope: Scope, receive: Receive, req: dict[bytes, list[bytes]]):
        body = await self._read_body(req, receive)
        if body.strip():  # none is needed; what comes must be an empty object
            obj = parse_json(body)
            if not isinstance(obj, dict):
                raise _bad(f"request body must be empty or a JSON object, not {_json_type(obj)}")
            if obj:
                raise _bad(f"{_clip(sorted(obj)[0])}: unknown field (the reload endpoint takes none)")
        result = await self.reload()
        status = self.agent.status()
        failed = [failure_dict(f) for f in result.failed]
        errors = self.metrics.errors(status)
        payload: dict[str, Any] = {
            "status": "reloaded",
            "policy_dir": str(status.get("policy_dir")),
            "changed": list(result.changed),
            "removed": list(result.removed),
            "failed": failed,
            "errors": errors,
        }
        if not failed and not errors:
            return 200, _dumps(payload), _JSON, []
        # Some artifact in the directory is not in force: failed in this step,
        # or failed earlier (the poller may have met it first) and not fixed
        # since. Its module keeps its previous policy; every other change was
        # applied. Answer non-2xx so `curl -f` and scripts notice.
        payload["status"] = "partial" if (result.changed or result.removed) else "failed"
        seen: set[tuple] = set()
        reasons = []
        for item in failed + errors:
            file = os.path.basename(str(item["file"]))
            if (item["module"], file) not in seen:
                seen.add((item["module"], file))
                reasons.append(f"{file}: {item['reason']}")
        payload["error"] = "not in force: " + "; ".join(reasons)
        return 422, _dumps(payload), _JSON, []

    async def reload(self) -> Any:
        """Run ``agent.reload_now()`` off the event loop, one at a time."""
        if not self.agent.ready:
            raise self._loading()
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            return await asyncio.to_thread(self.agent.reload_now)

    async def _status(self, scope: Scope, receive: Receive, req: dict[bytes, list[bytes]]):
        wanted = _module_filter(scope.get("query_string") or b"")
        status = dict(self.agent.status())
        if wanted is not None:
            status["modules"] = {n: m for n, m in (status.get("modules") or {}).items() if n in wanted}
        status["version"] = __version__
        if self.listen:
            status["listen"] = self.listen
        return 200, _dumps(status), _JSON, []

    async def _healthz(self, scope: Scope, receive: Receive, req: dict[bytes, list[bytes]]):
        if not self.agent.ready:
            return 503, _dumps({"status": "loading"}), _JSON, []
        return 200, _dumps({"status": "ok"}), _JSON, []

    async def _metrics(self, scope: Scope, receive: Receive, req: dict[bytes, list[bytes]]):
        body = self.metrics.render(self.agent.status(), bool(self.agent.ready))
        return 200, body, _PROM, []


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


def _request_headers(scope: Scope) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for name, value in scope.get("headers", ()):
        if name in _WANTED:
            if name in out:
                out[name].append(value)
            else:
                out[name] = [value]
    return out


def _route_path(scope: Scope) -> str:
    """The path below the mount point: ASGI servers and routers (uvicorn
    --root-path, Starlette's Mount) keep the prefix in ``path`` and name it in
    ``root_path``."""
    path = scope["path"]
    root = scope.get("root_path") or ""
    if root and path.startswith(root):
        rest = path[len(root) :]
        if not rest or rest[0] == "/":
            return rest or "/"
    return path


_JSON_TYPES = frozenset((b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"))


def _check_json_type(values: list[bytes] | None) -> None:
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
        raise HTTPError(415, f"Content-Type {_clip(media.strip())!r} is not accepted: {hint}")
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise HTTPError(415, f"charset {_clip(value.strip())!r} is not accepted: application/json is UTF-8")


def _preflight(route: _Route) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-methods", ", ".join(route.methods).encode()),
        (b"access-control-allow-headers", b"authorization, content-type"),
        (b"access-control-max-age", b"600"),
    ]


def _module_filter(query: bytes) -> set[str] | None:
    """``module=NAME`` parameters of ``GET /v1/status`` (None: no filter)."""
    if not query:
        return None
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=1000)
    except (UnicodeDecodeError, ValueError):
        raise _bad("malformed query string (expected module=NAME&module=NAME...)") from None
    names = set()
    for key, value in pairs:
        if key != "module":
            raise _bad(f"{_clip(key)}: unknown query parameter (expected module)")
        if not value:
            raise _bad("module: must not be empty")
        names.add(value)
    return names


def _as_ip(text: str) -> Any:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _host_name(value: bytes) -> str | None:
    """The host part of a Host header, lower-cased and unbracketed; None if malformed."""
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        name, rest = text[1:end], text[end + 1 :]
        if end < 0 or _as_ip(name) is None:
            return None
    else:
        name, sep, rest = text.partition(":")
        rest = sep + rest
    if rest and not (rest[0] == ":" and rest[1:].isdigit()):
        return None
    return name or None


def parse_origin(text: str) -> str:
    """An ``--allow-origin`` value as browsers spell origins: ``scheme://host[:port]``."""
    from urllib.parse import urlsplit

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


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def _dumps(obj: Any) -> bytes:
    return _encode(obj).encode()


# --------------------------------------------------------------------------- listening


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` (host defaults to 127.0.0.1)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [ADDRESS]:PORT, got {text!r}")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif ":" not in text:
        host, port = "", text
    else:
        raise ValueError(f"an IPv6 address must be bracketed, as in [::1]:8181; got {text!r}")
    host = host or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"port must be a number, got {port!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port must be 0..65535, got {number}")
    return host, number


def bind(host: str, port: int) -> socket.socket:
    """Bind and listen on (host, port); the caller reports OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


# --------------------------------------------------------------------------- connection limits


@dataclass(frozen=True)
class Limits:
    """What one client connection may cost ``polc run``.

    ``header_timeout``: seconds from the connection (or the first byte of a
    request) to the end of its headers. ``body_timeout``: seconds from the end
    of the headers to the end of the body; also how long an answer may wait for
    a client that stopped reading it. ``max_connections``: open connections;
    beyond it a new one is answered 503 and closed. ``max_header_bytes``: the
    request line and headers of one request (431 above).
    """

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_header_bytes: int = MAX_HEADER_BYTES


_LINGER = 1.0  # seconds a refused connection is kept to read and drop what the client still sends


def _canned(status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 answer written by the connection guard itself, not the application."""
    from http import HTTPStatus

    body = _dumps({"error": message, "status": status})
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def guarded_protocol(limits: Limits, metrics: Metrics) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the limits uvicorn lacks.

    uvicorn bounds only the idle time between requests (keep-alive). A
    connection that never sends a byte, or sends its headers or body a byte at
    a time, or stops reading answers, would be held for ever, and the headers of
    one request are not bounded at all. Each connection here has a deadline for
    the phase it is in, and the number of connections is capped.
    """
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    lingering: set[asyncio.BaseTransport] = set()
    refusal = _canned(503, "too many connections; retry shortly", (("retry-after", "1"),))

    class _Refused(asyncio.Protocol):
        """Answers 503 and closes; reads and drops what the client still sends
        for a moment, so the answer is not lost to a reset."""

        def __init__(self, loop: asyncio.AbstractEventLoop):
            self.loop = loop
            self.timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport):  # type: ignore[override]
            self.transport = transport
            transport.write(refusal)
            if len(lingering) >= limits.max_connections or not transport.can_write_eof():
                transport.close()
                return
            lingering.add(transport)
            transport.write_eof()
            self.timer = self.loop.call_later(_LINGER, transport.close)

        def data_received(self, data: bytes) -> None:
            pass

        def eof_received(self) -> None:
            return None  # let the transport close

        def connection_lost(self, exc: Exception | None) -> None:
            if self.timer is not None:
                self.timer.cancel()
            lingering.discard(self.transport)

    class GuardedProtocol(HttpToolsProtocol):
        # The phase decides which deadline runs: "fresh" (no request yet) and
        # "header" (a request line or headers are arriving): the header
        # timeout; "body": the body timeout; None (between requests): uvicorn's
        # keep-alive timeout.
        _phase: str | None = None
        _timer: asyncio.TimerHandle | None = None
        _send_timer: asyncio.TimerHandle | None = None
        _begun = 0  # requests begun on this connection
        _header_bytes = 0
        _closing = False
        _counted = False

        def connection_made(self, transport):  # type: ignore[override]
            if len(self.connections) >= limits.max_connections:
                metrics.count_rejected("connection_limit")
                refused = _Refused(self.loop)
                transport.set_protocol(refused)
                refused.connection_made(transport)
                return
            super().connection_made(transport)
            self._counted = True
            metrics.connections += 1
            self._phase = "fresh"
            self._arm(limits.header_timeout, self._header_timed_out)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None
            if self._counted:
                self._counted = False
                metrics.connections -= 1
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._closing:
                return
            self._unset_keepalive_if_required()
            before, begun = self._phase, self._begun
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass  # no websockets or h2c: the request is answered as HTTP/1.1
            except httptools.HttpParserError:
                self._reject(400, "malformed HTTP request", "bad_request", answer=self._idle())
                return
            if self._phase == "header" and not self._closing:
                # Count the chunk when all of it is request head: it continued
                # one, or it started one on an idle connection. (A chunk that
                # also ends an earlier request is not counted; that bounds the
                # head by the limit plus one read.)
                began = self._begun - begun
                if (began == 0 and before == "header") or (began == 1 and before in ("fresh", None)):
                    self._header_bytes += len(data)
                    if self._header_bytes > limits.max_header_bytes:
                        self._reject(
                            431,
                            f"request line and headers larger than {limits.max_header_bytes} bytes",
                            "headers_too_large",
                            answer=self._idle(),
                        )

        # parser callbacks

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._begun += 1
            self._header_bytes = 0
            if self._phase != "fresh":  # a fresh connection's deadline already runs
                self._arm(limits.header_timeout, self._header_timed_out)
            self._phase = "header"

        def on_headers_complete(self) -> None:
            self._phase = "body"
            self._arm(limits.body_timeout, self._body_timed_out)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._phase = None
            self._disarm()
            super().on_message_complete()

        # writing to a client that does not read

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_timer is None:
                self._send_timer = self.loop.call_later(limits.body_timeout, self._send_timed_out)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        # deadlines

        def _arm(self, delay: float, callback: Callable[[], None]) -> None:
            self._disarm()
            self._timer = self.loop.call_later(delay, callback)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _header_timed_out(self) -> None:
            self._timer = None
            if self.flow.read_paused:  # we stopped reading (a pipelined request is being answered)
                self._arm(limits.header_timeout, self._header_timed_out)
                return
            # A connection that never began a request is closed without an
            # answer, as an idle keep-alive one is: a client that opened it for
            # later must not read a 408 as the answer to its next request.
            self._reject(
                408,
                f"request headers not received within {limits.header_timeout:g}s",
                "header_timeout",
                answer=self._idle() and self._phase != "fresh",
            )

        def _body_timed_out(self) -> None:
            self._timer = None
            if self.flow.read_paused:  # the application has not asked for more yet
                self._arm(limits.body_timeout, self._body_timed_out)
                return
            cycle = self.cycle
            self._reject(
                408,
                f"request body not received within {limits.body_timeout:g}s",
                "body_timeout",
                answer=cycle is not None and not cycle.response_started,
            )

        def _send_timed_out(self) -> None:
            self._send_timer = None
            self._closing = True
            self._disarm()
            metrics.count_rejected("send_timeout")
            log.debug("closing a connection whose client has not read its answer for %gs", limits.body_timeout)
            self.transport.abort()

        def _reject(self, status: int, message: str, reason: str, *, answer: bool) -> None:
            """Answer ``status`` (when no other answer is under way) and close."""
            if self._closing:
                return
            self._closing = True
            self._disarm()
            metrics.count_rejected(reason)
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # The application is waiting for a body that will not come:
                # it hears a disconnect, and what it answers goes nowhere.
                cycle.disconnected = True
                cycle.message_event.set()
            if answer and not self.transport.is_closing():
                self.transport.write(_canned(status, message))
            self.transport.close()

    return GuardedProtocol


def _raise_fd_limit(max_connections: int) -> None:
    """Make room for ``max_connections`` sockets (and as many being refused) in the fd limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    want = 2 * max_connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft < max_connections + 64:
        log.warning(
            "open-file limit %d is too low for --max-connections %d; connections beyond it wait in the backlog",
            soft,
            max_connections,
        )


def require_server_extra() -> None:
    """Raise ``ServerExtraMissing`` unless uvicorn and httptools import."""
    for name in ("uvicorn", "httptools"):
        try:
            __import__(name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or name
            raise ServerExtraMissing(
                f"polc run needs the 'server' extra ({missing} cannot be imported: {exc}); "
                "install it with: pip install 'polc[server]'"
            ) from None


class ServerExtraMissing(RuntimeError):
    pass


# --------------------------------------------------------------------------- serving


def serve(
    app: DecisionApp,
    sock: socket.socket,
    *,
    start_agent: Callable[[], Any],
    stop_agent: Callable[[], Any],
    on_ready: Callable[[], None],
    on_start_error: Callable[[BaseException], int],
    limits: Limits | None = None,
) -> int:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT; returns the exit status.

    The socket is listening before the policies load, so ``/healthz`` answers
    503 while a large directory loads. ``start_agent`` runs in a worker thread;
    if it raises, ``on_start_error`` reports it and its return value becomes the
    exit status. SIGHUP reloads now. Our own handlers replace uvicorn's (which
    would re-raise SIGTERM after shutdown and end the process with -15).
    """
    import uvicorn

    limits = limits or Limits()
    _raise_fd_limit(limits.max_connections)

    class _Server(uvicorn.Server):
        def capture_signals(self):  # type: ignore[override]
            import contextlib

            return contextlib.nullcontext()

    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        http=guarded_protocol(limits, app.metrics),
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=5,
    )
    server = _Server(config)
    exit_status = 0

    async def main() -> None:
        nonlocal exit_status
        loop = asyncio.get_running_loop()

        def on_stop(signum: int) -> None:
            if server.should_exit:
                server.force_exit = True
                return
            log.info("%s received, stopping", signal.Signals(signum).name)
            server.should_exit = True

        def on_hup() -> None:
            if not app.agent.ready:
                log.warning("SIGHUP received while policies are still loading; ignored")
                return
            log.info("SIGHUP received, reloading %s", app.agent.status().get("policy_dir"))
            task = loop.create_task(_reload_quietly())
            _background.add(task)
            task.add_done_callback(_background.discard)

        async def _reload_quietly() -> None:
            try:
                result = await app.reload()
            except Exception as exc:  # reported, never fatal
                log.error("reload failed: %s", exc)
                return
            if not (result.changed or result.removed or result.failed):
                log.info("reload: nothing changed")

        _background: set[asyncio.Task[None]] = set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)

        serving = loop.create_task(server.serve(sockets=[sock]))

        async def load() -> None:
            nonlocal exit_status
            try:
                await asyncio.to_thread(start_agent)
            except Exception as exc:
                exit_status = on_start_error(exc)
                server.should_exit = True
                return
            if not server.should_exit:
                on_ready()

        loading = loop.create_task(load())
        try:
            await serving
        finally:
            await loading
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for task in list(_background):
                await asyncio.wait([task], timeout=2)
        await asyncio.to_thread(stop_agent)

    asyncio.run(main())
    return exit_status

