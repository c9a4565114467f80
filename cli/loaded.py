"""The verified programs behind an agent's snapshot, for the commands that list rules (``polc eval
--explain``, ``polc test --artifacts``).

A :class:`~polc.runtime.enforce.link.LinkedModule` keeps indexed tables, not
its rules, so each module's artifact is read again, verified with the agent's
own trust configuration, and accepted only when it is the revision the agent
linked: a file replaced in between is an I/O error, never a listing of
another policy than the one that decided.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from polc.errors import UsageOrIOError
from polc.runtime import PolicyAgent
from polc.runtime.catalog import GLOBAL_MODULE
from polc.runtime.errors import PolcError
from polc.runtime.format.program import Program
from polc.runtime.format.reader import read_artifact_file

__all__ = ["programs_of"]


def programs_of(agent: PolicyAgent, modules: Iterable[str] | None = None, *, prefix: str) -> dict[str, Program]:
    """The verified program of each module in force (of ``modules`` only, when given), ``_global`` included."""
    snap = agent.snapshot
    linked = dict(snap.modules)
    if snap.glob is not None:
        linked[GLOBAL_MODULE] = snap.glob
    wanted = set(linked) if modules is None else set(modules) & set(linked)
    files = {name: info["file"] for name, info in agent.status()["modules"].items()}
    out: dict[str, Program] = {}
    for name in sorted(wanted):
        path = os.path.join(agent.policy_dir, files.get(name) or name + ".bin")
        try:
            art = read_artifact_file(path, trust=agent.trust)
        except (OSError, PolcError, ValueError) as exc:
            raise UsageOrIOError(f"{path}: cannot read it again to list its rules: {exc}", prefix=prefix) from None
        if art.revision != linked[name].revision or art.module != name:
            raise UsageOrIOError(f"{path}: changed while being read (revision {linked[name].revision} was loaded, "
                                 f"{art.revision} is there now); run again", prefix=prefix)
        out[name] = art
    return out
