"""Where a published set's bytes come from (an origin) and go to (a store).

An origin serves names relative to the set's prefix: ``manifest.json`` and
``objects/<sha256>.bin``. :meth:`Origin.fetch` is one GET, conditional when an
ETag is given (``If-None-Match``): a 304 carries no body. A store is what
``polc publish`` writes: ``exists``, ``put``, ``read``.

URL schemes:

- ``file:///srv/www/policies``: a local directory, both origin and store
  (publish into the directory an HTTP server serves);
- ``http://host/prefix``, ``https://host/prefix``: an origin only, through
  ``http.client`` with timeouts and bounded bodies; redirects are not followed;
- ``s3://bucket/prefix``: origin and store through ``boto3`` (the ``s3``
  extra), in ``polc.runtime.fleet.s3``, imported only when such a URL is opened.

Every failure to deliver is an :class:`~polc.runtime.errors.OriginError`
whose ``reason`` is a fixed phrase (``unreachable``, ``server error``,
``forbidden``, ``not found``, ``too large``, ``partial download``,
``bad response``, ``unavailable``) and whose message says exactly what
happened, with the URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib
import os
import re
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import ConfigError, OriginError

__all__ = [
    "DEFAULT_TIMEOUT",
    "MANIFEST_NAME",
    "MAX_MANIFEST_SIZE",
    "MAX_OBJECT_SIZE",
    "Fetched",
    "FileOrigin",
    "FileStore",
    "HttpOrigin",
    "Origin",
    "OriginError",
    "Store",
    "check_name",
    "file_url",
    "object_name",
    "open_origin",
    "open_store",
]

MANIFEST_NAME = "manifest.json"
# an artifact is at most 56 + 64 MiB payload + a trailer (format.opcodes' limit)
MAX_OBJECT_SIZE = 64 * 1024 * 1024 + 4096
MAX_MANIFEST_SIZE = 8 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0

_NAME = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*/)*[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def check_name(name: str) -> str:
    """A name relative to the set prefix: segments of ``[A-Za-z0-9._-]``, none
    starting with a dot (so no ``..``), no leading slash. Raises ValueError."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"not a valid object name: {name!r}")
    return name


def object_name(sha256: str) -> str:
    """The immutable name of an artifact's bytes: ``objects/<sha256>.bin``."""
    if not _SHA256.match(sha256):
        raise ValueError(f"not a SHA-256 in lower-case hex: {sha256!r}")
    return f"objects/{sha256}.bin"


@dataclass(frozen=True, slots=True)
class Fetched:
    """One answer of an origin: 200 with the body, or 304 (not modified) without."""

    status: int  # 200 or 304
    body: bytes | None
    etag: str | None
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names


@runtime_checkable
class Origin(Protocol):
    """Where a set is read from. ``fetch`` raises OriginError for anything but 200/304."""

    url: str

    def fetch(self, name: str, etag: str | None = None, *, limit: int = MAX_OBJECT_SIZE) -> Fetched: ...


@runtime_checkable
class Store(Protocol):
    """Where ``polc publish`` writes a set. Writes of one name are atomic."""

    url: str

    def exists(self, name: str) -> bool: ...

    def put(self, name: str, data: bytes, content_type: str) -> None: ...

    def read(self, name: str) -> bytes | None: ...


# --------------------------------------------------------------------------- file://


