"""os.environ's reads under the guard, every spelling, both hooks: a governed package is refused the
variables it is not entitled to (and through an ungoverned helper, a thread it started, a forged
module name nearer the read), the standard library's own reads on its behalf pass (subprocess's PATH
lookup), the service reads freely, and the mapping behaves as before (KeyError, TypeError).
Each scenario runs in a child process under the real guard."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from support.guard import child_env, compile_policies

VENDOR = """
import os, shutil, subprocess, threading
import envhelper

SPELLINGS = {
    "item": lambda name: os.environ[name],
    "get": lambda name: os.environ.get(name),
    "getenv": lambda name: os.getenv(name),
    "contains": lambda name: name in os.environ,
    "environb": lambda name: os.environb[name.encode()].decode(),
}

def read(how, name):
    return SPELLINGS[how](name)

def copy():
    return len(os.environ.copy())

def through_helper(name):
    return envhelper.read(name)

def in_thread(name):
    out = []
    def target():
        try:
            out.append(os.environ[name])
        except PermissionError as exc:
            out.append("denied: " + str(exc))
    t = threading.Thread(target=target)
    t.start()
    t.join()
    return out[0]

def forged(name):
    # code whose globals claim to be a module the exemptions know, called from this package
    g = {"__name__": "urllib.request", "os": os}
    exec("def read(name):\\n    return os.environ[name]\\n", g)
    return g["read"](name)

def run_true():
    return subprocess.run(["true"]).returncode

def which_true():
    return shutil.which("true") is not None
"""
HELPER = """
import os

def read(name):
    return os.environ[name]
"""
CHILD = """
import json, os, sys
sys.path.insert(0, sys.argv[1] + "/site-packages")
from polc.runtime import PolicyAgent, PolicyDenied
agent = PolicyAgent(sys.argv[1] + "/policies", reload_interval=0).start()
agent.guard(base=sys.argv[1])
import envvendor

def outcome(fn, *args):
    try:
        return fn(*args)
    except PolicyDenied as exc:
        return "denied: " + str(exc)
    except Exception as exc:
        return type(exc).__name__

vendor = {how: outcome(envvendor.read, how, "ENVTEST_SECRET") for how in envvendor.SPELLINGS}
entitled = {how: outcome(envvendor.read, how, "ENVTEST_OPEN") for how in ("item", "get", "getenv", "environb")}
guarded_type = type(os.environ).__dict__.get("__getitem__")
print(json.dumps({
    "vendor": vendor,
    "entitled": entitled,
    "copy": outcome(envvendor.copy),
    "helper": outcome(envvendor.through_helper, "ENVTEST_SECRET"),
    "thread": outcome(envvendor.in_thread, "ENVTEST_SECRET"),
    "forged": outcome(envvendor.forged, "ENVTEST_SECRET"),
    "run": outcome(envvendor.run_true),
    "which": outcome(envvendor.which_true),
    "service": outcome(lambda: os.environ["ENVTEST_SECRET"]),
    "service_missing": outcome(lambda: os.environ["ENVTEST_NOT_SET"]),
    "service_bad_key": outcome(lambda: os.environ[42]),
    "vendor_missing": outcome(envvendor.read, "item", "ENVTEST_OPEN_NOT_SET"),
    "denied": agent.status()["guard"]["packages"]["envvendor"]["env.read"]["denied"],
    "getitem": type(guarded_type).__name__,
}))
"""


def test_environment_reads_of_a_governed_package(tmp_path, guard_hook):
    site = tmp_path / "site-packages"
    (site / "envvendor").mkdir(parents=True)
    (site / "envvendor" / "__init__.py").write_text(VENDOR)
    (site / "envhelper").mkdir()
    (site / "envhelper" / "__init__.py").write_text(HELPER)
    src = tmp_path / "src"
    src.mkdir()
    (src / "_global.pol").write_text("security module _global { }\n")
    (src / "envvendor.pol").write_text(
        textwrap.dedent("""\
        security module envvendor {
            entitle module to env.read("ENVTEST_OPEN*");
            entitle module to process.exec("true");
            entitle module to threads.create();
        }
    """)
    )
    compile_policies(src, tmp_path / "policies")
    env = child_env(ENVTEST_SECRET="hunter2", ENVTEST_OPEN="fine")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])

    refused = "denied: polc: envvendor may not env.read('ENVTEST_SECRET')"
    for how, got in out["vendor"].items():
        assert got.startswith(refused), (how, got)
    assert out["entitled"] == {"item": "fine", "get": "fine", "getenv": "fine", "environb": "fine"}
    # a copy reads every variable: refused at the first one not entitled
    assert out["copy"].startswith("denied: polc: envvendor may not env.read(")
    assert out["helper"].startswith(refused)  # the ungoverned helper does not launder the read
    assert out["thread"].startswith(refused)  # nor a thread the package started
    assert out["forged"].startswith(refused)  # a forged module name nearer the read is not an exemption
    assert out["run"] == 0 and out["which"] is True  # subprocess's and shutil's PATH reads pass
    assert out["service"] == "hunter2"
    assert out["service_missing"] == "KeyError" and out["vendor_missing"] == "KeyError"
    assert out["service_bad_key"] == "TypeError"
    assert out["denied"] == len(out["vendor"]) + 4
    # the C hook reads the exemptions itself: os.environ's __getitem__ is its method
    assert out["getitem"] == ("method_descriptor" if guard_hook == "C" else "function")


EVADER = """
import os, sys, types

