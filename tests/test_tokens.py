"""Token rotation against the simulator's single-use refresh tokens.

The first half drives :class:`RotatingTokens` (with the real helper process
and a real :class:`PatreonClient`) in this process; the second half runs
``sponsord serve`` and restarts it, gracefully and with kill -9.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from sponsord.budget import TokenBucket
from sponsord.config import Config, Secret, Secrets
from sponsord.errors import AuthRejected, TokenRotationError
from sponsord.metrics import Metrics
from sponsord.patreon import PatreonClient
from sponsord.simulator import Simulator
from sponsord.tokens import PAUSE_ENV, TOKENS_FILE, RotatingTokens, TokenPair, TokenState

from .live import Daemon, eventually, get_json, rotating_env, running, write_config

Sim = tuple[Simulator, str]


@pytest.fixture
async def sim(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Sim:
    """A simulated campaign on a loopback port, and its base URL."""
    simulator = Simulator.with_members(6, seed=3)
    server = await aiohttp_server(simulator.app)
    return simulator, str(server.make_url("")).rstrip("/")


def rotating(config: Config, sim: Simulator, refresh_token: str | None = None) -> Config:
    """``config`` with OAuth client credentials and a refresh token, no access token."""
    refresh = refresh_token if refresh_token is not None else sim.refresh_token
    assert refresh is not None
    return config.with_secrets(
        Secrets(
            client_id=Secret(sim.client_id),
            client_secret=Secret(sim.client_secret),
            refresh_token=Secret(refresh),
            webhook_secret=Secret(sim.webhook_secret),
        )
    )


def state_of(config: Config) -> TokenState:
    """The token state file as written."""
    return TokenState.decode((config.state.dir / TOKENS_FILE).read_bytes())


def rotations(metrics: Metrics, outcome: str) -> float:
    """The value of ``sponsord_token_rotations_total{outcome}``."""
    value = metrics.registry.get_sample_value("sponsord_token_rotations_total", {"outcome": outcome})
    return value or 0.0


class Clock:
    """Wall-clock time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def big_budget() -> TokenBucket:
    """A budget that never makes a test wait (the budget itself is tested elsewhere)."""
    return TokenBucket(100_000, burst=1000)


# -- in process ------------------------------------------------------------------


async def test_first_use_exchanges_and_persists_before_use(
    sim: Sim, make_config: Callable[..., Config]
) -> None:
    """No persisted pair: get() exchanges the refresh token and writes the pair (0600) before using it."""
    simulator, url = sim
    configured = simulator.refresh_token
    config = rotating(make_config(url), simulator)
    metrics = Metrics()
    budget = big_budget()
    tokens = RotatingTokens(config, budget, metrics)
    token = await tokens.get()
    assert token in simulator.access_tokens
    assert simulator.token_requests == 1
    assert budget.granted == 1  # the exchange passed the upstream budget
    state = state_of(config)
    assert state.current.access_token == token
    assert state.current.refresh_token == simulator.refresh_token != configured
    assert state.previous is not None and state.previous.refresh_token == configured
    assert state.current.expires_at == pytest.approx(time.time() + simulator.expires_in, abs=30)
    mode = (config.state.dir / TOKENS_FILE).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert rotations(metrics, "rotated") == 1
    # Later calls use the pair: no more exchanges.
    assert await tokens.get() == token
    assert simulator.token_requests == 1


async def test_rotates_before_expiry_without_a_401(sim: Sim, make_config: Callable[..., Config]) -> None:
    """Close to expires_at the next get() exchanges first; Patreon never sees the old token expire."""
    simulator, url = sim
    config = rotating(make_config(url), simulator)
    clock = Clock()
    tokens = RotatingTokens(config, big_budget(), Metrics(), clock=clock)
    first = await tokens.get()
    clock.offset = simulator.expires_in / 2
    assert await tokens.get() == first  # half-way: nothing to do
    assert simulator.token_requests == 1
    clock.offset = simulator.expires_in - 3600  # an hour left: inside the margin
    second = await tokens.get()
    assert second != first
    assert simulator.token_requests == 2
    assert second in simulator.access_tokens
    assert state_of(config).current.access_token == second


