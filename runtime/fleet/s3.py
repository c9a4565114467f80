"""``s3://bucket/prefix``: a published set in any S3-compatible object store, through boto3.

``S3Origin`` is what an agent pulls from: one ``GetObject`` per name,
conditional (``If-None-Match``) when an ETag is known, so an idle cycle is
one request answered 304 with no body. ``S3Store`` is what ``polc publish``
writes to: ``HeadObject`` (is this digest-named object there already?),
``PutObject`` (atomic per key in S3) and ``GetObject``.

Where to connect: ``endpoint`` (``--endpoint``, ``POLC_SOURCE_ENDPOINT``, ``endpoint=``), else ``AWS_ENDPOINT_URL_S3``,
else ``AWS_ENDPOINT_URL``, else what boto3 resolves from its configuration
(AWS itself by default). Every one of them is checked before it is used: an
``http``/``https`` URL naming a host, and nothing else (no credentials, path,
query or fragment); the variables are named in the message when they are not.
Credentials and the region come from the standard AWS variables and files
(boto3's own chain); nothing here reads a secret.

boto3 is the ``s3`` extra (``pip install 'polc[s3]'``) and is imported when an
``S3Origin`` or ``S3Store`` is made, never when this module is imported.

Every failure is an :class:`~polc.runtime.errors.OriginError` with a fixed
``reason`` and a message that names the object and what the store said:
``forbidden`` (AccessDenied, a wrong or unknown key, an expired token, no
credentials at all), ``not found`` (NoSuchKey, NoSuchBucket), ``server error``
(5xx), ``unreachable`` (no connection, a timeout), ``too large``,
``partial download`` (the body ended before its Content-Length), ``bad
response`` (anything else).
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, OriginError
from .origin import DEFAULT_TIMEOUT, MANIFEST_NAME, MAX_MANIFEST_SIZE, MAX_OBJECT_SIZE, Fetched, check_name

__all__ = [
    "ENDPOINT_VARIABLES",
    "S3Location",
    "S3Origin",
    "S3Store",
    "check_endpoint",
    "parse_s3_url",
    "resolve_endpoint",
]

# Read in this order when no endpoint is given (boto3 reads the same two itself).
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
MAX_URL_LENGTH = 2048
_CHUNK = 1 << 20

_HINT = "s3:// URLs need boto3; install it with: pip install 'polc[s3]'"
# Bucket names as S3 allows them for new buckets (and SeaweedFS too): 3..63 of
# [a-z0-9.-], starting and ending with a letter or digit, no "..", not an IPv4 address.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}\Z")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?\Z")
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]")
_CONTROL_ANY = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_FORBIDDEN_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "AccountProblem", "InvalidSecurity", "RequestTimeTooSkewed",
    "MissingSecurityHeader", "AuthorizationHeaderMalformed",
})  # fmt: skip
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_NOT_MODIFIED_CODES = frozenset({"304", "NotModified"})


# --------------------------------------------------------------------------- URLs


class S3Location:
    """A parsed ``s3://bucket/prefix``: the bucket and the key prefix (``""`` or ``a/b/``)."""

    __slots__ = ("bucket", "prefix", "url")

    def __init__(self, url: str, bucket: str, prefix: str) -> None:
        self.url = url
        self.bucket = bucket
        self.prefix = prefix

    def key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def where(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket`` or ``s3://bucket/prefix``; ConfigError for anything else."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise ConfigError(f"{url!r:.80}: not an s3:// URL of at most {MAX_URL_LENGTH} characters")
    if _CONTROL.search(url):
        raise ConfigError(f"{url!r}: whitespace or control characters in an s3:// URL")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"{url}: not a URL ({exc})") from None
    if parts.scheme.lower() != "s3":
        raise ConfigError(f"{url}: expected s3://bucket/prefix")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError(f"{url}: an s3:// URL takes no query or fragment")
    bucket = parts.netloc
    if "@" in bucket or ":" in bucket:
        raise ConfigError(f"{url}: an s3:// URL names a bucket, not credentials or a port (the endpoint says where)")
    if not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket):
        raise ConfigError(f"{url}: {bucket!r} is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')")
    path = parts.path.strip("/")
    if "//" in path or "%" in path:
        raise ConfigError(f"{url}: the prefix has an empty segment or an escape")
    if path:
        try:
            check_name(path)
        except ValueError:
            raise ConfigError(
                f"{url}: the prefix {path!r} must be segments of A-Z, a-z, 0-9, '.', '_', '-', none starting with '.'"
            ) from None
        prefix = path + "/"
    else:
        prefix = ""
    return S3Location(url, bucket, prefix)


