"""What the guard's hooks refuse to take on trust, each in a subprocess (audit hooks cannot be
removed): globals whose lookups could run foreign code inside the C walk, verdicts remembered
across a change of the names table, a hook another audit hook kept from being added."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from support.guard import child_env


def run_child(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture
def c_only(guard_hook):
    if guard_hook != "C":
        pytest.skip("the C hook's own module")


# A globals dict with a key whose hash is hash("__name__"): looking "__name__" up in it calls the
# key's __eq__, which changes the names table (what another thread's classification does) and
# allocates over what it freed. The owner tuple of "gov1" is only held by the table.
WALK_FOREIGN_KEYS = """
    import contextvars, sys
    from polc.runtime.guard import _hook

    names, junk, armed = {}, [], [False]
    _hook.install(lambda *a: None, object(), contextvars.ContextVar("x"), object(), (), ())

    class H:
        def __hash__(self):
            return hash("__name__")

        def __eq__(self, other):
            if armed[0]:
                armed[0] = False
                names["gov1"] = None
                junk.extend([bytearray(b"\\xff" * 40) for _ in range(5000)])
            return False

    def uniq(s):
        return "".join([s, str(id(names))])

    names.update({"gov1": (uniq("modA"), uniq("pkgA")), "gov2": None, "plain": None, "__main__": None})
    g2 = {H(): 1, "__name__": "gov2"}
    exec("def outer(fn):\\n    return fn()\\n", g2)
    g1 = {"__name__": "gov1", "sys": sys, "_hook": _hook, "names": names, "armed": armed}
    exec("def inner():\\n    armed[0] = True\\n    return _hook.walk(sys._getframe(), names, None)\\n", g1)
    foreign = g2["outer"](g1["inner"])
    # the same stack with plain globals outside: the C walk answers
    g3 = {"__name__": "plain"}
    exec("def outer(fn):\\n    return fn()\\n", g3)
    names["gov1"] = ("modA", "pkgA")
    found, polc_inner = g3["outer"](g1["inner"])
    print(repr(foreign), sorted(found), found["modA"][0], polc_inner)
"""


def test_c_walk_leaves_globals_with_foreign_keys_to_python(c_only):
    r = run_child(WALK_FOREIGN_KEYS)
    assert r.returncode == 0, (r.returncode, r.stderr)  # a use-after-free crashed here (SIGSEGV/SIGBUS)
    assert r.stdout.split() == ["None", "['modA']", "pkgA", "False"], r.stdout


def test_c_hook_calls_python_for_globals_with_foreign_keys(c_only):
    r = run_child("""
        import contextvars
        from polc.runtime.guard import _hook

        class Agent:
            pass

        agent = Agent()
        agent._snapshot = object()
        calls = []
        _hook.install(lambda ev, a, f: calls.append(ev), agent, contextvars.ContextVar("x"), object(), ("open",), ())
        _hook.set_names({"__main__": None, "X": None}, agent._snapshot)
        for g in ({"__name__": "X"}, {"__name__": "X", 1: "not a str key"}):
            exec("def f():\\n    open('/dev/null').close()\\n", g)
            before = len(calls)
            g["f"]()
            print(len(calls) - before)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "1"]  # X is ungoverned; with a key that is not a str, Python decides


