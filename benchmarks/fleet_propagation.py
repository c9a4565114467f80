"""Propagation of a published change to one running agent, and the cost of an idle pull.

    .venv/bin/python benchmarks/fleet_propagation.py [ROUNDS] [PULL_INTERVAL]

Each round waits a random fraction of the interval, so a change lands at a random
phase of the pull cycle. A real http.server origin (tests/support/fleet.py) on loopback, one PolicyAgent with
``source=`` and the given pull interval; each round publishes a new revision and waits
(polling ``check`` every millisecond) until the agent enforces it. Then 500 idle pulls
(each one conditional GET answered 304) are timed in this thread. Prints one JSON line.
Not a pytest bar: the fleet-wide load benchmark is benchmarks/test_fleet*.py.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from polc.runtime.agent import PolicyAgent
from polc.runtime.fleet.puller import Puller

from support.fleet import OriginServer, Site, art, make_trust


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    root = Path(tempfile.mkdtemp(prefix="polc-fleet-bench-"))
    site = Site(root / "site")
    origin = OriginServer(site.www)
    trust = make_trust()
    base = {"_global": art("_global", "g.example")}
    site.publish(dict(base, **{"tenant.acme": art("tenant.acme", "h0.example")}), set_name="bench")
    agent = PolicyAgent(str(root / "mirror"), trust=trust, source=origin.url, pull_interval=interval).start()
    delays = []
    rng = random.Random(1)
    for i in range(1, rounds + 1):
        time.sleep(rng.uniform(0, interval))  # publish at a random phase of the agent's pull cycle
        host = f"h{i}.example"
        site.publish(dict(base, **{"tenant.acme": art("tenant.acme", host)}))
        t0 = time.monotonic()
        while not agent.check("tenant.acme", "network.outbound", host, 443).allowed:
            time.sleep(0.001)
        delays.append(time.monotonic() - t0)
    agent.stop()

    puller = Puller(origin.url, str(root / "mirror"), trust=trust)
    for _ in range(20):
        puller.cycle()
    n = 500
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        assert puller.cycle().outcome == "unchanged"
    wall, cpu = (time.perf_counter() - w0) / n, (time.process_time() - c0) / n
    puller.close()
    origin.stop()
    delays.sort()
    print(
        json.dumps(
            {
                "rounds": rounds,
                "pull_interval_s": interval,
                "propagation_s": {
                    "p50": round(statistics.median(delays), 3),
                    "p90": round(delays[int(0.9 * (len(delays) - 1))], 3),
                    "max": round(delays[-1], 3),
                },
                "idle_pull_wall_us": round(wall * 1e6, 1),
                "idle_pull_cpu_us_client_and_server": round(cpu * 1e6, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
