"""The C accelerator (runtime/enforce/_accel.c) decides exactly as the pure-Python path.

The Python deciders are the reference: for random rule sets (every index kind:
host, key, path, scan; ranged and unranged entries; every tier, audit mode) and
random requests, hostile ones included (str and int subclasses, values whose
methods raise, unhashable values, the address and path spellings the normalisers
handle), the accelerated snapshot returns a Decision equal to the pure one
(allowed, effect, reason, rule, module, revision, audit), through ``check``,
``fast_check`` (what ``agent.check`` is) and the decision cache. Faults inside
the accelerator deny with a reason; POLC_ACCEL is read strictly.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polc.runtime.catalog import Capability, Param
from polc.runtime.enforce import Decision, Snapshot, accel, link, matchers
from polc.runtime.enforce.index import BIG
from polc.runtime.errors import ConfigError
from polc.runtime.format.opcodes import HOST_EXACT, HOST_WILD, PATH_GLOB
from polc.runtime.format.reader import read_artifact

from support.agent import artifact_bytes

pytestmark = pytest.mark.skipif(not accel.available(), reason="the C accelerator is not built (no compiler?)")

QUOTA = Capability("quota.set", (Param("limit", "int"),))
PAIR = Capability("pair.set", (Param("name", "string"), Param("n", "int")))
TOOL = Capability("tool.call", (Param("server", "string"), Param("tool", "string")))
CAPS = {"quota.set": QUOTA, "pair.set": PAIR, "tool.call": TOOL}

SIGS = {
    "network.outbound": ("host", "port"),
    "network.listen": ("port",),
    "fs.read": ("string", "path"),
    "process.exec": ("command",),
    "env.read": ("string",),
    "threads.create": (),
    "quota.set": ("int",),
    "pair.set": ("string", "int"),
    "tool.call": ("string", "string"),
}
PATTERNS = {
    "host": ["*", "api.acme.com", "*.acme.com", "**.acme.com", "acme.com", "a.*.acme.com", "*.*.acme.com", "**",
             "10.0.0.0/8", "10.1.2.3", "::1", "2001:db8::/32", "x_y.z", "::ffff:10.0.0.0/104", "127.0.0.0/8",
             "64:ff9b::/96", "**.b.acme.com", "*.x"],
    "port": ["*", 443, 80, (8000, 8999), (0, 1024), 0, 65535, 25],
    "int": ["*", 0, -5, (1, 10), (-100, 100), 2**40, (2**40, 2**62), (-(2**62), -(2**40))],
    "string": ["*", "ls", "l*", "?s", "tenants/acme", "t*", "a?c*", "*cd*", "*s", "gx", "g*"],
    "command": ["*", "zzq", "zz*", "?zq", "/opt/zzq/bin/tool", "/opt/zzq/bin/*", "*q -c*"],
    "path": ["**", "a/**", "a/*.txt", "**/x", "a/b", "a/?", "*/b", "*", "a/**/c", "x*y", "a/b/**", "logs/l1/*.log",
             "reports/*/s1.csv", "data/**", "data/secret/**", "**/.ssh/**"],
}


class Sub(str):
    def __hash__(self):
        raise RuntimeError("hostile hash")


class Eq(str):
    def __eq__(self, other):
        raise RuntimeError("hostile eq")

    __hash__ = str.__hash__


class IntSub(int):
    def __index__(self):
        raise RuntimeError("hostile index")


class Raising:
    def __eq__(self, other):
        raise RuntimeError("hostile eq")

    def __hash__(self):
        raise RuntimeError("hostile hash")

    def __str__(self):
        raise RuntimeError("hostile str")


HOSTILE = [None, True, False, 1.5, 443.0, 2**70, -(2**70), [], ["x"], {}, b"api.acme.com", Sub("api.acme.com"),
           Eq("ls"), IntSub(443), Raising(), "", "\0", "a\0b", "x" * 300]
REQUESTS = {
    "host": ["api.acme.com", "API.ACME.COM.", "x.acme.com", "a.b.acme.com", "acme.com", "a.x.acme.com", "q.b.acme.com",
             "10.1.2.3", "10.0.0.1", "11.0.0.1", "::1", "2001:db8::5", "[::1]", "bad host", "x_y.z", "1.2.3",
             "::ffff:10.1.2.3", "[::FFFF:a01:203]", "0x0a010203", "10.1.515", "0.0.0.0", "::", "127.0.0.1",
             "64:ff9b::10.9.8.7", "::10.0.0.9", "fe80::1%eth0", "[2001:db8::5%1]", "a.x", "b.a.x", "Api.Acme.Com"],
    "port": [443, 80, 8080, 8500, 0, 65535, 65536, -1, 25, 1024, 1025],
    "int": [0, -5, 5, 2**40, 2**70, 2**41, -101, 100, 10],
    "string": ["ls", "lx", "as", "tenants/acme", "t", "abc", "rm -rf /", "gx", "gy", "cd", "xcdx", "s"],
    "command": ["zzq", "zzqx", "/opt/zzq/bin/tool", "/opt/zzq//bin/./tool", "/opt/zzq/x/../bin/tool", "bin/zzq",
                "./zzq", "zzq -c x/y", "ls"],
    "path": ["a/b", "a/./b", "a/../b", "../x", "/etc", "a/b/c.txt", "a", "x", "x/y/z/x", "a/c", "a/b/c", "xay",
             "a//b/", "logs/l1/a.log", "reports/q/s1.csv", "data/x", "data/secret/k", "data/.ssh/k", "/a/b",
             "a/b/", "./a/b"],
}
MODULES = ["_global", "tenant.a", "tenant.b"]


@st.composite
def rule(draw, cap=None):
    cap = cap if cap is not None else draw(st.sampled_from(sorted(SIGS)))
    types = SIGS[cap]
    n = draw(st.integers(0, len(types)))
    args = tuple(draw(st.sampled_from(PATTERNS[t])) for t in types[:n])
    return draw(st.sampled_from(["entitle", "entitle", "deny"])), cap, args


@st.composite
def rule_set(draw):
    """A module's rules: a few of every capability, or many of one (large tables index paths too)."""
    if draw(st.integers(0, 3)) == 0:
        cap = draw(st.sampled_from(["fs.read", "network.outbound", "tool.call", "pair.set"]))
        return draw(st.lists(rule(cap), min_size=16, max_size=40))
    return draw(st.lists(rule(), max_size=12))


