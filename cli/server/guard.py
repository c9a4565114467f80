"""The connection guard of ``polc run``: deadlines and limits per client connection.

uvicorn bounds only the idle time between requests (keep-alive). A
connection that never sends a byte, or sends its headers or body a byte at a
time, or stops reading answers, would be held for ever, and the headers of one
request are not bounded at all. :func:`guarded_protocol` subclasses uvicorn's
httptools protocol so that each connection has a deadline for the phase it is
in (:class:`Limits`), its request head is bounded, and the number of
connections is capped (503 beyond it). What it closes is counted in
:class:`~polc.server.metrics.Metrics` by reason.

uvicorn and httptools are imported inside :func:`guarded_protocol` only, so
this module imports without the ``server`` extra.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .metrics import Metrics
from .wire import dumps

log = logging.getLogger("polc.server")

# Connection limits of `polc run` (see Limits and docs/http-api.md).
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a request line and headers to arrive
DEFAULT_BODY_TIMEOUT = 30.0  # seconds for a body to arrive (and for a stalled client to read an answer)
DEFAULT_MAX_CONNECTIONS = 512
MAX_HEADER_BYTES = 64 * 1024  # request line and headers of one request (431 above)


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

    body = dumps({"error": message, "status": status})
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

        # A stream transport, as uvicorn's own protocol declares it (asyncio's
        # base class says BaseTransport, which has no write()).
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
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

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
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