def test_set_names_lets_go_of_remembered_globals(c_only):
    r = run_child("""
        import contextvars, gc, weakref
        from polc.runtime.guard import _hook

        class Agent:
            pass

        class Held:
            pass

        agent = Agent()
        agent._snapshot = object()
        _hook.install(lambda ev, a, f: None, agent, contextvars.ContextVar("x"), object(), ("open",), ())
        _hook.set_names({"__main__": None, "X": None}, agent._snapshot)
        g = {"__name__": "X", "held": Held()}
        ref = weakref.ref(g["held"])
        exec("def f():\\n    open('/dev/null').close()\\n", g)
        g["f"]()
        del g
        gc.collect()
        print(ref() is not None)  # the verdict remembered for X's globals holds them
        _hook.set_names({"__main__": None}, agent._snapshot)
        gc.collect()
        print(ref() is not None)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]


# unlisted="global": a name's classification depends on the file of the globals it is first seen
# in. The service's own "extlib" (below the base directory) is classified ungoverned, then the
# table fills up and is cleared, and "extlib" comes back governed by _global from a copy below
# site-packages. The Python hook now attributes the service's extlib to _global too; so must the C one.
RECLASSIFIED = """
    import json, os, sys
    from polc.runtime import PolicyAgent, PolicyDenied
    from polc.runtime.guard import core

    agent = PolicyAgent(sys.argv[1], reload_interval=0).start()
    guard = agent.guard(base=os.getcwd(), unlisted="global")
    secret = os.path.abspath("secret.txt")

    def module(file):
        g = {"__name__": "extlib", "__file__": file}
        exec(compile("def read(path):\\n    with open(path) as f:\\n        return f.read()\\n", file, "exec"), g)
        return g["read"]

    in_base = module(os.path.abspath("extlib.py"))
    in_site = module(os.path.join(os.path.dirname(os.getcwd()), "site-packages", "extlib", "__init__.py"))

    def attempt(fn):
        try:
            fn(secret)
            return "allowed"
        except PolicyDenied:
            return "denied"

    out = {"base": [attempt(in_base), attempt(in_base)]}
    for i in range(core._MAX_NAMES):  # as a long-running service's classification does
        guard._classify(f"filler{i}", {})
    out["site"] = attempt(in_site)
    out["base_again"] = attempt(in_base)
    out["hook"] = guard.status()["hook"]
    print(json.dumps(out))
"""


def test_verdicts_follow_a_names_table_changed_in_place(tree, guard_hook):
    r = run_child(RECLASSIFIED, str(tree / "policies"), cwd=tree / "app")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["hook"] == guard_hook
    assert out["base"] == ["allowed", "allowed"] and out["site"] == "denied"
    assert out["base_again"] == "denied"  # "extlib" is _global's now, for either hook


REFUSED = """
    import json, os, sys

    armed = [True]

    def refuse(event, args):
        if event == "sys.addaudithook" and armed[0]:
            raise RuntimeError("no more hooks")

    sys.addaudithook(refuse)
    sys.path.insert(0, os.path.join(os.path.dirname(os.getcwd()), "site-packages"))
    from polc.runtime import PolicyAgent, PolicyDenied
    from polc.runtime import guard as guard_pkg
    from polc.runtime.guard import GuardError
    import vendorlib

    agent = PolicyAgent(sys.argv[1], reload_interval=0).start()
    out = {}
    try:
        agent.guard(base=os.getcwd())
        out["first"] = "installed"
    except GuardError as exc:
        out["first"] = str(exc)
    out["current_after_refusal"] = guard_pkg.current() is not None
    armed[0] = False
    guard = agent.guard(base=os.getcwd())
    try:
        vendorlib.read("secret.txt")
        out["read"] = "allowed"
    except PolicyDenied:
        out["read"] = "denied"
    out["hook"] = guard.status()["hook"]
    out["denied"] = guard.status()["packages"]["vendorlib"]["fs.read"]["denied"]
    print(json.dumps(out))
"""


def test_a_hook_another_hook_refused_is_not_claimed_installed(tree, guard_hook):
    r = run_child(REFUSED, str(tree / "policies"), cwd=tree / "app")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["hook"] == guard_hook
    assert "the guard is not installed" in out["first"] and "did not see the probe" in out["first"], out["first"]
    assert out["current_after_refusal"] is False
    # installed once the refusal stops, and one hook decides each operation once
    assert out["read"] == "denied" and out["denied"] == 1


def test_c_install_after_a_refused_one(c_only):
    r = run_child("""
        import contextvars, sys

        armed = [True]

        def refuse(event, args):
            if event == "sys.addaudithook" and armed[0]:
                raise RuntimeError("no more hooks")

        sys.addaudithook(refuse)
        from polc.runtime.guard import _hook

        calls = []
        args = (lambda *a: calls.append(a), object(), contextvars.ContextVar("x"), object(), ("open",), ("open",))
        try:
            _hook.install(*args)
            print("installed")
        except RuntimeError as exc:
            print("refused" if "did not see the probe" in str(exc) else exc)
        print(_hook.stats()["installed"])
        open("/dev/null").close()
        print(len(calls))
        armed[0] = False
        _hook.install(*args)
        print(_hook.stats()["installed"])
        open("/dev/null").close()
        print(len(calls))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["refused", "False", "0", "True", "1"]


def test_c_memo_path_skips_ungoverned_stacks_while_another_thread_is_detached(c_only):
    """A stop frame of any thread (a detached call: a logging or signal handler running) sends
    governed requests to the Python walk, which knows where it stops; a stack with nothing
    governed on it is still skipped in C, as for every other event."""
    r = run_child("""
        import contextvars, itertools, os, socket, sys, _socket
        from polc.runtime.guard import _hook

        class Agent:
            pass

        agent = Agent()
        agent._snapshot = object()
        calls = []
        _hook.install(lambda ev, a, f: calls.append(ev), agent, contextvars.ContextVar("x"), object(),
                      ("socket.connect",), ())
        names = {"__main__": None, "plain": None, "gov": ("modA", "pkgA")}
        memo = {("network.outbound", "modA", "pkgA", "127.0.0.1", 9): (itertools.count(), float("inf"))}
        _hook.set_names(names, agent._snapshot, memo)
        stops = {}
        _hook.configure_memo({"socket.connect": 1}, _socket.socket.__dict__["family"],
                             (_socket.AF_INET, _socket.AF_INET6), set(), stops, os, itertools.count, frozenset())
        s = socket.socket()
        out = []
        for name in ("plain", "gov"):
            g = {"__name__": name, "sys": sys, "s": s}
            exec("def f():\\n    sys.audit('socket.connect', s, ('127.0.0.1', 9))\\n", g)
            for stop in ({}, {12345: None}):
                stops.clear()
                stops.update(stop)
                before = dict(_hook.stats())
                g["f"]()
                after = _hook.stats()
                out.append(" ".join(f"{k}+{after[k] - before[k]}" for k in ("skipped", "remembered", "dispatched")))
        print("|".join(out))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().split("|") == [
        "skipped+1 remembered+0 dispatched+0",  # ungoverned
        "skipped+1 remembered+0 dispatched+0",  # ungoverned, another thread detached: still skipped
        "skipped+0 remembered+1 dispatched+0",  # governed, remembered
        "skipped+0 remembered+0 dispatched+1",  # governed, a stop frame somewhere: the Python walk
    ], r.stdout