def check_endpoint(value: str, source: str) -> str:
    """An endpoint URL (``http(s)://host[:port]``) checked; ConfigError naming ``source`` if not.

    The value may come from the environment or a configuration file: it is
    treated as hostile. A trailing ``/`` is dropped; nothing else is changed.
    """
    where = f"{source} {value!r:.200}"
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: an empty endpoint URL")
    if len(value) > MAX_URL_LENGTH:
        raise ConfigError(f"{source}: an endpoint URL longer than {MAX_URL_LENGTH} characters")
    if _CONTROL.search(value) or not value.isascii():
        raise ConfigError(f"{where}: whitespace, control or non-ASCII characters in the endpoint URL")
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError as exc:  # a malformed [IPv6] literal
        raise ConfigError(f"{where}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{where}: the endpoint must be an http:// or https:// URL")
    if "%" in parts.netloc:
        raise ConfigError(f"{where}: escapes or zone ids in the endpoint's host are not accepted")
    if "@" in parts.netloc:
        raise ConfigError(f"{where}: credentials in the endpoint URL are not accepted (use the AWS variables or files)")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ConfigError(f"{where}: the endpoint URL takes no query or fragment")
    if parts.path not in ("", "/"):
        raise ConfigError(f"{where}: the endpoint URL takes no path (the bucket and prefix are in the s3:// URL)")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: bad port in the endpoint URL") from None
    if port == 0:
        raise ConfigError(f"{where}: bad port in the endpoint URL")
    host = parts.hostname or ""
    if parts.netloc.startswith("["):
        import ipaddress

        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IPv6 address") from None
    elif not host or not _HOST.match(host) or len(host) > 253:
        raise ConfigError(f"{where}: {host!r} is not a host name or address")
    return value[:-1] if value.endswith("/") else value


