"""The HTTP decision API of ``polc run``: a plain ASGI application served by uvicorn.

No web framework: six routes, JSON in and out, a Prometheus text exposition.
Everything here runs on the event loop thread except reloads, which go to a
worker thread (``asyncio.to_thread``) so a slow directory never stalls
decisions; ``PolicyAgent.check`` takes microseconds and is called inline.

The wire format is documented in ``docs/http-api.md``; keep the two in step.
This module imports uvicorn only inside :func:`serve`, so the request parsing
and the application can be unit-tested (and imported) without it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from polc import __version__

log = logging.getLogger("polc.server")

DEFAULT_MAX_BODY = 1 << 20  # bytes
DEFAULT_MAX_BATCH = 1000  # requests per /v1/check/batch
# Longest string accepted in module, capability or an argument (PATH_MAX). The
# agent's decision cache keeps request strings as keys, so this bounds what a
# client can make it retain (cache entries x argument sizes).
MAX_STRING = 4096

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
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise _bad("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal with too many digits
        raise _bad(f"malformed JSON: {exc}") from None


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
            "# HELP polc_start_time_seconds Unix time the process started serving.",
            "# TYPE polc_start_time_seconds gauge",
            f"polc_start_time_seconds {_num(self.started)}",
        ]
        return ("\n".join(lines) + "\n").encode()


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
    """The ASGI application. ``agent`` is a started (or starting) ``PolicyAgent``."""

    def __init__(
        self,
        agent: Any,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_batch: int = DEFAULT_MAX_BATCH,
        metrics: Metrics | None = None,
        listen: str | None = None,
    ):
        self.agent = agent
        self.max_body = max_body
        self.max_batch = max_batch
        self.metrics = metrics or Metrics()
        self.listen = listen
        self._reload_lock: asyncio.Lock | None = None

    # ASGI entry point
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets are not served
            return
        path = scope["path"]
        method = scope["method"]
        route = _ROUTES.get(path)
        handler = route.handler if route else "other"
        try:
            if route is None:
                raise HTTPError(404, f"no such endpoint: {path}")
            if method not in route.methods:
                raise HTTPError(
                    405,
                    f"method {method} not allowed on {path}; use {' or '.join(route.methods)}",
                    headers=[(b"allow", ", ".join(route.methods).encode())],
                )
            status, body, ctype, headers = await getattr(self, "_" + handler)(scope, receive)
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
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *headers],
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

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """Read the request body, refusing (413) anything over ``max_body`` without buffering it."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise _bad("invalid Content-Length header") from None
                if declared > self.max_body:
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

    async def _check(self, scope: Scope, receive: Receive):
        module, capability, args = parse_check(parse_json(await self._read_body(scope, receive)))
        if not self.agent.ready:
            raise self._loading()
        decision = self.agent.check(module, capability, *args)
        self.metrics.count_decision(decision)
        return 200, _dumps(decision_dict(decision)), _JSON, []

    async def _batch(self, scope: Scope, receive: Receive):
        requests = parse_batch(parse_json(await self._read_body(scope, receive)), self.max_batch)
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

    async def _reload(self, scope: Scope, receive: Receive):
        await self._drain(scope, receive)
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

    async def _drain(self, scope: Scope, receive: Receive) -> None:
        # The reload endpoint takes no body, but read (and cap) whatever came.
        await self._read_body(scope, receive)

    async def _status(self, scope: Scope, receive: Receive):
        status = dict(self.agent.status())
        status["version"] = __version__
        if self.listen:
            status["listen"] = self.listen
        return 200, _dumps(status), _JSON, []

    async def _healthz(self, scope: Scope, receive: Receive):
        if not self.agent.ready:
            return 503, _dumps({"status": "loading"}), _JSON, []
        return 200, _dumps({"status": "ok"}), _JSON, []

    async def _metrics(self, scope: Scope, receive: Receive):
        body = self.metrics.render(self.agent.status(), bool(self.agent.ready))
        return 200, body, _PROM, []


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


# --------------------------------------------------------------------------- serving


def serve(
    app: DecisionApp,
    sock: socket.socket,
    *,
    start_agent: Callable[[], Any],
    stop_agent: Callable[[], Any],
    on_ready: Callable[[], None],
    on_start_error: Callable[[BaseException], int],
) -> int:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT; returns the exit status.

    The socket is listening before the policies load, so ``/healthz`` answers
    503 while a large directory loads. ``start_agent`` runs in a worker thread;
    if it raises, ``on_start_error`` reports it and its return value becomes the
    exit status. SIGHUP reloads now. Our own handlers replace uvicorn's (which
    would re-raise SIGTERM after shutdown and end the process with -15).
    """
    import uvicorn

    class _Server(uvicorn.Server):
        def capture_signals(self):  # type: ignore[override]
            import contextlib

            return contextlib.nullcontext()

    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        http="auto",
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

