"""What a decision does besides allowing or raising: counters, rate-limited log lines, the observation log."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import logging
import os
import threading
import time
from typing import Any

__all__ = ["Counters", "Limiter", "Observer", "shown_request"]

logger = logging.getLogger("polc.guard")

ALLOWED, DENIED, WOULD_DENY = 0, 1, 2
_NAMES = ("allowed", "denied", "would_deny")


def _shown(value: object) -> str:
    t = type(value)
    if t is str:
        text = str.__str__(value)
        return repr(text[:200]) + ("..." if len(text) > 200 else "")
    if t is int:
        return str(int.__index__(value))  # type: ignore[arg-type]
    return f"<{t.__name__}>"


def shown_request(capability: str, args: tuple[object, ...]) -> str:
    return f"{capability}({', '.join(map(_shown, args))})"


def _value(counter: itertools.count[int]) -> int:
    """How many times ``next`` was called on a counter started at 0, without advancing it."""
    text = repr(counter)  # "count(N)": N, the next value, is how many were taken from 0
    return int(text[text.index("(") + 1 : text.rindex(")")])


class Counters:
    """allowed / denied / would-deny per (package, capability), and guard faults.

    Without a lock: each count is an :func:`itertools.count` advanced with
    ``next``, one C call that no other thread interleaves with (the GIL), and
    a new key goes in with ``dict.setdefault``, atomic for keys of str.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], itertools.count[int]] = {}
        self._faults = itertools.count()

    def add(self, package: str, capability: str, kind: int) -> None:
        key = (package, capability, kind)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts.setdefault(key, itertools.count())
        next(counter)

    def counter(self, package: str, capability: str, kind: int) -> itertools.count[int]:
        """The count ``add(package, capability, kind)`` advances (the guard's memo keeps it, and
        the C hook advances it for a remembered allow)."""
        key = (package, capability, kind)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts.setdefault(key, itertools.count())
        return counter

    def fault(self) -> None:
        next(self._faults)

    @property
    def faults(self) -> int:
        return _value(self._faults)

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        rows: dict[tuple[str, str], list[int]] = {}
        for (package, capability, kind), counter in list(self._counts.items()):
            rows.setdefault((package, capability), [0, 0, 0])[kind] = _value(counter)
        out: dict[str, dict[str, dict[str, int]]] = {}
        for (package, capability), row in sorted(rows.items()):
            out.setdefault(package, {})[capability] = dict(zip(_NAMES, row, strict=True))
        return out

    def reset_after_fork(self) -> None:
        pass  # no lock to reset: a count is never left half-advanced


class Limiter:
    """A line per key at most once per ``interval`` seconds; the next one says how many were not logged."""

    _MAX_KEYS = 65536

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[object, list[float]] = {}  # key -> [time logged, suppressed since]

    def log(self, key: object, level: int, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            entry = self._last.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return
            skipped = int(entry[1]) if entry is not None else 0
            if len(self._last) >= self._MAX_KEYS:
                self._last.clear()
            self._last[key] = [now, 0]
        if skipped:
            message += f" ({skipped} more like this in the last {self.interval:g} s were not logged)"
        with contextlib.suppress(Exception):  # a broken handler must not reach the operation
            logger.log(level, "%s", message)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()


class Observer:
    """Appends one JSON line per distinct (package, capability, normalised arguments).

    The file is opened once, for appending (``O_APPEND``: lines from several
    processes do not interleave within a line); each line is flushed as it is
    written. After ``limit`` distinct entries it stops and says so once.
    """

    def __init__(self, path: str, limit: int = 100_000) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str, tuple[object, ...]]] = set()
        self._limit = limit
        self._full = False
        self.written = 0

    def seen(self, key: tuple[str, str, tuple[object, ...]]) -> bool:
        return key in self._seen

    def record(self, key: tuple[str, str, tuple[object, ...]], module: str, decision: str, site: str) -> None:
        package, capability, args = key
        line: dict[str, Any] = {
            "v": 1,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "package": package,
            "module": module,
            "capability": capability,
            "args": list(args),
            "decision": decision,
            "site": site,
        }
        text = json.dumps(line, ensure_ascii=False, separators=(", ", ": ")) + "\n"
        with self._lock:
            if key in self._seen:
                return
            if len(self._seen) >= self._limit:
                if not self._full:
                    self._full = True
                    logger.warning(
                        "observation log %s: %d distinct operations; not recording more", self.path, self._limit
                    )
                return
            self._seen.add(key)
            try:
                self._file.write(text)
                self.written += 1
            except (OSError, ValueError) as exc:
                if not self._full:
                    self._full = True
                    logger.error("observation log %s: cannot write (%s); not recording more", self.path, exc)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
