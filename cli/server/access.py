"""Who may ask the decision API: the Host allow list, the Origin allow list and the bearer token.

These refuse what a browser could send on behalf of a hostile page: a ``Host``
that does not name this server (DNS rebinding: a hostile name resolving to us,
421), a request from a page whose ``Origin`` is not allowed (403), and, with a
token, anyone without it (401). ``docs/http-api.md`` ("Browsers, other hosts
and tokens") is the contract.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from .listen import parse_listen
from .wire import Headers, HTTPError, IPAddress, Scope, as_ip, bad_request, clip, host_name, parse_origin

_CHALLENGE = b'Bearer realm="polc"'


class Access:
    """The allow lists and token of one :class:`~polc.server.DecisionApp`.

    ``listen``'s host, ``localhost``, ``allow_hosts`` (``"*"``: any) and the
    address a connection arrived on are the hosts served. ``allow_origins``
    are the browser origins answered, with CORS headers. ``token``, if given,
    is required as ``Authorization: Bearer TOKEN``; only its SHA-256 is kept.
    """

    def __init__(
        self,
        *,
        listen: str | None = None,
        allow_hosts: Iterable[str] = (),
        allow_origins: Iterable[str] = (),
        token: str | bytes | None = None,
    ) -> None:
        hosts = ["localhost", *allow_hosts]
        port: int | None = None
        if listen:
            host, port = parse_listen(listen)
            hosts.append(host)
        self.any_host = "*" in hosts
        self._host_names: set[str] = set()
        self._host_ips: set[IPAddress] = set()
        for name in hosts:
            ip = as_ip(name.strip("[]"))
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
        self.token_digest = hashlib.sha256(token).digest() if token else None

    def check_host(self, values: list[bytes] | None, scope: Scope) -> None:
        """421 unless Host names this server (DNS rebinding: a hostile name resolving to us)."""
        if values is None or self.any_host:
            return  # no Host at all: HTTP/1.0, never a browser
        if len(values) > 1:
            raise bad_request("more than one Host header")
        value = values[0]
        if value in self._host_exact:
            return
        name = host_name(value)
        if name is None:
            raise bad_request("malformed Host header")
        if name in self._host_names:
            return
        ip = as_ip(name)
        if ip is not None:
            if ip in self._host_ips:
                return
            server = scope.get("server")
            if server and ip == as_ip(str(server[0])):
                return  # the address this connection arrived on
        raise HTTPError(
            421,
            f"Host {clip(name)!r} is not served here (allowed: localhost, the listening address"
            " and --allow-host names)",
        )

    def check_origin(self, req: Headers) -> list[tuple[bytes, bytes]]:
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
        shown = clip(b", ".join(values).decode("latin-1"))
        raise HTTPError(403, f"requests from origin {shown!r} are refused (see --allow-origin)")

    def check_token(self, values: list[bytes] | None) -> None:
        """401 unless the one ``Authorization`` header carries the token (no-op without a token)."""
        expected = self.token_digest
        if expected is None:
            return
        if not values:
            raise HTTPError(
                401, "this endpoint needs an Authorization: Bearer token", headers=[(b"www-authenticate", _CHALLENGE)]
            )
        ok = False
        if len(values) == 1:
            scheme, _, credential = values[0].strip().partition(b" ")
            if scheme.lower() == b"bearer":
                # Compare digests: constant time, and the length is not revealed either.
                ok = hmac.compare_digest(hashlib.sha256(credential.strip()).digest(), expected)
        if not ok:
            raise HTTPError(
                401, "invalid bearer token", headers=[(b"www-authenticate", _CHALLENGE + b', error="invalid_token"')]
            )