@st.composite
def policy(draw):
    out = {}
    for name in MODULES:
        if name == "tenant.a" or draw(st.booleans()):
            out[name] = (draw(st.sampled_from(["enforce", "enforce", "audit"])), draw(rule_set()))
    return out


def pick(draw, items):
    """One of ``items`` by index (hypothesis hashes what sampled_from holds; some of these refuse)."""
    return items[draw(st.integers(0, len(items) - 1))]


@st.composite
def value(draw, typ):
    k = draw(st.integers(0, 9))
    if k == 0:
        return pick(draw, HOSTILE)
    if k == 1 and typ in ("port", "int"):
        return draw(st.integers(-(2**70), 2**70))
    return draw(st.sampled_from(REQUESTS[typ]))


@st.composite
def request(draw):
    module = pick(draw, [*MODULES, "tenant.c", Sub("tenant.a"), 7])
    cap = draw(st.sampled_from([*sorted(SIGS), "nope.cap", "network.outbound", "fs.read"]))
    args = [draw(value(t)) for t in SIGS.get(cap, ())]
    if draw(st.integers(0, 12)) == 0:
        args = args[:-1] if args else ["extra"]
    return module, cap, tuple(args)


def _snapshots(pol):
    mods = {}
    for name, (mode, rules) in pol.items():
        data = artifact_bytes(name, rules, caps=CAPS, mode=mode)
        mods[name] = link(read_artifact(data, expected_module=name))
    glob = mods.pop("_global", None)
    return (
        Snapshot(mods, glob, cache_size=0, accel=False),
        Snapshot(mods, glob, cache_size=0, accel=True),
        Snapshot(mods, glob, accel=True),
        Snapshot(mods, glob, accel=False),
    )


