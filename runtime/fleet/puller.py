"""Pulling a published set into a mirror: one cycle, its status, and the loop with jitter and backoff.

One cycle (:meth:`Puller.cycle`):

1. GET ``manifest.json`` with ``If-None-Match`` (the ETag of the set in
   force); a 304 ends the cycle, nothing else is fetched;
2. verify the manifest's signature (a key with ``manifest = true``), its set
   name, and that its revision is above the floor (the highest revision
   ever accepted here; the same revision is accepted again only with the
   same bytes);
3. fetch the objects whose digest is not in force, each bounded by the size
   the manifest gives, and check each digest;
4. verify every new artifact as the agent will load it: structure, its own
   signature, and its key's module scope;
5. switch the whole set (:meth:`Mirror.switch`), then record the ETag.

Any failure keeps the set in force and is recorded with its reason
(``status()``); the cycle never raises for what the origin sends.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ArtifactError, FleetError, OriginError, RollbackError, SignatureError
from ..format.reader import read_artifact
from ..signing.block import signer_key_id
from .manifest import Manifest, ManifestTrust, verify_manifest
from .mirror import Layout, Mirror, is_disk_full
from .origin import MANIFEST_NAME, MAX_MANIFEST_SIZE, Origin, open_origin

if TYPE_CHECKING:
    from ..format.reader import Trust

__all__ = ["DEFAULT_PULL_INTERVAL", "MAX_BACKOFF", "CycleResult", "PullLoop", "Puller"]

logger = logging.getLogger("polc")

DEFAULT_PULL_INTERVAL = 5.0
MAX_BACKOFF = 60.0
JITTER = 0.2  # each interval is drawn from [0.8, 1.2] x the interval
MAX_ETAG_LEN = 512

Outcome = Literal["switched", "unchanged", "failed"]


@dataclass(frozen=True, slots=True)
class CycleResult:
    outcome: Outcome
    revision: int | None  # in force after the cycle
    fetched: tuple[str, ...] = ()  # modules whose object was fetched
    error: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"


def has_manifest_key(trust: Any) -> bool:
    """Whether a trust configuration can verify some manifest (True when it does not list its keys)."""
    keys = getattr(trust, "keys", None)
    if keys is None or callable(keys):
        return True
    return any(getattr(k, "manifest", False) for k in keys)


class _Refused(FleetError):
    """A check of this cycle failed: the message says which, ``reason`` is for status."""


class Puller:
    """Mirror one published set (``url``) into ``directory``, verified with ``trust``.

    ``trust`` must be able to verify manifests (``TrustConfig`` with a key
    marked ``manifest = true``) and artifacts. Opening reads the directory
    only; nothing is fetched before :meth:`cycle`.
    """

    def __init__(
        self,
        url: str,
        directory: str,
        *,
        trust: Any,
        origin: Origin | None = None,
        endpoint: str | None = None,
        set_name: str | None = None,
        layout: Layout = "auto",
    ) -> None:
        if trust is None or not callable(getattr(trust, "verify_manifest", None)):
            raise FleetError(
                f"{url}: pulling a set needs a trust configuration with a key allowed to sign manifests "
                "(manifest = true); give --trust FILE or set POLC_TRUST_FILE",
                reason="no trust",
            )
        if not has_manifest_key(trust):
            raise FleetError(
                f"{url}: the trust configuration lists no key with manifest = true; no manifest could verify",
                reason="no trust",
            )
        self.url = url
        self.trust: ManifestTrust = trust
        self._artifact_trust: Trust = trust
        self.origin: Origin = origin if origin is not None else open_origin(url, endpoint=endpoint)
        self.mirror = Mirror(directory, layout=layout)
        self.set_name = set_name
        self._lock = threading.Lock()  # one cycle at a time
        self.last_check: float | None = None
        self.last_success: float | None = None
        self.last_switch: float | None = None
        self.last_error: str | None = None
        self.last_error_reason: str | None = None
        self.consecutive_failures = 0
        self.counts = {"switched": 0, "unchanged": 0, "failed": 0}
        # what status() reports as in force: replaced once a switch (and the reload around it) returned
        self._shown: Manifest | None = self.mirror.in_force

    def close(self) -> None:
        """Close the origin's kept-alive connection (reopened by the next cycle)."""
        close = getattr(self.origin, "close", None)
        if callable(close):
            close()

    # -- status ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        m = self.mirror
        in_force = self._shown
        return {
            "url": self.url,
            "set": in_force.set if in_force is not None else (m.floor.set if m.floor else None),
            "revision": in_force.revision if in_force is not None else None,
            "floor": m.floor.revision if m.floor is not None else None,
            "issued": in_force.issued if in_force is not None else None,
            "manifest_key": in_force.key_id if in_force is not None else None,
            "etag": m.etag,
            "layout": m.layout,
            "last_check": self.last_check,
            "last_success": self.last_success,
            "last_switch": self.last_switch,
            "last_error": self.last_error,
            "last_error_reason": self.last_error_reason,
            "consecutive_failures": self.consecutive_failures,
            "pulls": dict(self.counts),
            "disk_problem": m.problem,
        }

    # -- one cycle ---------------------------------------------------------------

    def cycle(self, *, around: Callable[[Callable[[], None]], None] | None = None) -> CycleResult:
        """One pull. ``around(commit)`` runs the switch's commit (the agent holds its step lock there)."""
        with self._lock:
            self.last_check = time.time()
            try:
                result = self._cycle(around)
            except (FleetError, ArtifactError) as exc:
                return self._failed(str(exc), getattr(exc, "reason", "error"))
            except OSError as exc:
                if is_disk_full(exc):
                    return self._failed(f"disk full: {self.mirror.root}: {exc.strerror}", "disk full")
                return self._failed(f"cannot write {self.mirror.root}: {exc.strerror or exc}", "io")
            self.last_success = time.time()
            self.last_error = None
            self.last_error_reason = None
            self.consecutive_failures = 0
            self.counts[result.outcome] += 1
            if result.outcome == "switched":
                self.last_switch = self.last_success
            return result

    def _failed(self, message: str, reason: str) -> CycleResult:
        self.last_error = message
        self.last_error_reason = reason
        self.consecutive_failures += 1
        self.counts["failed"] += 1
        logger.warning("pull from %s failed, keeping revision %s: %s", self.url, self._revision(), message)
        return CycleResult("failed", self._revision(), error=message, reason=reason)

    def _revision(self) -> int | None:
        m = self._shown
        return m.revision if m is not None else None

    def _cycle(self, around: Callable[[Callable[[], None]], None] | None) -> CycleResult:
        mirror = self.mirror
        got = self.origin.fetch(MANIFEST_NAME, mirror.etag, limit=MAX_MANIFEST_SIZE)
        if got.status == 304:
            if got.etag is not None and got.etag != mirror.etag and len(got.etag) <= MAX_ETAG_LEN:
                mirror.record_etag(got.etag)  # a 304 without an ETag keeps the previous one
            self._shown = mirror.in_force
            return CycleResult("unchanged", self._revision())
        body = got.body if got.body is not None else b""
        etag = got.etag if got.etag is not None and len(got.etag) <= MAX_ETAG_LEN else None
        sha = hashlib.sha256(body).hexdigest()
        if mirror.in_force is not None and sha == mirror.manifest_sha256:
            if etag != mirror.etag:
                mirror.record_etag(etag)  # the set in force, under a new ETag
            self._shown = mirror.in_force
            return CycleResult("unchanged", self._revision())
        manifest = verify_manifest(body, self.trust)
        self._check_set_and_revision(manifest, sha)
        fetched = self._fetch_objects(manifest)
        mirror.switch(manifest, body, etag, fetched, around=around)
        self._shown = manifest
        logger.info(
            "pulled revision %d of set %r from %s (%d object(s) fetched)",
            manifest.revision, manifest.set, self.url, len(fetched),
        )  # fmt: skip
        return CycleResult("switched", manifest.revision, tuple(sorted(fetched)))

    def _check_set_and_revision(self, manifest: Manifest, sha: str) -> None:
        floor = self.mirror.floor
        want = self.set_name or (floor.set if floor is not None else None)
        if want is not None and manifest.set != want:
            raise _Refused(
                f"wrong set: the manifest is for set {manifest.set!r}, this directory follows {want!r}",
                reason="wrong set",
            )
        if floor is None:
            return
        if manifest.revision < floor.revision:
            raise RollbackError(f"rollback: revision {manifest.revision} is below {floor.revision} already accepted")
        if manifest.revision == floor.revision and sha != floor.sha256:
            raise RollbackError(f"rollback: revision {manifest.revision} was already accepted with different content")

    def _fetch_objects(self, manifest: Manifest) -> dict[str, bytes]:
        fetched: dict[str, bytes] = {}
        trust = self._artifact_trust
        for module, entry in manifest.modules.items():
            if self.mirror.local_object(entry.sha256) is not None:
                continue
            try:
                got = self.origin.fetch(entry.object, limit=entry.size)
            except OriginError as exc:
                if exc.reason == "not found":
                    raise _Refused(f"object missing: {entry.object} (module {module}): {exc}",
                                   reason="object missing") from None  # fmt: skip
                if exc.reason == "too large":
                    raise _Refused(f"object {entry.object} (module {module}): larger than the {entry.size} bytes "
                                   f"the manifest gives: {exc}", reason="wrong digest") from None  # fmt: skip
                raise
            data = got.body if got.status == 200 and got.body is not None else b""
            if len(data) != entry.size:
                raise _Refused(
                    f"partial download: {entry.object} (module {module}): {len(data)} of {entry.size} bytes",
                    reason="partial download",
                )
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry.sha256:
                raise _Refused(f"wrong digest: {entry.object} (module {module}) has SHA-256 {digest}",
                               reason="wrong digest")  # fmt: skip
            try:
                read_artifact(data, expected_module=module, trust=trust)
            except SignatureError as exc:
                raise _Refused(f"module {module}: {exc}", reason="bad artifact signature") from None
            except ArtifactError as exc:
                raise _Refused(f"module {module}: {exc}", reason=exc.reason) from None
            if signer_key_id(data) != entry.signer:
                raise _Refused(
                    f"module {module}: signed by {signer_key_id(data)}, the manifest says {entry.signer}",
                    reason="bad manifest",
                )
            fetched[module] = data
        return fetched


