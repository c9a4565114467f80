"""A short run for the observation log: each operation twice (the log keeps one line per distinct one)."""

import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(here), "site-packages"))

import unlistedlib  # noqa: E402
import vendorlib  # noqa: E402

port = int(sys.argv[1])
for _ in range(2):
    print(vendorlib.fetch(f"http://localhost:{port}/"))
    print(vendorlib.read("data/allowed.txt"))
    print(vendorlib.run(["true"]))
    for fn, arg in ((vendorlib.read, "secret.txt"), (unlistedlib.read, "secret.txt")):
        try:
            print(fn(arg))
        except PermissionError as exc:
            print("denied:", exc)

# a Python child inherits the guard from the environment polc guard prepared
import subprocess  # noqa: E402

child = subprocess.run(
    [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import vendorlib, os; "
     "print('child', os.getpid(), vendorlib.read('data/public/note.txt'))", os.path.join(os.path.dirname(here), "site-packages")],
    capture_output=True, text=True, check=True,
)  # fmt: skip
print(child.stdout.strip())
