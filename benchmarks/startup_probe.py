"""One agent start-up in a fresh process, timed: ``python startup_probe.py DIR background|whole``.

Prints one JSON object: seconds from the agent's construction to ``start()``
returning (``start_s``) and to the first decision about a module picked at
random (``first_s``; with background loading it is linked on the spot), and
to every module linked (``all_s``); the process's CPU time for the whole
load (``cpu_s``); the artifacts counted (``n``). Wall-clock times include
whatever else the machine does; compare ratios measured in one run.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time


def main() -> None:
    directory, how = sys.argv[1], sys.argv[2]
    t_import = time.perf_counter()
    from polc.runtime import PolicyAgent

    t0 = time.perf_counter()
    c0 = time.process_time()
    agent = PolicyAgent(directory, reload=False, background_load=(how == "background"))
    agent.start()
    t_start = time.perf_counter()
    names = [n[:-4] for n in os.listdir(directory) if n.endswith(".bin") and n != "_global.bin"]
    module = random.Random(7).choice(sorted(names))
    i = module.rsplit("s", 1)[1]
    decision = agent.check(module, "network.outbound", f"x.svc0.t{i}.example", 443)
    t_first = time.perf_counter()
    assert decision.allowed, decision
    assert agent.wait_loaded(3600)
    t_all = time.perf_counter()
    cpu = time.process_time() - c0
    modules = agent.status()["modules"]
    bad = [m for m, s in modules.items() if s["last_error"]]
    print(
        json.dumps(
            {
                "how": how,
                "n": len(names),
                "import_s": t0 - t_import,
                "start_s": t_start - t0,
                "first_s": t_first - t0,
                "all_s": t_all - t0,
                "cpu_s": cpu,
                "failed": len(bad),
            }
        )
    )


if __name__ == "__main__":
    main()
