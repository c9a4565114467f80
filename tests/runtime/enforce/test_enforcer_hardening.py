"""check() under hostile input: it never raises, denies bad input with a short reason,
logs each kind of fault at most once per interval, and its caches cannot be made to
hold more memory than their budget (measured with tracemalloc)."""

from __future__ import annotations

import contextlib
import gc
import logging
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polc.runtime.enforce import Decision, Snapshot, link, normalize
from polc.runtime.enforce import snapshot as snapshot_mod
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes

MiB = 1 << 20


def linked(module, rules, **kw):
    return link(read_artifact(artifact_bytes(module, rules, **kw), expected_module=module))


RULES = [
    ("entitle", "network.outbound", ("*.acme.com", 443)),
    ("entitle", "env.read", ("A*",)),
    ("entitle", "fs.read", ("r", "**")),
    ("entitle", "network.listen", (80,)),
]


def snap(**kw) -> Snapshot:
    return Snapshot({"m": linked("m", RULES)}, linked("_global", [("deny", "env.read", ("SECRET",))]), **kw)


@pytest.fixture(autouse=True)
def fresh_fault_log():
    reset = getattr(getattr(snapshot_mod, "FAULTS", None), "reset", None)
    if reset is not None:
        reset()
    yield
    if reset is not None:
        reset()


