"""The switch-interval tweak: lower ``sys.setswitchinterval`` while a poll step runs.

Every system call of a step releases the GIL, and getting it back from a
thread that keeps it busy (an application calling ``check`` in a loop)
takes up to the switch interval, 5 ms by default. While at least one step
runs, the interval is lowered to :data:`POLL_SWITCH_INTERVAL`. Measured
with a thread saturating ``check()`` and a poller every 0.1 s over 10,000
artifacts: each step 55-60 ms instead of 1-6 s, and the same 3.0-3.5 M
checks/s (docs/runtime.md).
"""

from __future__ import annotations

import sys
import threading
from typing import ClassVar

__all__ = ["POLL_SWITCH_INTERVAL", "FastSwitch", "fast_switch"]

# While a poll step runs, the interpreter's switch interval is lowered to
# this (seconds; None: leave it alone). Process-global, so shared by every
# agent (see FastSwitch).
POLL_SWITCH_INTERVAL: float | None = 0.0002


class FastSwitch:
    """Lower ``sys.setswitchinterval`` while at least one poll step runs.

    The interval is process-global: the first step to enter saves it and
    lowers it, the last to leave restores it — unless someone else changed
    it meanwhile (then theirs stays). Steps of several agents, on several
    threads, nest freely.
    """

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _users: ClassVar[int] = 0
    _saved: ClassVar[float | None] = None
    _set: ClassVar[float | None] = None

    def __enter__(self) -> None:
        target = POLL_SWITCH_INTERVAL
        cls = FastSwitch
        with cls._lock:
            cls._users += 1
            if cls._users == 1 and target is not None:
                current = sys.getswitchinterval()
                if current > target:
                    cls._saved = current
                    sys.setswitchinterval(target)
                    cls._set = sys.getswitchinterval()

    def __exit__(self, *exc: object) -> None:
        cls = FastSwitch
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._saved is not None:
                if sys.getswitchinterval() == cls._set:
                    sys.setswitchinterval(cls._saved)
                cls._saved = cls._set = None

    @classmethod
    def before_fork(cls) -> None:
        """Hold the lock across ``os.fork()``, so the child inherits a consistent count."""
        cls._lock.acquire()

    @classmethod
    def after_fork_in_parent(cls) -> None:
        cls._lock.release()

    @classmethod
    def after_fork_in_child(cls, steps: int) -> None:
        """The child of a fork runs ``steps`` poll steps (0, or 1 when the
        forking thread was inside one): new lock, count fixed, and the
        interval restored when a step of a thread that is gone lowered it."""
        cls._lock = threading.Lock()
        cls._users = steps
        if steps == 0 and cls._saved is not None:
            if sys.getswitchinterval() == cls._set:
                sys.setswitchinterval(cls._saved)
            cls._saved = cls._set = None


fast_switch = FastSwitch()
