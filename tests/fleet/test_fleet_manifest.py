"""The manifest: strict parsing, canonical bytes, the signature and the manifest scope of a trust key;
publish: objects first and immutable, the manifest last, revisions only upwards."""

from __future__ import annotations

import json

import pytest

from polc.runtime.errors import FleetError, ManifestError, TrustConfigError
from polc.runtime.fleet.manifest import Manifest, ModuleEntry, parse_manifest, sign_manifest, verify_manifest
from polc.runtime.fleet.origin import FileStore, object_name, open_store
from polc.runtime.fleet.publish import publish
from polc.runtime.signing import TrustConfig

from support.fleet import ACME, PLATFORM, PUBLISHER, STRANGER, Site, art, make_trust, write_trust_file

DIGEST = "ab" * 32


def manifest(revision: int = 7, **modules: ModuleEntry) -> Manifest:
    mods = modules or {"tenant.acme": ModuleEntry(object_name(DIGEST), DIGEST, 123, PLATFORM.key_id)}
    return Manifest("prod", revision, "2026-01-02T03:04:05Z", mods)


def test_signed_manifest_round_trips_and_verifies():
    m = sign_manifest(manifest(), PUBLISHER)
    data = m.to_bytes()
    back = verify_manifest(data, make_trust())
    assert back.revision == 7 and back.set == "prod" and back.key_id == PUBLISHER.key_id
    assert back.modules["tenant.acme"].sha256 == DIGEST
    assert back.to_bytes() == data  # one way to write each manifest


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.__setitem__("revision", 8),
        lambda d: d["modules"]["tenant.acme"].__setitem__("size", 124),
        lambda d: d.__setitem__("set", "staging"),
        lambda d: d["modules"]["tenant.acme"].__setitem__("signer", ACME.key_id),
    ],
    ids=["revision", "size", "set", "signer"],
)
def test_any_edit_breaks_the_signature(edit):
    doc = json.loads(sign_manifest(manifest(), PUBLISHER).to_bytes())
    edit(doc)
    with pytest.raises(ManifestError, match="manifest signature: signature does not verify") as info:
        verify_manifest(json.dumps(doc).encode(), make_trust())
    assert info.value.reason == "bad manifest signature"


def test_key_without_manifest_scope_is_refused_even_with_a_valid_signature():
    data = sign_manifest(manifest(), PLATFORM).to_bytes()  # trusted for modules, not for manifests
    with pytest.raises(ManifestError, match=r"may not sign manifests"):
        verify_manifest(data, make_trust())


def test_unknown_key_and_unsigned_are_refused():
    with pytest.raises(ManifestError, match="signed by unknown key"):
        verify_manifest(sign_manifest(manifest(), STRANGER).to_bytes(), make_trust())
    with pytest.raises(ManifestError, match="manifest is not signed"):
        verify_manifest(manifest().to_bytes(), make_trust())


@pytest.mark.parametrize(
    "text, message",
    [
        (b'{"format":1,"format":1}', "duplicate key"),
        (b"[]", "not a JSON object"),
        (b"\xff", "not valid JSON"),
        (b'{"format":1.0}', "not an integer"),
        (b'{"format":NaN}', "not a JSON number"),
    ],
)
def test_parse_rejects_malformed_json(text, message):
    with pytest.raises(ManifestError, match=message):
        parse_manifest(text)


def _doc(**over):
    doc = json.loads(manifest().to_bytes())
    doc.update(over)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data, message",
    [
        (_doc(extra=1), "unknown field"),
        (_doc(revision=0), "revision must be an integer in 1"),
        (_doc(revision=True), "revision must be an integer"),
        (_doc(revision=2**60), "revision must be an integer"),
        (_doc(format=2), "unsupported manifest format"),
        (_doc(set="../x"), "bad set name"),
        (_doc(issued="yesterday"), "issued must be"),
        (_doc(modules={"../evil": {}}), "bad module name"),
        (
            _doc(modules={"m": {"object": "objects/x.bin", "sha256": DIGEST, "size": 1, "signer": None}}),
            "object must be",
        ),
        (
            _doc(modules={"m": {"object": object_name(DIGEST), "sha256": DIGEST, "size": 0, "signer": None}}),
            "size must be",
        ),
        (
            _doc(modules={"m": {"object": object_name(DIGEST), "sha256": "AB" * 32, "size": 1, "signer": None}}),
            "sha256 must be",
        ),
    ],
)
def test_parse_rejects_bad_fields(data, message):
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data)