class PullLoop:
    """The pull thread: a random start offset, then a cycle every interval x [0.8, 1.2],
    or after a failure an exponential backoff with jitter (capped at ``max_backoff``).

    ``on_cycle(result)`` is called after each cycle (the CLI logs there).
    ``cycle()`` is the function run each time (an agent wraps the puller's).
    """

    def __init__(
        self,
        cycle: Callable[[], CycleResult],
        interval: float,
        *,
        max_backoff: float = MAX_BACKOFF,
        start_offset: bool = True,
        on_cycle: Callable[[CycleResult], None] | None = None,
        rng: random.Random | None = None,
        name: str = "polc-puller",
    ) -> None:
        if not interval > 0:
            raise ValueError(f"pull interval must be > 0, not {interval!r}")
        self._cycle = cycle
        self.interval = interval
        self.max_backoff = max(max_backoff, interval)
        self.start_offset = start_offset
        self._on_cycle = on_cycle
        self._rng = rng or random.Random()
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def next_delay(self, ok: bool) -> float:
        if ok:
            self.failures = 0
            return self.interval * self._rng.uniform(1 - JITTER, 1 + JITTER)
        self.failures += 1
        ceiling = min(self.max_backoff, self.interval * 2 ** min(self.failures, 30))
        return self._rng.uniform(ceiling / 2, ceiling)

    def start(self) -> PullLoop:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def run_forever(self) -> None:
        """Run in this thread until :meth:`stop` (``polc pull``)."""
        self._run(self._stop)

    def _run(self, stop: threading.Event) -> None:
        delay = self._rng.uniform(0, self.interval) if self.start_offset else 0.0
        while not stop.wait(delay):
            try:
                result = self._cycle()
            except Exception:  # the loop must survive anything
                logger.exception("pull cycle failed")
                result = CycleResult("failed", None, error="internal error", reason="internal")
            if self._on_cycle is not None:
                try:
                    self._on_cycle(result)
                except Exception:
                    logger.exception("pull callback failed")
            delay = self.next_delay(result.ok)
