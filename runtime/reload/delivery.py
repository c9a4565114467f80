"""Event delivery in commit order, by one thread at a time.

Steps queue their events under the step lock (:meth:`EventDelivery.queue`),
so the queue holds them in commit order whoever reloads; then the reloading
thread delivers (:meth:`EventDelivery.deliver`). One thread delivers at a
time and drains the queue, so two threads reloading at once (the poller and
``reload_now``) can never deliver a module's ``recovered`` before its
``failed``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from ..events import ReloadEvent

__all__ = ["NOTIFY_WAIT_S", "EventDelivery", "Subscriber"]

logger = logging.getLogger("polc")

# How long a reload waits for another thread that is delivering events
# (its subscribers are slow, or wait for this thread) before returning.
NOTIFY_WAIT_S = 10.0

Subscriber = Callable[[ReloadEvent], None]


class EventDelivery:
    """The queue of committed events and the subscribers they are delivered to."""

    def __init__(self) -> None:
        self.subscribers: tuple[Subscriber, ...] = ()
        self._cond = threading.Condition(threading.Lock())
        # events committed but not yet delivered, how many were ever queued
        # and delivered, and the thread delivering now
        self._events: deque[ReloadEvent] = deque()
        self._queued = 0
        self._delivered = 0
        self._notifier: int | None = None

    def queue(self, events: list[ReloadEvent]) -> int:
        """Queue a step's events (call it under the step lock); returns the count to deliver up to."""
        with self._cond:
            self._events.extend(events)
            self._queued += len(events)
            return self._queued

    def deliver(self, upto: int) -> None:
        """Deliver queued events to the subscribers, in commit order; return once
        the first ``upto`` events ever queued have been delivered.

        A thread that finds another delivering waits for it (at most
        NOTIFY_WAIT_S, so a subscriber waiting for that thread cannot deadlock
        them); a subscriber that reloads has its events delivered right after
        its own callback returns.
        """
        me = threading.get_ident()
        # self._cond is read afresh each time: a fork replaces it.
        with self._cond:
            deadline = None
            while self._delivered < upto:
                if self._notifier is None:
                    self._notifier = me
                    break
                if self._notifier == me:
                    return  # called from a subscriber: the loop below delivers these next
                if deadline is None:
                    deadline = time.monotonic() + NOTIFY_WAIT_S
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("reload events still being delivered by another thread; not waiting longer")
                    return
                self._cond.wait(left)
            else:
                return
        try:
            while True:
                with self._cond:
                    if not self._events:
                        break
                    event = self._events.popleft()
                try:
                    for callback in self.subscribers:
                        try:
                            callback(event)
                        except Exception:
                            logger.exception("reload event subscriber %r raised", callback)
                finally:
                    with self._cond:
                        self._delivered += 1
                        self._cond.notify_all()
        finally:
            with self._cond:
                if self._notifier == me:
                    self._notifier = None
                self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        """A new lock; an event another (now gone) thread was delivering is lost here
        (counted as delivered, so no reload waits for it); one this thread is
        delivering is counted when its callbacks return. Events committed but
        not delivered are delivered by the child's next step."""
        me = threading.get_ident()
        self._cond = threading.Condition(threading.Lock())
        if self._notifier != me:
            self._notifier = None
        in_flight = 1 if self._notifier == me else 0
        self._delivered = self._queued - len(self._events) - in_flight