async def test_a_401_rotates_once_and_the_request_is_retried(
    sim: Sim, make_config: Callable[..., Config]
) -> None:
    """A revoked access token: one exchange, and the fetch succeeds with the new token."""
    simulator, url = sim
    config = rotating(make_config(url), simulator)
    metrics = Metrics()
    tokens = RotatingTokens(config, big_budget(), metrics)
    async with aiohttp.ClientSession() as session:
        client = PatreonClient(session, url, simulator.campaign.id, tokens, timeout=5)
        assert len(await client.fetch_members()) == 6
        simulator.access_tokens.clear()  # Patreon revoked it
        assert len(await client.fetch_members()) == 6
    assert simulator.token_requests == 2
    assert rotations(metrics, "rotated") == 2


async def test_storm_of_50_concurrent_401s_makes_one_rotation(
    sim: Sim, make_config: Callable[..., Config]
) -> None:
    """50 fetches rejected at once share a single exchange, and all of them succeed."""
    simulator, url = sim
    config = rotating(make_config(url), simulator)
    tokens = RotatingTokens(config, big_budget(), Metrics())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        client = PatreonClient(session, url, simulator.campaign.id, tokens, timeout=10)
        await client.fetch_members()
        assert simulator.token_requests == 1
        simulator.access_tokens.clear()
        results = await asyncio.gather(*(client.fetch_members() for _ in range(50)))
    assert [len(r) for r in results] == [6] * 50
    assert simulator.token_requests == 2
    assert tokens.exchanges == 2


async def test_a_fresh_token_refused_again_is_not_rotated_again(
    sim: Sim, make_config: Callable[..., Config]
) -> None:
    """A token just obtained for a 401 that gets a 401 too: the token is not the problem, no new exchange."""
    simulator, url = sim
    config = rotating(make_config(url), simulator)
    tokens = RotatingTokens(config, big_budget(), Metrics())
    async with aiohttp.ClientSession() as session:
        client = PatreonClient(session, url, simulator.campaign.id, tokens, timeout=5)
        await client.fetch_members()
        simulator.access_tokens.clear()
        await client.fetch_members()  # rotated because of the 401
        assert simulator.token_requests == 2
        simulator.inject("401", times=2)  # and again, at once
        with pytest.raises(AuthRejected):
            await client.fetch_members()
    assert simulator.token_requests == 2


async def test_persisted_pair_is_preferred_over_the_configured_one(
    sim: Sim, make_config: Callable[..., Config]
) -> None:
    """A restart reads the persisted pair: no exchange, although the configured token is dead by now."""
    simulator, url = sim
    config = rotating(make_config(url), simulator)
    first = RotatingTokens(config, big_budget(), Metrics())
    token = await first.get()
    assert simulator.token_requests == 1
    restarted = RotatingTokens(config, big_budget(), Metrics())  # same (now dead) configured token
    assert await restarted.get() == token
    assert simulator.token_requests == 1


async def test_dead_persisted_tokens_fall_back_to_a_new_configured_one(
    sim: Sim, make_config: Callable[..., Config]
) -> None:
    """Persisted current and previous refused: the operator's new PATREON_REFRESH_TOKEN, tried last, works."""
    simulator, url = sim
    base = make_config(url)
    dead = TokenState(TokenPair("dead-access", "dead-refresh-1", None, None), TokenPair("", "dead-refresh-0"))
    base.state.dir.mkdir(parents=True)
    (base.state.dir / TOKENS_FILE).write_bytes(dead.encode())
    simulator.refresh_token = "operator-reauthorized"
    config = rotating(base, simulator, refresh_token="operator-reauthorized")
    metrics = Metrics()
    tokens = RotatingTokens(config, big_budget(), metrics)
    token = await tokens.get()
    assert token in simulator.access_tokens
    assert simulator.token_requests == 3  # refused, refused, rotated
    assert rotations(metrics, "refused") == 2
    assert state_of(config).current.refresh_token == simulator.refresh_token