def rebind(name):
    # the C module's maker called again, with the unchecked read as the check
    from polc.runtime.guard import _hook
    base = type(os.environ).__mro__[1]
    try:
        _hook.environ_method(type(os.environ), base.__getitem__, base.__getitem__, frozenset(), {}, {})
    except RuntimeError:
        pass
    return os.environ[name]

def busy_named(name):
    # the C module's remembered-allow path configured again, with this thread as the guard's own
    import _socket, _thread, itertools
    from polc.runtime.guard import _hook
    from polc.runtime.guard.events import MEMO_EVENTS
    try:
        _hook.configure_memo(MEMO_EVENTS, _socket.socket.__dict__["family"], (_socket.AF_INET, _socket.AF_INET6),
                             {_thread.get_ident()}, {}, os, itertools.count, frozenset())
    except RuntimeError:
        pass
    return os.environ[name]

def as_text(name):
    return "hunter2" in repr(os.environ) or "hunter2" in str(os.environ) or b"hunter2" in repr(os.environb).encode()

def modules_rebound(name):
    # sys.modules rebound to a table of its own, where an exempt name is a module of the package's
    m = types.ModuleType("urllib.request")
    exec("import os\\ndef read(name):\\n    return os.environ[name]\\n", m.__dict__)
    old = sys.modules
    sys.modules = dict(old, **{"urllib.request": m})
    try:
        return m.read(name)
    finally:
        sys.modules = old

class Name(str):
    pass

class Encoded(str):
    # the mapping encodes the key with its encode(): the secret's name, whatever the text says
    def encode(self, *args):
        return b"ENVTEST_SECRET"

def subclass(name):
    return os.environ[Name(name)]

def subclass_get(name):
    return os.environ.get(Name(name))

def subclass_encoded(name):
    return os.environ[Encoded("ENVTEST_OPEN")]

def subclass_bytes(name):
    return os.environb[type("Raw", (bytes,), {})(name.encode())].decode()

def module_swapped(name):
    # a module of its own put in sys.modules under an exempt name: its namespace is "own"
    m = types.ModuleType("urllib.request")
    exec("import os\\ndef getproxies_environment(name):\\n    return os.environ[name]\\n", m.__dict__)
    old = sys.modules.get("urllib.request")
    sys.modules["urllib.request"] = m
    try:
        return m.getproxies_environment(name)
    finally:
        if old is None:
            del sys.modules["urllib.request"]
        else:
            sys.modules["urllib.request"] = old