def _key(d):
    assert type(d) is Decision
    return (d.allowed, d.effect, d.reason, d.rule, d.module, d.revision, d.audit)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy(), st.lists(request(), min_size=10, max_size=40))
def test_accelerated_decisions_equal_the_pure_python_ones(pol, reqs):
    pure, fast, fast_cached, pure_cached = _snapshots(pol)
    assert fast.accelerated and not pure.accelerated
    assert pure.fast_check == pure.check  # the pure path publishes the bound method itself
    for module, cap, args in reqs:
        want = _key(pure.check(module, cap, *args))
        for _ in range(2):  # the first use of a plan and of a rule's Decision, then the memoised ones
            assert _key(fast.fast_check(module, cap, *args)) == want, (module, cap, args)
            assert _key(fast.check(module, cap, *args)) == want, (module, cap, args)
            assert _key(fast_cached.fast_check(module, cap, *args)) == want, (module, cap, args)
            assert _key(pure_cached.check(module, cap, *args)) == want, (module, cap, args)


def test_the_same_decision_objects_are_returned():
    pol = {"tenant.a": ("enforce", [("entitle", "network.outbound", ("api.acme.com", 443))])}
    pure, fast, cached, _ = _snapshots(pol)
    d = fast.fast_check("tenant.a", "network.outbound", "api.acme.com", 443)
    assert d.allowed and d is fast.fast_check("tenant.a", "network.outbound", "API.acme.com.", 443)
    assert d is fast.check("tenant.a", "network.outbound", "api.acme.com", 443)
    assert cached.fast_check("tenant.a", "network.outbound", "api.acme.com", 443) is cached.fast_check(
        "tenant.a", "network.outbound", "api.acme.com", 443
    )


def test_no_reference_is_leaked_or_lost():
    pol = {
        "_global": ("enforce", [("deny", "network.outbound", ("*.evil.com",)), ("deny", "fs.read", ("*", "**/.ssh/**"))]),
        "tenant.a": ("audit", [("entitle", "network.outbound", ("*.acme.com", (1, 1024))), ("deny", "fs.read", ("*", "a/**"))]
                     + [("entitle", "fs.read", ("t*", f"logs/l{i}/*.log")) for i in range(20)]),
    }
    _pure, fast, cached, _ = _snapshots(pol)
    reqs = [("tenant.a", "network.outbound", "x.acme.com", 443), ("tenant.a", "network.outbound", "x.evil.com", 1),
            ("tenant.a", "network.outbound", "bad host", 1), ("tenant.a", "fs.read", "t", "logs/l3/x.log"),
            ("tenant.a", "fs.read", "t", "a/b"), ("tenant.a", "fs.read", "t", "../x"), ("tenant.b", "fs.read", "t", "x"),
            ("tenant.a", "nope.cap"), ("tenant.a", "network.outbound", ["unhashable"], 1), (Sub("tenant.a"), "fs.read")]
    objs = [x for r in reqs for x in r]
    for check in (fast.fast_check, cached.fast_check, fast.check):
        decisions = [check(*r) for r in reqs]
        for _ in range(50):  # one-time effects (memos filled, a fault logged) before counting
            for r in reqs:
                check(*r)
        gc.collect()
        before = [sys.getrefcount(o) for o in objs + decisions]
        for _ in range(200):
            for r in reqs:
                check(*r)
        gc.collect()
        after = [sys.getrefcount(o) for o in objs + decisions]
        # decisions with a per-request reason are new objects; the memoised ones and the arguments keep
        # their counts (a reference leaked or dropped per call would be off by hundreds)
        assert after == before, [(o, b, a) for o, b, a in zip(objs + decisions, before, after) if a != b]


