"""runtime/fleet/s3.py: S3Origin and S3Store against a real SeaweedFS, and their hostile inputs.

The URL and endpoint checks need no server; everything that talks S3 runs
against the session's SeaweedFS (``seaweedfs`` marker), directly or through a
recording proxy that answers 5xx, drops the connection or cuts a body short.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest

from polc.runtime.errors import ConfigError, OriginError
from polc.runtime.fleet.origin import Fetched, Origin, Store, open_origin, open_store
from polc.runtime.fleet.s3 import S3Origin, S3Store, check_endpoint, parse_s3_url, resolve_endpoint

from support.seaweed import Credentials, RecordingProxy, aws_env, free_ports

needs_boto3 = pytest.mark.skipif(importlib.util.find_spec("boto3") is None,
                                 reason="boto3 not installed (the s3 and test extras)")


def use_aws(monkeypatch, tmp_path, endpoint: str | None, creds: Credentials | None) -> None:
    """This process's AWS environment: only what the test gives (no ~/.aws, no instance metadata)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in aws_env(endpoint, creds, tmp_path).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)


# --------------------------------------------------------------------------- URLs and endpoints (no server)


@pytest.mark.parametrize("url, bucket, prefix", [
    ("s3://policies", "policies", ""),
    ("s3://policies/", "policies", ""),
    ("s3://policies/prod", "policies", "prod/"),
    ("s3://my.bucket-1/fleet/prod/", "my.bucket-1", "fleet/prod/"),
])
def test_s3_urls_parse(url, bucket, prefix):
    loc = parse_s3_url(url)
    assert (loc.bucket, loc.prefix) == (bucket, prefix)
    assert loc.key("manifest.json") == prefix + "manifest.json"


@pytest.mark.parametrize("url", [
    "s3://", "s3://ab", "s3://Upper/x", "s3://bucket..name", "s3://192.168.1.1/x", "s3://-bucket/x",
    "s3://user:secret@bucket/x", "s3://bucket:9000/x", "s3://bucket/x?versionId=1", "s3://bucket/x#f",
    "s3://bucket/../etc", "s3://bucket/a//b", "s3://bucket/.hidden/x", "s3://bucket/a%2Fb", "s3://bucket/a b",
    "s3://bucket/x\n", "http://bucket/x", "s3://" + "b" * 64,
])
def test_bad_s3_urls_are_refused(url):
    with pytest.raises(ConfigError):
        parse_s3_url(url)


@pytest.mark.parametrize("value, expected", [
    ("http://127.0.0.1:8333", "http://127.0.0.1:8333"),
    ("http://127.0.0.1:8333/", "http://127.0.0.1:8333"),
    ("https://s3.eu-west-1.example.com", "https://s3.eu-west-1.example.com"),
    ("http://[::1]:9000", "http://[::1]:9000"),
    ("http://seaweedfs-s3.storage.svc.cluster.local:8333", "http://seaweedfs-s3.storage.svc.cluster.local:8333"),
])
def test_good_endpoints(value, expected):
    assert check_endpoint(value, "--endpoint") == expected


