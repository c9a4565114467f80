"""What a file can cost the reader: memory, work, limits, and the agent that reads it.

Every hostile payload here has a valid header and a correct digest: it is
what anyone who can write an unsigned policy directory can drop. The reader
must reject it at a cost bounded by a small multiple of the file's size (and
for the shapes that are not even close to an artifact, at about the cost of
reading the file), and an artifact within the documented limits must always
be read, whichever way the reader takes through it.
"""

from __future__ import annotations

import gc
import hashlib
import struct
import threading
import time
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polc.runtime.catalog import BUILTINS, Capability, Param
from polc.runtime.errors import MalformedPayload
from polc.runtime.format import arguments, opcodes, verify
from polc.runtime.format import payload as af
from polc.runtime.format.header import HEADER_SIZE, MAGIC
from polc.runtime.format.reader import read_artifact, read_artifact_file
from polc.runtime.format.writer import pack_artifact, write_atomic

from support.agent import wait_for
from support.artifacts import ACME_RULES, RICH_RULES, big_rules, make_payload
from support.memory import peak_of

HDR = struct.Struct(">8sHHIII32s")
MiB = 1 << 20
# What the reader may spend beyond the file itself on a file it rejects: one
# window of the windowed reader, or one small payload read whole (a few MB).
ALLOWANCE = 12 * MiB
THREADS = BUILTINS["threads.create"]


def artifact_of(body: bytes, *, minor: int = 0) -> bytes:
    """Header (valid, with the digest recomputed) + ``body`` as the payload."""
    digest = hashlib.sha256(MAGIC + struct.pack(">HH", 1, minor) + body).digest()
    return HDR.pack(MAGIC, 1, minor, 0, len(body), 0, digest) + body


def payload_with(replace: dict[str, bytes], *, base: dict | None = None, extra: dict[str, bytes] | None = None) -> bytes:
    """A real payload's msgpack bytes, with some values replaced by raw msgpack bytes."""
    p = base or make_payload("tenant.acme", ACME_RULES)
    items = [(k, replace[k] if k in replace else msgpack.packb(p[k], use_bin_type=True)) for k in opcodes.PAYLOAD_KEYS]
    items += list((extra or {}).items())
    out = [bytes([0x80 | len(items)]) if len(items) < 16 else b"\xde" + struct.pack(">H", len(items))]
    for k, v in items:
        out += [msgpack.packb(k), v]
    return b"".join(out)


def array_of(element: bytes, count: int) -> bytes:
    head = b"\xdc" + struct.pack(">H", count) if count < 1 << 16 else b"\xdd" + struct.pack(">I", count)
    return head + element * count


