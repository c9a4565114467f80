"""Run the test suite as several pytest processes at once, one per CPU this process may use.

    python tests/parallel.py [PYTEST ARGS...]      (what ``make test`` runs)

Each process runs a share of the test files (``--shard K/N``, tests/conftest.py: whole files,
balanced by their number of tests, slow ones weighing more) in its own temporary directory.
The first share's output is shown as it comes; the others' after it. The exit status is the
first failing share's (pytest's codes: 1 tests failed, 2 interrupted, 3 internal error, 4 usage
error), 5 only when no share collected a test, else 0.

``POLC_TEST_JOBS=N`` sets the number of processes (1: plain ``python -m pytest``). Most tests
start real subprocesses, servers and threads, so the share that waits on them leaves the CPU to
the other: on two cores the suite takes about 60 % of the time of one process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

NO_TESTS = 5


def jobs() -> int:
    value = os.environ.get("POLC_TEST_JOBS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"tests/parallel.py: POLC_TEST_JOBS must be a positive integer, not {value[:40]!r}")
        return int(value)
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def combined(codes: list[int]) -> int:
    failing = [c for c in codes if c not in (0, NO_TESTS)]
    if failing:
        return failing[0]
    return NO_TESTS if all(c == NO_TESTS for c in codes) else 0


def main(argv: list[str]) -> int:
    n = jobs()
    pytest = [sys.executable, "-m", "pytest", *argv]
    if n == 1:
        return subprocess.call(pytest)
    scratch = tempfile.mkdtemp(prefix="polc-tests-")
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for k in range(n):
            # no cache plugin: the shares would write .pytest_cache/ at once
            args = [*pytest, f"--shard={k}/{n}", f"--basetemp={scratch}/t{k}", "-p", "no:cacheprovider"]
            if k == 0:
                procs.append(subprocess.Popen(args))
                logs.append(None)
            else:
                log = open(os.path.join(scratch, f"share{k}.log"), "w+b")  # noqa: SIM115 - closed below
                logs.append(log)
                procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
        codes = [p.wait() for p in procs]
        for k, log in enumerate(logs):
            if log is None:
                continue
            log.seek(0)
            sys.stdout.flush()
            print(f"\n---- share {k + 1} of {n} ----", flush=True)
            shutil.copyfileobj(log, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        summary = ", ".join(f"share {k + 1}: exit {c}" for k, c in enumerate(codes))
        print(f"tests/parallel.py: {n} shares ({summary})", flush=True)
        return combined(codes)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        return 2
    finally:
        for log in logs:
            if log is not None:
                log.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