def _file_path(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{url}: a file:// URL names a local directory (file:///path), not host {parts.netloc!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{url}: a file:// URL takes no query or fragment")
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/"):
        raise ConfigError(f"{url}: a file:// URL needs an absolute path")
    return Path(path)


def _etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


class FileOrigin:
    """A local directory read as an origin; its ETags are digests of the content."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = _file_path(url)
        self.requests: Counter[str] = Counter()

    def fetch(self, name: str, etag: str | None = None, *, limit: int = MAX_OBJECT_SIZE) -> Fetched:
        check_name(name)
        self.requests[name] += 1
        path = self.root / name
        where = f"{self.url.rstrip('/')}/{name}"
        try:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
        except FileNotFoundError:
            raise OriginError(f"{where}: not found", reason="not found", status=404) from None
        except PermissionError as exc:
            raise OriginError(f"{where}: forbidden: {exc.strerror}", reason="forbidden", status=403) from None
        except OSError as exc:
            raise OriginError(f"{where}: cannot read: {exc.strerror or exc}", reason="unreachable") from None
        if len(data) > limit:
            raise OriginError(f"{where}: larger than {limit} bytes", reason="too large")
        tag = _etag_of(data)
        if etag is not None and etag == tag:
            return Fetched(304, None, tag)
        return Fetched(200, data, tag)


class FileStore:
    """A local directory written as a store: each name written atomically (temp file, fsync, rename)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = _file_path(url)

    def exists(self, name: str) -> bool:
        return (self.root / check_name(name)).is_file()

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / check_name(name)).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OriginError(f"{self.url.rstrip('/')}/{name}: cannot read: {exc.strerror or exc}",
                              reason="unreachable") from None  # fmt: skip

    def put(self, name: str, data: bytes, content_type: str) -> None:
        path = self.root / check_name(name)
        where = f"{self.url.rstrip('/')}/{name}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)  # served by an HTTP server running as another user
                _later_than(path, tmp)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise OriginError(f"{where}: cannot write: {exc.strerror or exc}", reason="unavailable") from None


def _later_than(old: Path, new: str) -> None:
    """Give ``new`` an mtime a whole second past ``old``'s when ``old`` was written this second.

    Servers that derive ETags from mtime seconds and size (nginx) would give a
    same-size rewrite within one second the old ETag, and agents holding it
    would be answered 304 and miss the new manifest.
    """
    try:
        before = os.stat(old).st_mtime_ns // 1_000_000_000
    except OSError:
        return
    now = time.time_ns() // 1_000_000_000
    if before >= now:
        os.utime(new, ns=((before + 1) * 1_000_000_000, (before + 1) * 1_000_000_000))


# --------------------------------------------------------------------------- http(s)://


class HttpOrigin:
    """An HTTP(S) server or CDN serving the set under a URL prefix.

    One keep-alive connection, reopened when the server closed it. Timeouts
    on connect and on every read; a body above ``limit`` bytes is refused
    before it is read whole; a body shorter than its Content-Length is a
    partial download. ``requests`` counts GETs by name (tests).
    """

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, context: ssl.SSLContext | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{url}: expected http://host/prefix or https://host/prefix")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{url}: credentials in the URL are not accepted")
        if parts.query or parts.fragment:
            raise ConfigError(f"{url}: the source URL takes no query or fragment")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{url}: bad port: {exc}") from None
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._context = context
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self.requests: Counter[str] = Counter()

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._context or ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def close(self) -> None:
        """Close the kept-alive connection; a fetch under way keeps its own (and closes it after)."""
        if not self._lock.acquire(timeout=1.0):
            return
        try:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            self._lock.release()

    def fetch(self, name: str, etag: str | None = None, *, limit: int = MAX_OBJECT_SIZE) -> Fetched:
        check_name(name)
        path = f"{self._prefix}/{urllib.parse.quote(name)}"
        where = f"{self.url.rstrip('/')}/{name}"
        headers = {"Accept-Encoding": "identity", "User-Agent": "polc-fleet"}
        if etag is not None:
            headers["If-None-Match"] = etag
        with self._lock:
            self.requests[name] += 1
            reused = self._conn is not None
            for attempt in (0, 1):
                conn = self._conn or self._connect()
                self._conn = None
                try:
                    conn.request("GET", path, headers=headers)
                    resp = conn.getresponse()
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    conn.close()
                    if reused and attempt == 0:
                        continue  # the server closed the kept-alive connection: once more, fresh
                    msg = f"{where}: unreachable: connection closed ({exc})"
                    raise OriginError(msg, reason="unreachable") from None
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    raise OriginError(f"{where}: unreachable: {_describe(exc)}", reason="unreachable") from None
                try:
                    result = self._answer(resp, where, limit)
                except BaseException:
                    conn.close()
                    raise
                if resp.will_close:
                    conn.close()
                else:
                    self._conn = conn
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _answer(resp: http.client.HTTPResponse, where: str, limit: int) -> Fetched:
        status = resp.status
        headers = {k.lower(): v for k, v in resp.getheaders()}
        tag = headers.get("etag")
        if status == 304:
            resp.read(65536)
            return Fetched(304, None, tag, headers)
        if status != 200:
            resp.read(65536)  # drain a small error body so the connection can be reused
            if status in (401, 403):
                raise OriginError(f"{where}: forbidden (HTTP {status})", reason="forbidden", status=status)
            if status == 404:
                raise OriginError(f"{where}: not found (HTTP 404)", reason="not found", status=404)
            if 500 <= status <= 599:
                raise OriginError(f"{where}: server error (HTTP {status})", reason="server error", status=status)
            if 300 <= status <= 399:
                to = headers.get("location", "?")
                raise OriginError(f"{where}: redirect (HTTP {status}) to {to} is not followed",
                                  reason="bad response", status=status)  # fmt: skip
            raise OriginError(f"{where}: unexpected HTTP {status}", reason="bad response", status=status)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise OriginError(f"{where}: content encoding {encoding!r} was not asked for", reason="bad response")
        declared = headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise OriginError(f"{where}: bad Content-Length {declared!r}", reason="bad response") from None
            if size < 0:
                raise OriginError(f"{where}: bad Content-Length {declared!r}", reason="bad response")
            if size > limit:
                raise OriginError(f"{where}: {size} bytes is more than the limit of {limit}", reason="too large")
        try:
            body = resp.read(limit + 1)
        except http.client.IncompleteRead as exc:
            got = len(exc.partial)
            raise OriginError(f"{where}: partial download: {got} of {declared or '?'} bytes",
                              reason="partial download") from None  # fmt: skip
        except (OSError, http.client.HTTPException) as exc:
            raise OriginError(f"{where}: partial download: {_describe(exc)}", reason="partial download") from None
        if len(body) > limit:
            raise OriginError(f"{where}: more than the limit of {limit} bytes", reason="too large")
        if declared is not None and len(body) != int(declared):
            raise OriginError(f"{where}: partial download: {len(body)} of {declared} bytes",
                              reason="partial download")  # fmt: skip
        return Fetched(200, body, tag, headers)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- dispatch

