"""The decision API as a plain ASGI application: the route table and its handlers.

No web framework: six routes (:data:`ROUTES`), JSON in and out, a Prometheus
text exposition. Everything runs on the event loop thread except reloads,
which go to a worker thread (``asyncio.to_thread``) so a slow directory never
stalls decisions; ``PolicyAgent.check`` takes microseconds and is called
inline. Every request passes, in this order: the Host check, the Origin check
(or a CORS preflight answer), the token, the route and its methods, the JSON
content type of a POST, then the route's handler.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from polc import __version__

from .access import Access
from .metrics import CONTENT_TYPE as PROMETHEUS_TYPE
from .metrics import Metrics
from .wire import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY,
    JSON_TYPE,
    Headers,
    HTTPError,
    Receive,
    Scope,
    Send,
    bad_request,
    check_json_type,
    clip,
    decision_dict,
    dumps,
    failure_dict,
    json_type,
    module_filter,
    parse_batch,
    parse_check,
    parse_json,
    request_headers,
)

log = logging.getLogger("polc.server")

Answer = tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]
"""What a handler returns: status, body, content type, extra headers."""
Handler = Callable[["DecisionApp", Scope, Receive, Headers], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: its metrics label, the methods it answers, and the handler that answers them."""

    name: str  # the handler label of polc_http_requests_total
    methods: tuple[str, ...]
    handler: Handler


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
        self._access = Access(listen=listen, allow_hosts=allow_hosts, allow_origins=allow_origins, token=token)

    # ASGI entry point
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets are not served
            return
        method = scope["method"]
        path = route_path(scope)
        route = ROUTES.get(path)
        name = route.name if route else "other"
        cors: list[tuple[bytes, bytes]] = []
        access = self._access
        try:
            req = request_headers(scope)
            access.check_host(req.get(b"host"), scope)
            cors = access.check_origin(req)
            if method == "OPTIONS" and cors and route is not None and b"access-control-request-method" in req:
                status, body, ctype, headers = 204, b"", JSON_TYPE, _preflight(route)
            else:
                if access.token_digest is not None and name != "healthz":
                    access.check_token(req.get(b"authorization"))
                if route is None:
                    raise HTTPError(404, f"no such endpoint: {clip(path)}")
                if method not in route.methods:
                    raise HTTPError(
                        405,
                        f"method {clip(method)} not allowed on {path}; use {' or '.join(route.methods)}",
                        headers=[(b"allow", ", ".join(route.methods).encode())],
                    )
                if method == "POST":
                    check_json_type(req.get(b"content-type"))
                status, body, ctype, headers = await route.handler(self, scope, receive, req)
        except HTTPError as exc:
            status, ctype, headers = exc.status, JSON_TYPE, exc.headers
            body = dumps({"error": exc.message, "status": exc.status})
        except Exception:  # a bug here must not take the server down
            log.exception("internal error answering %s %s", method, path)
            status, ctype, headers = 500, JSON_TYPE, []
            body = dumps({"error": "internal error; see the server log", "status": 500})
        self.metrics.count_http(name, status)
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

    # ----- the body

    async def _read_body(self, req: Headers, receive: Receive) -> bytes:
        """Read the request body, refusing (413) anything over ``max_body`` without buffering it."""
        lengths = req.get(b"content-length")
        if lengths:
            try:
                declared = {int(value) for value in lengths}
            except ValueError:
                raise bad_request("invalid Content-Length header") from None
            if len(declared) > 1 or min(declared) < 0:
                raise bad_request("invalid Content-Length header")
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

    def _loading(self) -> HTTPError:
        # Before the first load every check would be a deny for the wrong
        # reason; say "not yet" instead, so callers can retry.
        return HTTPError(
            503, "policies are still loading; retry shortly (GET /healthz says when)", headers=[(b"retry-after", b"1")]
        )

    # ----- handlers (the route table below names them)

    async def _check(self, scope: Scope, receive: Receive, req: Headers) -> Answer:
        """``POST /v1/check``: one decision."""
        module, capability, args = parse_check(parse_json(await self._read_body(req, receive)))
        if not self.agent.ready:
            raise self._loading()
        decision = self.agent.check(module, capability, *args)
        self.metrics.count_decision(decision)
        return 200, dumps(decision_dict(decision)), JSON_TYPE, []

    async def _batch(self, scope: Scope, receive: Receive, req: Headers) -> Answer:
        """``POST /v1/check/batch``: many decisions, in order."""
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
        return 200, dumps({"results": results}), JSON_TYPE, []

    async def _reload(self, scope: Scope, receive: Receive, req: Headers) -> Answer:
        """``POST /policy/reload``: reload now and say what is in force (422 if some artifact is not)."""
        body = await self._read_body(req, receive)
        if body.strip():  # none is needed; what comes must be an empty object
            obj = parse_json(body)
            if not isinstance(obj, dict):
                raise bad_request(f"request body must be empty or a JSON object, not {json_type(obj)}")
            if obj:
                raise bad_request(f"{clip(sorted(obj)[0])}: unknown field (the reload endpoint takes none)")
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
            return 200, dumps(payload), JSON_TYPE, []
        # Some artifact in the directory is not in force: failed in this step,
        # or failed earlier (the poller may have met it first) and not fixed
        # since. Its module keeps its previous policy; every other change was
        # applied. Answer non-2xx so `curl -f` and scripts notice.
        payload["status"] = "partial" if (result.changed or result.removed) else "failed"
        seen: set[tuple[Any, str]] = set()
        reasons = []
        for item in failed + errors:
            file = os.path.basename(str(item["file"]))
            if (item["module"], file) not in seen:
                seen.add((item["module"], file))
                reasons.append(f"{file}: {item['reason']}")
        payload["error"] = "not in force: " + "; ".join(reasons)
        return 422, dumps(payload), JSON_TYPE, []

    async def reload(self) -> Any:
        """Run ``agent.reload_now()`` off the event loop, one at a time."""
        if not self.agent.ready:
            raise self._loading()
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            return await asyncio.to_thread(self.agent.reload_now)

    async def _status(self, scope: Scope, receive: Receive, req: Headers) -> Answer:
        """``GET /v1/status[?module=NAME...]``: the agent's status."""
        wanted = module_filter(scope.get("query_string") or b"")
        status = dict(self.agent.status())
        if wanted is not None:
            status["modules"] = {n: m for n, m in (status.get("modules") or {}).items() if n in wanted}
        status["version"] = __version__
        if self.listen:
            status["listen"] = self.listen
        return 200, dumps(status), JSON_TYPE, []

    async def _healthz(self, scope: Scope, receive: Receive, req: Headers) -> Answer:
        """``GET /healthz``: 200 once the first load completed, 503 before."""
        if not self.agent.ready:
            return 503, dumps({"status": "loading"}), JSON_TYPE, []
        return 200, dumps({"status": "ok"}), JSON_TYPE, []

    async def _metrics(self, scope: Scope, receive: Receive, req: Headers) -> Answer:
        """``GET /metrics``: the Prometheus text exposition."""
        body = self.metrics.render(self.agent.status(), bool(self.agent.ready))
        return 200, body, PROMETHEUS_TYPE, []


ROUTES: Mapping[str, Route] = {
    "/v1/check": Route("check", ("POST",), DecisionApp._check),
    "/v1/check/batch": Route("batch", ("POST",), DecisionApp._batch),
    "/policy/reload": Route("reload", ("POST",), DecisionApp._reload),
    "/v1/status": Route("status", ("GET", "HEAD"), DecisionApp._status),
    "/healthz": Route("healthz", ("GET", "HEAD"), DecisionApp._healthz),
    "/metrics": Route("metrics", ("GET", "HEAD"), DecisionApp._metrics),
}
"""Path (below the mount point) -> the route answering it; any other path is a 404."""


def route_path(scope: Scope) -> str:
    """The path below the mount point: ASGI servers and routers (uvicorn
    --root-path, Starlette's Mount) keep the prefix in ``path`` and name it in
    ``root_path``."""
    path: str = scope["path"]
    root = scope.get("root_path") or ""
    if root and path.startswith(root):
        rest = path[len(root) :]
        if not rest or rest[0] == "/":
            return rest or "/"
    return path


def _preflight(route: Route) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-methods", ", ".join(route.methods).encode()),
        (b"access-control-allow-headers", b"authorization, content-type"),
        (b"access-control-max-age", b"600"),
    ]