# --------------------------------------------------------------------------- the trust file


def test_trust_file_manifest_entries(tmp_path):
    trust = TrustConfig.from_file(write_trust_file(tmp_path / "trust.toml"))
    publisher = trust.get(PUBLISHER.key_id)
    assert publisher is not None and publisher.manifest and publisher.modules == ()
    assert not publisher.allows("tenant.acme")  # a manifest key speaks for no module
    assert not trust.get(PLATFORM.key_id).manifest


@pytest.mark.parametrize(
    "entry, message",
    [
        ('manifest = "yes"\nmodules = ["a"]', "'manifest' must be true or false"),
        ("", "'modules' must be a list"),
        ("manifest = false", "'modules' must be a list"),
    ],
)
def test_trust_file_manifest_field_is_checked(tmp_path, entry, message):
    path = tmp_path / "t.toml"
    path.write_text(f'[[key]]\npublic_key = "{PUBLISHER.public_key_b64}"\n{entry}\n')
    with pytest.raises(TrustConfigError, match=message):
        TrustConfig.from_file(path)


# --------------------------------------------------------------------------- publish


class RecordingStore(FileStore):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.puts: list[str] = []

    def put(self, name, data, content_type):
        self.puts.append(name)
        super().put(name, data, content_type)


def test_publish_writes_objects_first_then_the_manifest_and_skips_present_objects(site: Site):
    arts = {"_global": art("_global", "g.example"), "tenant.acme": art("tenant.acme", "a.example")}
    for module, data in arts.items():
        (site.src / f"{module}.bin").write_bytes(data)
    store = RecordingStore(site.url)
    first = publish(site.src, store, signer=PUBLISHER, set_name="prod")
    assert store.puts[-1] == "manifest.json" and len(store.puts) == 3
    assert all(p.startswith("objects/") for p in store.puts[:-1])
    assert first.revision == 1 and sorted(first.uploaded) == ["_global", "tenant.acme"]

    (site.src / "tenant.acme.bin").write_bytes(art("tenant.acme", "b.example"))
    store.puts.clear()
    second = publish(site.src, store, signer=PUBLISHER)
    assert second.revision == 2 and second.set == "prod"
    assert second.uploaded == ["tenant.acme"] and second.skipped == ["_global"]
    assert len(store.puts) == 2 and store.puts[-1] == "manifest.json"
    # the old object stays: readers of revision 1 still find every byte of it
    assert (site.www / first.manifest.modules["tenant.acme"].object).is_file()


def test_publish_refuses_a_revision_not_above_the_one_found(site: Site):
    site.publish({"_global": art("_global", "g.example")}, revision=42)
    with pytest.raises(FleetError, match="revision 42 is not above 42 found") as info:
        site.publish({"_global": art("_global", "h.example")}, revision=42)
    assert info.value.reason == "rollback"
    with pytest.raises(FleetError, match="revision 41 is not above 42"):
        site.publish({"_global": art("_global", "h.example")}, revision=41)
    assert site.publish({"_global": art("_global", "h.example")}).revision == 43


def test_publish_refuses_another_set_an_empty_directory_and_bad_artifacts(site: Site):
    site.publish({"_global": art("_global", "g.example")}, set_name="prod")
    with pytest.raises(FleetError, match="holds set 'prod', not 'staging'"):
        site.publish({"_global": art("_global", "g.example")}, set_name="staging")
    with pytest.raises(FleetError, match="no artifacts"):
        site.publish({})
    with pytest.raises(FleetError, match="not a valid artifact"):
        site.publish({"tenant.acme": art("tenant.globex", "x.example")})  # named for another module
    (site.www / "manifest.json").write_bytes(b"{garbage")
    with pytest.raises(FleetError, match="refusing to publish over it"):
        site.publish({"_global": art("_global", "g.example")})


def test_store_names_are_checked(site: Site):
    store = open_store(site.url)
    for bad in ("../x", "/etc/passwd", "objects/../../x", ".hidden", ""):
        with pytest.raises(ValueError):
            store.put(bad, b"x", "text/plain")