async def test_previous_pair_is_tried_when_current_is_refused(
    sim: Sim, make_config: Callable[..., Config]
) -> None:
    """If Patreon rolled back a rotation it answered, the persisted previous refresh token still works."""
    simulator, url = sim
    base = make_config(url)
    live = simulator.refresh_token
    assert live is not None
    state = TokenState(TokenPair("lost-access", "never-committed", None, None), TokenPair("", live))
    base.state.dir.mkdir(parents=True)
    (base.state.dir / TOKENS_FILE).write_bytes(state.encode())
    tokens = RotatingTokens(rotating(base, simulator, refresh_token="long-dead"), big_budget(), Metrics())
    assert await tokens.get() in simulator.access_tokens
    assert simulator.token_requests == 2


async def test_an_unreadable_state_file_falls_back_and_is_replaced(
    sim: Sim, make_config: Callable[..., Config]
) -> None:
    """A state file that is not one (logged) is ignored; the configured token rotates and replaces it."""
    simulator, url = sim
    base = make_config(url)
    base.state.dir.mkdir(parents=True)
    (base.state.dir / TOKENS_FILE).write_text("{not json")
    config = rotating(base, simulator)
    tokens = RotatingTokens(config, big_budget(), Metrics())
    assert await tokens.get() in simulator.access_tokens
    assert state_of(config).current.refresh_token == simulator.refresh_token


async def test_locked_out_says_what_to_do(sim: Sim, make_config: Callable[..., Config]) -> None:
    """Every refresh token refused: a TokenRotationError naming the fix, with no secret in it."""
    simulator, url = sim
    config = rotating(make_config(url), simulator, refresh_token="not-a-valid-token")
    tokens = RotatingTokens(config, big_budget(), Metrics())
    with pytest.raises(TokenRotationError) as info:
        await tokens.get()
    message = str(info.value)
    assert "PATREON_REFRESH_TOKEN" in message
    assert "not-a-valid-token" not in message
    assert simulator.client_secret not in message
    assert info.value.kind == "token_rotation"


async def test_a_rotation_by_another_process_is_adopted(sim: Sim, make_config: Callable[..., Config]) -> None:
    """A file changed since it was read (a previous daemon's helper): its pair is taken, not re-spent."""
    simulator, url = sim
    config = rotating(make_config(url), simulator)
    await RotatingTokens(config, big_budget(), Metrics()).get()
    clock = Clock()
    metrics_a = Metrics()
    a = RotatingTokens(config, big_budget(), metrics_a, clock=clock)
    b = RotatingTokens(config, big_budget(), Metrics())
    await a.get()
    await b.get()
    simulator.access_tokens.clear()
    assert await b.rejected(await b.get())  # b rotates: the file changes under a
    assert simulator.token_requests == 2
    clock.offset = simulator.expires_in  # a thinks its pair expired
    assert await a.get() == await b.get()
    assert simulator.token_requests == 2
    assert rotations(metrics_a, "adopted") == 1


async def test_token_pair_repr_hides_the_tokens() -> None:
    """A TokenPair never shows its tokens in a repr (and so in a log or traceback)."""
    pair = TokenPair("access-secret-value", "refresh-secret-value", 1.0, 0.0)
    assert "secret-value" not in repr(pair)
    assert "secret-value" not in str(pair)


# -- real daemons ------------------------------------------------------------------


def secrets_seen(simulator: Simulator, *more: str | None) -> list[str]:
    """Token values that must never appear in a log."""
    values = [*simulator.access_tokens, simulator.refresh_token, simulator.client_secret, *more]
    return [v for v in values if v]


async def healthy(session: aiohttp.ClientSession, daemon: Daemon) -> bool:
    """True once the daemon's last refresh from Patreon succeeded and a snapshot is served."""
    status, health = await get_json(session, f"{daemon.url}/healthz")
    return status == 200 and health["status"] == "ok" and health["upstream"]["ok"] is True


async def test_restart_after_rotation_uses_the_persisted_pair(sim: Sim, tmp_path: Path) -> None:
    """A daemon restarted with its original (now dead) credentials keeps working from the state file."""
    simulator, url = sim
    configured = simulator.refresh_token
    config = write_config(tmp_path, url)
    env = rotating_env(simulator)
    async with running(config, env) as daemon, aiohttp.ClientSession() as session:
        await eventually(lambda: healthy(session, daemon))
        assert simulator.token_requests == 1
        await daemon.wait_for("token_rotated", reason="startup")
        assert await daemon.stop() == 0
    async with running(config, env) as daemon, aiohttp.ClientSession() as session:
        await eventually(lambda: healthy(session, daemon))
        assert simulator.token_requests == 1
        await daemon.wait_for("tokens_loaded", source="state")
        assert await daemon.stop() == 0
        log = daemon.log_text()
    for secret in secrets_seen(simulator, configured):
        assert secret not in log


