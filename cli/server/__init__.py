"""The HTTP decision API of ``polc run``: a plain ASGI application served by uvicorn.

One module per concern:

- :mod:`.wire`: request bodies (JSON, repeated keys refused), the check and
  batch shapes, the request headers read, the JSON answers, the size limits;
- :mod:`.access`: who may ask (Host and Origin allow lists, the bearer token);
- :mod:`.app`: :class:`DecisionApp`, the ASGI application and its route table;
- :mod:`.metrics`: the counters and the Prometheus text of ``GET /metrics``;
- :mod:`.listen`: the ``--listen`` address, the listening socket, its URL;
- :mod:`.guard`: per-connection deadlines and limits below the application;
- :mod:`.serve`: uvicorn, signals, and the agent's start and stop.

Two layers keep hostile clients out. The application refuses what a browser
could send on behalf of a hostile page (wrong Host, foreign Origin, non-JSON
POST) and, with a token, anyone without it. Below it, the connection guard
gives every connection of ``polc run`` deadlines for its headers, its body and
reading its answers, bounds its headers, and caps the number of connections.

uvicorn is imported only when serving (:func:`serve`, :func:`guarded_protocol`),
so the application can be unit-tested, imported, or mounted in another ASGI
server without it. The wire format is documented in ``docs/http-api.md``.
"""

from __future__ import annotations

from .app import ROUTES, DecisionApp, Route
from .guard import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    Limits,
    guarded_protocol,
)
from .listen import bind, is_loopback, parse_listen, url_of
from .metrics import REJECT_REASONS, Metrics
from .serve import ServerExtraMissing, require_server_extra, serve
from .wire import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY,
    MAX_STRING,
    HTTPError,
    decision_dict,
    failure_dict,
    parse_batch,
    parse_check,
    parse_json,
    parse_origin,
)

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "MAX_STRING",
    "REJECT_REASONS",
    "ROUTES",
    "DecisionApp",
    "HTTPError",
    "Limits",
    "Metrics",
    "Route",
    "ServerExtraMissing",
    "bind",
    "decision_dict",
    "failure_dict",
    "guarded_protocol",
    "is_loopback",
    "parse_batch",
    "parse_check",
    "parse_json",
    "parse_listen",
    "parse_origin",
    "require_server_extra",
    "serve",
    "url_of",
]