def resolve_endpoint(endpoint: str | None, environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """``(endpoint, where it came from)``: the argument, else the first variable set, else
    ``(None, "the AWS configuration")`` (boto3 resolves it; the result is checked after)."""
    env = os.environ if environ is None else environ
    if endpoint is not None:
        return check_endpoint(endpoint, "endpoint"), "endpoint"  # --endpoint, POLC_SOURCE_ENDPOINT, endpoint=
    for name in ENDPOINT_VARIABLES:
        value = env.get(name)
        if value:  # set and not empty (boto3 also ignores an empty one)
            return check_endpoint(value, name), name
    return None, "the AWS configuration"


# --------------------------------------------------------------------------- the client


class _Errors:
    """botocore's exception classes, and what a transport failure may raise besides them."""

    def __init__(self, exceptions: Any, transport: tuple[type[BaseException], ...]) -> None:
        self.ClientError: type[Exception] = exceptions.ClientError
        self.mod = exceptions
        self.transport = transport  # BotoCoreError, OSError, urllib3's HTTPError


_loader: Any = None
_loader_lock = threading.Lock()


def _shared_loader(loaders: Any) -> Any:
    """One botocore data loader for every client this process makes: the S3 service model is
    parsed once (about 0.15 s), not once per client. It holds no credentials or settings."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = loaders.create_loader()
        return _loader


def _client(url: str, endpoint: str | None, *, timeout: float, attempts: int) -> tuple[Any, _Errors]:
    """A boto3 S3 client and its exception classes; OriginError naming the extra without boto3."""
    try:
        import boto3
        import botocore.exceptions
        import botocore.loaders
        import botocore.session
        import urllib3.exceptions
        from botocore.config import Config
    except ImportError as exc:
        raise OriginError(f"{url}: {_HINT} ({exc})", reason="unavailable") from None
    errors = _Errors(botocore.exceptions, (botocore.exceptions.BotoCoreError, OSError, urllib3.exceptions.HTTPError))
    resolved, source = resolve_endpoint(endpoint)
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if resolved is not None else {},
        user_agent_extra="polc-fleet",
    )
    try:
        core = botocore.session.Session()  # reads the AWS variables and files now, as boto3 would
        core.register_component("data_loader", _shared_loader(botocore.loaders))
        session = boto3.session.Session(botocore_session=core)
        client = session.client("s3", endpoint_url=resolved, config=config)
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise ConfigError(f"{url}: cannot set up the S3 client ({source}): {exc}") from None
    # What boto3 resolved (its configuration files included) is checked like the rest.
    check_endpoint(client.meta.endpoint_url, f"the endpoint from {source}")
    return client, errors


def _said(value: object, limit: int) -> str:
    """What the store said (an error code or message), as one printable line of at most ``limit``
    characters: it ends up in logs and status, and the store is not trusted to keep it short or clean."""
    text = _CONTROL_ANY.sub("?", str(value)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_of(exc: BaseException, errs: _Errors, where: str) -> OriginError:
    """One botocore failure as an OriginError with a fixed reason and a precise message."""
    errors = errs.mod
    if isinstance(exc, errs.ClientError):
        response = _response_of(exc)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        error = response.get("Error", {})
        code = _said(error.get("Code") or status or "?", 64)
        message = _said(error.get("Message") or "", 200)
        said = f"HTTP {status} {code}" + (f": {message}" if message and message != code else "")
        if code in _FORBIDDEN_CODES or status in (401, 403):
            return OriginError(f"{where}: forbidden ({said})", reason="forbidden", status=status)
        if code in _NOT_FOUND_CODES or status == 404:
            return OriginError(f"{where}: not found ({said})", reason="not found", status=status)
        if isinstance(status, int) and 500 <= status <= 599:
            return OriginError(f"{where}: server error ({said})", reason="server error", status=status)
        return OriginError(f"{where}: unexpected answer ({said})", reason="bad response", status=status)
    if isinstance(exc, errors.NoCredentialsError | errors.PartialCredentialsError):
        return OriginError(
            f"{where}: forbidden: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a credentials file",
            reason="forbidden",
        )
    if isinstance(exc, errors.ReadTimeoutError | errors.ConnectTimeoutError):
        return OriginError(f"{where}: unreachable: timed out ({exc})", reason="unreachable")
    if isinstance(exc, errors.EndpointConnectionError | errors.ConnectionClosedError | errors.HTTPClientError):
        return OriginError(f"{where}: unreachable: {exc}", reason="unreachable")
    if isinstance(exc, errors.IncompleteReadError | errors.ResponseStreamingError):
        return OriginError(f"{where}: partial download: {exc}", reason="partial download")
    if isinstance(exc, errors.BotoCoreError):
        return OriginError(f"{where}: {type(exc).__name__}: {exc}", reason="bad response")
    if isinstance(exc, OSError):
        return OriginError(f"{where}: unreachable: {exc.strerror or exc}", reason="unreachable")
    # urllib3 below botocore: a connection broken in the middle of a body
    return OriginError(f"{where}: partial download: {type(exc).__name__}: {exc}", reason="partial download")


def _read_body(response: Mapping[str, Any], errors: _Errors, where: str, limit: int) -> bytes:
    """The object's body, at most ``limit`` bytes, exactly its Content-Length; OriginError if not."""
    body = response["Body"]
    try:
        declared = response.get("ContentLength")
        if declared is not None and declared > limit:
            raise OriginError(f"{where}: {declared} bytes is more than the limit of {limit}", reason="too large")
        chunks: list[bytes] = []
        got = 0
        while True:
            try:
                chunk = body.read(min(_CHUNK, limit + 1 - got))
            except errors.transport as exc:
                error = _error_of(exc, errors, where)
                if error.reason == "unreachable":  # the connection broke after the answer began
                    error = OriginError(str(error).replace(": unreachable:", ": partial download:", 1),
                                        reason="partial download")  # fmt: skip
                raise error from None
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            if got > limit:
                raise OriginError(f"{where}: more than the limit of {limit} bytes", reason="too large")
        data = b"".join(chunks)
        if declared is not None and len(data) != declared:
            raise OriginError(f"{where}: partial download: {len(data)} of {declared} bytes", reason="partial download")
        return data
    finally:
        body.close()


def _response_of(exc: BaseException) -> Mapping[str, Any]:
    """The parsed error answer a botocore ClientError carries (``{}`` when it has none)."""
    response = getattr(exc, "response", None)
    return response if isinstance(response, Mapping) else {}


def _headers(response: Mapping[str, Any]) -> dict[str, str]:
    raw = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    return {str(k).lower(): str(v) for k, v in raw.items()}


# --------------------------------------------------------------------------- origin and store


class S3Origin:
    """A published set read from ``s3://bucket/prefix`` (see the module's docstring).

    One attempt per fetch (the pull loop has its own backoff with jitter), so
    what the store served is exactly what was asked. After a ``forbidden``
    answer the next fetch makes a new client, which reads the credentials again
    (a key rotated in a credentials file takes effect without a restart). ``requests`` counts GETs by name (tests).
    Safe to share between threads: boto3 clients are.
    """

    def __init__(self, url: str, endpoint: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url
        self.location = parse_s3_url(url)
        self._endpoint_arg = endpoint
        self._timeout = timeout
        self._client, self._errors = _client(url, endpoint, timeout=timeout, attempts=1)
        self.endpoint: str = self._client.meta.endpoint_url
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._renew = False  # the last answer was "forbidden": read the credentials again first

    def _current(self, where: str) -> Any:
        with self._lock:
            if self._renew:
                try:
                    self._client, self._errors = _client(self.url, self._endpoint_arg, timeout=self._timeout,
                                                         attempts=1)  # fmt: skip
                except ConfigError as exc:  # the configuration changed under us: say so, keep the old client
                    raise OriginError(f"{where}: forbidden: cannot make a new S3 client: {exc}",
                                      reason="forbidden") from None  # fmt: skip
                self._renew = False
            return self._client

    def _failed(self, error: OriginError) -> OriginError:
        if error.reason == "forbidden":
            with self._lock:
                self._renew = True
        return error

    def fetch(self, name: str, etag: str | None = None, *, limit: int = MAX_OBJECT_SIZE) -> Fetched:
        loc = self.location
        key = loc.key(name)
        where = loc.where(name)
        with self._lock:
            self.requests[name] += 1
        params: dict[str, Any] = {"Bucket": loc.bucket, "Key": key}
        if etag is not None:
            params["IfNoneMatch"] = etag
        try:
            response = self._current(where).get_object(**params)
        except self._errors.ClientError as exc:
            answer = _response_of(exc)
            meta = answer.get("ResponseMetadata", {})
            code = str(answer.get("Error", {}).get("Code", ""))
            if etag is not None and (meta.get("HTTPStatusCode") == 304 or code in _NOT_MODIFIED_CODES):
                headers = {str(k).lower(): str(v) for k, v in (meta.get("HTTPHeaders") or {}).items()}
                return Fetched(304, None, headers.get("etag"), headers)
            raise self._failed(_error_of(exc, self._errors, where)) from None
        except self._errors.transport as exc:
            raise self._failed(_error_of(exc, self._errors, where)) from None
        data = _read_body(response, self._errors, where, limit)
        headers = _headers(response)
        return Fetched(200, data, response.get("ETag") or headers.get("etag"), headers)


# Objects are immutable (named by their digest): any cache may keep them. The
# manifest changes in place: a cache in front of the store must revalidate it
# every time (it still answers the agents' If-None-Match itself).
CACHE_CONTROL_OBJECT = "public, max-age=31536000, immutable"
CACHE_CONTROL_MANIFEST = "no-cache"


class S3Store:
    """A published set written to ``s3://bucket/prefix`` (``polc publish``).

    A few attempts per call (boto3's standard retries): publishing is one
    run, and a write of one key is atomic in S3, so a retried PUT is harmless.
    """

    def __init__(self, url: str, endpoint: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = url
        self.location = parse_s3_url(url)
        self._client, self._errors = _client(url, endpoint, timeout=timeout, attempts=3)
        self.endpoint: str = self._client.meta.endpoint_url

    def exists(self, name: str) -> bool:
        loc = self.location
        try:
            self._client.head_object(Bucket=loc.bucket, Key=loc.key(name))
        except self._errors.ClientError as exc:
            error = _error_of(exc, self._errors, loc.where(name))
            if error.reason == "not found":  # a HEAD's 404 has no body: a missing bucket shows at the PUT
                return False
            raise error from None
        except self._errors.transport as exc:
            raise _error_of(exc, self._errors, loc.where(name)) from None
        return True

    def read(self, name: str) -> bytes | None:
        loc = self.location
        where = loc.where(name)
        limit = MAX_MANIFEST_SIZE if name == MANIFEST_NAME else MAX_OBJECT_SIZE
        try:
            response = self._client.get_object(Bucket=loc.bucket, Key=loc.key(name))
        except self._errors.ClientError as exc:
            if _response_of(exc).get("Error", {}).get("Code") == "NoSuchKey":
                return None
            raise _error_of(exc, self._errors, where) from None
        except self._errors.transport as exc:
            raise _error_of(exc, self._errors, where) from None
        return _read_body(response, self._errors, where, limit)

    def put(self, name: str, data: bytes, content_type: str) -> None:
        loc = self.location
        cache = CACHE_CONTROL_MANIFEST if name == MANIFEST_NAME else CACHE_CONTROL_OBJECT
        try:
            self._client.put_object(
                Bucket=loc.bucket, Key=loc.key(name), Body=data, ContentType=content_type, CacheControl=cache
            )
        except (self._errors.ClientError, *self._errors.transport) as exc:
            error = _error_of(exc, self._errors, loc.where(name))
            if error.reason in ("bad response", "not found"):
                error = OriginError(str(error), reason="unavailable", status=error.status)
            raise error from None
