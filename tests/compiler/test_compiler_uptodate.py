"""The up-to-date check reads an artifact in the output directory in bounded memory.

A file in the output directory is as hostile as any input: anyone who can
write there can leave a ``NAME.bin`` with a valid header and digest whose
payload is millions of tiny containers. The check must not build them (it
reads the recorded fields and skips the rest), and it must still decide as
before for every artifact that is not hostile.
"""

from __future__ import annotations

import msgpack
import pytest

from polc import __version__
from polc.compiler.build import compile_paths
from polc.runtime.format.header import HEADER_SIZE, build_header, read_header
from polc.runtime.format.payload import unpack_payload

from support.memory import traced_peak

SOURCE = """security module tenant.acme {
    capability tool.call(server: string, tool: string);
    entitle module to tool.call("jira", *);
    entitle module to network.outbound("*.acme.com", 443);
}
"""
PLAIN = """security module tenant.plain {
    entitle module to network.outbound("*.plain.com", 443);
}
"""
JUNK_COUNT = 2_000_000
"""Empty maps: one byte each in the file, a 64-byte dict each if unpacked (over 120 MB in all)."""


def _payload(path):
    data = path.read_bytes()
    header = read_header(data)
    return data, unpack_payload(data[HEADER_SIZE : HEADER_SIZE + header.payload_len])


def _write_payload(path, pairs):
    """An artifact whose payload is the map ``pairs`` (in order), with a valid header and digest."""
    body = msgpack.packb(dict(pairs), use_bin_type=True)
    path.write_bytes(build_header(body) + body)


@pytest.fixture
def compiled(write_tree, tmp_path):
    src = write_tree({"plain.pol": PLAIN})
    out = tmp_path / "out"
    assert compile_paths([str(src)], str(out)).exit_code == 0
    return src, out, out / "tenant.plain.bin"


def test_junk_in_a_skipped_field_is_never_built(compiled):
    """The recorded fields match, so it is up to date; its junk ``code`` is skipped, not unpacked."""
    src, out, art = compiled
    _, payload = _payload(art)
    junk = [{}] * JUNK_COUNT
    _write_payload(art, [(k, junk if k == "code" else v) for k, v in payload.items()])
    size = art.stat().st_size

    report, peak = traced_peak(lambda: compile_paths([str(src)], str(out)))
    assert [m.status for m in report.modules] == ["up to date"]
    assert peak < 10 * size, f"peak {peak:,} bytes for a {size:,}-byte artifact"


def test_junk_in_a_recorded_field_means_rebuild_in_bounded_memory(compiled):
    src, out, art = compiled
    data, payload = _payload(art)
    junk = [{}] * JUNK_COUNT
    _write_payload(art, [(k, junk if k == "source" else v) for k, v in payload.items()])
    size = art.stat().st_size

    report, peak = traced_peak(lambda: compile_paths([str(src)], str(out)))
    assert [m.status for m in report.modules] == ["compiled"]
    assert peak < 10 * size, f"peak {peak:,} bytes for a {size:,}-byte artifact"
    assert art.read_bytes() == data  # rebuilt, byte for byte


# -- the same decisions as unpacking the payload whole, for artifacts that are not hostile


def _reference(payload_bytes, module, source, digest, decls):
    """The check as it was: unpack the whole payload and compare."""
    try:
        p = unpack_payload(payload_bytes)
    except Exception:
        return False
    if not isinstance(p, dict):
        return False
    try:
        caps_ok = True
        for name, params in p.get("caps", ()):
            current = decls.lookup(name)
            if current is None or [(q.name, q.type) for q in current.params] != [tuple(x) for x in params]:
                caps_ok = False
                break
    except (TypeError, ValueError):
        caps_ok = False
    return (p.get("module") == module and p.get("compiler") == __version__ and p.get("source") == source
            and p.get("source_digest") == digest and caps_ok)


