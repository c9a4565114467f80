"""The poller: the reloader's state for one policy directory, and one step of it.

:meth:`Poller.run_step` is one poll (the agent serialises steps with its
step lock and runs them on its thread, ``while not stop.wait(interval)``, or
from ``reload_now``):

1. ``stat`` the directory. Only if its ``(mtime_ns, ino, ctime_ns, dev)``
   changed (or changed within the racy window) is it listed again (``*.bin``
   names, not starting with ``.``).
2. When it was listed, the names that can have changed at the directory
   level — new, symlinks, or whose directory entry's inode differs from the
   recorded one (atomic renames, ``..data`` swaps) — are examined, names gone
   are noted, and that is committed and published first.
3. The sweep: every other file is ``stat``-ed and compared field by field
   with its recorded stat, walking a precomputed list of
   ``(name, mtime, size, ino, ctime)``, so an unchanged file costs one
   ``stat`` call and four comparisons. Between chunks of SWEEP_CHUNK files
   (at most every SWEEP_DIR_CHECK_S) the directory is looked at again, and a
   changed directory is handled as in 2 at once.
4. Each changed file is examined (:func:`~.outcomes.examine`), and each
   phase's outcomes are committed at once (:meth:`Poller.commit`): file
   states, status, one snapshot published, then log lines and events. An
   exception commits nothing of the phase it hits.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import stat as stat_mod
import time
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import TYPE_CHECKING, Any, assert_never

from ..catalog import GLOBAL_MODULE
from ..enforce import EMPTY_SNAPSHOT, LinkedModule, Snapshot
from ..events import (
    FAILED,
    LOADED,
    RECOVERED,
    RELOADED,
    REMOVED,
    EventKind,
    ReloadEvent,
    ReloadFailure,
    ReloadResult,
)
from . import dirlist, outcomes
from .filestate import FileState, SweepEntry, is_racy
from .loading import LazyModules
from .outcomes import Failed, NewPolicy, Outcome, SamePolicy, Touched

if TYPE_CHECKING:
    from ..enforce.resident import Residency
    from ..format.reader import Trust

__all__ = ["POLL_SWEEP_DUTY", "SUFFIX", "SWEEP_CHUNK", "SWEEP_DIR_CHECK_S", "InForce", "Poller"]

logger = logging.getLogger("polc")

SUFFIX = ".bin"
# The per-file sweep looks at the directory's own stat between chunks of
# this many files, at most every SWEEP_DIR_CHECK_S, so an atomic drop that
# lands during a long sweep is published without waiting for the sweep.
SWEEP_CHUNK = 64
SWEEP_DIR_CHECK_S = 0.005
# Polling (run_tick): the directory's own stat every tick, and the full sweep
# (in-place rewrites, everything else) only once the time since the last
# sweep is at least its duration / POLL_SWEEP_DUTY (every tick while the
# sweep is cheap; at most every sweep_cap seconds apart).
POLL_SWEEP_DUTY = 0.05
SWEEP_STAT_GUESS_S = 2e-6  # one file's share of a sweep, until one is measured
# Entry types whose change can change what a symlinked name resolves to:
# then the directory is listed whole (every symlink re-examined).
_STRUCTURAL = frozenset((dirlist.DT_UNKNOWN, dirlist.DT_DIR, dirlist.DT_LNK))

DirKey = tuple[int, int, int, int]  # (st_mtime_ns, st_ino, st_ctime_ns, st_dev) of the directory
# A new listing: the candidate names, the names that can have changed at the
# directory level, and the recorded names gone.
Listing = tuple[list[str], list[str], list[str]]
_LogLine = tuple[int, str, *tuple[object, ...]]  # level, format, arguments

_first = itemgetter(0)

# A commit's status changes are kept apart from the whole table until there
# are this many (or an eighth of the table): then folded into a new table.
STATUS_FOLD = 256


def _merged(base: dict[str, _Status], delta: dict[str, _Status | None]) -> dict[str, _Status]:
    out = dict(base)
    for module, info in delta.items():
        if info is None:
            out.pop(module, None)
        else:
            out[module] = info
    return out


class InForce:
    """The policy of one module in force: its linked artifact, from which file, since when."""

    __slots__ = ("file", "linked", "loaded_at")

    def __init__(self, linked: LinkedModule, file: str, loaded_at: float) -> None:
        self.linked = linked
        self.file = file
        self.loaded_at = loaded_at


# A module's status as the poller keeps it: its InForce when it has no error (no
# object of its own: ~270 bytes a module fewer than a dict at 100,000 modules),
# else (policy in force or None, error, file name). status() builds the dicts.
_Status = InForce | tuple[InForce | None, str | None, str]


def _last_error(value: _Status) -> str | None:
    return None if type(value) is InForce else value[1]  # type: ignore[index]


def status_dict(value: _Status) -> dict[str, Any]:
    """The ``status()["modules"]`` entry of a kept status."""
    if type(value) is InForce:
        entry: InForce | None = value
        error: str | None = None
        file = value.file
    else:
        entry, error, file = value  # type: ignore[misc]
    if entry is None:
        return {
            "revision": None,
            "rules": 0,
            "mode": None,
            "loaded_at": None,
            "source": None,
            "file": file,
            "last_error": error,
        }
    linked = entry.linked
    return {
        "revision": linked.revision,
        "rules": linked.rule_count,
        "mode": linked.mode,
        "loaded_at": entry.loaded_at,
        "source": linked.source,
        "file": entry.file,
        "last_error": error,
    }


class Poller:
    """The reloader of one policy directory: what it has seen, what is in force, and one step.

    Every attribute is changed only by the thread running a step (the
    caller serialises steps); the status attributes and ``snapshot`` are
    replaced whole, so readers on other threads see one version or the next.
    ``publish`` is called with each new snapshot, right after it is recorded.
    """

    def __init__(
        self,
        policy_dir: str,
        *,
        trust: Trust | None,
        cache_size: int,
        publish: Callable[[Snapshot], None],
        residency: Residency | None = None,
    ) -> None:
        self.policy_dir = policy_dir
        self.trust = trust
        self.cache_size = cache_size
        # The budget of linked modules (enforce/resident.py), or None: every module stays linked.
        self.residency = residency
        self._on_publish = publish
        self.snapshot: Snapshot = EMPTY_SNAPSHOT
        self.files: dict[str, FileState] = {}
        self.in_force: dict[str, InForce] = {}
        self.dir_key: DirKey | None = None
        self.dir_racy = True
        self.names: list[str] = []
        self._pending_dir: tuple[DirKey, bool, list[str], dirlist.Listing | None] | None = None
        # The raw listing the recorded names came from (reload/dirlist.py), or None.
        self.raw_listing: dirlist.Listing | None = None
        # Polling: when the next full sweep is due (time.monotonic), and the
        # longest time between two (the agent's sweep_interval); see run_tick.
        self.next_sweep = 0.0
        self.sweep_cap = 60.0
        # What the sweep stats, of every file whose recorded stat can be trusted,
        # in name order; every other file (racy or unreadable) is examined on
        # every step.
        self.sweep: list[SweepEntry] = []
        self.recheck: list[str] = []
        # Published for status(): replaced whole on every commit.
        self.dir_error: str | None = None
        self.global_error: str | None = None
        # (base, delta): base is never changed once set; delta holds the
        # statuses changed since (None: gone) and is replaced whole on each
        # commit, folded into a new base when large. One attribute, so readers
        # on other threads see a matching pair; a commit costs O(changes), not
        # a copy of every module's status.
        self._status: tuple[dict[str, _Status], dict[str, _Status | None]] = ({}, {})
        self.last_reload: float | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        # Background loading (reload/loading.py): the table of modules not
        # linked yet, the file names the loader has not committed, and the
        # names the watcher reported meanwhile (examined once committed).
        self.sweep_stale = False  # loader batches committed since the sweep list was built
        self.loading: LazyModules | None = None
        self.pending: set[str] = set()
        self.deferred: set[str] = set()
        self.load_total = 0
        self.load_started: float | None = None
        self.load_failed = 0

    # -- one step ------------------------------------------------------------

    def run_tick(self, sweep_cap: float) -> tuple[list[ReloadEvent], ReloadResult]:
        """One tick of the polling loop: the directory's stat (listed only when it
        changed, or changed too recently to be trusted) and the files whose stat
        cannot be trusted; the full step with the sweep when it is due.

        The sweep (in-place rewrites, anything the directory's stat does not
        show) is due once the time since the last one is at least its
        duration / POLL_SWEEP_DUTY, and at most ``sweep_cap`` seconds after it:
        every tick while it is cheap, less often on large trees.
        """
        self.sweep_cap = sweep_cap
        if time.monotonic() >= self.next_sweep:
            return self.run_step(False)
        return self._step(False, sweep=False, relist=False)

    def run_step(self, initial: bool = False, *, sweep: bool = True) -> tuple[list[ReloadEvent], ReloadResult]:
        """One poll: the events committed (to be delivered) and what changed.

        ``sweep=False``: list the directory again (whatever its stat says) and
        examine what the listing shows, without the per-file sweep (a
        ``..data`` swap reported by the watcher).
        """
        return self._step(initial, sweep=sweep, relist=not sweep)

    def _step(self, initial: bool, *, sweep: bool, relist: bool) -> tuple[list[ReloadEvent], ReloadResult]:
        """:meth:`run_step`; with ``sweep`` and ``relist`` False, a polling tick
        without the sweep: the directory listed only if its stat changed, and
        the files whose stat cannot be trusted examined."""
        now_ns = time.time_ns()
        events: list[ReloadEvent] = []
        result = ReloadResult()
        if relist:
            self.dir_key = None
        if self.sweep_stale:
            self.sweep_stale = False
            self.rebuild_sweep()
        # The sweep list and the files to re-examine as they were before this
        # step: a directory phase below replaces both when it commits.
        entries = self.sweep
        recheck = self.recheck
        done: set[str] = set()  # names examined by a directory phase of this step
        self._pending_dir = None
        try:
            listing = self._list(now_ns)
        except OSError as exc:
            return self._dir_unavailable(exc, initial)
        if self.dir_error is not None:
            logger.info("policy directory available again: %s", self.policy_dir)
            self.dir_error = None
        if listing is not None:
            # The directory changed: a file was created, deleted or renamed
            # over (atomic drops, ``..data`` swaps). Examine the names that
            # can have changed that way and publish them first, before the
            # sweep that costs one stat per file (slow under a GIL convoy).
            self._dir_phase(listing, now_ns, initial, done, events, result)
            if initial:
                self._schedule_first_sweep()
                return events, result
        if not sweep and relist:
            self.last_reload = time.time()
            return events, result

        # The sweep: one stat per file, compared field by field with the
        # recorded key. Between chunks, the directory's own stat: a drop that
        # lands meanwhile is published at once, not after the sweep.
        changed: list[str] = []
        stat = os.stat
        # the path is joined here, not kept per file (~90 bytes a file; ~3 % of the sweep's time)
        prefix = os.path.join(self.policy_dir, "")
        clock = time.monotonic
        last_dir_check = started = clock()
        n = len(entries) if sweep else 0
        chunk = SWEEP_CHUNK
        for lo in range(0, n, chunk):
            if lo and clock() - last_dir_check >= SWEEP_DIR_CHECK_S:
                try:
                    listing = self._list(now_ns, changed_only=True)
                except OSError as exc:
                    return self._dir_unavailable(exc, initial, events, result)
                if listing is not None:
                    self._dir_phase(listing, now_ns, False, done, events, result)
                last_dir_check = clock()
            for name, mtime, size, ino, ctime in entries[lo : lo + chunk] if n > chunk else entries:
                try:
                    st = stat(prefix + name)  # follows symlinks: ..data swaps show up here
                except OSError:
                    changed.append(name)
                    continue
                if st.st_mtime_ns != mtime or st.st_size != size or st.st_ino != ino or st.st_ctime_ns != ctime:
                    changed.append(name)
        if sweep:
            took = clock() - started
            self.next_sweep = clock() + min(self.sweep_cap, took / POLL_SWEEP_DUTY)
        changed += recheck  # racy or unreadable files: examined every step

        # Decide, read, verify and link without touching any state, then
        # commit everything at once.
        found: list[Outcome] = []
        files = self.files
        for name in changed:
            if name in done or name not in files:  # already examined, or gone
                continue
            done.add(name)
            outcome = self.examine(name, now_ns)
            if outcome is not None:
                found.append(outcome)
        if not found:
            self.last_reload = time.time()
            return events, result
        ev, res = self.commit(found, [], False)
        events += ev
        result.changed.extend(res.changed)
        result.failed.extend(res.failed)
        return events, result

    def run_initial_lazily(self, threshold: int = 0) -> tuple[list[ReloadEvent], ReloadResult]:
        """The first step, loading in the background: list, load ``_global``, publish.

        Every other artifact is left pending (:class:`~.loading.LazyModules`):
        linked on first use, or by the loader (:meth:`commit_loaded`). With at
        most ``threshold`` of them, this is the ordinary first step instead.
        """
        now_ns = time.time_ns()
        events: list[ReloadEvent] = []
        result = ReloadResult()
        self._pending_dir = None
        self.dir_key = None
        try:
            listing = self._list(now_ns)
        except OSError as exc:
            return self._dir_unavailable(exc, True)
        self.dir_error = None
        assert listing is not None  # dir_key is None: always listed
        _names, first, _gone = listing
        glob_name = GLOBAL_MODULE + SUFFIX
        rest = [name for name in first if name != glob_name]
        if len(rest) <= threshold:
            self._dir_phase(listing, now_ns, True, set(), events, result)
            return events, result
        self.loading = LazyModules(self.policy_dir, rest, self.trust, self.residency)
        self.pending = set(rest)
        self.deferred = set()
        self.load_total = len(rest)
        self.load_failed = 0
        self.load_started = time.monotonic()
        found: list[Outcome] = []
        if glob_name in first:
            outcome = self.examine(glob_name, now_ns)
            if outcome is not None:
                found.append(outcome)
        self._schedule_first_sweep()
        return self.commit(found, [], True)

    def _schedule_first_sweep(self) -> None:
        """After the first load (every file just examined): the first polling sweep
        after the time a sweep of this many files would take / POLL_SWEEP_DUTY."""
        guess = (len(self.files) + len(self.pending)) * SWEEP_STAT_GUESS_S
        self.next_sweep = time.monotonic() + min(self.sweep_cap, guess / POLL_SWEEP_DUTY)

    def commit_loaded(self, found: list[Outcome]) -> tuple[list[ReloadEvent], ReloadResult]:
        """Commit outcomes the loader (or checks) examined; publish the whole snapshot
        once nothing is pending. A file gone before it was read is dropped, as if
        never listed (the next listing sees it if it comes back)."""
        loading = self.loading
        mine: list[Outcome] = []
        for o in found:
            if o.name not in self.pending:
                continue
            self.pending.discard(o.name)
            if isinstance(o, Failed):
                if o.key == ("error", errno.ENOENT):
                    continue
                self.load_failed += 1
            mine.append(o)
        events, result = self.commit(mine, [], False, publish=False, quiet=True)
        later = [o.name for o in found if o.name in self.deferred]
        if later:
            self.deferred.difference_update(later)
            ev, res = self.run_names(later)
            events += ev
            result.changed.extend(res.changed)
            result.removed.extend(res.removed)
            result.failed.extend(res.failed)
        if loading is not None and not self.pending:
            self.loading = None
            self.deferred = set()
            if self.sweep_stale:
                self.sweep_stale = False
                self.rebuild_sweep()
            self.publish(self._snapshot_with([], initial=True))  # the same modules, none pending
            took = time.monotonic() - (self.load_started or time.monotonic())
            logger.info(
                "loaded %d of %d module(s) in the background in %.1fs (%d failed)",
                loading.total - self.load_failed,
                loading.total,
                took,
                self.load_failed,
            )
        return events, result

    def next_to_load(self, order: list[str], start: int, count: int) -> tuple[list[str], int]:
        """Up to ``count`` pending names: those checks asked for first, then ``order``
        from ``start``. Returns them and where to go on in ``order``."""
        loading = self.loading
        if loading is None:
            return [], len(order)
        pending = self.pending
        batch: list[str] = []
        used = loading.used
        if used:
            taken = used[:]
            del used[: len(taken)]
            batch.extend(m + SUFFIX for m in taken if m + SUFFIX in pending)
        i = start
        n = len(order)
        while len(batch) < count and i < n:
            name = order[i]
            i += 1
            if name in pending:
                batch.append(name)
        if i >= n and len(batch) < count:  # names the order missed (it is taken once)
            batch.extend(sorted(pending.difference(batch))[: count - len(batch)])
        return batch, i

    def linked_status(self) -> dict[str, Any]:
        """``status()["linked"]``: how many modules in force hold their tables, and how many
        only their verified payload (linked again on their next check)."""
        linked = compact = 0
        for entry in self.in_force.values():
            if entry.linked.linked:
                linked += 1
            else:
                compact += 1
        r = self.residency
        return {
            "budget": r.budget if r is not None else None,
            "linked": linked,
            "compact": compact,
            "evictions": r.evictions if r is not None else 0,
            "relinks": r.relinks if r is not None else 0,
        }

    def loading_status(self) -> dict[str, Any] | None:
        """``status()["loading"]`` while modules are pending, else None."""
        loading = self.loading
        if loading is None:
            return None
        total = loading.total
        done = total - len(self.pending)
        return {"done": done, "total": total, "text": f"loading {done} of {total}"}

    def run_names(self, names: Iterable[str]) -> tuple[list[ReloadEvent], ReloadResult]:
        """Examine only the named entries (what the watcher reported), without listing
        the directory or sweeping: O(names), whatever the size of the tree.

        A name whose entry is gone is committed as gone; a new one is added to the
        recorded listing. The directory's recorded stat is left alone, so the next
        full step lists it again and finds nothing left to do.
        """
        now_ns = time.time_ns()
        files = self.files
        found: list[Outcome] = []
        gone: list[str] = []
        added: list[str] = []
        lstat = os.lstat
        for name in sorted(set(names)):
            if len(name) <= len(SUFFIX) or not name.endswith(SUFFIX) or name[0] == "." or "/" in name:
                continue
            if name in self.pending:  # the loader's: examined after it commits the name
                self.deferred.add(name)
                continue
            path = os.path.join(self.policy_dir, name)
            try:
                lstat(path)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    if name in files:
                        gone.append(name)
                    continue
            if name not in files:
                added.append(name)
            outcome = self.examine(name, now_ns)
            if outcome is not None:
                found.append(outcome)
        if not found and not gone:
            self.last_reload = time.time()
            return [], ReloadResult()
        listed = self.names  # only this step's thread reads it: changed in place
        for name in added:
            i = bisect.bisect_left(listed, name)
            if i == len(listed) or listed[i] != name:
                listed.insert(i, name)
        for name in gone:
            i = bisect.bisect_left(listed, name)
            if i < len(listed) and listed[i] == name:
                del listed[i]
        return self.commit(found, gone, False)

    def _list(self, now_ns: int, changed_only: bool = False) -> Listing | None:
        """List the directory if its stat changed (or, unless ``changed_only``,
        changed too recently to be trusted); None when it was not listed.

        Returns the candidate names; the names that can have changed
        at the directory level — new, symlinks, or whose directory entry's
        inode differs from the recorded one (renamed over: atomic drops);
        and the recorded names gone. The directory entries give all that
        without a system call per name.

        With a raw listing recorded (reload/dirlist.py), only the records
        between the two listings' common prefix and suffix are decoded; a
        change of a directory, a symlink or an entry of unknown type there
        lists the directory whole, as does anything unexpected.
        """
        st = os.stat(self.policy_dir)
        if not stat_mod.S_ISDIR(st.st_mode):
            raise NotADirectoryError(20, "not a directory", self.policy_dir)
        key = (st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev)
        if key == self.dir_key and (changed_only or not self.dir_racy):
            return None
        racy = is_racy(st, now_ns)
        suffix = SUFFIX
        # Read before the names are: a change in between shows in the next
        # comparison with it (and is examined again), never the other way.
        raw = dirlist.read_raw(self.policy_dir, st.st_size)
        base = self.raw_listing
        if raw is not None and base is not None and self.dir_key is not None and key[3] == self.dir_key[3]:
            listing = self._list_changes(key, racy, base, raw)
            if listing is not None:
                return listing
        marked = dirlist.mark(raw) if raw is not None else None
        if not self.files and not self.pending:
            # Nothing recorded (the first load): every name is new, and the
            # names alone are needed; os.listdir builds no DirEntry per name
            # (a third of the time at 100,000 files).
            names = [n for n in os.listdir(self.policy_dir) if n.endswith(suffix) and n[0] != "."]
            self._pending_dir = (key, racy, names, marked)
            return names, list(names), []
        names = []
        first = []
        known = 0
        get = self.files.get
        pending = self.pending
        with os.scandir(self.policy_dir) as it:
            for entry in it:
                name = entry.name
                if name.endswith(suffix) and name[0] != ".":  # also refuses a bare ".bin"
                    names.append(name)
                    state = get(name)
                    if state is None:
                        if name not in pending:  # a pending name is the loader's to examine
                            first.append(name)
                        continue
                    known += 1
                    try:
                        if state.ino != entry.inode() or entry.is_symlink():
                            first.append(name)
                    except OSError:
                        first.append(name)
        gone: list[str] = []
        if known < len(self.files):
            seen = set(names)
            gone = [name for name in self.files if name not in seen]
        # Recorded (and sorted, after publishing) by the directory phase that uses this listing.
        self._pending_dir = (key, racy, names, marked)
        return names, first, gone

    def _list_changes(self, key: DirKey, racy: bool, base: dirlist.Listing, raw: bytes) -> Listing | None:
        """The listing from the records that changed since ``base``; None: list it whole."""
        found = dirlist.diff(base, raw)
        if found is None:
            return None
        marked, olds, news = found
        structural = _STRUCTURAL
        for entries in (olds, news):
            for name, (_ino, kind) in entries.items():
                if kind in structural and name not in (".", ".."):
                    return None
        suffix = SUFFIX
        files = self.files
        pending = self.pending
        first: list[str] = []
        gone: list[str] = []
        added: list[str] = []
        removed: list[str] = []
        for name, (ino, _kind) in news.items():
            if not name.endswith(suffix) or name[0] == "." or len(name) <= len(suffix):
                continue
            if name not in olds:
                added.append(name)
            elif olds[name][0] == ino:
                continue  # the same entry (a neighbour changed)
            state = files.get(name)
            if state is None:
                if name not in pending:
                    first.append(name)
            elif state.ino != ino:
                first.append(name)
        for name in olds:
            if name not in news and name.endswith(suffix) and name[0] != "." and len(name) > len(suffix):
                removed.append(name)
                if name in files:
                    gone.append(name)
        names = self.names
        if added or removed:
            names = names.copy()
            for name in removed:
                i = bisect.bisect_left(names, name)
                if i < len(names) and names[i] == name:
                    del names[i]
            for name in added:
                i = bisect.bisect_left(names, name)
                if i == len(names) or names[i] != name:
                    names.insert(i, name)
        self._pending_dir = (key, racy, names, marked)
        return names, first, gone

    def _dir_unavailable(
        self,
        exc: OSError,
        initial: bool,
        events: list[ReloadEvent] | None = None,
        result: ReloadResult | None = None,
    ) -> tuple[list[ReloadEvent], ReloadResult]:
        reason = f"{exc.strerror or exc}"
        if self.dir_error != reason:
            logger.warning(
                "policy directory unavailable, keeping %d loaded module(s): %s: %s",
                len(self.in_force),
                self.policy_dir,
                reason,
            )
        self.dir_error = reason
        if initial:
            self.publish(self._snapshot_with([], initial=True))
        failure = ReloadFailure(self.policy_dir, None, f"policy directory unavailable: {reason}")
        if result is None:
            result = ReloadResult()
        result.failed.append(failure)
        return events or [], result

    def _dir_phase(
        self,
        listing: Listing,
        now_ns: int,
        initial: bool,
        done: set[str],
        events: list[ReloadEvent],
        result: ReloadResult,
    ) -> None:
        """Examine and commit what a new listing shows: new names, names whose
        directory entry points elsewhere (renames, symlinks) and names gone."""
        _names, first, gone = listing
        found: list[Outcome] = []
        for name in first:
            done.add(name)
            outcome = self.examine(name, now_ns)
            if outcome is not None:
                found.append(outcome)
        if not found and not gone and not initial:
            # The same names, nothing changed (a dot-file came or went, or
            # the directory's stat was racy): record the listing only.
            self._record_listing()
            return
        ev, res = self.commit(found, gone, initial)  # also records the listing
        events += ev
        result.changed.extend(res.changed)
        result.removed.extend(res.removed)
        result.failed.extend(res.failed)

    def examine(self, name: str, now_ns: int) -> Outcome | None:
        """One file: None when unchanged, else its outcome (nothing is changed yet)."""
        path = os.path.join(self.policy_dir, name)  # not kept: ~150 bytes a file at 100,000 files
        in_force = self.in_force.get(name[: -len(SUFFIX)])
        return outcomes.examine(
            name,
            path,
            self.files.get(name),
            in_force.linked if in_force else None,
            self.trust,
            now_ns,
            self.residency,
        )

    # -- commit --------------------------------------------------------------

    def commit(
        self,
        found: list[Outcome],
        gone: list[str],
        initial: bool,
        *,
        publish: bool = True,
        quiet: bool = False,
    ) -> tuple[list[ReloadEvent], ReloadResult]:
        """Apply a phase's outcomes and the names gone at once: file states, status,
        one snapshot published, then log lines. Returns the events and what changed.

        ``publish=False``: the snapshot in force already answers for these
        modules (the loader's outcomes, through its pending table); ``quiet``:
        "loaded" lines at DEBUG (a background load of thousands of modules).
        """
        now = time.time()
        events: list[ReloadEvent] = []
        changed: list[LinkedModule] = []
        result = ReloadResult()
        files = self.files
        in_force = self.in_force
        base, old_delta = self._status
        status = dict(old_delta)  # this commit's delta

        def old_get(module: str) -> _Status | None:
            if module in old_delta:
                return old_delta[module]
            return base.get(module)

        logs: list[_LogLine] = []

        def recovered(module: str, name: str, entry: InForce | None) -> None:
            # The module had an error (failed or removed) and has none now.
            prev = old_get(module)
            if prev is None or not _last_error(prev):
                return
            if entry is None:  # the file of a module that never loaded is gone
                logs.append((logging.INFO, "%s recovered: %s is gone and was never in force", module, name))
                events.append(ReloadEvent(RECOVERED, module, name))
                return
            linked_ = entry.linked
            logs.append((logging.INFO, "%s recovered: %s is in force (revision %s)", module, name, linked_.revision))
            events.append(ReloadEvent(RECOVERED, module, name, None, linked_.revision, linked_.rule_count))

        for o in found:
            name, module = o.name, o.module
            prev = files.get(name)
            if isinstance(o, Touched):  # the very bytes read last time: only the stat moved
                files[name] = FileState(o.key, o.racy, o.content, prev.error if prev else None)
            elif isinstance(o, SamePolicy):  # a valid artifact identical to the loaded policy
                files[name] = FileState(o.key, o.racy, o.content, None)
                if module in in_force:
                    status[module] = self._module_status(module, in_force[module], None)
                    recovered(module, name, in_force[module])
            elif isinstance(o, NewPolicy):
                linked = o.linked
                first = module not in in_force
                entry = InForce(linked, name, now)
                in_force[module] = entry
                files[name] = FileState(o.key, o.racy, o.content, None)
                changed.append(linked)
                status[module] = self._module_status(module, entry, None)
                self.reloads_ok += 1
                result.changed.append(module)
                verb: EventKind = LOADED if (first or initial) else RELOADED
                level = logging.DEBUG if quiet else logging.INFO
                logs.append((level, "%s %s (%d rules)", verb, module, linked.rule_count))
                events.append(ReloadEvent(verb, module, name, None, linked.revision, linked.rule_count))
                recovered(module, name, entry)
            elif isinstance(o, Failed):
                reason = o.reason
                files[name] = FileState(o.key, o.racy, o.content, reason)
                self.reloads_failed += 1
                result.failed.append(ReloadFailure(name, module, reason))
                prev_loaded = in_force.get(module)
                status[module] = self._module_status(module, prev_loaded, reason, name)
                if prev_loaded is not None:
                    logs.append((logging.WARNING, "reload failed, keeping previous: %s: %s", name, reason))
                elif module == GLOBAL_MODULE:
                    logs.append(
                        (
                            logging.WARNING,
                            "load failed, denying every request until %s loads: %s: %s",
                            GLOBAL_MODULE,
                            name,
                            reason,
                        )
                    )
                else:
                    logs.append(
                        (
                            logging.WARNING,
                            "load failed, %s gets %s rules only: %s: %s",
                            module,
                            GLOBAL_MODULE,
                            name,
                            reason,
                        )
                    )
                events.append(
                    ReloadEvent(
                        FAILED,
                        module,
                        name,
                        reason,
                        prev_loaded.linked.revision if prev_loaded else None,
                        prev_loaded.linked.rule_count if prev_loaded else 0,
                    )
                )
            else:  # pragma: no cover - every kind of outcome is handled above
                assert_never(o)

        for name in gone:
            module = name[: -len(SUFFIX)]
            del files[name]
            prev_loaded = in_force.get(module)
            if prev_loaded is None:
                if module in base:
                    status[module] = None
                else:
                    status.pop(module, None)
                recovered(module, name, None)
                continue
            reason = "file removed; keeping the last policy loaded"
            status[module] = self._module_status(module, prev_loaded, reason, name)
            result.removed.append(module)
            logs.append((logging.WARNING, "%s removed, keeping previous policy of %s", name, module))
            events.append(
                ReloadEvent(REMOVED, module, name, reason, prev_loaded.linked.revision, prev_loaded.linked.rule_count)
            )

        # _global that never loaded but failed: deny everything (fail closed)
        gstate = files.get(GLOBAL_MODULE + SUFFIX)
        if GLOBAL_MODULE not in in_force and gstate is not None and gstate.error is not None:
            self.global_error = f"{GLOBAL_MODULE}{SUFFIX} failed to load: {gstate.error}"
        else:
            self.global_error = None

        # The status first, then the snapshot: whoever sees a decision of the
        # new policy (check() reads the published snapshot) then also sees its
        # status, an error cleared included. The other order left a window in
        # which check() already decided by the restored file while status()
        # still reported the old error.
        do_publish = (publish and (changed or initial)) or self.snapshot.unavailable != self.global_error
        snapshot = self._snapshot_with(changed if publish else [], initial=initial) if do_publish else None
        if len(status) > max(STATUS_FOLD, len(base) >> 3):
            self._status = (_merged(base, status), {})
        else:
            self._status = (base, status)
        self.last_reload = now
        if snapshot is not None:
            self.publish(snapshot)
        self._record_listing()
        if quiet and len(found) + len(gone) > SWEEP_CHUNK:
            # a loader batch: the sweep list is rebuilt once per step while
            # loading (run_step), not once per batch (O(files) each time)
            self.sweep_stale = True
        else:
            self._refile([o.name for o in found] + gone)
        for level, msg, *args in logs:
            logger.log(level, msg, *args)
        return events, result

    @property
    def status_modules(self) -> dict[str, dict[str, Any]]:
        """Every module's status, as status() shows it (new dicts: O(modules))."""
        base, delta = self._status
        return {m: status_dict(v) for m, v in (_merged(base, delta) if delta else base).items()}

    def status_of(self, module: str) -> dict[str, Any] | None:
        """One module's status (None: no status)."""
        base, delta = self._status
        value = delta[module] if module in delta else base.get(module)
        return None if value is None else status_dict(value)

    def _set_status(self, value: dict[str, _Status]) -> None:
        self._status = (value, {})

    # -- the sweep lists -----------------------------------------------------

    def rebuild_sweep(self) -> None:
        """Rebuild the sweep list and the re-check list from the recorded file states.

        The sweep's ints are fresh copies, allocated together: the idle sweep
        then reads memory that sits close together instead of objects
        scattered over the heap by loading (about 0.35 us per file at 10,000
        files, a third of the sweep's cost beyond the stat calls). The file's
        recorded key is rebuilt from the same ints (equal values), so each is
        held once; the path is not kept (the sweep joins it).
        """
        files = self.files
        sweep: list[SweepEntry] = []
        recheck = []
        for name in self.names:
            state = files.get(name)
            if state is None:
                continue
            key = state.key
            if state.racy or len(key) != 4:
                recheck.append(name)
            else:
                mtime, size, ino, ctime = key
                m, sz, i, c = mtime + 0, size + 0, ino + 0, ctime + 0
                sweep.append((name, m, sz, i, c))
                # the state's key made of the same (equal) ints: one copy of each, not two
                state.key = (m, sz, i, c)
                state.ino = i
        self.sweep = sweep
        self.recheck = recheck

    def _record_listing(self) -> None:
        if self._pending_dir is not None:
            self.dir_key, self.dir_racy, names, self.raw_listing = self._pending_dir
            names.sort()
            self.names = names
            self._pending_dir = None

    def _refile(self, names: list[str]) -> None:
        """Put the named files (changed, new or gone) back in the sweep or re-check list.

        The lists are replaced, never changed in place: a sweep in progress
        iterates the list it started with.
        """
        if len(names) > SWEEP_CHUNK:
            self.rebuild_sweep()
            return
        files = self.files
        todo = set(names)
        sweep = self.sweep.copy()
        recheck = [name for name in self.recheck if name not in todo]
        for name in sorted(todo):
            i = bisect.bisect_left(sweep, name, key=_first)
            if i < len(sweep) and sweep[i][0] == name:
                del sweep[i]
            state = files.get(name)
            if state is None:  # gone
                continue
            key = state.key
            if state.racy or len(key) != 4:
                recheck.append(name)
            else:
                sweep.insert(i, (name, *key))
        self.sweep = sweep
        self.recheck = recheck

    # -- snapshots and status ------------------------------------------------

    def _snapshot_with(self, changed: list[LinkedModule], *, initial: bool) -> Snapshot:
        if initial or self.snapshot is EMPTY_SNAPSHOT:
            mods = {m: e.linked for m, e in self.in_force.items() if m != GLOBAL_MODULE}
            glob = self.in_force.get(GLOBAL_MODULE)
            return Snapshot(
                mods,
                glob.linked if glob else None,
                unavailable=self.global_error,
                cache_size=self.cache_size,
                pending=self.loading,
                residency=self.residency,
            )
        return self.snapshot.replace(changed, unavailable=self.global_error)

    def publish(self, snapshot: Snapshot) -> None:
        """Record ``snapshot`` as the one in force and hand it to the agent."""
        self.snapshot = snapshot
        self._on_publish(snapshot)

    def _module_status(self, module: str, entry: InForce | None, error: str | None, file: str | None = None) -> _Status:
        if entry is not None and error is None:
            return entry
        return (entry, error, file or module + SUFFIX)

    # -- starting over -------------------------------------------------------

    def forget(self) -> None:
        """Forget everything seen (a strict start that failed): a retry sees it all again."""
        self.publish(EMPTY_SNAPSHOT)
        self.files.clear()
        self.in_force.clear()
        self.loading = None
        self.pending = set()
        self.deferred = set()
        self.dir_key = None
        self.raw_listing = None
        self.names = []
        self.sweep = []
        self.recheck = []
        self._set_status({})

    def resync(self) -> None:
        """Rebuild the state from the published snapshot, which is always whole (one
        assignment); the next step re-reads and re-verifies every file. For a child of
        ``os.fork()`` whose parent was in the middle of a step on another thread."""
        snap = self.snapshot
        old = self.in_force
        in_force: dict[str, InForce] = {}
        linked_all = list(snap.modules.items())
        if snap.glob is not None:
            linked_all.append((GLOBAL_MODULE, snap.glob))
        for module, linked in linked_all:
            prev = old.get(module)
            if prev is not None and prev.linked is linked:
                in_force[module] = prev
            else:
                in_force[module] = InForce(linked, module + SUFFIX, time.time())
        self.in_force = in_force
        self.files = {}
        # Whatever was pending is examined by the next step, like every file.
        self.loading = None
        self.pending = set()
        self.deferred = set()
        self.dir_key = None
        self.dir_racy = True
        self.raw_listing = None
        self.next_sweep = 0.0
        self.names = []
        self._pending_dir = None
        self.sweep = []
        self.recheck = []
        self._set_status({m: self._module_status(m, e, None) for m, e in in_force.items()})
