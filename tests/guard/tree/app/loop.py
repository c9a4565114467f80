"""The incident service: one round of work per line on stdin, one JSON line per round on stdout.

A round: the vendor library fetches from the upstream (argv[1] = its port, via localhost),
the service fetches its own upstream through the ungoverned helper, and reads its data.
"""

import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(here), "site-packages"))

import helperlib  # noqa: E402
import vendorlib  # noqa: E402

port = int(sys.argv[1])
for _line in sys.stdin:
    round_ = {"pid": os.getpid()}
    try:
        round_["vendor"] = vendorlib.fetch(f"http://localhost:{port}/")
    except Exception as exc:  # urllib wraps the PolicyDenied in a URLError
        reason = getattr(exc, "reason", exc)
        round_["vendor_denied"] = f"{type(reason).__name__}: {reason}"
    round_["service"] = helperlib.fetch(f"http://127.0.0.1:{port}/")
    round_["data"] = vendorlib.read("data/allowed.txt")
    print(json.dumps(round_), flush=True)