def test_a_fault_inside_the_accelerator_denies_with_a_reason():
    pol = {"tenant.a": ("enforce", [("entitle", "env.read", ("HOME",))])}
    _pure, fast, cached, _ = _snapshots(pol)
    assert fast.fast_check("tenant.a", "env.read", "HOME").allowed
    real = fast._plans[("tenant.a", "env.read")]
    # a decider over a malformed bucket (no linker makes one): the C code refuses it, never allows
    broken = accel.required().Decider(2, 0, -1, (3,), 1, object(), None, {}, {"HOME": ((1, 2, 3),)}, {}, {}, (), {},
                                      (), (), ())
    for snap in (fast, cached):
        snap._plans[("tenant.a", "env.read")] = broken
        snap._cache.clear()
        d = snap.fast_check("tenant.a", "env.read", "HOME")
        assert not d.allowed and d.reason == "internal error: TypeError", d
    fast._plans[("tenant.a", "env.read")] = real

    def raising_matcher(v):
        raise RuntimeError("matcher fault")

    failing = accel.required().Decider(2, 0, -1, (3,), 1, object(), None, {}, {"HOME": ((1, ((0, raising_matcher),)),)},
                                       {}, {}, (), {}, (), (), ())
    fast._plans[("tenant.a", "env.read")] = failing
    d = fast.fast_check("tenant.a", "env.read", "HOME")
    assert not d.allowed and d.reason == "internal error: RuntimeError", d


def test_keyboard_interrupt_in_a_matcher_propagates_as_from_the_python_path():
    pol = {"tenant.a": ("enforce", [("entitle", "env.read", ("HOME",))])}
    _pure, fast, _cached, _ = _snapshots(pol)

    def interrupt(v):
        raise KeyboardInterrupt

    fast._plans[("tenant.a", "env.read")] = accel.required().Decider(
        2, 0, -1, (3,), 1, object(), None, {}, {"HOME": ((1, ((0, interrupt),)),)}, {}, {}, (), {}, (), (), ()
    )
    with pytest.raises(KeyboardInterrupt):
        fast.fast_check("tenant.a", "env.read", "HOME")


def test_inconsistent_decider_shapes_are_refused():
    make = accel.required().Decider
    with pytest.raises(ValueError, match="inconsistent decider shape"):
        make(9, 0, -1, (3,), 1, None, None, {}, {}, {}, {}, (), {}, (), (), ())
    with pytest.raises(ValueError, match="inconsistent decider shape"):
        make(2, 3, -1, (3,), 1, None, None, {}, {}, {}, {}, (), {}, (), (), ())
    with pytest.raises(ValueError, match="unknown parameter type"):
        make(2, 0, -1, (9,), 1, None, None, {}, {}, {}, {}, (), {}, (), (), ())


def test_command_index_deciders():
    """Kind 4 (a plan's command index): the C decider calls it with the raw command, takes the
    rank it returns, answers an Exception as an invalid argument, refuses anything but a rank."""
    make = accel.required().Decider
    with pytest.raises(ValueError, match="inconsistent decider shape"):  # kind 4 needs an index
        make(4, 0, -1, (5,), 1, None, None, {}, {}, {}, {}, (), {}, (), (), ())
    with pytest.raises(ValueError, match="inconsistent decider shape"):  # and only kind 4 takes one
        make(0, 0, -1, (5,), 1, None, None, {}, {}, {}, {}, (), {}, (), (), (), len)
    with pytest.raises(ValueError, match="no command"):
        make(4, 0, -1, (3,), 1, None, None, {}, {}, {}, {}, (), {}, (), (), (), len)

    class FakePlan:
        def _bad_argument(self, args):
            return ("bad", args)

    seen = []

    def index(value):
        seen.append(value)
        if value == "boom":
            raise ValueError("malformed")
        if value == "odd":
            return "not a rank"
        if value == "stop":
            raise KeyboardInterrupt
        return 5 if value == "git" else BIG

    fn = make(4, 0, -1, (5,), 1, FakePlan(), "NO", {5: "YES"}, {}, {}, {}, (), {}, (), (), (), index)
    assert "command@0" in repr(fn)
    assert fn(("git",)) == "YES" and fn(("ls",)) == "NO" and seen == ["git", "ls"]
    assert fn(("boom",)) == ("bad", ("boom",))
    with pytest.raises(TypeError, match="no rank"):
        fn(("odd",))
    with pytest.raises(KeyboardInterrupt):
        fn(("stop",))


