"""Pull cycles against a real HTTP origin (http.server on its own port): what is fetched, what is
refused, and that every failure keeps the set in force with its reason in the status.

The requests the origin answered are counted by the origin itself, so "only changed objects" and
"an idle cycle is one conditional GET answered 304" are what the server saw.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from polc.runtime.agent import PolicyAgent
from polc.runtime.fleet.mirror import STATE_DIR, Mirror
from polc.runtime.fleet.origin import HttpOrigin
from polc.runtime.fleet.puller import Puller

from support.fleet import ACME, PLATFORM, PUBLISHER, STRANGER, OriginServer, Site, art, closing

V1 = {"_global": art("_global", "g.example"), "tenant.acme": art("tenant.acme", "a1.example"),
      "tenant.globex": art("tenant.globex", "x.example")}  # fmt: skip


def allowed(directory, trust, module, host) -> bool:
    """What a fresh agent over ``directory`` decides (it loads the directory as the poller does)."""
    agent = PolicyAgent(str(directory), trust=trust, reload=False).start()
    return agent.check(module, "network.outbound", host, 443).allowed


def objects_fetched(requests) -> list[str]:
    return sorted(r.path.rsplit("/", 1)[-1] for r in requests if "/objects/" in r.path)


@pytest.fixture
def mirror_dir(tmp_path):
    return tmp_path / "mirror"


@pytest.fixture
def pulled(site: Site, origin: OriginServer, trust, mirror_dir):
    """Revision 1 published and pulled over HTTP; the origin's counts reset."""
    site.publish(V1, set_name="prod")
    puller = Puller(origin.url, str(mirror_dir), trust=trust)
    result = puller.cycle()
    assert result.outcome == "switched" and result.revision == 1, result
    assert objects_fetched(origin.take()) == sorted(hashlib.sha256(d).hexdigest() + ".bin" for d in V1.values())
    yield puller
    puller.close()


def test_idle_cycle_is_one_conditional_get_answered_304(pulled: Puller, origin: OriginServer):
    etag = pulled.status()["etag"]
    assert etag
    for _ in range(3):
        assert pulled.cycle().outcome == "unchanged"
        (req,) = origin.take()
        assert req.path == "/policies/manifest.json" and req.if_none_match == etag and req.status == 304


def test_only_changed_objects_are_fetched(pulled: Puller, site: Site, origin: OriginServer, trust, mirror_dir):
    v2 = dict(V1, **{"tenant.acme": art("tenant.acme", "a2.example")})
    site.publish(v2)
    result = pulled.cycle()
    assert result.outcome == "switched" and result.revision == 2 and result.fetched == ("tenant.acme",)
    reqs = origin.take()
    assert objects_fetched(reqs) == [hashlib.sha256(v2["tenant.acme"]).hexdigest() + ".bin"]
    assert len(reqs) == 2  # the manifest and the one changed object
    assert allowed(mirror_dir, trust, "tenant.acme", "a2.example")
    assert not allowed(mirror_dir, trust, "tenant.acme", "a1.example")
    assert allowed(mirror_dir, trust, "tenant.globex", "x.example")


def test_switch_is_one_rename_and_the_mirror_holds_the_exact_signed_bytes(pulled: Puller, mirror_dir, site: Site):
    data = os.readlink(mirror_dir / "..data")
    assert data.startswith("..set-1-")
    for module, raw in V1.items():
        link = mirror_dir / f"{module}.bin"
        assert os.readlink(link) == f"..data/{module}.bin"
        assert link.read_bytes() == raw
    assert (mirror_dir / STATE_DIR / "manifest.json").read_bytes() == (site.www / "manifest.json").read_bytes()
    floor = json.loads((mirror_dir / STATE_DIR / "floor.json").read_text())
    assert floor["revision"] == 1 and floor["set"] == "prod"


def test_removed_module_leaves_the_mirror(pulled: Puller, site: Site, mirror_dir, trust):
    site.publish({k: v for k, v in V1.items() if k != "tenant.globex"})
    assert pulled.cycle().outcome == "switched"
    assert not (mirror_dir / "tenant.globex.bin").exists() and not (mirror_dir / "tenant.globex.bin").is_symlink()
    assert not allowed(mirror_dir, trust, "tenant.globex", "x.example")


# --------------------------------------------------------------------------- failures keep the set


def _assert_kept(puller: Puller, mirror_dir, trust, reason: str, message: str, revision: int = 1) -> None:
    st = puller.status()
    assert st["revision"] == revision, st
    assert st["last_error_reason"] == reason, st
    assert message in st["last_error"], st
    assert st["consecutive_failures"] >= 1
    assert allowed(mirror_dir, trust, "tenant.acme", "a1.example")  # the previous set decides
    assert not allowed(mirror_dir, trust, "tenant.acme", "a2.example")