@pytest.mark.parametrize("value, says", [
    ("", "empty"),
    ("ftp://host", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("127.0.0.1:8333", "http:// or https://"),
    ("http://user:pass@host", "credentials"),
    ("http://host/bucket", "no path"),
    ("http://host/?x=1", "query"),
    ("http://host#frag", "query or fragment"),
    ("http://host:99999", "bad port"),
    ("http://host:0", "bad port"),
    ("http://ho st", "whitespace"),
    ("http://host\r\nX-Injected: 1", "control"),
    ("http://hôst", "non-ASCII"),
    ("http://", "not a host"),
    ("http://under_score", "not a host"),
    ("http://[::zz]", "not a URL"),
    ("http://[fe80::1%25eth0]", "zone ids"),
    ("http://[::1", "not a URL"),
    ("http://%6c%6f%63alhost", "escapes"),
    ("http://" + "a" * 3000, "longer than"),
])
def test_hostile_endpoints_are_refused_with_the_reason(value, says):
    with pytest.raises(ConfigError, match=None) as info:
        check_endpoint(value, "AWS_ENDPOINT_URL")
    assert says in str(info.value) and "AWS_ENDPOINT_URL" in str(info.value)


def test_endpoint_comes_from_the_argument_then_the_variables():
    env = {"AWS_ENDPOINT_URL": "http://general:1", "AWS_ENDPOINT_URL_S3": "http://s3only:2"}
    assert resolve_endpoint("http://given:3", env) == ("http://given:3", "endpoint")
    assert resolve_endpoint(None, env) == ("http://s3only:2", "AWS_ENDPOINT_URL_S3")
    assert resolve_endpoint(None, {"AWS_ENDPOINT_URL": "http://general:1"}) == ("http://general:1", "AWS_ENDPOINT_URL")
    assert resolve_endpoint(None, {"AWS_ENDPOINT_URL": ""}) == (None, "the AWS configuration")
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL_S3"):
        resolve_endpoint(None, {"AWS_ENDPOINT_URL_S3": "http://evil.example/x?y=1"})


@needs_boto3
def test_a_hostile_endpoint_variable_stops_the_origin(monkeypatch, tmp_path):
    use_aws(monkeypatch, tmp_path, "http://attacker.example/steal?x=1", Credentials("AK", "SK"))
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL.*no query"):
        open_origin("s3://policies/prod")


@needs_boto3
def test_an_endpoint_from_the_aws_config_file_is_checked_too(monkeypatch, tmp_path):
    use_aws(monkeypatch, tmp_path, None, Credentials("AK", "SK"))
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\nendpoint_url = ftp://files.example:21\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    with pytest.raises(ConfigError, match="the endpoint from the AWS configuration"):
        S3Origin("s3://policies/prod")


@needs_boto3
def test_open_origin_and_store_dispatch_s3_urls(monkeypatch, tmp_path):
    use_aws(monkeypatch, tmp_path, None, Credentials("AK", "SK"))
    origin = open_origin("s3://policies/prod", endpoint="http://127.0.0.1:9")
    store = open_store("s3://policies/prod", endpoint="http://127.0.0.1:9")
    assert isinstance(origin, S3Origin) and isinstance(origin, Origin)
    assert isinstance(store, S3Store) and isinstance(store, Store)
    assert origin.endpoint == "http://127.0.0.1:9" and origin.location.prefix == "prod/"


def test_without_boto3_the_message_names_the_extra(tmp_path):
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("boto3", "botocore"):
                    raise ImportError(f"No module named {name!r} (blocked)")
        sys.meta_path.insert(0, Block())
        from polc.runtime.errors import OriginError
        from polc.runtime.fleet.origin import open_origin
        import polc.runtime.fleet.s3  # imports without boto3
        try:
            open_origin("s3://policies/prod", endpoint="http://127.0.0.1:9")
        except OriginError as exc:
            print(exc.reason, "|", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("unavailable | s3://policies/prod: s3:// URLs need boto3")
    assert "pip install 'polc[s3]'" in proc.stdout


@needs_boto3
def test_an_unreachable_endpoint(monkeypatch, tmp_path):
    use_aws(monkeypatch, tmp_path, None, Credentials("AK", "SK"))
    (port,) = free_ports(1)  # nothing listens there
    origin = S3Origin("s3://policies/prod", f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(OriginError) as info:
        origin.fetch("manifest.json")
    assert info.value.reason == "unreachable"
    assert str(info.value).startswith("s3://policies/prod/manifest.json: unreachable:")
    assert origin.requests["manifest.json"] == 1


@needs_boto3
def test_no_credentials_at_all_is_forbidden_and_says_so(monkeypatch, tmp_path):
    use_aws(monkeypatch, tmp_path, None, None)
    (port,) = free_ports(1)
    origin = S3Origin("s3://policies/prod", f"http://127.0.0.1:{port}")
    with pytest.raises(OriginError) as info:
        origin.fetch("manifest.json")
    assert info.value.reason == "forbidden" and "no usable AWS credentials" in str(info.value)


@needs_boto3
def test_object_names_are_checked_before_any_request(monkeypatch, tmp_path):
    use_aws(monkeypatch, tmp_path, None, Credentials("AK", "SK"))
    origin = S3Origin("s3://policies/prod", "http://127.0.0.1:9")
    for name in ("../other/manifest.json", "/abs", "objects/../../x", ""):
        with pytest.raises(ValueError):
            origin.fetch(name)
    assert not origin.requests


# --------------------------------------------------------------------------- against SeaweedFS


@pytest.fixture
def prefix(request) -> str:
    """A prefix of its own for each test in the shared bucket."""
    return "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:60].strip("-")


@pytest.mark.seaweedfs
def test_store_writes_and_reads_back(seaweedfs, monkeypatch, tmp_path, prefix):
    use_aws(monkeypatch, tmp_path, seaweedfs.endpoint, seaweedfs.publisher)
    store = S3Store(seaweedfs.url(prefix))
    name = "objects/" + "ab" * 32 + ".bin"
    assert not store.exists(name) and store.read(name) is None
    store.put(name, b"artifact bytes", "application/octet-stream")
    store.put("manifest.json", b'{"revision":1}\n', "application/json")
    assert store.exists(name) and store.read(name) == b"artifact bytes"
    assert store.read("manifest.json") == b'{"revision":1}\n'
    head = seaweedfs.client().head_object(Bucket=seaweedfs.bucket, Key=f"{prefix}/{name}")
    assert head["ContentType"] == "application/octet-stream"
    assert "immutable" in head["CacheControl"]
    head = seaweedfs.client().head_object(Bucket=seaweedfs.bucket, Key=f"{prefix}/manifest.json")
    assert head["CacheControl"] == "no-cache"


@pytest.mark.seaweedfs
def test_origin_conditional_get_answers_304_until_the_object_changes(seaweedfs, monkeypatch, tmp_path, prefix):
    seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key=f"{prefix}/manifest.json", Body=b"one")
    use_aws(monkeypatch, tmp_path, seaweedfs.endpoint, seaweedfs.reader)
    origin = S3Origin(seaweedfs.url(prefix))
    first = origin.fetch("manifest.json")
    assert (first.status, first.body) == (200, b"one") and first.etag and first.etag.startswith('"')
    before = seaweedfs.request_counts()
    again = origin.fetch("manifest.json", first.etag)
    assert again == Fetched(304, None, first.etag, again.headers)
    after = seaweedfs.request_counts()
    assert after[("GET", "304")] - before[("GET", "304")] == 1 and after[("GET", "200")] == before[("GET", "200")]
    seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key=f"{prefix}/manifest.json", Body=b"two")
    changed = origin.fetch("manifest.json", first.etag)
    assert (changed.status, changed.body) == (200, b"two") and changed.etag != first.etag
    assert origin.requests["manifest.json"] == 3


@pytest.mark.seaweedfs
def test_origin_credentials_from_a_shared_credentials_file(seaweedfs, monkeypatch, tmp_path, prefix):
    seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key=f"{prefix}/manifest.json", Body=b"from a profile")
    use_aws(monkeypatch, tmp_path, seaweedfs.endpoint, None)
    creds = tmp_path / "credentials"
    creds.write_text(f"[agent]\naws_access_key_id = {seaweedfs.reader.access_key}\n"
                     f"aws_secret_access_key = {seaweedfs.reader.secret_key}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "agent")
    assert S3Origin(seaweedfs.url(prefix)).fetch("manifest.json").body == b"from a profile"


@pytest.mark.seaweedfs
def test_origin_errors_say_what_the_store_said(seaweedfs, monkeypatch, tmp_path, prefix):
    seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key=f"{prefix}/manifest.json", Body=b"x" * 100)
    use_aws(monkeypatch, tmp_path, seaweedfs.endpoint, seaweedfs.reader)
    origin = S3Origin(seaweedfs.url(prefix))

    def failure(name, origin=origin, **kw):
        with pytest.raises(OriginError) as info:
            origin.fetch(name, **kw)
        return info.value

    missing = failure("objects/" + "0" * 64 + ".bin")
    assert (missing.reason, missing.status) == ("not found", 404) and "NoSuchKey" in str(missing)
    assert str(missing).startswith(f"s3://{seaweedfs.bucket}/{prefix}/objects/")
    big = failure("manifest.json", limit=99)
    assert big.reason == "too large" and "100 bytes" in str(big)
    wrong = S3Origin(seaweedfs.url(prefix), seaweedfs.endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong = S3Origin(seaweedfs.url(prefix))
    denied = failure("manifest.json", origin=wrong)
    assert (denied.reason, denied.status) == ("forbidden", 403) and "SignatureDoesNotMatch" in str(denied)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEY0000000")
    unknown = failure("manifest.json", origin=S3Origin(seaweedfs.url(prefix)))
    assert unknown.reason == "forbidden" and "InvalidAccessKeyId" in str(unknown)


@pytest.mark.seaweedfs
def test_a_read_only_key_cannot_publish(seaweedfs, monkeypatch, tmp_path, prefix):
    use_aws(monkeypatch, tmp_path, seaweedfs.endpoint, seaweedfs.reader)
    store = S3Store(seaweedfs.url(prefix))
    with pytest.raises(OriginError) as info:
        store.put("manifest.json", b"{}", "application/json")
    assert (info.value.reason, info.value.status) == ("forbidden", 403) and "AccessDenied" in str(info.value)
    assert seaweedfs.client().list_objects_v2(Bucket=seaweedfs.bucket, Prefix=prefix)["KeyCount"] == 0


@pytest.mark.seaweedfs
def test_exists_turns_only_a_404_into_absent(seaweedfs, monkeypatch, tmp_path):
    use_aws(monkeypatch, tmp_path, seaweedfs.endpoint, seaweedfs.reader)
    store = S3Store("s3://no-such-bucket-here/prod")  # the reader may not look there: 403, not "absent"
    with pytest.raises(OriginError) as info:
        store.exists("objects/" + "1" * 64 + ".bin")
    assert (info.value.reason, info.value.status) == ("forbidden", 403)


@pytest.mark.seaweedfs
@pytest.mark.parametrize("fault, reason, status", [
    (503, "server error", 503),
    (500, "server error", 500),
    ("close", "unreachable", None),
    ("truncate", "partial download", None),
])
def test_origin_failures_through_the_proxy(seaweedfs, monkeypatch, tmp_path, prefix, fault, reason, status):
    seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key=f"{prefix}/manifest.json", Body=b"m" * 5000)
    proxy = RecordingProxy(seaweedfs.endpoint, seaweedfs.bucket)
    try:
        use_aws(monkeypatch, tmp_path, proxy.endpoint, seaweedfs.reader)
        origin = S3Origin(seaweedfs.url(prefix))
        assert origin.fetch("manifest.json").body == b"m" * 5000
        proxy.fault = fault
        with pytest.raises(OriginError) as info:
            origin.fetch("manifest.json")
        assert (info.value.reason, info.value.status) == (reason, status), str(info.value)
        assert str(info.value).startswith(f"s3://{seaweedfs.bucket}/{prefix}/manifest.json: {reason}")
        # one attempt per fetch: the pull loop retries with its own backoff
        assert [s.status for s in proxy.requests()][1:] == [fault if isinstance(fault, int) else (0 if fault == "close" else 200)]
        proxy.fault = None
        assert origin.fetch("manifest.json").status == 200
    finally:
        proxy.close()


@pytest.mark.seaweedfs
def test_what_the_store_says_is_kept_to_one_short_line(seaweedfs, proxy_factory, monkeypatch, tmp_path, prefix):
    proxy = proxy_factory()
    use_aws(monkeypatch, tmp_path, proxy.endpoint, seaweedfs.reader)
    proxy.fault = 500
    proxy.fault_message = "first\nFORGED 2026-01-01 polc: revision 99 in force\r\n" + "x" * 5000
    with pytest.raises(OriginError) as info:
        S3Origin(seaweedfs.url(prefix)).fetch("manifest.json")
    text = str(info.value)
    assert info.value.reason == "server error" and "\n" not in text and "\r" not in text
    assert "first?FORGED" in text and len(text) < 400 and text.endswith("...)")


@pytest.fixture
def proxy_factory(seaweedfs):
    made = []

    def make() -> RecordingProxy:
        made.append(RecordingProxy(seaweedfs.endpoint, seaweedfs.bucket))
        return made[-1]

    yield make
    for p in made:
        p.close()
