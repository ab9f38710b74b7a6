"""The refresh engine: poll timer, backoff, single flight, webhook debounce.

- **Single flight**: however many callers ask at once, one fetch runs and
  every caller waiting shares its result.
- **Debounce**: the first webhook after a quiet spell refreshes at once; the
  ones that follow inside ``webhook_cooldown`` share one more refresh at the
  end of the window, which starts after the last of them. A webhook arriving
  during a fetch always gets a fetch that starts after it.
- **Poll timer**: every ``poll_interval`` while healthy; after failures a
  full-jitter exponential backoff (:func:`backoff_delay`, pure), never sooner
  than a 429's ``retry_after``.
- **Stale-if-error**: a failure never replaces or empties the snapshot; it
  only shows in :class:`UpstreamHealth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from .config import PatreonConfig
from .errors import RateLimited, UpstreamError
from .gcpause import gc_paused
from .metrics import Metrics
from .patreon import Member
from .roster import build_supporters
from .snapshot import Snapshot, SnapshotStore, first_snapshot

log = structlog.get_logger(__name__)

Fetch = Callable[[], Awaitable[Sequence[Member]]]
Publish = Callable[[Snapshot], None]


def backoff_delay(failures: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(failures-1))].

    failures: consecutive failures so far (1 after the first).
    rand: returns a float in [0, 1); injected so tests need no randomness.
    """
    if failures <= 0:
        return 0.0
    exponent = min(failures - 1, 62)  # 2**62 * base is past any cap; avoids overflow
    return rand() * min(cap, base * 2.0**exponent)


def next_poll_delay(
    failures: int,
    *,
    poll_interval: float,
    base: float,
    cap: float,
    retry_after: float,
    rand: Callable[[], float],
) -> float:
    """Seconds until the poll timer fires again.

    poll_interval when healthy; after failures the jittered backoff, but
    never less than ``retry_after`` (what remains of a 429's wait).
    """
    if failures == 0:
        return max(poll_interval, retry_after)
    return max(backoff_delay(failures, base, cap, rand), retry_after)


@dataclass(slots=True)
class UpstreamHealth:
    """What /healthz and /metrics say about Patreon.

    ok: the last refresh succeeded (None before the first one).
    last_error: the last failure's message (None after a success).
    consecutive_failures: failures since the last success.
    last_success_at: wall-clock time of the last success.
    last_success_mono: the same on the monotonic clock (for ages).
    not_before: monotonic time before which no request may go (429).
    """

    ok: bool | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    last_success_at: datetime | None = None
    last_success_mono: float | None = None
    not_before: float = 0.0


