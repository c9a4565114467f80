"""The SeaweedFS fixture itself: a real S3 API that refuses what it should.

Without identities configured SeaweedFS accepts anonymous writes; the fixture
configures a publisher and a read-only reader, and these tests show that the
store the fleet tests run against really enforces them.
"""

from __future__ import annotations

import http.client

import pytest

from support.seaweed import Credentials, RecordingProxy, s3_client

pytestmark = pytest.mark.seaweedfs
ClientError = pytest.importorskip("botocore.exceptions", reason="boto3 not installed (the s3 and test extras)").ClientError


def _raw(server, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    host, port = server.endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_bound_to_loopback_on_its_own_port(seaweedfs):
    assert seaweedfs.endpoint.startswith("http://127.0.0.1:")
    assert seaweedfs.proc.poll() is None
    with open(f"/proc/{seaweedfs.pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert b"-ip.bind=127.0.0.1" in argv


def test_anonymous_requests_are_refused(seaweedfs):
    seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key="anon/present", Body=b"secret")
    status, body = _raw(seaweedfs, "GET", f"/{seaweedfs.bucket}/anon/present")
    assert status == 403 and b"AccessDenied" in body and b"secret" not in body
    status, body = _raw(seaweedfs, "PUT", f"/{seaweedfs.bucket}/anon/written", b"x")
    assert status == 403 and b"AccessDenied" in body
    # the anonymous PUT wrote nothing
    with pytest.raises(ClientError) as info:
        seaweedfs.client().head_object(Bucket=seaweedfs.bucket, Key="anon/written")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_the_reader_reads_but_cannot_write(seaweedfs):
    seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key="ro/object", Body=b"v1")
    reader = seaweedfs.client(seaweedfs.reader)
    assert reader.get_object(Bucket=seaweedfs.bucket, Key="ro/object")["Body"].read() == b"v1"
    with pytest.raises(ClientError) as info:
        reader.put_object(Bucket=seaweedfs.bucket, Key="ro/object", Body=b"v2")
    assert info.value.response["Error"]["Code"] == "AccessDenied"
    assert seaweedfs.client().get_object(Bucket=seaweedfs.bucket, Key="ro/object")["Body"].read() == b"v1"


def test_a_wrong_secret_is_refused(seaweedfs):
    seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key="wrong/object", Body=b"v1")
    wrong = s3_client(seaweedfs.endpoint, Credentials(seaweedfs.reader.access_key, "not-the-secret"))
    with pytest.raises(ClientError) as info:
        wrong.get_object(Bucket=seaweedfs.bucket, Key="wrong/object")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_conditional_get_answers_304_and_the_server_counts_it(seaweedfs):
    client = seaweedfs.client()
    etag = client.put_object(Bucket=seaweedfs.bucket, Key="cond/manifest.json", Body=b"{}")["ETag"]
    before = seaweedfs.request_counts()
    with pytest.raises(ClientError) as info:
        client.get_object(Bucket=seaweedfs.bucket, Key="cond/manifest.json", IfNoneMatch=etag)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    after = seaweedfs.request_counts()
    assert after[("GET", "304")] - before[("GET", "304")] == 1
    assert after[("GET", "200")] == before[("GET", "200")]


def test_signatures_verify_through_the_recording_proxy(seaweedfs):
    proxy = RecordingProxy(seaweedfs.endpoint, seaweedfs.bucket)
    try:
        seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key="proxy/a", Body=b"abc")
        reader = s3_client(proxy.endpoint, seaweedfs.reader)
        got = reader.get_object(Bucket=seaweedfs.bucket, Key="proxy/a")
        assert got["Body"].read() == b"abc"
        with pytest.raises(ClientError) as info:
            reader.get_object(Bucket=seaweedfs.bucket, Key="proxy/a", IfNoneMatch=got["ETag"])
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
        proxy.fault = 503
        with pytest.raises(ClientError) as info:
            reader.get_object(Bucket=seaweedfs.bucket, Key="proxy/a")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert [(s.method, s.key, s.status, s.conditional) for s in proxy.requests()] == [
            ("GET", "proxy/a", 200, False), ("GET", "proxy/a", 304, True), ("GET", "proxy/a", 503, False)]
    finally:
        proxy.close()
