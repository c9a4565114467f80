"""agent.guard() in code: errors, audit mode, a fault, hand-offs to executors, and the status counters.

argv[1]: JSON {"policies", "mode"}. Prints one JSON object of findings.
"""

import json
import logging
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(here), "site-packages"))

from polc.runtime import PolicyAgent, PolicyDenied  # noqa: E402
from polc.runtime.guard import GuardError  # noqa: E402

cfg = json.loads(sys.argv[1])
out = {}
records = []


class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())


logging.getLogger("polc").addHandler(Keep())
logging.getLogger("polc").setLevel(logging.INFO)

agent = PolicyAgent(cfg["policies"], reload_interval=0)
try:
    agent.guard()
except GuardError as exc:
    out["not_started"] = str(exc)
agent.start()
guard = agent.guard(base=os.getcwd(), mode=cfg["mode"])
for who, other in (("same", agent), ("other", PolicyAgent(cfg["policies"], reload_interval=0).start())):
    try:
        other.guard()
    except GuardError as exc:
        out[f"second_{who}"] = str(exc)

import vendorlib  # noqa: E402


def attempt(fn, *args):
    try:
        return {"ok": fn(*args)}
    except PolicyDenied as exc:
        return {"denied": str(exc), "capability": exc.capability, "package": exc.package}


out["read_secret"] = attempt(vendorlib.read, "secret.txt")
out["swing"] = attempt(vendorlib.swing, "data/out", "../allowed.txt", "../../secret.txt")
out["getenv"] = attempt(vendorlib.getenv, "POLC_TEST_SECRET")
pool = vendorlib.own_executor_later(None)
out["creator_executor"] = attempt(lambda: pool.submit(vendorlib.helperlib.read, "secret.txt").result())
pool.shutdown()

# a fault inside the guard: denied with the reason, counted, logged once
real = guard.roots.candidates


def broken(path):
    raise RuntimeError("injected")


guard.roots.candidates = broken
guard._fs.clear()
out["fault1"] = attempt(vendorlib.read, "data/allowed.txt")
out["fault2"] = attempt(vendorlib.read, "data/allowed.txt")
guard.roots.candidates = real
out["after_fault"] = attempt(vendorlib.read, "data/allowed.txt")
# signal handlers: attributed to the code that set them, not the code they interrupt
import functools  # noqa: E402
import signal  # noqa: E402


def service_handler(signum, frame):
    with open("service-signal.txt", "w") as f:  # the service's own write, on top of a vendorlib frame
        f.write("handled")


signal.signal(signal.SIGUSR1, service_handler)
out["getsignal_is_original"] = signal.getsignal(signal.SIGUSR1) is service_handler
out["service_signal"] = attempt(vendorlib.raise_signal, signal.SIGUSR1)
out["service_signal_file"] = os.path.exists("service-signal.txt")
# makedirs(name, mode=signum, exist_ok=frame): a standard-library handler vendorlib sets
vendorlib.set_handler(signal.SIGUSR2, functools.partial(os.makedirs, "made-by-signal"))
try:
    signal.raise_signal(signal.SIGUSR2)  # raised by the service: the handler vendorlib set still carries vendorlib
    out["vendor_signal"] = {"ok": "ran"}
except PolicyDenied as exc:
    out["vendor_signal"] = {"denied": str(exc), "capability": exc.capability, "package": exc.package}
out["vendor_signal_dir"] = os.path.exists("made-by-signal")

# logging: a handler's I/O belongs to whoever created the handler
import logging.handlers  # noqa: E402

svc_log = logging.getLogger("svc.log")
svc_log.propagate = False
svc_log.addHandler(logging.handlers.RotatingFileHandler("svc.log", maxBytes=50, backupCount=1, delay=True))
for _ in range(3):
    vendorlib.log("svc.log", "x" * 40)  # the service's handler opens and rotates its file
out["service_log_rotated"] = os.path.exists("svc.log") and os.path.exists("svc.log.1")
out["vendor_own_log"] = attempt(vendorlib.own_log_file, "vendor.log")
out["vendor_log_file"] = os.path.exists("vendor.log")

# asyncio: a callback vendorlib schedules on the service's loop carries vendorlib
import asyncio  # noqa: E402


async def service_main():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(context.get("exception")))
    vendorlib.schedule(loop, os.mkdir, "made-by-callback")
    loop.call_soon(os.mkdir, "made-by-service-callback")  # the service's own
    done = loop.create_future()
    loop.call_soon(done.set_result, None)  # callbacks run in order: the two above have run
    await done
    return [type(e).__name__ for e in errors]


out["callback_errors"] = asyncio.run(service_main())
out["callback_dir"] = os.path.exists("made-by-callback")
out["service_callback_dir"] = os.path.exists("made-by-service-callback")

# a child of os.fork() keeps the guard
pid = os.fork()
if pid == 0:
    try:
        vendorlib.read("secret.txt")
        os._exit(0)
    except PolicyDenied:
        os._exit(13)
    except BaseException:
        os._exit(1)
out["fork_child_status"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
out["status"] = agent.status()["guard"]
out["log"] = records
print(json.dumps(out))