class Refresher:
    """Keeps the snapshot fresh and hands every new one to ``publish``.

    fetch: returns every member, or raises UpstreamError (never partial).
    publish: called with each new snapshot (the hub's publish).
    store: where snapshots are persisted.
    goal_count: the configured goal, part of what is shown.
    clock, rand, now: injected time and randomness.
    """

    def __init__(
        self,
        fetch: Fetch,
        publish: Publish,
        store: SnapshotStore,
        config: PatreonConfig,
        goal_count: int,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._fetch = fetch
        self._publish = publish
        self._store = store
        self.config = config
        self.goal_count = goal_count
        self.metrics = metrics
        self._clock = clock
        self._rand = rand
        self._now = now
        self.health = UpstreamHealth()
        self.snapshot: Snapshot | None = None
        self.fetches = 0  # fetches started (for tests and the benchmark)
        self._inflight: asyncio.Task[Snapshot | None] | None = None
        self._inflight_gen = 0
        self._generation = 0
        self._dirty = False
        self._wake = asyncio.Event()
        self._poke = asyncio.Event()

    # -- startup -----------------------------------------------------------

    def load(self) -> Snapshot | None:
        """Read the persisted snapshot (if any) and publish it before Patreon answers."""
        snapshot = self._store.load()
        if snapshot is not None:
            self.snapshot = snapshot
            self._publish(snapshot)
            log.info("snapshot_loaded", version=snapshot.version, supporters=len(snapshot.supporters))
        return snapshot

    # -- single flight -----------------------------------------------------

    async def refresh(self, *, fresh: bool = False) -> Snapshot | None:
        """Refresh once, sharing any fetch in flight; the current snapshot after it.

        fresh: the caller needs a fetch that *starts* after this call (a
            webhook's change must be seen), so a fetch already running is
            waited out rather than joined.
        Never raises UpstreamError: failures go to :attr:`health`.
        """
        called_at = self._generation
        while True:
            task = self._inflight
            if task is None:
                self._generation += 1
                self._inflight_gen = self._generation
                task = self._inflight = asyncio.create_task(self._fetch_once())
                task.add_done_callback(self._finished)
                return await asyncio.shield(task)
            if not fresh or self._inflight_gen > called_at:
                return await asyncio.shield(task)
            await asyncio.wait((task,))

    def _finished(self, task: asyncio.Task[Snapshot | None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch_once(self) -> Snapshot | None:
        wait = self.health.not_before - self._clock()
        if wait > 0:  # a 429 said so: no request before it passes
            await asyncio.sleep(wait)
        self.fetches += 1
        started = self._clock()
        try:
            members = await self._fetch()
            current = self.snapshot
            # Built (and encoded) inside the guard: a value that cannot be
            # encoded must fail this refresh, not end the refresher.
            with gc_paused():
                supporters = build_supporters(members)
                if current is None:
                    new: Snapshot | None = first_snapshot(supporters, self.goal_count, self._now())
                else:
                    new = current.successor(supporters, self.goal_count, self._now())
        except UpstreamError as exc:
            self._failed(exc, exc.kind)
            return self.snapshot
        except Exception as exc:  # a bug must not stop the timer or serve a wrong list
            log.exception("refresh_crashed")
            self._failed(exc, "internal")
            return self.snapshot
        finally:
            self.metrics.upstream_seconds.observe(self._clock() - started)
        if new is None:
            self.metrics.refreshes.labels("unchanged").inc()
        else:
            self.metrics.refreshes.labels("changed").inc()
            try:
                await asyncio.to_thread(self._store.save, new)
            except OSError as exc:  # keep serving; the next change retries the write
                log.error("snapshot_persist_failed", error=str(exc), version=new.version)
            self.snapshot = new
            self._publish(new)
            log.info("snapshot_published", version=new.version, supporters=len(supporters))
        # Healthy only once the new state is served, so /healthz never says
        # "upstream ok" while still "starting".
        h = self.health
        h.ok, h.last_error, h.consecutive_failures = True, None, 0
        h.last_success_at, h.last_success_mono = self._now(), self._clock()
        self.metrics.upstream_up.set(1)
        self.metrics.consecutive_failures.set(0)
        return self.snapshot

    def _failed(self, exc: Exception, kind: str) -> None:
        h = self.health
        h.ok = False
        h.consecutive_failures += 1
        h.last_error = f"{kind}: {exc}"
        if isinstance(exc, RateLimited) and exc.retry_after:
            h.not_before = max(h.not_before, self._clock() + exc.retry_after)
        self.metrics.refreshes.labels(kind).inc()
        self.metrics.upstream_up.set(0)
        self.metrics.consecutive_failures.set(h.consecutive_failures)
        log.warning("refresh_failed", kind=kind, error=str(exc), failures=h.consecutive_failures)

    # -- webhooks ----------------------------------------------------------

    def notify(self) -> None:
        """A webhook says something changed: refresh soon (debounced)."""
        self._dirty = True
        self._wake.set()

    async def _debounce_loop(self) -> None:
        cooldown = self.config.webhook_cooldown
        last_start = -float("inf")
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                # Leading edge refreshes at once; the rest of the window is
                # gathered into one trailing refresh.
                wait = last_start + cooldown - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._inflight is not None:
                    await asyncio.wait((self._inflight,))
                self._dirty = False  # webhooks from here on need another fetch
                last_start = self._clock()
                await self.refresh(fresh=True)

    # -- poll timer --------------------------------------------------------

    def next_delay(self) -> float:
        """Seconds until the next poll, from the current health."""
        h = self.health
        return next_poll_delay(
            h.consecutive_failures,
            poll_interval=self.config.poll_interval,
            base=self.config.backoff_base,
            cap=self.config.backoff_max,
            retry_after=max(0.0, h.not_before - self._clock()),
            rand=self._rand,
        )

    async def _poll_loop(self) -> None:
        while True:
            # Cleared before the refresh: a poke arriving during it means "again".
            self._poke.clear()
            await self.refresh()
            delay = self.next_delay()
            log.debug("next_poll", seconds=round(delay, 3))
            try:
                async with asyncio.timeout(delay):
                    await self._poke.wait()
            except TimeoutError:
                pass

    def poke(self) -> None:
        """Wake the poll timer now (used by tests and SIGHUP)."""
        self._poke.set()

    async def run(self) -> None:
        """Run the poll timer and the webhook debouncer until cancelled.

        Cancelling it also cancels a fetch in flight: callers share fetches
        through ``shield``, so nothing else would stop it at shutdown.
        """
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._poll_loop())
                group.create_task(self._debounce_loop())
        finally:
            task = self._inflight
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- reporting ---------------------------------------------------------

    def age_seconds(self) -> float | None:
        """Seconds since the last successful refresh (None if none yet)."""
        mono = self.health.last_success_mono
        return None if mono is None else max(0.0, self._clock() - mono)