def _variants(payload):
    """Payload maps near the real one: each field changed, missing, of another type; caps changed."""
    keys = list(payload)
    yield "as written", list(payload.items())
    for k in keys:
        yield f"{k} missing", [(x, v) for x, v in payload.items() if x != k]
        for other in ("x", 7, None, [], ["x"], b"bytes"):
            yield f"{k} = {other!r}", [(x, other if x == k else v) for x, v in payload.items()]
    caps = payload["caps"]
    (name, params), *rest = caps
    for changed in (
        [[name, [["server", "string"]]], *rest],
        [[name, [["server", "string"], ["tool", "int"]]], *rest],
        [[name, [["server", "string"], ["tool", "string"], ["x", "int"]]], *rest],
        [[name, [["server", "string"], ["tool"]]], *rest],
        [[name, [["server", "string"], "ts"]], *rest],
        [[name, params, "extra"], *rest],
        [[name], *rest],
        [["tool.other", params], *rest],
        [[7, params], *rest],
        [*caps, ["network.outbound", [["host", "host"], ["port", "port"]]]],
        [*caps, ["network.outbound", [["host", "host"]]]],
        [],
        [[name, params]],
    ):
        yield f"caps = {changed!r}", [(x, changed if x == "caps" else v) for x, v in payload.items()]
    yield "an unknown key", [*payload.items(), ("extra", {"a": [1, 2]})]
    yield "reordered", list(reversed(payload.items()))


@pytest.mark.parametrize("padding", [0, 70_000], ids=["unpacked whole", "walked"])
def test_same_decision_as_unpacking_whole(write_tree, tmp_path, padding):
    """Payloads up to 64 KiB are unpacked whole, larger ones walked: both decide as unpacking whole did."""
    from polc.compiler.checker import collect_declarations
    from polc.compiler.parser import parse
    from polc.compiler.uptodate import up_to_date

    src = write_tree({"acme.pol": SOURCE})
    out = tmp_path / "out"
    assert compile_paths([str(src)], str(out)).exit_code == 0
    art = out / "tenant.acme.bin"
    _, payload = _payload(art)
    decls, _ = collect_declarations([parse(SOURCE, "acme.pol")[0]])
    module, source, digest = payload["module"], payload["source"], payload["source_digest"]
    assert up_to_date(str(art), module, source, digest, decls)
    pad = [("padding", "x" * padding)] if padding else []

    def decides(what, body):
        art.write_bytes(build_header(body) + body)
        expected = _reference(body, module, source, digest, decls)
        assert up_to_date(str(art), module, source, digest, decls) == expected, what
        return expected

    decided = 0
    for what, pairs in _variants(payload):
        decided += decides(what, msgpack.packb(dict(pad + pairs), use_bin_type=True))
    assert decided >= 3  # as written, reordered, with an unknown key

    body = msgpack.packb(dict(pad + list(payload.items())), use_bin_type=True)
    twice = msgpack.packb("module") + msgpack.packb(module)
    for what, bad, ok in (
        ("a list", msgpack.packb(list(pad + list(payload.items()))), False),
        ("trailing bytes", body + b"\xc0", False),
        ("invalid UTF-8", body.replace(b"tenant.acme", b"tenant.ac\xffe"), False),
        ("a key twice, the last one wrong", bytes([body[0] + 1]) + body[1:] + twice.replace(b"acme", b"acne"), False),
        ("a key that is not a string", bytes([body[0] + 1]) + body[1:] + msgpack.packb(7) + msgpack.packb(1), False),
    ):
        assert decides(what, bad) == ok, what

    # A key given twice: unpacking whole let the last one count, the runtime's
    # reader refuses such a payload, and so does the check. Rebuilding is the
    # conservative answer (polc never writes a key twice).
    dup = bytes([body[0] + 1]) + body[1:] + twice
    art.write_bytes(build_header(dup) + dup)
    assert _reference(dup, module, source, digest, decls)
    assert not up_to_date(str(art), module, source, digest, decls)