def test_process_exec_plans_use_the_command_index_in_c():
    pol = {"tenant.a": ("enforce", [("entitle", "process.exec", ("git*",)), ("deny", "process.exec", ("rm*",))])}
    pure, fast, _cached, _ = _snapshots(pol)
    for cmd in ["git", "git-x", "rm", "ls", "/usr/bin/git", "", 3]:
        assert fast.fast_check("tenant.a", "process.exec", cmd) == pure.check("tenant.a", "process.exec", cmd), cmd
    assert "command@0" in repr(fast._plans[("tenant.a", "process.exec")])


@pytest.mark.parametrize("raw", ["", " ", "yes", "true", "2", "01", " 1", "off"])
def test_polc_accel_is_read_strictly(raw, monkeypatch):
    monkeypatch.setenv(accel.ENV, raw)
    with pytest.raises(ConfigError, match=f"{accel.ENV}="):
        accel._from_env()


def test_polc_accel_values(monkeypatch):
    monkeypatch.setenv(accel.ENV, "0")
    assert accel._from_env() is False
    monkeypatch.setenv(accel.ENV, "1")
    assert accel._from_env() is True
    monkeypatch.delenv(accel.ENV)
    assert accel._from_env() is accel.available()


def _run(code: str, value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != accel.ENV}
    if value is not None:
        env[accel.ENV] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_polc_accel_switch_in_a_fresh_process(tmp_path):
    code = (
        "import sys\nfrom polc.runtime import PolicyAgent\n"
        f"a = PolicyAgent({str(tmp_path)!r}, reload=False).start()\n"
        "print(a.snapshot.accelerated, type(a.check).__name__)\n"
    )
    off = _run(code, "0")
    assert off.returncode == 0, off.stderr
    assert off.stdout.split() == ["False", "method"]
    on = _run(code, "1")
    assert on.returncode == 0, on.stderr
    assert on.stdout.split() == ["True", "Checker"]
    bad = _run(code, "fast")
    assert bad.returncode != 0 and "POLC_ACCEL='fast': expected 0" in bad.stderr, bad.stderr


MATCHED_VALUES = ["", "a", "ab", "xaby", "a/b", "a/b/c", "a/bc", "a/", "a", "x/a/b", "x/a/b/y", "ba/b", "x/ab/y", "x.a.b", "a.b", "y.x.a.b", ".a.b", "x..a.b",
                  "ab.a.b", "é.a.b", "aéb", "a\nb", "a/b/c.txt", "logs/l1/x.log", "a.b.", "cd", "xcdx", "ls", "lsx",
                  "**", "a\0b", "\u0391\u0392", "ab" * 50, "\U0001f600.a.b"]


@pytest.mark.parametrize(
    "make, const",
    [(matchers.str_glob, c) for c in ["*ab*", "ab*", "*ab", "a?b", "*", "**", "a*b*", "*é*", "l*", "*s"]]
    + [(lambda c: matchers.matcher((PATH_GLOB, c)), c) for c in ["a/**", "a/b", "**", "a/*.txt", "**/x", "a/?", "**/a/**", "**/a/b/**", "**/a/b", "**/b"]]
    + [(lambda c: matchers.matcher((HOST_WILD, c)), c) for c in ["*.a.b", "**.a.b", "a.*.b", "*.é.a.b"]]
    + [(lambda c: matchers.matcher((HOST_EXACT, c)), c) for c in ["a.b", "ab", ""]],
)
def test_native_matchers_answer_as_the_python_ones(make, const):
    """The closures _accel.c tests natively give the answers their Python bodies give."""
    m = make(const)
    kind = accel.required().native_kind(m)
    assert kind is not None or const in ("a.*.b",), const  # (a.*.b: a regex of its own, called)
    # a scan decider over one rule whose only check is m: "YES" when it matches, else "NO"
    fn = accel.required().Decider(0, 0, -1, (3,), 1, object(), "NO", {5: "YES"}, {}, {}, {}, (), {}, (), (),
                                  ((5, ((0, m),)),))
    for v in MATCHED_VALUES:
        assert fn((v,)) == ("YES" if m(v) else "NO"), (const, v)


