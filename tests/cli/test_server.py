"""Unit tests of polc.server: request parsing, the ASGI app and metrics, with a stand-in agent.

The end-to-end tests (a real `polc run` subprocess over real artifacts) are in
tests/cli/test_run.py; these pin the wire contract of docs/http-api.md cheaply.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from polc import server

# --------------------------------------------------------------------------- stand-ins


@dataclass
class _Decision:
    allowed: bool
    effect: str
    reason: str
    rule: str | None
    module: str
    revision: str | None
    audit: bool = False


@dataclass
class _Failure:
    file: str
    module: str
    reason: str


@dataclass
class _Result:
    changed: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    failed: list = field(default_factory=list)


class _Agent:
    def __init__(self, ready: bool = True):
        self.ready = ready
        self.calls: list[tuple] = []
        self.result = _Result()
        self.reloads = 0
        self.explode = False
        self.modules = {
            "tenant.acme": {"revision": "0123456789ab", "rules": 3, "file": "tenant.acme.bin", "last_error": None},
        }
        self.directory_error = None

    def check(self, module, capability, *args):
        if self.explode:
            raise RuntimeError("boom")
        self.calls.append((module, capability, args))
        if capability == "network.outbound" and args[:1] == ("api.acme.com",):
            return _Decision(True, "allow", "entitled", "acme.pol:3:5", module, "0123456789ab")
        if capability == "audit.me":
            return _Decision(True, "deny", "would deny", "acme.pol:9:5", module, "0123456789ab", True)
        return _Decision(False, "deny", "no entitlement", None, module, "0123456789ab")

    def reload_now(self):
        self.reloads += 1
        return self.result

    def status(self):
        return {
            "policy_dir": "/p",
            "reload": True,
            "reload_interval": 5.0,
            "ready": self.ready,
            "last_reload": None,
            "reloads": {"ok": 4, "failed": 2},
            "directory_error": self.directory_error,
            "modules": {k: dict(v) for k, v in self.modules.items()},
        }


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _call(
    app: server.DecisionApp,
    method: str,
    path: str,
    body: bytes | list[bytes] = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    json_type: bool = True,
    query: bytes = b"",
    root_path: str = "",
    server_addr: tuple[str, int] = ("127.0.0.1", 8181),
) -> _Response:
    """Drive the ASGI app the way uvicorn does, body delivered in the given chunks.

    A POST says ``Content-Type: application/json`` unless ``json_type`` is false
    or ``headers`` name a content type.
    """
    headers = list(headers or [])
    if method == "POST" and json_type and not any(k == b"content-type" for k, _ in headers):
        headers.append((b"content-type", b"application/json"))
    chunks = body if isinstance(body, list) else [body]
    received: list[int] = []  # how many chunks the app pulled

    async def receive():
        i = len(received)
        received.append(i)
        if i >= len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": root_path + path,
        "root_path": root_path,
        "query_string": query,
        "headers": headers,
        "server": server_addr,
    }
    asyncio.run(app(scope, receive, send))
    start, body_msg = sent
    assert start["type"] == "http.response.start"
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    assert int(hdrs["content-length"]) == len(body_msg["body"])
    _call.received = len(received)  # type: ignore[attr-defined]
    return _Response(start["status"], hdrs, body_msg["body"])


def _with_bad_module(agent: _Agent) -> _Agent:
    agent.modules["tenant.bad"] = {"revision": None, "rules": 0, "file": "tenant.bad.bin", "last_error": "digest mismatch"}
    return agent


@dataclass
class _Event:
    kind: str
    module: str | None = None


def _app(**kw) -> tuple[server.DecisionApp, _Agent]:
    agent = kw.pop("agent", None) or _Agent()
    return server.DecisionApp(agent, **kw), agent


def _post(app, path, obj) -> _Response:
    return _call(app, "POST", path, json.dumps(obj).encode())


# --------------------------------------------------------------------------- check


def test_check_allowed_returns_the_decision_fields():
    app, agent = _app()
    r = _post(app, "/v1/check", {"module": "tenant.acme", "capability": "network.outbound", "args": ["api.acme.com", 443]})
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "allowed": True,
        "effect": "allow",
        "reason": "entitled",
        "rule": "acme.pol:3:5",
        "revision": "0123456789ab",
        "audit": False,
        "module": "tenant.acme",
    }
    assert agent.calls == [("tenant.acme", "network.outbound", ("api.acme.com", 443))]


def test_check_args_default_to_none_given():
    app, agent = _app()
    r = _post(app, "/v1/check", {"module": "m", "capability": "threads.create"})
    assert r.status == 200 and r.json()["allowed"] is False
    assert agent.calls == [("m", "threads.create", ())]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{bad", "malformed JSON"),
        (b"", "request body is empty"),
        (b"   ", "request body is empty"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2]", "request body must be a JSON object, not an array"),
        (b'"x"', "request body must be a JSON object, not a string"),
        (b'{"capability": "c"}', "module: missing required field"),
        (b'{"module": "m"}', "capability: missing required field"),
        (b'{"module": 3, "capability": "c"}', "module: must be a string, not a number"),
        (b'{"module": "", "capability": "c"}', "module: must not be empty"),
        (b'{"module": "m", "capability": null}', "capability: must be a string, not null"),
        (b'{"module": "m", "capability": "c", "args": "x"}', "args: must be an array, not a string"),
        (b'{"module": "m", "capability": "c", "args": [true]}', "args[0]: must be a string or an integer, not a boolean"),
        (b'{"module": "m", "capability": "c", "args": ["a", 1.5]}', "args[1]: must be a string or an integer, not a number"),
        (b'{"module": "m", "capability": "c", "args": [[1]]}', "args[0]: must be a string or an integer, not an array"),
        (b'{"module": "m", "capability": "c", "arg": []}', "arg: unknown field"),
        (b"[" * 100_000, "malformed JSON"),
        (json.dumps({"module": "m" * 4097, "capability": "c"}).encode(), "module: longer than 4096"),
        (json.dumps({"module": "m", "capability": "c", "args": ["a" * 4097]}).encode(), "args[0]: longer than 4096"),
        (b'{"module": "m", "capability": "c", "args": [' + b"9" * 5000 + b"]}", "malformed JSON"),
    ],
)
def test_check_rejects_bad_bodies_with_400_and_a_reason(body, message):
    app, agent = _app()
    r = _call(app, "POST", "/v1/check", body)
    assert r.status == 400, r.body
    assert message in r.json()["error"]
    assert r.json()["status"] == 400
    assert agent.calls == []


def test_wrong_value_types_are_policy_denies_not_request_errors():
    # "443" where a port is expected: structurally fine, so the agent decides (a deny with a reason).
    app, agent = _app()
    r = _post(app, "/v1/check", {"module": "m", "capability": "network.outbound", "args": ["h", "443"]})
    assert r.status == 200
    assert agent.calls == [("m", "network.outbound", ("h", "443"))]


def test_oversized_body_is_refused_by_content_length_without_reading_it():
    app, agent = _app(max_body=100)
    r = _call(app, "POST", "/v1/check", b"x" * 200, headers=[(b"content-length", b"200")])
    assert r.status == 413
    assert r.headers["connection"] == "close"
    assert "larger than 100 bytes" in r.json()["error"]
    assert _call.received == 0  # type: ignore[attr-defined]


def test_oversized_chunked_body_stops_reading_at_the_cap():
    app, agent = _app(max_body=100)
    chunks = [b"x" * 60] * 1000  # 60 kB announced by nobody
    r = _call(app, "POST", "/v1/check", chunks)
    assert r.status == 413
    assert _call.received == 2  # type: ignore[attr-defined]


def test_body_at_exactly_the_cap_is_accepted():
    body = json.dumps({"module": "m", "capability": "c"}).encode()
    app, _ = _app(max_body=len(body))
    assert _call(app, "POST", "/v1/check", [body[:5], body[5:]]).status == 200


def test_invalid_content_length_is_400():
    app, _ = _app()
    r = _call(app, "POST", "/v1/check", b"{}", headers=[(b"content-length", b"nope")])
    assert r.status == 400


# --------------------------------------------------------------------------- batch


def test_batch_answers_in_order():
    app, agent = _app()
    reqs = [
        {"module": "a", "capability": "network.outbound", "args": ["api.acme.com", 443]},
        {"module": "b", "capability": "fs.read", "args": ["r", "p"]},
        {"module": "c", "capability": "network.outbound", "args": ["api.acme.com", 443]},
    ]
    r = _post(app, "/v1/check/batch", {"requests": reqs})
    assert r.status == 200
    results = r.json()["results"]
    assert [x["module"] for x in results] == ["a", "b", "c"]
    assert [x["allowed"] for x in results] == [True, False, True]


def test_empty_batch_is_fine():
    app, _ = _app()
    r = _post(app, "/v1/check/batch", {"requests": []})
    assert r.status == 200 and r.json() == {"results": []}


def test_batch_over_the_cap_is_413():
    app, agent = _app(max_batch=3)
    r = _post(app, "/v1/check/batch", {"requests": [{"module": "m", "capability": "c"}] * 4})
    assert r.status == 413
    assert "at most 3" in r.json()["error"]
    assert agent.calls == []


@pytest.mark.parametrize(
    "obj, message",
    [
        ({}, "requests: missing required field"),
        ({"requests": {}}, "requests: must be an array, not an object"),
        ({"requests": [], "x": 1}, "x: unknown field"),
        ({"requests": [{"module": "m", "capability": "c"}, {"module": "m"}]}, "requests[1].capability: missing"),
        ({"requests": [{"module": "m", "capability": "c", "args": [None]}]}, "requests[0].args[0]: must be a string"),
        ({"requests": [7]}, "requests[0] must be a JSON object"),
    ],
)
def test_batch_with_a_bad_item_is_rejected_whole(obj, message):
    app, agent = _app()
    r = _post(app, "/v1/check/batch", obj)
    assert r.status == 400
    assert message in r.json()["error"]
    assert agent.calls == []


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_reload_accepts_only_post(method):
    app, agent = _app()
    r = _call(app, method, "/policy/reload")
    assert r.status == 405
    assert r.headers["allow"] == "POST"
    assert agent.reloads == 0


def test_get_endpoints_refuse_post_with_allow_header():
    app, _ = _app()
    r = _call(app, "POST", "/healthz")
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD"


def test_check_refuses_get():
    app, _ = _app()
    assert _call(app, "GET", "/v1/check").status == 405


def test_unknown_path_is_404_json():
    app, _ = _app()
    r = _call(app, "GET", "/v1/nope")
    assert r.status == 404 and "no such endpoint" in r.json()["error"]


def test_an_exception_in_a_handler_is_a_500_and_the_app_keeps_serving():
    app, agent = _app()
    agent.explode = True
    r = _post(app, "/v1/check", {"module": "m", "capability": "c"})
    assert r.status == 500 and "internal error" in r.json()["error"]
    agent.explode = False
    assert _post(app, "/v1/check", {"module": "m", "capability": "c"}).status == 200


# --------------------------------------------------------------------------- reload, health, status


def test_reload_ok_is_200_reloaded():
    app, agent = _app()
    agent.result = _Result(changed=["tenant.acme"])
    r = _call(app, "POST", "/policy/reload")
    assert r.status == 200
    assert r.json() == {
        "status": "reloaded",
        "policy_dir": "/p",
        "changed": ["tenant.acme"],
        "removed": [],
        "failed": [],
        "errors": [],
    }
    assert agent.reloads == 1


def test_reload_with_failures_is_422_and_names_them():
    app, agent = _app()
    agent.result = _Result(changed=["tenant.globex"], failed=[_Failure("tenant.bad.bin", "tenant.bad", "digest mismatch")])
    _with_bad_module(agent)
    r = _call(app, "POST", "/policy/reload")
    assert r.status == 422
    body = r.json()
    assert body["status"] == "partial"
    assert body["changed"] == ["tenant.globex"]
    assert body["failed"] == [{"file": "tenant.bad.bin", "module": "tenant.bad", "reason": "digest mismatch"}]
    assert body["errors"] == [{"file": "tenant.bad.bin", "module": "tenant.bad", "reason": "digest mismatch"}]
    assert body["error"] == "not in force: tenant.bad.bin: digest mismatch"  # reported once

    agent.result = _Result(failed=[_Failure("tenant.bad.bin", "tenant.bad", "digest mismatch")])
    assert _call(app, "POST", "/policy/reload").json()["status"] == "failed"


def test_reload_reports_an_earlier_failure_that_still_stands():
    # The poller met the bad file first: this step changes nothing, but the
    # directory is still not in force, and the operator asking must hear it.
    app, agent = _app()
    _with_bad_module(agent)
    r = _call(app, "POST", "/policy/reload")
    assert r.status == 422
    assert r.json()["status"] == "failed" and r.json()["failed"] == []
    assert r.json()["errors"][0]["module"] == "tenant.bad"


def test_a_removed_file_is_not_an_error():
    app, agent = _app()
    agent.modules["tenant.acme"]["last_error"] = "file removed; keeping the last policy loaded"
    app.metrics.on_event(_Event("removed", "tenant.acme"))
    agent.result = _Result(removed=["tenant.acme"])
    r = _call(app, "POST", "/policy/reload")
    assert r.status == 200 and r.json()["removed"] == ["tenant.acme"] and r.json()["errors"] == []
    # ...until a new file for it fails.
    app.metrics.on_event(_Event("failed", "tenant.acme"))
    agent.result = _Result()
    assert _call(app, "POST", "/policy/reload").status == 422


def test_an_unreadable_directory_is_reported():
    app, agent = _app()
    agent.directory_error = "No such file or directory"
    agent.result = _Result(failed=[_Failure("/p", None, "policy directory unavailable: No such file or directory")])
    r = _call(app, "POST", "/policy/reload")
    assert r.status == 422
    assert r.json()["error"] == "not in force: p: policy directory unavailable: No such file or directory"
    assert "polc_policy_dir_available 0" in _call(app, "GET", "/metrics").body.decode()


def test_reload_before_first_load_is_503():
    app, agent = _app(agent=_Agent(ready=False))
    assert _call(app, "POST", "/policy/reload").status == 503
    assert agent.reloads == 0


def test_checks_are_503_until_ready():
    agent = _Agent(ready=False)
    app, _ = _app(agent=agent)
    r = _post(app, "/v1/check", {"module": "m", "capability": "c"})
    assert r.status == 503 and r.headers["retry-after"] == "1" and "still loading" in r.json()["error"]
    assert _post(app, "/v1/check/batch", {"requests": []}).status == 503
    assert _call(app, "POST", "/v1/check", b"{").status == 400  # a bad request is still a bad request
    assert agent.calls == []
    agent.ready = True
    assert _post(app, "/v1/check", {"module": "m", "capability": "c"}).status == 200


def test_healthz_is_503_until_ready():
    agent = _Agent(ready=False)
    app, _ = _app(agent=agent)
    r = _call(app, "GET", "/healthz")
    assert r.status == 503 and r.json() == {"status": "loading"}
    agent.ready = True
    r = _call(app, "GET", "/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}


def test_status_adds_version_and_listen():
    app, agent = _app(listen="127.0.0.1:1")
    _with_bad_module(agent)
    body = _call(app, "GET", "/v1/status").json()
    assert body["modules"]["tenant.bad"]["last_error"] == "digest mismatch"
    assert body["listen"] == "127.0.0.1:1"
    assert body["version"]


# --------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"\\]*",?)*\})? -?[0-9.e+]+$')


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ ", line), line
            continue
        assert _SAMPLE.match(line), line
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_metrics_count_checks_reloads_and_requests():
    app, agent = _app()
    _post(app, "/v1/check", {"module": "m", "capability": "network.outbound", "args": ["api.acme.com", 443]})
    _post(app, "/v1/check", {"module": "m", "capability": "c"})
    _post(app, "/v1/check", {"module": "m", "capability": "audit.me"})
    _post(app, "/v1/check/batch", {"requests": [{"module": "m", "capability": "c"}] * 2})
    _call(app, "POST", "/v1/check", b"{")

    _with_bad_module(agent)
    for kind in ("loaded", "loaded", "reloaded", "failed", "removed"):
        app.metrics.on_event(_Event(kind, "tenant.x"))

    r = _call(app, "GET", "/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    s = _samples(r.body.decode())
    assert s['polc_checks_total{effect="allow"}'] == 1
    assert s['polc_checks_total{effect="deny"}'] == 4
    assert s["polc_checks_audit_total"] == 1
    assert s['polc_reloads_total{status="ok"}'] == 4  # the agent's own counts
    assert s['polc_reloads_total{status="failed"}'] == 2
    assert s["polc_last_successful_reload_timestamp_seconds"] > 1e9
    assert s["polc_active_modules"] == 1
    assert s["polc_module_errors"] == 1
    assert s["polc_ready"] == 1
    assert s["polc_policy_dir_available"] == 1
    assert s['polc_http_requests_total{handler="check",code="200"}'] == 3
    assert s['polc_http_requests_total{handler="check",code="400"}'] == 1


# --------------------------------------------------------------------------- listen addresses


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:8181", ("127.0.0.1", 8181)),
        (":9000", ("127.0.0.1", 9000)),
        ("9000", ("127.0.0.1", 9000)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:8181", ("::1", 8181)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_listen(text, expected):
    assert server.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["::1:8181", "h:x", "h:70000", "[::1]8181", "h:-1"])
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError):
        server.parse_listen(text)


def test_loopback_detection():
    assert server.is_loopback("127.0.0.1") and server.is_loopback("::1") and server.is_loopback("localhost")
    assert not server.is_loopback("0.0.0.0") and not server.is_loopback("10.1.2.3")


# --------------------------------------------------------------------------- who may ask: browsers, hosts, tokens


_ACME = {"module": "tenant.acme", "capability": "network.outbound", "args": ["api.acme.com", 443]}


def _json_body(obj=_ACME) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "ctype",
    [
        None,
        b"text/plain",
        b"text/plain;charset=UTF-8",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/jsonx",
        b"application/json; charset=latin-1",
    ],
)
def test_a_post_without_a_json_content_type_is_415_and_does_nothing(ctype):
    # A page on any site can make a browser send these ("simple" requests, no preflight).
    app, agent = _app()
    headers = [] if ctype is None else [(b"content-type", ctype)]
    for path, body in (("/policy/reload", b""), ("/v1/check", _json_body()), ("/v1/check/batch", b'{"requests": []}')):
        r = _call(app, "POST", path, body, headers=headers, json_type=False)
        assert r.status == 415, (path, r.body)
        assert "application/json" in r.json()["error"]
    assert agent.reloads == 0 and agent.calls == []


@pytest.mark.parametrize("ctype", [b"application/json", b"Application/JSON", b"application/json; charset=utf-8", b'application/json;charset="UTF-8"'])
def test_json_content_types_are_accepted(ctype):
    app, agent = _app()
    assert _call(app, "POST", "/v1/check", _json_body(), headers=[(b"content-type", ctype)]).status == 200


def test_two_content_types_are_415():
    app, _ = _app()
    headers = [(b"content-type", b"application/json"), (b"content-type", b"text/plain")]
    assert _call(app, "POST", "/v1/check", _json_body(), headers=headers).status == 415


def test_reload_takes_an_empty_body_or_an_empty_object():
    app, agent = _app()
    assert _call(app, "POST", "/policy/reload", b"").status == 200
    assert _call(app, "POST", "/policy/reload", b"{}").status == 200
    r = _call(app, "POST", "/policy/reload", b'{"force": true}')
    assert r.status == 400 and "force: unknown field" in r.json()["error"]
    assert _call(app, "POST", "/policy/reload", b"[]").status == 400
    assert agent.reloads == 2


@pytest.mark.parametrize("origin", [b"http://evil.example", b"null", b"http://localhost:3000", b"http://127.0.0.1:8181"])
def test_an_origin_not_on_the_allow_list_is_403(origin):
    app, agent = _app()
    for method, path in (("POST", "/policy/reload"), ("POST", "/v1/check"), ("GET", "/v1/status"), ("GET", "/metrics")):
        r = _call(app, method, path, _json_body() if path == "/v1/check" else b"", headers=[(b"origin", origin)])
        assert r.status == 403, (path, r.body)
        assert "access-control-allow-origin" not in r.headers
    assert agent.reloads == 0 and agent.calls == []


def test_the_exact_cross_site_reload_of_the_report_is_refused():
    # <form method=POST enctype=text/plain action=http://127.0.0.1:8181/policy/reload> on evil.example
    app, agent = _app()
    headers = [(b"host", b"127.0.0.1:8181"), (b"origin", b"http://evil.example"), (b"content-type", b"text/plain")]
    assert _call(app, "POST", "/policy/reload", b"x=y", headers=headers).status in (403, 415)
    assert agent.reloads == 0


def test_a_request_the_browser_marks_cross_site_is_403_even_without_origin():
    app, _ = _app()
    for site in (b"cross-site", b"same-site"):
        assert _call(app, "GET", "/v1/status", headers=[(b"sec-fetch-site", site)]).status == 403
    for site in (b"same-origin", b"none"):
        assert _call(app, "GET", "/v1/status", headers=[(b"sec-fetch-site", site)]).status == 200


def test_an_allowed_origin_gets_cors_headers_and_preflights():
    app, agent = _app(allow_origins=["https://Ops.Example.com:443/", "http://localhost:3000"])
    r = _call(app, "POST", "/v1/check", _json_body(), headers=[(b"origin", b"https://ops.example.com")])
    assert r.status == 200
    assert r.headers["access-control-allow-origin"] == "https://ops.example.com"
    assert r.headers["vary"] == "Origin"
    # Errors are readable by the allowed page too.
    r = _call(app, "POST", "/v1/check", b"{", headers=[(b"origin", b"http://localhost:3000")])
    assert r.status == 400 and r.headers["access-control-allow-origin"] == "http://localhost:3000"

    pre = [(b"origin", b"http://localhost:3000"), (b"access-control-request-method", b"POST")]
    r = _call(app, "OPTIONS", "/policy/reload", headers=pre)
    assert r.status == 204 and r.body == b""
    assert r.headers["access-control-allow-methods"] == "POST"
    assert "content-type" in r.headers["access-control-allow-headers"]
    assert "authorization" in r.headers["access-control-allow-headers"]
    assert agent.reloads == 0
    # Not a preflight, or not from an allowed origin: as before.
    assert _call(app, "OPTIONS", "/policy/reload").status == 405
    assert _call(app, "OPTIONS", "/policy/reload", headers=[(b"origin", b"http://evil.example"), pre[1]]).status == 403


@pytest.mark.parametrize("bad", ["null", "*", "ftp://x", "http://x/path", "http://x?q", "localhost:3000", "http://"])
def test_allow_origin_values_are_validated(bad):
    with pytest.raises(ValueError):
        server.parse_origin(bad)


@pytest.mark.parametrize(
    "host",
    [b"evil.example", b"evil.example:8181", b"localhost.", b"127.1:8181", b"2130706433", b"0.0.0.0:8181", b"[::2]:8181", b"sub.localhost"],
)
def test_a_host_that_does_not_name_this_server_is_421(host):
    # DNS rebinding: evil.example resolves to 127.0.0.1, the browser sends Host: evil.example.
    app, agent = _app(listen="127.0.0.1:8181")
    for method, path in (("GET", "/v1/status"), ("GET", "/healthz"), ("POST", "/policy/reload")):
        r = _call(app, method, path, headers=[(b"host", host)])
        assert r.status == 421, (host, path, r.body)
    assert agent.reloads == 0


@pytest.mark.parametrize("host", [b"127.0.0.1:8181", b"127.0.0.1", b"localhost:8181", b"LOCALHOST", b"localhost:9"])
def test_the_listening_address_and_localhost_are_served(host):
    app, _ = _app(listen="127.0.0.1:8181")
    assert _call(app, "GET", "/v1/status", headers=[(b"host", host)]).status == 200


def test_hosts_on_a_wildcard_listen_and_configured_names():
    app, _ = _app(listen="0.0.0.0:8181", allow_hosts=["sidecar.internal", "[::1]"])
    ok = lambda host, addr=("10.1.2.3", 8181): _call(  # noqa: E731
        app, "GET", "/v1/status", headers=[(b"host", host)], server_addr=addr
    ).status
    assert ok(b"10.1.2.3:8181") == 200  # the address the connection arrived on
    assert ok(b"10.1.2.4:8181") == 421
    assert ok(b"0.0.0.0:8181") == 421
    assert ok(b"Sidecar.Internal:8181") == 200
    assert ok(b"[::1]:8181") == 200
    assert ok(b"[0:0:0:0:0:0:0:1]") == 200  # the same address
    assert ok(b"[fd00::1]:8181", ("fd00::1", 8181)) == 200
    any_app, _ = _app(listen="127.0.0.1:8181", allow_hosts=["*"])
    assert _call(any_app, "GET", "/v1/status", headers=[(b"host", b"whatever.example")]).status == 200


def test_malformed_or_repeated_host_is_400_and_no_host_is_served():
    app, _ = _app(listen="127.0.0.1:8181")
    for host in (b"", b"local host", b"localhost:http", b"[::1", b"[nope]:1", b"\xff"):
        assert _call(app, "GET", "/v1/status", headers=[(b"host", host)]).status in (400, 421), host
    assert _call(app, "GET", "/v1/status", headers=[(b"host", b"localhost"), (b"host", b"evil")]).status == 400
    assert _call(app, "GET", "/v1/status").status == 200  # HTTP/1.0 without Host: not a browser


def test_a_token_guards_every_endpoint_but_healthz(monkeypatch):
    app, agent = _app(token="s3cret-token-0123456789")
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    requests = [("POST", "/v1/check", _json_body()), ("POST", "/v1/check/batch", b'{"requests": []}'),
                ("POST", "/policy/reload", b""), ("GET", "/v1/status", b""), ("GET", "/metrics", b""),
                ("GET", "/nope", b"")]  # fmt: skip
    for method, path, body in requests:
        r = _call(app, method, path, body)
        assert r.status == 401, path
        assert r.headers["www-authenticate"] == 'Bearer realm="polc"'
        for value in (b"Bearer wrong", b"Basic czNjcmV0", b"Bearer", b"bearer s3cret-token-012345678"):
            r = _call(app, method, path, body, headers=[(b"authorization", value)])
            assert r.status == 401, (path, value)
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
        good = [(b"authorization", b"Bearer s3cret-token-0123456789")]
        assert _call(app, method, path, body, headers=good).status == (404 if path == "/nope" else 200)
        assert _call(app, method, path, body, headers=[(b"authorization", b"bearer  s3cret-token-0123456789 ")]).status != 401
    assert agent.reloads == 2 and len(agent.calls) == 2
    assert compared  # the comparison is hmac.compare_digest's (constant time)
    assert _call(app, "GET", "/healthz").status == 200
    two = [(b"authorization", b"Bearer s3cret-token-0123456789")] * 2
    assert _call(app, "GET", "/v1/status", headers=two).status == 401


@pytest.mark.parametrize(
    "path, body, key",
    [
        ("/v1/check", b'{"module": "tenant.acme", "module": "tenant.evil", "capability": "c"}', "module"),
        ("/v1/check", b'{"module": "m", "capability": "c", "capability": "c"}', "capability"),
        ("/v1/check", b'{"module": "m", "capability": "c", "args": [], "args": ["x"]}', "args"),
        ("/v1/check/batch", b'{"requests": [], "requests": [{"module": "m", "capability": "c"}]}', "requests"),
        ("/v1/check/batch", b'{"requests": [{"module": "m", "capability": "c", "module": "n"}]}', "module"),
        ("/policy/reload", b'{"a": 1, "a": 2}', "a"),
    ],
)
def test_duplicate_keys_in_request_json_are_400(path, body, key):
    app, agent = _app()
    r = _call(app, "POST", path, body)
    assert r.status == 400, r.body
    assert r.json()["error"] == f"duplicate key {key!r} in a JSON object"
    assert agent.calls == [] and agent.reloads == 0


# --------------------------------------------------------------------------- status filter


def _three_modules() -> _Agent:
    agent = _Agent()
    for name in ("tenant.globex", "_global"):
        agent.modules[name] = {"revision": "ab" * 6, "rules": 1, "file": f"{name}.bin", "last_error": None}
    return agent


def test_status_filters_by_module():
    app, _ = _app(agent=_three_modules())
    assert set(_call(app, "GET", "/v1/status").json()["modules"]) == {"tenant.acme", "tenant.globex", "_global"}
    body = _call(app, "GET", "/v1/status", query=b"module=tenant.acme").json()
    assert list(body["modules"]) == ["tenant.acme"]
    assert body["ready"] is True and body["version"]  # the rest of the answer is kept
    body = _call(app, "GET", "/v1/status", query=b"module=tenant.acme&module=_global&module=tenant.acme").json()
    assert set(body["modules"]) == {"tenant.acme", "_global"}
    assert _call(app, "GET", "/v1/status", query=b"module=tenant%2Eacme").json()["modules"].keys() == {"tenant.acme"}


def test_status_of_an_unknown_module_is_an_empty_map():
    app, _ = _app(agent=_three_modules())
    r = _call(app, "GET", "/v1/status", query=b"module=tenant.nope")
    assert r.status == 200 and r.json()["modules"] == {}


@pytest.mark.parametrize("query, message", [(b"modul=x", "modul: unknown query parameter"), (b"module=", "module: must not be empty"), (b"module", "malformed query"), (b"module=%ff", "malformed query")])
def test_status_query_errors_are_400(query, message):
    app, _ = _app(agent=_three_modules())
    r = _call(app, "GET", "/v1/status", query=query)
    assert r.status == 400 and message in r.json()["error"]


# --------------------------------------------------------------------------- mounted under a prefix


def _mounted(app: server.DecisionApp, prefix: str, *, strip: bool):
    """A minimal host application: everything under ``prefix`` goes to ``app``.

    ``strip``: the older convention, where the router also removes the prefix
    from ``path`` (Starlette before 0.33); today's keeps it and sets ``root_path``.
    """

    async def host(scope, receive, send):
        path = scope["path"]
        if scope["type"] == "http" and (path == prefix or path.startswith(prefix + "/")):
            child = dict(scope, root_path=scope.get("root_path", "") + prefix)
            if strip:
                child["path"] = path[len(prefix) :]
            await app(child, receive, send)
            return
        body = b"host app"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"8")]})
        await send({"type": "http.response.body", "body": body})

    return host


def _call_host(host, method, path, body=b"", headers=()):
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), *headers], "server": ("127.0.0.1", 8000)}  # fmt: skip
    asyncio.run(host(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


@pytest.mark.parametrize("strip", [False, True])
def test_mounted_under_a_prefix_the_routes_are_relative_to_it(strip):
    app, agent = _app()
    host = _mounted(app, "/polc", strip=strip)
    status, body = _call_host(host, "POST", "/polc/v1/check", _json_body())
    assert status == 200 and json.loads(body)["allowed"] is True
    assert _call_host(host, "GET", "/polc/healthz")[0] == 200
    assert _call_host(host, "GET", "/polc/v1/status")[0] == 200
    assert _call_host(host, "GET", "/polc/nope")[0] == 404
    assert _call_host(host, "GET", "/other") == (200, b"host app")


def test_root_path_is_only_stripped_at_a_segment_boundary():
    app, _ = _app()
    r = _call(app, "GET", "x/healthz", root_path="/polc")  # path "/polcx/healthz"
    assert r.status == 404
    assert _call(app, "GET", "/healthz", root_path="/polc").status == 200
