"""refresher.py: single flight, debounce, backoff, 429, stale-if-error."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sponsord.config import PatreonConfig
from sponsord.errors import AuthRejected, MalformedResponse, RateLimited, UpstreamUnavailable
from sponsord.metrics import Metrics
from sponsord.patreon import Member
from sponsord.refresher import Refresher, backoff_delay, next_poll_delay
from sponsord.snapshot import Snapshot, SnapshotStore


def mk(mid: str, name: str) -> Member:
    return Member(mid, name, "active_patron", "2024-01-01T00:00:00+00:00", "u" + mid, name, False, ())


class FakeUpstream:
    """A fetch function with a controllable result, latency and a call count."""

    def __init__(self) -> None:
        self.members = [mk("1", "Ann")]
        self.calls = 0
        self.delay = 0.0
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> list[Member]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return list(self.members)


def make(tmp_path: Path, fake: FakeUpstream, **kw: float) -> tuple[Refresher, list[Snapshot]]:
    published: list[Snapshot] = []
    config = PatreonConfig(campaign_id="1", **{"webhook_cooldown": 0.2, **kw})  # type: ignore[arg-type]
    r = Refresher(fake, published.append, SnapshotStore(tmp_path), config, 20, Metrics())
    return r, published


def test_backoff_is_full_jitter_and_capped() -> None:
    """Delay is rand * min(cap, base * 2**(n-1)); zero failures → 0."""
    assert backoff_delay(0, 1, 100, lambda: 0.5) == 0
    assert backoff_delay(1, 2, 100, lambda: 1.0) == 2
    assert backoff_delay(4, 2, 100, lambda: 1.0) == 16
    assert backoff_delay(4, 2, 100, lambda: 0.25) == 4
    assert backoff_delay(50, 2, 100, lambda: 1.0) == 100
    assert backoff_delay(10_000, 2, 100, lambda: 0.999) <= 100
    assert backoff_delay(3, 2, 100, lambda: 0.0) == 0


def test_poll_delay_honours_retry_after() -> None:
    """Healthy → poll_interval; failing → backoff, never below what a 429 asked."""
    kw: dict[str, float] = {"poll_interval": 300, "base": 1, "cap": 600}
    assert next_poll_delay(0, retry_after=0, rand=lambda: 0.5, **kw) == 300
    assert next_poll_delay(2, retry_after=0, rand=lambda: 0.5, **kw) == 1
    assert next_poll_delay(2, retry_after=9, rand=lambda: 0.5, **kw) == 9


async def test_single_flight_under_concurrency(tmp_path: Path) -> None:
    """50 concurrent refresh() calls cause one fetch and all get its snapshot."""
    fake = FakeUpstream()
    fake.delay = 0.05
    r, published = make(tmp_path, fake)
    results = await asyncio.gather(*(r.refresh() for _ in range(50)))
    assert fake.calls == 1
    assert len(published) == 1
    assert all(s is published[0] for s in results)


async def test_fresh_refresh_waits_out_a_running_fetch(tmp_path: Path) -> None:
    """A fresh caller does not join a fetch that began before it: it gets a new one."""
    fake = FakeUpstream()
    fake.gate = asyncio.Event()
    r, _published = make(tmp_path, fake)
    first = asyncio.create_task(r.refresh())
    await asyncio.sleep(0.01)
    fake.members = [mk("1", "Ann"), mk("2", "Bea")]  # the change arrives mid-fetch
    fresh = asyncio.create_task(r.refresh(fresh=True))
    await asyncio.sleep(0.01)
    fake.gate.set()
    await first
    snap = await fresh
    assert fake.calls == 2
    assert snap is not None and [s["title"] for s in snap.supporters] == ["Ann", "Bea"]


async def test_webhook_burst_is_debounced(tmp_path: Path) -> None:
    """200 webhooks inside the cooldown cause at most 3 fetches; the last change is seen."""
    fake = FakeUpstream()
    fake.delay = 0.02
    r, published = make(tmp_path, fake, webhook_cooldown=1.0)
    runner = asyncio.create_task(r._debounce_loop())
    try:
        for i in range(200):
            fake.members = [mk(str(j), f"N{j}") for j in range(i + 1)]
            r.notify()
            await asyncio.sleep(0.002)
        await asyncio.sleep(1.5)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    assert 1 <= fake.calls <= 3
    assert {"title": "N199"} in published[-1].supporters
    assert len(published[-1].supporters) == 200


async def test_webhook_during_fetch_schedules_exactly_one_more(tmp_path: Path) -> None:
    """A webhook arriving while a fetch runs gets one more fetch after it."""
    fake = FakeUpstream()
    fake.gate = asyncio.Event()
    r, published = make(tmp_path, fake, webhook_cooldown=0.05)
    runner = asyncio.create_task(r._debounce_loop())
    try:
        r.notify()
        await asyncio.sleep(0.02)
        assert fake.calls == 1
        fake.members = [mk("9", "Late")]
        r.notify()
        r.notify()
        fake.gate.set()
        for _ in range(100):
            if fake.calls == 2 and published and published[-1].supporters == ({"title": "Late"},):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    assert fake.calls == 2
    assert published[-1].supporters == ({"title": "Late"},)


@pytest.mark.parametrize(
    "error",
    [
        AuthRejected("401"),
        RateLimited("429", 0.01),
        UpstreamUnavailable("500"),
        MalformedResponse("garbage"),
        ValueError("a bug"),
    ],
)
async def test_stale_if_error(tmp_path: Path, error: Exception) -> None:
    """A failure keeps the last snapshot and shows in health; success clears it."""
    fake = FakeUpstream()
    r, published = make(tmp_path, fake)
    good = await r.refresh()
    fake.error = error
    assert await r.refresh() is good
    assert r.snapshot is good and len(published) == 1
    assert r.health.ok is False and r.health.consecutive_failures == 1
    assert r.health.last_error is not None
    assert await r.refresh() is good
    assert r.health.consecutive_failures == 2
    fake.error = None
    await r.refresh()
    assert r.health.ok and r.health.consecutive_failures == 0 and r.health.last_error is None


async def test_rate_limit_blocks_requests_until_it_passes(tmp_path: Path) -> None:
    """After a 429 with retry_after, no fetch starts before the wait is over."""
    now = [1000.0]
    fake = FakeUpstream()
    fake.error = RateLimited("429", 9.0)
    published: list[Snapshot] = []

    def clock() -> float:
        return now[0]

    r = Refresher(
        fake,
        published.append,
        SnapshotStore(tmp_path),
        PatreonConfig(campaign_id="1"),
        20,
        Metrics(),
        clock=clock,
    )
    await r.refresh()
    assert r.health.not_before == 1009.0
    assert r.next_delay() >= 9.0
    fake.error = None
    task = asyncio.create_task(r.refresh())
    await asyncio.sleep(0.05)
    assert fake.calls == 1 and not task.done()  # still waiting out the 429
    now[0] = 1009.0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_unchanged_refresh_keeps_version_and_persists(tmp_path: Path) -> None:
    """A refresh that finds the same list publishes nothing; changes are persisted."""
    fake = FakeUpstream()
    r, published = make(tmp_path, fake)
    await r.refresh()
    await r.refresh()
    assert len(published) == 1 and published[0].version == 1
    fake.members.append(mk("2", "Bea"))
    await r.refresh()
    assert published[-1].version == 2
    assert SnapshotStore(tmp_path).load() == published[-1]


async def test_version_continues_after_restart(tmp_path: Path) -> None:
    """A new refresher loads the persisted snapshot and continues its version."""
    fake = FakeUpstream()
    r, _ = make(tmp_path, fake)
    await r.refresh()
    fake.members.append(mk("2", "Bea"))
    await r.refresh()
    r2, published = make(tmp_path, fake)
    loaded = r2.load()
    assert loaded is not None and loaded.version == 2 and published == [loaded]
    fake.members.append(mk("3", "Cy"))
    await r2.refresh()
    assert published[-1].version == 3


async def test_stopping_run_cancels_the_fetch_in_flight(tmp_path: Path) -> None:
    """Cancelling run() (shutdown) also stops a fetch that is still waiting on Patreon."""
    fake = FakeUpstream()
    fake.gate = asyncio.Event()  # never set: the fetch hangs
    r, published = make(tmp_path, fake)
    runner = asyncio.create_task(r.run())
    for _ in range(100):
        if fake.calls:
            break
        await asyncio.sleep(0.01)
    inflight = r._inflight
    assert inflight is not None
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert inflight.cancelled()
    assert published == []


async def test_health_turns_ok_only_with_a_served_snapshot(tmp_path: Path) -> None:
    """While the first snapshot is being persisted and published, health is not yet ok."""
    fake = FakeUpstream()
    seen: list[bool | None] = []
    store = SnapshotStore(tmp_path)
    r = Refresher(
        fake, lambda s: seen.append(r.health.ok), store, PatreonConfig(campaign_id="1"), 20, Metrics()
    )
    await r.refresh()
    assert seen == [None]
    assert r.health.ok is True