_S3_HINT = "s3:// URLs need boto3; install it with: pip install 'polc[s3]'"


def _s3(kind: str, url: str, endpoint: str | None) -> object:
    """``S3Origin(url, endpoint)`` or ``S3Store(url, endpoint)`` from ``polc.runtime.fleet.s3``;
    a missing boto3 (at import or construction) becomes the hint naming the extra."""
    try:
        module = importlib.import_module(__name__.rsplit(".", 1)[0] + ".s3")
        made: object = getattr(module, kind)(url, endpoint)
    except ImportError as exc:
        raise OriginError(f"{url}: {_S3_HINT} ({exc})", reason="unavailable") from None
    return made


def file_url(path: str | os.PathLike[str]) -> str:
    """A ``file://`` URL for a local path (made absolute)."""
    return Path(path).resolve().as_uri()


def _scheme(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{url!r}: empty source URL")
    if url != url.strip():
        raise ConfigError(f"{url!r}: leading or trailing whitespace in a URL")
    return urllib.parse.urlsplit(url).scheme.lower()


def open_origin(url: str, *, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Origin:
    """The origin for a URL: ``file://``, ``http(s)://`` or ``s3://`` (``endpoint``: s3 only)."""
    scheme = _scheme(url)
    if endpoint is not None and scheme != "s3":
        raise ConfigError(f"{url}: an endpoint applies to s3:// URLs only")
    if scheme == "file":
        return FileOrigin(url)
    if scheme in ("http", "https"):
        return HttpOrigin(url, timeout=timeout)
    if scheme == "s3":
        origin = _s3("S3Origin", url, endpoint)
        assert isinstance(origin, Origin)
        return origin
    raise ConfigError(f"{url}: unsupported URL scheme {scheme!r} (expected file://, http://, https:// or s3://)")


def open_store(url: str, *, endpoint: str | None = None) -> Store:
    """The store for a URL: ``file://`` or ``s3://``; HTTP origins are read-only."""
    scheme = _scheme(url)
    if endpoint is not None and scheme != "s3":
        raise ConfigError(f"{url}: an endpoint applies to s3:// URLs only")
    if scheme == "file":
        return FileStore(url)
    if scheme == "s3":
        store = _s3("S3Store", url, endpoint)
        assert isinstance(store, Store)
        return store
    if scheme in ("http", "https"):
        raise ConfigError(
            f"{url}: an HTTP server is read-only here; publish to the directory it serves (file:///...) or to s3://"
        )
    raise ConfigError(f"{url}: unsupported URL scheme {scheme!r} (expected file:// or s3://)")