# A fresh process in which wiring the extension up fails, two ways: configure() itself
# raises (the module is replaced by one whose configure raises), or a matcher closure's
# cell is renamed (the closure accel.py inspects no longer has the cell it names, so
# co_freevars.index raises ValueError before configure is called).
_BROKEN_CONFIGURE = """
import sys, types
fake = types.ModuleType("polc.runtime.enforce._accel")
def configure(cfg):
    raise RuntimeError("configure exploded")
fake.configure = configure
sys.modules["polc.runtime.enforce._accel"] = fake
"""
_RENAMED_CELL = """
import sys, importlib.abc, importlib.machinery
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "polc.runtime.enforce.matchers":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            def str_glob(glob):
                renamed = glob
                return lambda v: renamed in v
            module.str_glob = str_glob
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Hook())
"""
_AFTER = """
import polc.runtime.enforce
from polc.runtime.enforce import Snapshot, accel
from polc.runtime.errors import ConfigError
try:
    accel.enabled()
except ConfigError as exc:
    print("refused:", exc)
else:
    s = Snapshot({}, None)
    d = s.fast_check("m", "network.outbound", "h", 1)
    print("available", accel.available(), "accelerated", s.accelerated, "allowed", d.allowed)
"""


@pytest.mark.parametrize(
    "prelude, reason",
    [(_BROKEN_CONFIGURE, "RuntimeError: configure exploded"), (_RENAMED_CELL, "ValueError")],
    ids=["configure-raises", "renamed-cell"],
)
def test_a_failure_to_configure_the_extension_leaves_the_pure_path(prelude, reason):
    unset = _run(prelude + _AFTER, None)
    assert unset.returncode == 0, unset.stderr
    assert unset.stdout.split() == ["available", "False", "accelerated", "False", "allowed", "False"], unset.stdout
    off = _run(prelude + _AFTER, "0")
    assert off.returncode == 0, off.stderr
    assert "refused" not in off.stdout
    on = _run(prelude + _AFTER, "1")
    assert on.returncode == 0, on.stderr
    assert "refused: POLC_ACCEL='1': the C accelerator is not available (configuring the extension failed" in on.stdout
    assert reason in on.stdout, on.stdout
    agent = _run(prelude + "from polc.runtime import PolicyAgent\nPolicyAgent('/nonexistent', reload=False)\n", "1")
    assert agent.returncode != 0 and "configuring the extension failed" in agent.stderr, agent.stderr


_REBOUND_DURING_MATCH = """
import re, signal
from polc.runtime import patterns
from polc.runtime.enforce import accel
m = patterns.string_matcher("a?b")
cell = m.__closure__[m.__code__.co_freevars.index("fullmatch")]
pat = re.compile("(?:x|xx|xxx)*y")  # backtracks for a long time on a run of x without y
re.purge()
cell.cell_contents = pat.fullmatch  # the cell now holds the only reference to the pattern
del pat
fired = []
def handler(signum, frame):
    cell.cell_contents = None
    fired.append([bytearray(200) for _ in range(2000)])  # reuse the freed memory
signal.signal(signal.SIGALRM, handler)
fn = accel.required().Decider(0, 0, -1, (3,), 1, object(), "NO", {5: "YES"}, {}, {}, {}, (), {}, (), (),
                              ((5, ((0, m),)),))
signal.setitimer(signal.ITIMER_REAL, 0.02)
r = fn(("x" * 26,))
during = bool(fired)
print(r, during)
"""


def test_a_fullmatch_rebound_by_a_signal_handler_during_the_match_stays_alive():
    """sre runs signal handlers during a long match; one that rebinds the matcher's cell
    must not free the bound fullmatch (and its pattern) while it runs."""
    env = {**os.environ, "PYTHONMALLOC": "debug"}
    proc = subprocess.run([sys.executable, "-c", _REBOUND_DURING_MATCH], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.split() == ["NO", "True"], proc.stdout