async def test_rotates_before_expiry_end_to_end(sim: Sim, tmp_path: Path) -> None:
    """With short-lived tokens the daemon exchanges ahead of expiry and no request is ever refused."""
    simulator, url = sim
    simulator.expires_in = 3
    config = write_config(tmp_path, url, patreon={"poll_interval": 1})
    async with running(config, rotating_env(simulator)) as daemon, aiohttp.ClientSession() as session:
        await eventually(lambda: simulator.token_requests >= 3, timeout=15)
        await daemon.wait_for("token_rotated", reason="expiry")
        assert await healthy(session, daemon)
        assert await daemon.stop() == 0
    assert not [
        line for line in daemon.lines() if line["event"] in ("refresh_failed", "token_rejected_again")
    ]
    assert not [line for line in daemon.lines() if line["level"] == "error"]


async def test_kill_9_between_receiving_and_persisting_recovers(sim: Sim, tmp_path: Path) -> None:
    """kill -9 of the daemon after Patreon issued the new pair but before it was written: nothing is lost.

    The helper that does the exchange is paused (test hook) between reading
    Patreon's answer and writing it; the daemon is killed right there. The
    helper finishes on its own, and the next daemon waits for its lock and
    uses the new pair without another exchange.
    """
    simulator, url = sim
    configured = simulator.refresh_token
    config = write_config(tmp_path, url)
    state_file = tmp_path / "state" / TOKENS_FILE
    first = Daemon(config, {**rotating_env(simulator), PAUSE_ENV: "2"})
    try:
        await first.started()
        await eventually(lambda: simulator.token_requests == 1, timeout=10, interval=0.01)
        await asyncio.sleep(0.3)  # the answer is with the helper, which sleeps before writing
        issued = simulator.refresh_token
        assert issued != configured  # Patreon has already killed the configured token
        assert not state_file.exists()  # and the new one is not on disk yet: the window
        first.signal(signal.SIGKILL)
        assert await first.exited(5) == -signal.SIGKILL
    finally:
        first.close()

    # Restarted at once, with the original (dead) credentials, while the helper still holds the lock.
    async with (
        running(config, rotating_env(simulator, configured)) as daemon,
        aiohttp.ClientSession() as session,
    ):
        await eventually(lambda: healthy(session, daemon), timeout=15)
        assert simulator.token_requests == 1  # no second exchange: the pair came from disk
        assert json.loads(state_file.read_text())["current"]["refresh_token"] == issued
        status, body = await get_json(session, f"{daemon.url}/v1/supporters")
        assert status == 200 and body["supporters"]
        assert await daemon.stop() == 0


async def test_sigkill_at_random_moments_never_locks_the_service_out(sim: Sim, tmp_path: Path) -> None:
    """kill -9 at random moments while tokens rotate every ~2 s; every restart recovers."""
    simulator, url = sim
    simulator.expires_in = 2
    configured = simulator.refresh_token
    config = write_config(tmp_path, url, patreon={"poll_interval": 1})
    rng = random.Random(20261203)
    deadline = time.monotonic() + 40
    for _ in range(6):
        if time.monotonic() > deadline:
            break
        daemon = Daemon(config, rotating_env(simulator, configured))
        try:
            await daemon.started()
            await asyncio.sleep(rng.uniform(0.1, 2.5))
            daemon.signal(signal.SIGKILL)
            await daemon.exited(5)
        finally:
            daemon.close()
    before = simulator.token_requests
    async with (
        running(config, rotating_env(simulator, configured)) as daemon,
        aiohttp.ClientSession() as session,
    ):
        await eventually(lambda: healthy(session, daemon), timeout=15)
        # And it keeps rotating afterwards.
        await eventually(lambda: simulator.token_requests >= before + 2, timeout=10)
        await eventually(lambda: healthy(session, daemon), timeout=10)
        assert await daemon.stop() == 0
    refused = [line for line in daemon.lines() if line["event"] == "refresh_token_refused"]
    assert refused == []
