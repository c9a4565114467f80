"""The service's own code: installs the guard in code, then exercises vendorlib, helperlib and itself.

argv[1]: JSON {"policies", "a" (port of a server on 127.0.0.1), "b" (port of a server on 127.0.0.2),
"s" (the service's own server), "libm" (a shared library path), "unlisted"}. Prints one JSON object:
each scenario -> {"ok": result} or {"denied": {...}} or {"error": "..."}.
"""

import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(here), "site-packages"))

from polc.runtime import PolicyAgent  # noqa: E402
from polc.runtime.guard import find_denial  # noqa: E402

cfg = json.loads(sys.argv[1])
agent = PolicyAgent(cfg["policies"], reload_interval=0).start()
agent.guard(base=os.getcwd(), unlisted=cfg.get("unlisted", "allow"))

import boundlib  # noqa: E402
import helperlib  # noqa: E402
import svcutil  # noqa: E402
import unlistedlib  # noqa: E402
import vendorlib  # noqa: E402

A = f"http://localhost:{cfg['a']}/"
B_IP = "127.0.0.2"
B = f"http://{B_IP}:{cfg['b']}/"
S = f"http://127.0.0.1:{cfg['s']}/"


def denial(exc):
    """The PolicyDenied in an exception, its reason or its cause chain (URLError keeps it as .reason)."""
    found = find_denial(exc)
    if found is None:
        return None
    assert isinstance(found, PermissionError)
    return {"package": found.package, "module": found.module, "capability": found.capability,
            "args": list(found.args), "site": found.site, "message": str(found)}


results = {}


def scenario(name, fn, *args):
    try:
        value = fn(*args)
    except BaseException as exc:
        d = denial(exc)
        results[name] = {"denied": d} if d else {"error": f"{type(exc).__name__}: {exc}"}
        return
    d = denial(value) if isinstance(value, BaseException) else None
    if d:
        results[name] = {"denied": d}
    elif isinstance(value, BaseException):
        results[name] = {"error": f"{type(value).__name__}: {value}"}
    else:
        results[name] = {"ok": value}


# entitled operations of the governed package
scenario("urllib", vendorlib.fetch, A)
scenario("asyncio", vendorlib.afetch, "localhost", cfg["a"])
scenario("read", vendorlib.read, "data/allowed.txt")
scenario("write", vendorlib.write, "data/out/made.txt", "made")
scenario("exec", vendorlib.run, ["true"])
scenario("thread", vendorlib.in_thread, lambda: "from a thread")
scenario("env", vendorlib.env, "HOME")
# denied operations: each must not happen
scenario("urllib_ip", vendorlib.fetch, B)
scenario("asyncio_ip", vendorlib.afetch, B_IP, cfg["b"])
scenario("resolve_then_connect", vendorlib.resolve_then_connect, "localhost", B_IP, cfg["b"])
scenario("unentitled_name", vendorlib.fetch, f"http://polc-guard-test.invalid:{cfg['b']}/")
scenario("read_secret", vendorlib.read, "secret.txt")
scenario("read_symlink", vendorlib.read, "data/link-to-secret")
scenario("write_outside", vendorlib.write, "data/forbidden.txt", "x")
scenario("exec_touch", vendorlib.run, ["touch", "process-started"])
scenario("env_secret", vendorlib.env, "POLC_TEST_SECRET")
scenario("native", vendorlib.load, cfg["libm"])
scenario("native_program", vendorlib.load_program)
scenario("pythonapi", vendorlib.use_pythonapi)
scenario("bound_allowed", boundlib.read, "data/allowed.txt")
scenario("bound_denied", boundlib.read, "secret.txt")
scenario("addaudithook", vendorlib.add_hook)
scenario("settrace", vendorlib.trace)
# laundering: through an ungoverned helper, a thread with a stdlib target, a task, an executor
scenario("via_helper", vendorlib.via_helper, B)
scenario("read_via_helper", vendorlib.read_via_helper, "secret.txt")
scenario("thread_launder", vendorlib.in_thread, helperlib.fetch, B)
scenario("stdlib_thread_target", vendorlib.stdlib_thread, os.mkdir, "data/made-by-thread")
scenario("task_launder", vendorlib.launder_task, B_IP, cfg["b"])
outside = os.open(cfg["outside"], os.O_RDONLY)  # the service hands vendorlib a directory of its own
scenario("read_at_dir_fd", vendorlib.read_at, "data/allowed.txt", outside)
scenario("raw_thread_launder", vendorlib.start_raw_thread, helperlib.read, "secret.txt")
scenario("launder_after_read", vendorlib.read_then_launder, "data/allowed.txt", "secret.txt")
scenario("executor_launder", vendorlib.via_executor, helperlib.read, "secret.txt")
# the service's own code and the ungoverned helper, called by the service: untouched
scenario("service_fetch", helperlib.fetch, S)
scenario("service_read", svcutil.read, "secret.txt")
scenario("service_exec", lambda: __import__("subprocess").run(["touch", "service-ran"]).returncode)
scenario("service_env", lambda: os.environ.get("POLC_TEST_SECRET"))
scenario("unlisted_public", unlistedlib.read, "data/public/note.txt")
scenario("unlisted_private", unlistedlib.read, "secret.txt")
results["status"] = agent.status()["guard"]
print(json.dumps(results))
