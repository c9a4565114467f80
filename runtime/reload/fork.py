"""``os.fork()``: a child reloads on its own (gunicorn ``--preload``, multiprocessing's fork).

A child inherits every agent but none of its threads: without these
handlers it would keep its first policy for ever (no poller), and a lock
held by one of the parent's threads at the fork would stay held in it.
Handlers registered with ``os.register_at_fork`` over a weak registry of
the live agents (:func:`register`) hold each agent's step lock across the
fork (waiting up to :data:`FORK_STEP_WAIT_S` for a step on another thread),
fix the switch-interval count, and let each agent rebuild its locks and
poller in the child (:class:`ForkAware`).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Protocol

from .switch import FastSwitch

__all__ = ["FORK_STEP_WAIT_S", "ForkAware", "register"]

logger = logging.getLogger("polc")

# How long os.fork() waits for a reload step running on another thread to
# finish, so that the child inherits no half-committed reloader state. Past
# it the child rebuilds that state from the policy in force.
FORK_STEP_WAIT_S = 10.0


class ForkAware(Protocol):
    """What the fork handlers call on each registered agent."""

    def _fork_prepare(self) -> bool:
        """Before the fork: hold the step lock; True when it is held."""
        ...

    def _fork_parent(self, held: bool) -> None:
        """In the parent after the fork: release what ``_fork_prepare`` held."""
        ...

    def _fork_child(self, held: bool) -> None:
        """In the child: new locks and poller."""
        ...

    def _stepping_on(self, ident: int) -> bool:
        """Is the thread ``ident`` inside a poll step of this agent now?"""
        ...


_agents: weakref.WeakSet[ForkAware] = weakref.WeakSet()  # every agent alive in this process
# What each forking thread holds between its before and after handlers (two
# threads may fork at once; the child has the same thread ident).
_fork_held: dict[int, list[tuple[ForkAware, bool]]] = {}


def register(agent: ForkAware) -> None:
    """Make ``agent`` follow forks (held weakly: a collected agent drops out)."""
    _agents.add(agent)


def _before_fork() -> None:
    held = [(agent, agent._fork_prepare()) for agent in list(_agents)]
    FastSwitch.before_fork()
    _fork_held[threading.get_ident()] = held


def _after_fork_in_parent() -> None:
    held = _fork_held.pop(threading.get_ident(), [])
    FastSwitch.after_fork_in_parent()
    for agent, locked in held:
        agent._fork_parent(locked)


def _after_fork_in_child() -> None:
    me = threading.get_ident()
    held = _fork_held.pop(me, [])
    _fork_held.clear()  # other threads' entries: those threads do not exist here
    FastSwitch.after_fork_in_child(sum(1 for agent, _ in held if agent._stepping_on(me)))
    for agent, locked in held:
        try:
            agent._fork_child(locked)
        except Exception:  # one agent must not stop the others from restarting
            logger.exception("restarting the policy reloader after fork failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