V2 = dict(V1, **{"tenant.acme": art("tenant.acme", "a2.example")})


@pytest.mark.parametrize(
    "where, fault, reason, message",
    [
        ("manifest.json", 503, "server error", "server error (HTTP 503)"),
        ("manifest.json", 500, "server error", "server error (HTTP 500)"),
        ("manifest.json", 403, "forbidden", "forbidden (HTTP 403)"),
        ("manifest.json", "drop", "unreachable", "unreachable"),
        ("manifest.json", "truncate", "partial download", "partial download"),
        ("objects/", 503, "server error", "server error (HTTP 503)"),
        ("objects/", 403, "forbidden", "forbidden (HTTP 403)"),
        ("objects/", "truncate", "partial download", "partial download"),
        ("objects/", "drop", "unreachable", "unreachable"),
    ],
)
def test_origin_failures_keep_the_previous_set(pulled, site, origin, mirror_dir, trust, where, fault, reason, message):
    etag = pulled.status()["etag"]
    site.publish(V2)
    origin.faults[where] = fault
    result = pulled.cycle()
    assert result.outcome == "failed"
    _assert_kept(pulled, mirror_dir, trust, reason, message)
    assert pulled.status()["etag"] == etag  # never recorded for a set not switched to
    # the fault cleared, the next cycle switches (the bad answer was not remembered)
    origin.faults.clear()
    assert pulled.cycle().outcome == "switched"
    assert allowed(mirror_dir, trust, "tenant.acme", "a2.example")
    assert pulled.status()["consecutive_failures"] == 0 and pulled.status()["last_error"] is None


def test_origin_down_keeps_the_previous_set(pulled, origin, mirror_dir, trust):
    origin.stop()
    assert pulled.cycle().outcome == "failed"
    assert pulled.cycle().outcome == "failed"
    _assert_kept(pulled, mirror_dir, trust, "unreachable", "Connection refused")
    assert pulled.status()["consecutive_failures"] == 2


def test_object_missing_keeps_the_previous_set_and_is_retried(pulled, site, origin, mirror_dir, trust):
    site.publish(V2)
    obj = site.www / "objects" / (hashlib.sha256(V2["tenant.acme"]).hexdigest() + ".bin")
    saved = obj.read_bytes()
    obj.unlink()
    assert pulled.cycle().outcome == "failed"
    _assert_kept(pulled, mirror_dir, trust, "object missing", "object missing: objects/")
    obj.write_bytes(saved)  # e.g. an eventually consistent store caught up
    assert pulled.cycle().outcome == "switched"


def test_object_with_wrong_digest_is_refused(pulled, site, mirror_dir, trust):
    site.publish(V2)
    obj = site.www / "objects" / (hashlib.sha256(V2["tenant.acme"]).hexdigest() + ".bin")
    evil = art("tenant.acme", "ev.example")
    assert len(evil) == obj.stat().st_size  # same size, other bytes: only the digest tells
    obj.write_bytes(evil)
    assert pulled.cycle().outcome == "failed"
    _assert_kept(pulled, mirror_dir, trust, "wrong digest", "wrong digest")
    assert not allowed(mirror_dir, trust, "tenant.acme", "ev.example")


def test_object_larger_than_the_manifest_says_is_refused_without_reading_it(pulled, site, mirror_dir, trust):
    site.publish(V2)
    obj = site.www / "objects" / (hashlib.sha256(V2["tenant.acme"]).hexdigest() + ".bin")
    obj.write_bytes(art("tenant.acme", "evil.example", extra=50))
    assert pulled.cycle().outcome == "failed"
    _assert_kept(pulled, mirror_dir, trust, "wrong digest", "larger than")


def test_tampered_manifest_is_refused(pulled, site, mirror_dir, trust):
    site.publish(V2)
    doc = json.loads((site.www / "manifest.json").read_bytes())
    doc["modules"]["tenant.acme"] = doc["modules"]["tenant.acme"] | {"size": doc["modules"]["tenant.acme"]["size"]}
    doc["revision"] = 99  # a bumped revision without the key
    (site.www / "manifest.json").write_text(json.dumps(doc))
    assert pulled.cycle().outcome == "failed"
    _assert_kept(pulled, mirror_dir, trust, "bad manifest signature", "signature does not verify")