def traced(fn) -> int:
    """Bytes still allocated after ``fn()`` ran (what it left behind)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------
# the decision cache is bounded by memory


@pytest.mark.parametrize("length, count", [(1000, 6000), (20, 40000)])
def test_cache_memory_stays_within_its_byte_budget(length, count):
    s = snap(cache_size=10**7, cache_bytes=MiB)

    def flood():
        for i in range(count):
            # fresh strings each time, as a server decoding requests makes them
            s.check("".join(["m"]), "".join(["env.", "read"]), f"B{i}".ljust(length, "x"))

    grown = traced(flood)
    assert s._cache and s._cache_bytes <= MiB
    assert grown <= 1.25 * MiB + 256 * 1024, f"cache held {grown} bytes for a budget of {MiB}"


def test_requests_with_huge_arguments_are_not_cached():
    s = snap()

    def flood():
        for i in range(40):
            d = s.check("m", "env.read", f"A{i}".ljust(100_000, "x"))
            assert d.allowed
            d = s.check("m", "network.outbound", f"h{i}".ljust(100_000, "x"), 443)
            assert not d.allowed

    grown = traced(flood)
    assert len(s._cache) == 0
    assert grown < MiB, grown
    assert s.check("m", "env.read", "AB").allowed and len(s._cache) == 1  # small ones still are


def test_normalisation_memos_keep_no_long_values():
    def flood():
        for i in range(20):
            normalize.norm_path(f"a{i}/" + "b" * 200_000)
            with contextlib.suppress(ValueError):
                normalize.norm_host(f"h{i}" + "x" * 500_000)

    grown = traced(flood)
    assert grown < MiB, grown


# ---------------------------------------------------------------------------
# hostile objects


class Boom(Exception):
    pass


def _raise(*_a, **_k):
    raise Boom("no")


class Hostile:
    """Every dunder the enforcer could touch raises."""

    __hash__ = _raise  # type: ignore[assignment]
    __eq__ = _raise  # type: ignore[assignment]
    __ne__ = _raise  # type: ignore[assignment]
    __str__ = _raise  # type: ignore[assignment]
    __repr__ = _raise  # type: ignore[assignment]
    __len__ = _raise  # type: ignore[assignment]
    __index__ = _raise  # type: ignore[assignment]
    __int__ = _raise  # type: ignore[assignment]

    @property  # type: ignore[misc]
    def __class__(self):
        raise Boom("class")


class HostileStr(str):
    __hash__ = _raise  # type: ignore[assignment]
    __eq__ = _raise  # type: ignore[assignment]
    __str__ = _raise  # type: ignore[assignment]
    __repr__ = _raise  # type: ignore[assignment]
    lower = _raise  # type: ignore[assignment]
    split = _raise  # type: ignore[assignment]
    startswith = _raise  # type: ignore[assignment]

    @property  # type: ignore[misc]
    def __class__(self):
        raise Boom("class")


class HostileInt(int):
    __hash__ = _raise  # type: ignore[assignment]
    __eq__ = _raise  # type: ignore[assignment]
    __int__ = _raise  # type: ignore[assignment]
    __index__ = _raise  # type: ignore[assignment]
    __repr__ = _raise  # type: ignore[assignment]
    __le__ = _raise  # type: ignore[assignment]
    __ge__ = _raise  # type: ignore[assignment]


@pytest.mark.parametrize("cache_size", [65536, 0])
def test_check_never_raises_for_hostile_objects_anywhere(cache_size):
    s = snap(cache_size=cache_size)
    h = Hostile()
    cases = [
        (h, "network.outbound", "api.acme.com", 443),
        ("m", h, "api.acme.com", 443),
        ("m", "network.outbound", h, 443),
        ("m", "network.outbound", "api.acme.com", h),
        ("m", "env.read", h),
        ("m", "fs.read", "r", h),
        (h, h, h, h),
        (["m"], "env.read", "AB"),
        ("m", ["env.read"], "AB"),
        ({}, {}),
    ]
    for _ in range(2):
        for module, cap, *args in cases:
            d = s.check(module, cap, *args)
            assert isinstance(d, Decision) and not d.allowed, (module, cap, args, d)
            assert len(d.reason) < 300 and len(d.module) < 300


@pytest.mark.parametrize("cache_size", [65536, 0])
def test_str_and_int_subclasses_are_decided_as_the_plain_values_they_hold(cache_size):
    s = snap(cache_size=cache_size)
    assert s.check(HostileStr("m"), HostileStr("network.outbound"), HostileStr("api.acme.com"), HostileInt(443)).allowed
    assert s.check("m", "env.read", HostileStr("AB")).allowed
    assert not s.check("m", "env.read", HostileStr("SECRET")).allowed
    assert s.check("m", "fs.read", HostileStr("r"), HostileStr("a/../b")).allowed
    assert s.check("m", "network.listen", HostileInt(80)).allowed
    assert not s.check("m", "network.listen", HostileInt(81)).allowed


def test_a_spoofed_class_cannot_hit_a_cached_allow():
    s = snap()
    assert s.check("m", "network.outbound", "api.acme.com", 443).allowed  # now cached

    class Spoof:
        __class__ = str  # type: ignore[assignment]

        def __hash__(self):
            return hash("api.acme.com")

        def __eq__(self, other):
            return True

    d = s.check("m", "network.outbound", Spoof(), 443)
    assert not d.allowed and d.reason.startswith("invalid argument 'host'"), d


def test_non_string_modules_get_the_cheap_deny_and_one_warning(caplog):
    s = snap()
    with caplog.at_level(logging.DEBUG, logger="polc"):
        for _ in range(200):
            for module in (["m"], {"m": 1}, 3, None, Hostile()):
                d = s.check(module, "env.read", "AB")
                assert not d.allowed and d.reason == "module and capability must be strings"
    records = [r for r in caplog.records if r.name == "polc"]
    assert len(records) == 1, [r.getMessage() for r in records]
    (r,) = records
    assert r.levelno == logging.WARNING and r.exc_info is None
    assert "must be strings" in r.getMessage()


def test_faults_are_logged_once_per_interval_with_a_count(caplog, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(snapshot_mod.time, "monotonic", lambda: clock[0])
    s = snap()
    with caplog.at_level(logging.DEBUG, logger="polc"):
        for _ in range(5):
            s.check([1], "env.read", "AB")
        clock[0] += 61
        s.check([1], "env.read", "AB")
        s.check([1], "env.read", "AB")
    msgs = [r.getMessage() for r in caplog.records if r.name == "polc"]
    assert len(msgs) == 2, msgs
    assert "4 more like this" in msgs[1]


def test_an_internal_error_is_denied_and_logged_once(caplog, monkeypatch):
    s = snap()
    assert s.check("m", "env.read", "AB").allowed

    def broken(args):
        raise RuntimeError("bug " + "x" * 10_000)

    s._plans[("m", "threads.create")] = broken
    with caplog.at_level(logging.DEBUG, logger="polc"):
        for _ in range(50):
            d = s.check("m", "threads.create")
            assert not d.allowed and d.reason == "internal error: RuntimeError" and d.module == "m"
    errors = [r for r in caplog.records if r.name == "polc"]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR and errors[0].exc_info is not None


def test_reasons_and_names_are_cut_short():
    s = snap()
    big = "x" * 10_000_000
    for module, cap, args, words in [
        ("m", "network.outbound", (big + ".com", 443), "invalid argument 'host'"),
        ("m", "network.outbound", ("a b" + big, 443), "invalid argument 'host'"),
        ("m", "fs.read", ("r", "/" + big), "invalid argument 'path'"),
        ("m", "fs.read", ("r", "../" + big), "invalid argument 'path'"),
        ("m", "process.exec", (big,), "invalid argument 'command'"),
        ("m", big, (), "capability name longer than 255"),
        (big, "env.read", ("AB",), "module name longer than 255"),
        ("m", "nope." + "y" * 200, (), "unknown capability"),
        ("m", "network.listen", (2**100_000,), "invalid argument 'port'"),
    ]:
        d = s.check(module, cap, *args)
        assert not d.allowed and d.reason.startswith(words), d.reason[:100]
        assert len(d.reason) <= 500 and len(d.module) <= 300, (words, len(d.reason), len(d.module))


def test_audit_log_lines_are_short_and_safe(caplog):
    m = linked("m", [("deny", "env.read", ("A*",))], mode="audit")
    s = Snapshot({"m": m}, None)
    with caplog.at_level(logging.INFO, logger="polc"):
        d = s.check("m", "env.read", HostileStr("A" + "x" * 1_000_000))
        assert d.allowed and d.audit
    (r,) = [r for r in caplog.records if "would deny" in r.getMessage()]
    assert len(r.getMessage()) < 500


# ---------------------------------------------------------------------------
# the property


EXC = st.sampled_from([Boom, TypeError, ValueError, RuntimeError, RecursionError, MemoryError, AttributeError])
DUNDERS = ["__hash__", "__eq__", "__ne__", "__str__", "__repr__", "__len__", "__index__", "__int__", "__format__",
           "__bool__", "__lt__", "__le__", "__contains__", "__iter__", "__getitem__"]


@st.composite
def hostile(draw):
    """An object (plain, or a str or int subclass) some of whose methods raise."""
    base = draw(st.sampled_from([object, str, int, tuple]))
    names = draw(st.sets(st.sampled_from(DUNDERS + ["__class__"]), min_size=1))
    exc = draw(EXC)

    def boom(*_a, **_k):
        raise exc("hostile")

    ns = {n: boom for n in names if n != "__class__"}
    if "__class__" in names:
        ns["__class__"] = property(boom)
    cls = type("H", (base,), ns)
    value = draw(st.sampled_from({object: [()], str: [("api.acme.com",), ("AB",), ("x" * 300,)],
                                  int: [(443,), (80,), (2**80,)], tuple: [(("a",),)]}[base]))
    return cls(*value)


PLAIN = st.sampled_from(["m", "network.outbound", "env.read", "fs.read", "network.listen", "api.acme.com", "AB",
                         "r", "a/b", 443, 80, None, [], {}])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(hostile(), PLAIN), min_size=2, max_size=5), st.sampled_from([65536, 0]))
def test_check_never_raises_and_never_allows_a_non_value(values, cache_size):
    s = snap(cache_size=cache_size)
    module, cap, *args = values
    for _ in range(2):
        d = s.check(module, cap, *args)
        assert isinstance(d, Decision)
        assert len(d.reason) <= 500 and isinstance(d.module, str) and len(d.module) <= 300
        if d.allowed:
            # only real strings and ints (or subclasses, decided as their plain values) are ever allowed
            assert isinstance(module, str) and isinstance(cap, str)
            assert all(type(a) in (str, int) or issubclass(type(a), (str, int)) for a in args)


def _paths():
    from polc.runtime.enforce import accel

    marks = [] if accel.available() else [pytest.mark.skip(reason="the C accelerator is not built")]
    return [pytest.param(False, id="pure"), pytest.param(True, id="accel", marks=marks)]


class Pretends(str):
    """A str subclass whose hash and equality claim to be another string."""

    claims = ""

    def __hash__(self):
        return hash(self.claims)

    def __eq__(self, other):
        return True

    __ne__ = lambda self, other: False  # noqa: E731


class PretendsTenantA(Pretends):
    claims = "tenant.a"


class PretendsOutbound(Pretends):
    claims = "network.outbound"


@pytest.mark.parametrize("accel", _paths())
@pytest.mark.parametrize("cache_size", [0, 1024], ids=["uncached", "cached"])
@pytest.mark.parametrize("via", ["check", "fast_check"])
def test_a_str_subclass_pretending_to_be_another_module_gets_nothing_of_its(accel, cache_size, via):
    """A module or capability that is not an exact str never reaches the cache or the
    plans (where its own __eq__/__hash__ could match another module's key): it is decided
    as the plain string it holds."""
    s = Snapshot(
        {"tenant.a": linked("tenant.a", [("entitle", "network.outbound", ("api.acme.com", 443))])},
        None,
        cache_size=cache_size,
        accel=accel,
    )
    check = getattr(s, via)
    assert check("tenant.a", "network.outbound", "api.acme.com", 443).allowed  # the cache and the plan warmed
    assert check("tenant.a", "network.outbound", "api.acme.com", 443).allowed
    evil = check(PretendsTenantA("tenant.evil"), "network.outbound", "api.acme.com", 443)
    assert not evil.allowed and "tenant.a" not in evil.reason and evil.module != "tenant.a", evil
    s.check("tenant.a", "env.read", "HOME")  # a plan for another capability of tenant.a
    other = check("tenant.a", PretendsOutbound("env.read"), "api.acme.com", 443)
    assert not other.allowed, other
    # an honest subclass is decided as the plain string it holds (and is not cached)
    honest = check(PretendsTenantA("tenant.a"), "network.outbound", "api.acme.com", 443)
    assert honest.allowed and honest.module == "tenant.a", honest
    assert all(type(k[0]) is str and type(k[1]) is str for k in s._cache)
    assert all(type(m) is str and type(c) is str for m, c in s._plans)


class RaisingEq(str):
    def __eq__(self, other):
        raise RuntimeError("hostile eq")

    __hash__ = str.__hash__


@pytest.mark.parametrize("accel", _paths())
def test_a_hostile_argument_of_a_volatile_capability_is_decided_as_uncached(accel):
    """The short-lived cache of volatile (command) decisions: an argument whose __eq__
    raises on a hash match is decided as without the cache, not as an internal error."""
    rules = [("entitle", "process.exec", ("ls",))]
    cached = Snapshot({"m": linked("m", rules)}, None, accel=accel)
    uncached = Snapshot({"m": linked("m", rules)}, None, cache_size=0, accel=accel)
    for s in (cached, uncached):
        s.fast_check("m", "process.exec", "ls")  # a timed entry for the plain string
    want = uncached.fast_check("m", "process.exec", RaisingEq("ls"))
    for check in (cached.check, cached.fast_check):
        got = check("m", "process.exec", RaisingEq("ls"))
        assert (got.allowed, got.reason) == (want.allowed, want.reason), (got, want)