def real_namespace(name):
    # the package's own code given the exempt module's real namespace as globals
    import urllib.request
    def getproxies_environment(name):
        return os.environ[name]
    return types.FunctionType(getproxies_environment.__code__, urllib.request.__dict__)(name)

def proxies(name):
    # the proxy discovery itself reads every variable (and returns only *_proxy ones): exempt
    import urllib.request
    return [urllib.request.getproxies(), urllib.request.proxy_bypass("example.com")]

def gadget(name):
    # the exempt module's own code calling os.environ's bound method for the package
    import urllib.request
    handler = types.SimpleNamespace(m=os.environ.__getitem__)
    return urllib.request.OpenerDirector()._call_chain({"k": [handler]}, "k", "m", name)
"""
EVADER_CHILD = """
import json, os, sys
sys.path.insert(0, sys.argv[1] + "/site-packages")
from polc.runtime import PolicyAgent, PolicyDenied
agent = PolicyAgent(sys.argv[1] + "/policies", reload_interval=0).start()
agent.guard(base=sys.argv[1])
import envevader

def outcome(fn, *args):
    try:
        return fn(*args)
    except PolicyDenied as exc:
        return "denied: " + str(exc)
    except Exception as exc:
        return type(exc).__name__

print(json.dumps({how: outcome(getattr(envevader, how), "ENVTEST_SECRET") for how in sys.argv[2:]}))
"""


def _evade(tmp_path, *hows):
    site = tmp_path / "site-packages"
    (site / "envevader").mkdir(parents=True)
    (site / "envevader" / "__init__.py").write_text(EVADER)
    src = tmp_path / "src"
    src.mkdir()
    (src / "_global.pol").write_text("security module _global { }\n")
    (src / "envevader.pol").write_text(
        'security module envevader {\n    entitle module to env.read("ENVTEST_OPEN*");\n}\n'
    )
    compile_policies(src, tmp_path / "policies")
    env = child_env(ENVTEST_SECRET="hunter2", http_proxy="http://127.0.0.1:9")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(EVADER_CHILD), str(tmp_path), *hows], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_environment_reads_not_laundered(tmp_path, guard_hook):
    """The C module's maker (and its remembered-allow path) cannot be configured again to swap the
    check out, os.environ's repr is made of checked reads (the base class's formats every value
    of _data unchecked), a key of a subclass is not waved through, and urllib.request's code
    other than its proxy discovery has no exemption."""
    out = _evade(tmp_path, "rebind", "busy_named", "as_text", "modules_rebound", "subclass", "subclass_get",
                 "subclass_encoded", "subclass_bytes", "gadget", "proxies")  # fmt: skip
    assert out["rebind"].startswith("denied: polc: envevader may not env.read('ENVTEST_SECRET')"), out
    assert out["busy_named"].startswith("denied: polc: envevader may not env.read('ENVTEST_SECRET')"), out
    assert out["as_text"].startswith("denied: polc: envevader may not env.read("), out
    # a key of a str (bytes) subclass: its encode() may name another variable than its text
    undecided = "denied: polc: <guard> may not check(): cannot decide: a variable name of type "
    assert out["subclass"] == out["subclass_get"] == undecided + "Name", out
    assert out["subclass_encoded"] == undecided + "Encoded", out
    assert out["subclass_bytes"] == undecided + "Raw", out
    # urllib.request's exemption is its proxy discovery's, not its other code's calling what it is handed
    assert out["proxies"] == [{"http": "http://127.0.0.1:9"}, False], out
    assert out["gadget"].startswith("denied: polc: envevader may not env.read('ENVTEST_SECRET')"), out
    # the namespace an exemption needs is the interpreter's module, not one of a rebound sys.modules
    assert out["modules_rebound"].startswith("denied: polc: envevader may not env.read('ENVTEST_SECRET')"), out


@pytest.mark.xfail(
    strict=True, reason="an exemption is the innermost module's namespace and function name, which a package can forge"
)
def test_environment_exemption_forged(tmp_path, guard_hook):
    out = _evade(tmp_path, "module_swapped", "real_namespace")
    assert all(got.startswith("denied: ") for got in out.values()), out
