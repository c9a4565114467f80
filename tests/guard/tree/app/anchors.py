"""Attribution (the C walk where the C hook is installed, else the Python one) agrees with a plain
f_back walk, module by module and frame by frame, over many random stacks of governed and ungoverned
frames, generators resumed from different callers among them. Prints {"checked": N, "wrong": [...]}."""

import json
import os
import random
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(here), "site-packages"))

import _thread  # noqa: E402

from polc.runtime import PolicyAgent  # noqa: E402

agent = PolicyAgent(sys.argv[1], reload_interval=0).start()
guard = agent.guard(base=os.getcwd())

import helperlib  # noqa: E402, F401
import svcutil  # noqa: E402, F401
import vendorlib  # noqa: E402

tid = _thread.get_ident()
snap = agent.snapshot
wrong = []
checked = 0


def reference(f):
    found = {}  # module -> its innermost frame
    while f is not None:
        m = snap.governor(f.f_globals.get("__name__"))
        if m is not None and m not in found:
            found[m] = f
        f = f.f_back
    return found


def probe():
    global checked
    f = sys._getframe(1)
    got, _ = guard.attribute(f, tid)
    want = reference(f)
    checked += 1
    if set(got or ()) != set(want) or any(got[m][1] is not want[m] for m in want):
        wrong.append({"got": sorted(got or ()), "want": sorted(want)})


def service_call(fn, *args):
    return fn(*args)


def chain(steps):
    # probe at the bottom, and again on the way back up: a frame that anchored a walk
    # below it is then still running while another operation is attributed through it
    if not steps:
        return probe()
    try:
        return _chain(steps)
    finally:
        probe()


def _chain(steps):
    head, rest = steps[0], steps[1:]
    if head == "v":
        return vendorlib.call(chain, rest)
    if head == "W":  # a vendorlib frame that calls through another of its frames, then directly
        return vendorlib.mixed(chain, rest)
    if head == "V":  # a run of three vendorlib frames
        return vendorlib.call(vendorlib.call, vendorlib.call, chain, rest)
    if head == "s":
        return service_call(chain, rest)
    if head == "g":  # a generator resumed from here (its caller changes between resumptions)
        idle = [g for g in GENERATORS if not g.gi_running]
        if not idle:
            return chain(rest)
        gen = idle[random.randrange(len(idle))]
        GEN_REST[id(gen)] = rest
        return next(gen)
    return chain(rest)


GEN_REST = {}


def make_gen():
    def gen():
        while True:
            rest = GEN_REST.pop(id(g), ())
            yield chain(rest)

    g = gen()
    return g


GENERATORS = [make_gen() for _ in range(3)]
for g in GENERATORS:
    GEN_REST[id(g)] = ()
    next(g)

rng = random.Random(12)
random.seed(12)
for _ in range(3000):
    steps = [rng.choice("vVWssg..") for _ in range(rng.randrange(0, 10))]
    chain(steps)
    if rng.random() < 0.3:  # the same stack again: anchors hit
        chain(steps)
print(json.dumps({"checked": checked, "wrong": wrong[:5], "nwrong": len(wrong)}))
