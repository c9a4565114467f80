"""The guard: enforce the policy on the real operations of governed Python packages.

``agent.guard(roots=..., mode=..., observe=..., unlisted=..., base=...)`` on a
started :class:`~polc.runtime.PolicyAgent` installs it (once per process);
``polc guard POLICY_DIR -- COMMAND`` does the same for a program without a
code change. An audit hook (PEP 578) and a few wrapped entry points turn
file, socket, process, thread, environment and native-library operations
into capability requests, attribute each to the governed packages on the
calling stack (and to those that handed the work off), and decide it with
the agent's current snapshot: a deny raises :class:`~polc.runtime.PolicyDenied`
before the operation happens. docs/guard.md has the model and its limits.

``import polc.runtime`` never imports this package.
"""

from __future__ import annotations

import _socket
import contextlib
import itertools
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import PolicyDenied

if TYPE_CHECKING:
    from .core import Guard, GuardError

__all__ = ["Guard", "GuardError", "current", "find_denial", "install"]

_lock = threading.Lock()
_installed: Guard | None = None


def __getattr__(name: str) -> Any:
    # Guard and GuardError on first use: `polc guard` reads .launch before it execs, without them
    if name in ("Guard", "GuardError"):
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module 'polc.runtime.guard' has no attribute {name!r}")


def current() -> Guard | None:
    """The guard installed in this process, if any."""
    return _installed


def find_denial(exc: BaseException | None, *, limit: int = 32) -> PolicyDenied | None:
    """The :class:`~polc.runtime.PolicyDenied` behind an exception a client library raised, if any.

    Clients wrap the ``OSError`` a denied operation raises: urllib's
    ``URLError`` keeps it as ``reason``, urllib3/requests chain it as the
    cause or context of their own errors (``MaxRetryError.reason``), an
    ``ExceptionGroup`` holds it among others. This follows ``__cause__``,
    ``__context__``, a ``reason`` that is an exception, exceptions among
    ``args`` and a group's ``exceptions``, at most ``limit`` exceptions.
    """
    todo: list[BaseException] = [exc] if exc is not None else []
    seen: set[int] = set()
    while todo and len(seen) < limit:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, PolicyDenied):
            return e
        reason = getattr(e, "reason", None)
        nested = [reason, e.__cause__, e.__context__]
        nested += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        if isinstance(e, BaseExceptionGroup):
            nested += list(e.exceptions)
        todo += [n for n in nested if isinstance(n, BaseException)]
    return None


class _QuietSnapshotAudit(logging.Filter):
    """Drop the snapshot's own "would deny" line for a check the guard makes: the guard logs
    a line of its own (with the package and the call site), rate-limited."""

    def __init__(self, guard: Any) -> None:
        super().__init__()
        self._guard = guard

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName == "_log_audit" and record.module == "snapshot":
            return not self._guard.busy(threading.get_ident())
        return True


_PROBE = "polc.guard.probe"


def _add_python_hook(guard: Guard) -> None:
    """``sys.addaudithook(guard.hook)``, and a private event the hook must see: the call returns
    without adding the hook when an existing hook refuses (raises on ``sys.addaudithook``)."""
    from .core import GuardError

    seen: list[bool] = []
    guard.handlers[_PROBE] = lambda _guard, _args, _frame, _tid: seen.append(True)
    try:
        sys.addaudithook(guard.hook)
        with contextlib.suppress(Exception):  # a later hook refused the private event: seen decides
            sys.audit(_PROBE)
    finally:
        del guard.handlers[_PROBE]
    if not seen:
        raise GuardError(
            "the guard is not installed: its audit hook did not see the probe event "
            "(another audit hook refused sys.addaudithook)"
        )


def install(
    agent: Any,
    *,
    roots: Mapping[str, str] | None = None,
    mode: str = "enforce",
    observe: str | os.PathLike[str] | None = None,
    unlisted: str = "allow",
    base: str | os.PathLike[str] | None = None,
    log_interval: float = 60.0,
) -> Guard:
    """Install the guard for ``agent`` (see :meth:`polc.runtime.PolicyAgent.guard`)."""
    global _installed
    from .core import Guard, GuardError

    with _lock:
        if _installed is not None:
            other = "this agent" if _installed.agent is agent else f"another agent ({_installed.agent.policy_dir})"
            raise GuardError(
                f"a guard is already installed in this process, for {other}; "
                "there is one guard per process (audit hooks cannot be removed)"
            )
        if not getattr(agent, "ready", False):
            raise GuardError("start the agent before installing the guard (agent.start(), or use it as a context)")
        from .accel import AccelError, choose

        try:
            accel = choose()
        except AccelError as exc:
            raise GuardError(str(exc)) from None
        guard = Guard(agent, roots=roots, mode=mode, observe=observe, unlisted=unlisted, base=base,
                      log_interval=log_interval)  # fmt: skip
        from .attribution import INHERITED, POLC
        from .events import ALWAYS, HANDLERS, MEMO_EVENTS, OPEN_EXEMPT
        from .wrappers import install_wrappers

        guard.accel = accel
        guard._walk = getattr(accel, "walk", None)  # the C walk exists on CPython 3.11
        guard.snapshot()
        guard.handlers.update(HANDLERS)
        if accel is not None:
            try:  # the C hook checks by itself that it was added (a probe event it must see)
                accel.install(guard.from_c, agent, INHERITED, POLC, tuple(HANDLERS), tuple(ALWAYS))
            except RuntimeError as exc:
                raise GuardError(f"the guard is not installed: {exc}") from None
            # the requests whose allows the C hook answers from the guard's memo (Guard.remember)
            accel.configure_memo(MEMO_EVENTS, _socket.socket.__dict__["family"], (_socket.AF_INET, _socket.AF_INET6),
                                 guard._busy, guard.stops, os, itertools.count, OPEN_EXEMPT)  # fmt: skip
        else:
            _add_python_hook(guard)
        install_wrappers(guard)
        logging.getLogger("polc").addFilter(_QuietSnapshotAudit(guard))
        os.register_at_fork(after_in_child=guard.after_fork_in_child)
        agent._guard = guard
        _installed = guard
    logging.getLogger("polc.guard").info(
        "guard installed: %s mode, %s hook, unlisted packages %s, base %s%s",
        mode,
        "C" if guard.accel is not None else "Python",
        "governed by _global" if unlisted == "global" else "unchecked",
        guard.base,
        f", observing to {guard.observer.path}" if guard.observer is not None else "",
    )
    return guard