def test_manifest_signed_by_a_key_without_manifest_scope_is_refused(pulled, site, mirror_dir, trust):
    site.publish(V2, signer=PLATFORM)  # trusted for _global and tenant.*, not for manifests
    assert pulled.cycle().outcome == "failed"
    _assert_kept(pulled, mirror_dir, trust, "bad manifest signature", "may not sign manifests")


def test_manifest_signed_by_an_unknown_key_is_refused(pulled, site, mirror_dir, trust):
    site.publish(V2, signer=STRANGER)
    assert pulled.cycle().outcome == "failed"
    _assert_kept(pulled, mirror_dir, trust, "bad manifest signature", "signed by unknown key")


def test_artifact_signed_outside_its_scope_is_refused(pulled, site, mirror_dir, trust):
    # acme's CI key may sign tenant.acme only; here it signed tenant.globex, in a validly signed manifest
    site.publish(dict(V2, **{"tenant.globex": art("tenant.globex", "evil.example", ACME)}))
    assert pulled.cycle().outcome == "failed"
    _assert_kept(pulled, mirror_dir, trust, "bad artifact signature", "may not sign module 'tenant.globex'")
    assert allowed(mirror_dir, trust, "tenant.globex", "x.example")


def test_unsigned_artifact_is_refused(pulled, site, mirror_dir, trust):
    site.publish(dict(V2, **{"tenant.acme": art("tenant.acme", "a2.example", None)}))
    assert pulled.cycle().outcome == "failed"
    _assert_kept(pulled, mirror_dir, trust, "bad artifact signature", "artifact is not signed")


def test_replayed_older_signed_manifest_is_refused(pulled, site, mirror_dir, trust):
    old = site.snapshot()  # revision 1, validly signed
    site.publish(V2)
    assert pulled.cycle().outcome == "switched"
    site.publish(dict(V2, **{"tenant.globex": art("tenant.globex", "x2.example")}))
    assert pulled.cycle().revision == 3
    site.restore(old)  # whoever can write the bucket puts the old, more permissive set back
    result = pulled.cycle()
    assert result.outcome == "failed" and result.reason == "rollback"
    assert result.error == "rollback: revision 1 is below 3 already accepted"
    st = pulled.status()
    assert st["revision"] == 3 and st["last_error"] == "rollback: revision 1 is below 3 already accepted"
    assert allowed(mirror_dir, trust, "tenant.globex", "x2.example")


def test_same_revision_with_other_content_is_refused(pulled, site, mirror_dir, trust):
    (site.www / "manifest.json").unlink()  # the publisher lost its state and publishes revision 1 again
    site.publish(V2, set_name="prod")
    result = pulled.cycle()
    assert result.outcome == "failed" and result.reason == "rollback"
    assert "revision 1 was already accepted with different content" in result.error
    _assert_kept(pulled, mirror_dir, trust, "rollback", "already accepted")


def test_the_floor_survives_a_restart(pulled, site, origin, mirror_dir, trust):
    old = site.snapshot()
    site.publish(V2)
    assert pulled.cycle().outcome == "switched"
    site.restore(old)
    again = closing(Puller(origin.url, str(mirror_dir), trust=trust))  # a new process over the same directory
    assert again.status()["floor"] == 2
    result = again.cycle()
    assert result.outcome == "failed" and result.error == "rollback: revision 1 is below 2 already accepted"


def test_a_manifest_of_another_set_is_refused(pulled, site, mirror_dir, trust):
    other = Site(site.root.parent / "staging")
    other.publish(V2, set_name="staging", revision=50)  # validly signed, higher revision, other set
    site.restore(other.snapshot())
    result = pulled.cycle()
    assert result.reason == "wrong set"
    assert "the manifest is for set 'staging', this directory follows 'prod'" in result.error
    _assert_kept(pulled, mirror_dir, trust, "wrong set", "staging")


def test_304_without_etag_keeps_the_previous_etag(pulled, origin):
    etag = pulled.status()["etag"]
    origin.faults["manifest.json"] = "304-no-etag"
    assert pulled.cycle().outcome == "unchanged"
    (req,) = origin.take()
    assert req.status == 304
    assert pulled.status()["etag"] == etag
    origin.faults.clear()
    assert pulled.cycle().outcome == "unchanged"
    assert origin.take()[0].if_none_match == etag


def test_after_a_failed_set_the_old_etag_is_sent_so_a_fixed_set_is_fetched(pulled, site, origin):
    etag = pulled.status()["etag"]
    site.publish(V2, signer=PLATFORM)  # refused
    assert pulled.cycle().outcome == "failed"
    origin.take()
    assert pulled.cycle().outcome == "failed"
    (req,) = origin.take()
    assert req.if_none_match == etag and req.status == 200  # retried, not mistaken for "unchanged"
    site.publish(V2)
    assert pulled.cycle().outcome == "switched"
    assert pulled.status()["etag"] != etag


