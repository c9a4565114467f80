"""A child process for benchmarks/test_guard.py's interleaved figures: with or without the guard.

``python guard_ab.py ROOT on|off``: builds nothing (ROOT is the world test_guard.py made), installs
the guard when ``on``, then answers lines on stdin: ``NAME N`` runs case NAME N times and prints
the CPU time of this thread per operation, in seconds. Two such children, one with and one without
the guard (both running an agent), are asked in turn, so the machine's load weighs on both alike.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

root = Path(sys.argv[1])
sys.path.insert(0, str(root / "site-packages"))
sys.path.insert(0, str(Path(__file__).parent))

import benchvendor  # noqa: E402
from test_guard import DEPTH, deep, event, read  # noqa: E402

from polc.runtime import PolicyAgent  # noqa: E402

# both children run an agent (a service using polc has one either way); one installs the guard
agent = PolicyAgent(str(root / "policies"), reload_interval=0).start()
if sys.argv[2] == "on":
    agent.guard(base=str(root / "app"))

file = str(root / "app" / "data" / "file.txt")
address = (sys.argv[3], int(sys.argv[4]))
CASES = {
    "ignored-event": (event, ()),
    "open-governed": (benchvendor.deep, (DEPTH, benchvendor.read, file)),
    "walk-governed-60": (benchvendor.deep, (60, benchvendor.read, file)),
    "open-ungoverned": (deep, (DEPTH, read, file)),
    "connect-governed": (benchvendor.deep, (DEPTH, benchvendor.connect, address)),
    "subprocess-governed": (benchvendor.deep, (DEPTH, benchvendor.run, ["true"])),
}
for line in sys.stdin:
    name, n = line.split()
    fn, args = CASES[name]
    count = int(n)
    fn(*args)
    t = time.thread_time()
    for _ in range(count):
        fn(*args)
    print((time.thread_time() - t) / count, flush=True)