def map_of_tiny_keys(count: int) -> bytes:
    keys = (bytes([0xA3, 0x21 + i % 94, 0x21 + i // 94 % 94, 0x21 + i // 8836 % 94]) + b"\xc0" for i in range(count))
    return b"\xdf" + struct.pack(">I", count) + b"".join(keys)


# About 4 MB each, and within the counts the limits allow (290,000 elements
# in ``code``), so that they are refused by what they hold, not by a header.
N = 290_000
SHAPES = {
    "empty maps": {"code": array_of(b"\x9d" + b"\x80" * 13, N)},
    "empty arrays": {"code": array_of(b"\x9d" + b"\x90" * 13, N)},
    "nils": {"code": array_of(b"\x9d" + b"\xc0" * 13, N)},
    "empty strings": {"code": array_of(b"\x9d" + b"\xa0" * 13, N)},
    "deep nesting": {"code": array_of(b"\x91" * 13 + b"\xc0", N)},
    "small ints": {"code": array_of(b"\x9d" + b"\xe0" * 13, N)},
    "maps of tiny keys": {"code": array_of(b"\x84\xa1a\xc0\xa1b\xc0\xa1c\xc0\xa1d\xc0", N)},
    "one huge map of tiny keys": {"code": map_of_tiny_keys(800_000)},
    "flat array of small ints": {"consts": array_of(b"\x01", 4_000_000)},
    "empty maps as constants": {"consts": array_of(b"\x80", 900_000) + b""},
    "nested arrays as constants": {"consts": array_of(b"\x91" * 3 + b"\xc0", 900_000)},
    "empty maps under a string field": {"source": array_of(b"\x80", 4_000_000)},
}


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_worst_shapes_are_rejected_at_the_cost_of_reading_the_file(shape, tmp_path):
    data = artifact_of(payload_with(SHAPES[shape]))
    assert len(data) > MiB // 2
    path = tmp_path / "tenant.acme.bin"
    path.write_bytes(data)
    caught = []

    def read():
        with pytest.raises(MalformedPayload) as info:
            read_artifact_file(path)
        caught.append(info.value)

    peak = peak_of(read)
    # the old reader built every object first: 80x the file for the maps
    print(f"{shape}: {peak:,} bytes for a {len(data):,}-byte file")
    assert peak < 2 * len(data) + ALLOWANCE, f"{shape}: {peak:,} bytes for a {len(data):,}-byte file ({caught})"
    assert caught and caught[0].reason == "malformed payload"


def test_messages_name_the_limit_and_the_value():
    def message(replace=None, **kw) -> str:
        return str(pytest.raises(MalformedPayload, read_artifact, artifact_of(payload_with(replace or {}, **kw))).value)

    assert "code: 2,000,000 instructions, more than the 300,000 that 100,000 rules of at most 2 arguments take" in message(
        {"code": array_of(b"\x80", 2_000_000)}
    )
    assert "consts: 4,000,000 constants, more than the 1,000,000 an artifact may hold" in message(
        {"consts": array_of(b"\xa0", 4_000_000)}
    )
    assert "caps: 10,001 capabilities, more than the 10,000 an artifact may hold" in message(
        {"caps": array_of(b"\x90", 10_001)}
    )
    assert "code[0]: expected an instruction array, got map" in message({"code": array_of(b"\x80", 100_000)})
    assert "consts[0]: expected str, got map" in message({"consts": array_of(b"\x80", 900_000)})
    assert "source: expected str, got array" in message({"source": array_of(b"\x80", 10)})


def test_nested_length_claims_reserve_nothing(tmp_path):
    """A nest of array headers that each claim thousands of elements.

    msgpack reserves room for the elements an array header announces before
    it reads any; the old limits (payload length) let 1,000 nested headers of
    3 bytes reserve 80 MB for a 64 KB file.
    """
    for size in (4096, 65536, 1 << 20):
        claim = min(size, 10_000) - 64
        nest = (b"\xdc" + struct.pack(">H", claim)) * 1000
        for where in ("code", "consts", "caps"):
            body = payload_with({where: nest + b"\xc0" * (size - len(nest))})
            data = artifact_of(body)

            def read(data=data):
                with pytest.raises(MalformedPayload):
                    read_artifact(data)

            peak = peak_of(read)
            assert peak < 2 * len(data) + ALLOWANCE, (size, where, peak)


def test_every_call_into_msgpack_covers_a_bounded_window(monkeypatch):
    """The reader never hands msgpack more than a window at once, so it never
    holds the GIL for the whole of a large payload (benchmarks/test_reject.py
    measures what a thread calling check() sees meanwhile)."""
    import msgpack as real

    fed: list[int] = []

    class Unpacker:
        def __init__(self, *a, **kw):
            self._u = real.Unpacker(*a, **kw)

        def feed(self, data):
            fed.append(len(data))
            self._u.feed(data)

        def __iter__(self):
            return self._u

        def __getattr__(self, name):
            return getattr(self._u, name)

    class Module:
        OutOfData = real.OutOfData
        packb = staticmethod(real.packb)

        @staticmethod
        def unpackb(data, **kw):
            fed.append(len(data))
            return real.unpackb(data, **kw)

    Module.Unpacker = Unpacker
    monkeypatch.setattr(af, "msgpack", Module)
    for shape in ("empty maps", "deep nesting", "empty maps as constants"):
        fed.clear()
        with pytest.raises(MalformedPayload):
            read_artifact(artifact_of(payload_with(SHAPES[shape])))
        assert fed and max(fed) <= 64 * 1024, (shape, max(fed))
    fed.clear()
    big = pack_artifact(make_payload("big", big_rules(10_000)))
    assert len(big) > 5 * 64 * 1024
    assert len(read_artifact(big).rules) == 10_000
    assert fed and max(fed) <= 64 * 1024 and sum(fed) >= len(big) - HEADER_SIZE - 64 * 1024


def test_a_rejected_file_leaves_the_collector_nothing_to_do():
    """Objects that die with their piece are never seen by the garbage collector.

    The old reader's millions of objects triggered collection after
    collection, full ones included, each walking every object of the process
    with the GIL held: most of the stall a thread calling check() saw. Now a
    collection may still start (CPython counts tuples that went back to its
    free lists as alive), but it finds almost nothing to walk."""
    walked: list[tuple[int, int]] = []

    def watch(phase, info):
        if phase == "start":
            generation = info["generation"]
            walked.append((generation, sum(len(gc.get_objects(g)) for g in range(generation + 1))))

    for shape in ("deep nesting", "empty maps", "nils", "empty maps as constants"):
        data = artifact_of(payload_with(SHAPES[shape]))
        walked.clear()
        gc.collect()
        gc.callbacks.append(watch)
        try:
            with pytest.raises(MalformedPayload):
                read_artifact(data)
        finally:
            gc.callbacks.remove(watch)
        assert sum(n for _, n in walked) < 5000, (shape, walked[:10], len(walked))


def test_a_rejected_file_is_freed_at_once():
    """No reference cycle (an error held by a frame of its own traceback) keeps
    a rejected file's bytes, or the objects of its last piece, alive until the
    next collection: an agent refusing 12 MiB drops would grow by 12 MiB each."""
    import weakref

    class Bytes(bytearray):  # bytes cannot be weakly referenced; this can
        pass

    for shape in ("deep nesting", "empty maps as constants", "empty maps under a string field"):
        data = Bytes(artifact_of(payload_with(SHAPES[shape])))
        small = Bytes(artifact_of(payload_with({"code": array_of(b"\x80", 100)})))  # read whole
        refs = [weakref.ref(data), weakref.ref(small)]
        gc.disable()
        try:
            for d in (data, small):
                with pytest.raises(MalformedPayload):
                    read_artifact(d)
            del data, small, d
            assert [r() is None for r in refs] == [True, True], shape
        finally:
            gc.enable()


@pytest.mark.slow
def test_degenerate_but_valid_payloads_cost_what_real_ones_do():
    """Within the limits, what is valid is read, at about what a real artifact costs (~20x)."""
    many_empty = make_payload()
    many_empty["consts"] = many_empty["consts"] + [""] * 900_000
    many_short = make_payload()
    many_short["consts"] = many_short["consts"] + [f"{i:x}" for i in range(200_000)]
    arity0 = make_payload("many", [(opcodes.ENTITLE, THREADS, 1 + i, 1, []) for i in range(opcodes.MAX_RULES)])
    for payload in (many_empty, many_short, arity0):
        data = pack_artifact(payload, verify=False)
        keep = read_artifact(data)  # its interned constants stay interned: see test_fuzz_artifact
        peak = peak_of(lambda data=data: read_artifact(data))
        assert peak < 20 * len(data) + ALLOWANCE, (len(data), peak)
        del keep


# ---------------------------------------------------------------------------
# limits: what the compiler can produce is read; one more is refused


def test_rule_limit():
    rules = [(opcodes.ENTITLE, THREADS, 1 + i, 1, []) for i in range(opcodes.MAX_RULES + 1)]
    assert len(read_artifact(pack_artifact(make_payload("many", rules[:-1]))).rules) == opcodes.MAX_RULES
    e = pytest.raises(MalformedPayload, pack_artifact, make_payload("many", rules)).value
    assert "code: 100,001 instructions, more than the 100,000 that 100,000 rules of at most 0 arguments take" in str(e)


def test_parameter_and_capability_limits():
    def caps_payload(caps: list) -> dict:
        p = make_payload()
        p["caps"] = p["caps"] + caps
        return p

    params = [[f"p{i}", "string"] for i in range(opcodes.MAX_PARAMS)]
    assert read_artifact(pack_artifact(caps_payload([["wide.cap", params]]))).caps[-1].arity == opcodes.MAX_PARAMS
    e = pytest.raises(MalformedPayload, pack_artifact, caps_payload([["wide.cap", params + [["px", "int"]]]])).value
    assert "(wide.cap): 65 parameters, more than the 64 a capability may have" in str(e)
    names = [[f"c.n{i}", []] for i in range(opcodes.MAX_CAPS)]
    e = pytest.raises(MalformedPayload, pack_artifact, caps_payload(names)).value
    assert "caps: 10,003 capabilities" in str(e)


def test_string_limit():
    """Every string of a payload is decoded in one call: none may be long."""
    at_limit = "x" * opcodes.MAX_STRING
    p = make_payload()
    p["consts"].append(at_limit)
    assert read_artifact(pack_artifact(p)).consts[-1] == at_limit
    p["consts"].append("y" * (opcodes.MAX_STRING + 1))
    e = pytest.raises(MalformedPayload, pack_artifact, p).value
    assert "consts[5]: a string of 65,537 bytes, more than the 65,536 a payload string may have" in str(e)
    p = make_payload()
    p["source"] = "s/" * 40_000
    e = pytest.raises(MalformedPayload, pack_artifact, p).value
    assert "source: a string of 80,000 bytes, more than the 65,536" in str(e)


def test_payload_keys_limit_and_duplicates():
    extra = {f"k{i}": b"\xc0" for i in range(af.MAX_PAYLOAD_KEYS)}
    body = payload_with({}, extra=extra)
    e = pytest.raises(MalformedPayload, read_artifact, artifact_of(body, minor=1)).value
    assert "a map of 72 keys, more than the 64 a payload may have" in str(e)
    # a key given twice: the old reader kept the last one, a proxy reading the first would disagree
    body = payload_with({}, extra={"module": msgpack.packb("tenant.globex")})
    e = pytest.raises(MalformedPayload, read_artifact, artifact_of(body)).value
    assert "payload: key 'module' appears twice" in str(e)


def test_compiler_refuses_what_the_reader_would(write_tree, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from polc.cli import cli

    monkeypatch.setattr(opcodes, "MAX_RULES", 3)  # what the compiler checks against
    rules = "\n".join(f'    entitle module to network.outbound("h{i}.com", 443);' for i in range(4))
    params = ", ".join(f"p{i}: string" for i in range(opcodes.MAX_PARAMS + 1))
    src = write_tree({
        "a.pol": f"security module tenant.a {{\n{rules}\n}}\n",
        "b.pol": f'security module tenant.b {{\n    capability wide.cap({params});\n    entitle module to wide.cap("x");\n}}\n',
        "c.pol": 'security module tenant.c {\n    entitle module to threads.create;\n}\n',
    })
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["compile", str(src), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "a.pol:1:17: error: module 'tenant.a' has 4 rules, more than the 3 an artifact may hold" in result.output
    assert "b.pol:2:16: error: capability 'wide.cap' declares 65 parameters, more than the 64" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.glob("*.bin")) == ["tenant.c.bin"]
    read_artifact_file(out / "tenant.c.bin")


def test_benchmark_sized_artifacts_are_read_both_ways(monkeypatch):
    for n in (1000, 10_000):
        data = pack_artifact(make_payload("big", big_rules(n)))
        whole = read_artifact(data)
        monkeypatch.setattr(af, "_WHOLE_MAX", -1)
        windowed = read_artifact(data)
        monkeypatch.undo()
        assert len(whole.rules) == len(windowed.rules) == n
        assert whole.rules == windowed.rules and whole.consts == windowed.consts and whole.caps == windowed.caps


# ---------------------------------------------------------------------------
# the two ways through the reader agree


def _outcome(data: bytes):
    try:
        art = read_artifact(data)
    except MalformedPayload:
        return None
    return (art.module, art.mode, art.compiler, art.source, art.source_digest, art.caps, art.consts, art.rules,
            art.governs)


small_values = st.recursive(
    st.none() | st.booleans() | st.integers(-40, 70000) | st.text(max_size=6) | st.binary(max_size=3),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=12,
)


def _near_payloads():
    base = make_payload("tenant.acme", RICH_RULES)

    @st.composite
    def build(draw):
        p = {k: (list(v) if isinstance(v, list) else v) for k, v in base.items()}
        p["code"] = [list(i) for i in base["code"]]
        if draw(st.booleans()):  # format 1.2's optional field, valid to start with
            p["governs"] = ["vendorlib", "vendorlib.ext", "zlib_ng"]
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from([*opcodes.PAYLOAD_KEYS, "governs", "extra", b"bin-key"]))
            action = draw(st.sampled_from(["replace", "element", "insert", "drop"]))
            if action == "drop":
                p.pop(key, None)
            elif action == "replace" or not isinstance(p.get(key), list) or not p[key]:
                p[key] = draw(small_values)
            else:
                seq = p[key]
                i = draw(st.integers(0, len(seq) - 1))
                if action == "element":
                    seq[i] = draw(small_values)
                else:
                    seq.insert(i, draw(small_values))
        return p

    return build()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_near_payloads(), st.sampled_from([0, 1, 2, 3]), st.sampled_from([64, 512, 32 * 1024]))
def test_whole_and_windowed_reads_agree(payload, minor, window):
    try:
        body = msgpack.packb(payload, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    data = artifact_of(body, minor=minor)
    whole = _outcome(data)
    old = (af._WHOLE_MAX, af._WINDOW)
    af._WHOLE_MAX, af._WINDOW = -1, window
    try:
        windowed = _outcome(data)
    finally:
        af._WHOLE_MAX, af._WINDOW = old
    assert whole == windowed


def test_linking_across_windows_keeps_indices_and_messages(monkeypatch):
    monkeypatch.setattr(af, "_WHOLE_MAX", -1)
    monkeypatch.setattr(af, "_WINDOW", 64)  # a few instructions per window
    rules = big_rules(300)
    art = read_artifact(pack_artifact(make_payload("big", rules)))
    assert [r.index for r in art.rules] == list(range(300))
    payload = make_payload("big", rules)
    payload["code"].insert(500, [opcodes.ANY])  # inside rule 166, far from the first window
    e = pytest.raises(MalformedPayload, read_artifact, artifact_of(msgpack.packb(payload))).value
    assert "rule 166: capability" in str(e) and "takes 2 arguments, got 3" in str(e)
    payload = make_payload("big", rules)
    payload["code"][700] = [0x55, 0]
    e = pytest.raises(MalformedPayload, read_artifact, artifact_of(msgpack.packb(payload))).value
    assert "code[700]: unknown opcode 0x55" in str(e)


# ---------------------------------------------------------------------------
# process-wide caches keep what is small, whatever the files they have seen


def test_verifier_caches_do_not_keep_large_constants_or_tables():
    long_path = "data/" + "x" * 10_000 + "/**"
    rules = [(opcodes.ENTITLE, BUILTINS["fs.read"], 1, 1, [(opcodes.STR_EXACT, "t"), (opcodes.PATH_GLOB, long_path)])]
    read_artifact(pack_artifact(make_payload("big", rules)))
    assert (opcodes.PATH_GLOB, long_path) not in arguments._VALID_ARGS
    assert (opcodes.STR_EXACT, "t") in arguments._VALID_ARGS  # small ones are still shared
    wide = [Capability(f"c.n{i}", (Param("a", "string"),)) for i in range(40)]
    payload = make_payload("wide", [(opcodes.DENY, c, 1, 1, [(opcodes.ANY,)]) for c in wide])
    art = read_artifact(pack_artifact(payload))
    raw = msgpack.unpackb(msgpack.packb(payload["caps"]), use_list=False)
    assert art.caps == tuple(wide) and raw not in verify._VALID_CAPS


# ---------------------------------------------------------------------------
# through a running agent


def test_agent_rejects_a_bad_drop_keeps_the_policy_and_says_why(tmp_path):
    from polc.runtime import PolicyAgent

    from support.agent import write_artifact

    pdir = tmp_path / "policies"
    pdir.mkdir()
    write_artifact(pdir, "tenant.acme", [("entitle", "network.outbound", ("*.acme.com", 443))])
    request = ("tenant.acme", "network.outbound", "api.acme.com", 443)
    agent = PolicyAgent(pdir, reload_interval=0.02).start()
    try:
        revision = agent.status()["modules"]["tenant.acme"]["revision"]
        assert agent.check(*request)
        stop = threading.Event()
        longest = [0.0]  # (no list of every gap: its growth would count in the peak below)
        answers: set[bool] = set()

        def checking():
            last = time.perf_counter()
            while not stop.is_set():
                answers.add(bool(agent.check(*request)))
                now = time.perf_counter()
                if now - last > longest[0]:
                    longest[0] = now - last
                last = now

        thread = threading.Thread(target=checking, daemon=True)
        thread.start()
        drop = artifact_of(payload_with(SHAPES["empty maps"]))
        gc.collect()
        tracemalloc.start()  # every thread's allocations, the poller's included
        try:
            write_atomic(pdir / "tenant.acme.bin", drop)
            status = wait_for(
                lambda: (s := agent.status()["modules"]["tenant.acme"])["last_error"] and s, timeout=60
            )
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            stop.set()
            thread.join(10)
        assert peak < 2 * len(drop) + ALLOWANCE, f"{peak:,} bytes to reject a {len(drop):,}-byte drop"
        assert "malformed payload: code[0]: opcode must be an int, got map" in status["last_error"]
        assert status["revision"] == revision
        assert answers == {True} and agent.check(*request)
        # the figure, for the record (benchmarks/test_reject.py measures it properly)
        print(f"longest gap between two checks while the drop was rejected: {longest[0] * 1e3:.1f} ms")
    finally:
        agent.stop()