# --------------------------------------------------------------------------- the files layout, repair


def test_files_layout_switches_with_per_file_renames(site, origin, trust, tmp_path):
    directory = tmp_path / "plain"
    site.publish(V1, set_name="prod")
    puller = closing(Puller(origin.url, str(directory), trust=trust, layout="files"))
    assert puller.cycle().outcome == "switched"
    assert all((directory / f"{m}.bin").is_file() and not (directory / f"{m}.bin").is_symlink() for m in V1)
    site.publish(V2)
    inode_globex = (directory / "tenant.globex.bin").stat().st_ino
    assert puller.cycle().fetched == ("tenant.acme",)
    assert (directory / "tenant.globex.bin").stat().st_ino == inode_globex  # unchanged files untouched
    assert allowed(directory, trust, "tenant.acme", "a2.example")
    assert not any(p.name.startswith(".tenant") for p in directory.iterdir())  # no temporary debris
    assert Mirror(directory).layout == "files"  # a plain directory stays plain


def test_files_on_disk_that_do_not_match_the_manifest_drop_the_etag_and_are_repaired(pulled, origin, mirror_dir, trust):
    target = mirror_dir / "..data" / "tenant.acme.bin"
    target.unlink()
    target.write_bytes(art("tenant.acme", "hand-edit.example"))
    again = closing(Puller(origin.url, str(mirror_dir), trust=trust))
    st = again.status()
    assert st["revision"] is None and st["etag"] is None and "does not match revision 1" in st["disk_problem"]
    result = again.cycle()  # a full GET (no If-None-Match) and the same revision accepted again
    assert result.outcome == "switched" and result.revision == 1
    assert origin.take()[0].if_none_match is None
    assert allowed(mirror_dir, trust, "tenant.acme", "a1.example")
    assert not allowed(mirror_dir, trust, "tenant.acme", "hand-edit.example")


def test_http_origin_refuses_bad_urls():
    from polc.runtime.errors import ConfigError

    for url in ("http://user:pw@host/p", "http://host/p?x=1", "ftp://host/p", "http:///p"):
        with pytest.raises(ConfigError):
            HttpOrigin(url)


def test_pull_needs_trust_that_can_verify_manifests(site, tmp_path):
    from polc.runtime.errors import FleetError

    with pytest.raises(FleetError, match="needs a trust configuration"):
        Puller(site.url, str(tmp_path / "m"), trust=None)


def test_published_objects_are_immutable_and_named_by_digest(site: Site):
    result = site.publish(V1)
    for module, entry in result.manifest.modules.items():
        data = (site.www / entry.object).read_bytes()
        assert data == V1[module] and entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.signer == PLATFORM.key_id and entry.size == len(data)
    assert result.manifest.key_id == PUBLISHER.key_id


def test_opening_a_mirror_sweeps_what_a_crashed_switch_left(pulled: Puller, origin, mirror_dir, trust):
    current = os.readlink(mirror_dir / "..data")
    (mirror_dir / "..set-9-dead").mkdir()
    (mirror_dir / "..set-9-dead" / "tenant.acme.bin").write_bytes(b"half")
    os.symlink("..set-9-dead", mirror_dir / "..data.tmp-123")
    (mirror_dir / ".tenant.acme.bin.new-123").write_bytes(b"half")
    closing(Puller(origin.url, str(mirror_dir), trust=trust))
    left = sorted(p.name for p in mirror_dir.iterdir() if p.name.startswith("."))
    assert left == sorted(["..data", current, ".polc-fleet"])
    assert allowed(mirror_dir, trust, "tenant.acme", "a1.example")


def test_an_origin_that_never_answers_times_out():
    import socket

    from polc.runtime.errors import OriginError

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection (the backlog), never answers
        origin = HttpOrigin(f"http://127.0.0.1:{listener.getsockname()[1]}/p", timeout=0.3)
        with pytest.raises(OriginError, match="unreachable: timed out") as info:
            origin.fetch("manifest.json")
        origin.close()
    assert info.value.reason == "unreachable"


def test_a_body_above_the_limit_is_refused_before_it_is_read(pulled: Puller, site, origin):
    (site.www / "big.json").write_bytes(b"x" * 100_000)
    client = closing(HttpOrigin(origin.url))
    from polc.runtime.errors import OriginError

    with pytest.raises(OriginError, match="100000 bytes is more than the limit of 1000") as info:
        client.fetch("big.json", limit=1000)
    assert info.value.reason == "too large"
