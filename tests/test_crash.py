"""Crash safety: kill -9 a real daemon at random moments while it persists snapshots and rotates tokens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sponsord.simulator import Simulator
from sponsord.snapshot import SNAPSHOT_FILE, Snapshot
from sponsord.tokens import TOKENS_FILE, TokenState, state_lock
from sponsord.webhooks import sign

from .conftest import WEBHOOK_SECRET
from .live import Daemon, record_figures, static_env, write_config

#: At least this many kills (the issue asks for 50), within TIME_BUDGET seconds.
ROUNDS, MIN_ROUNDS, TIME_BUDGET = 60, 50, 80.0


def free_port() -> int:
    """A loopback port free right now (the daemon binds it with SO_REUSEADDR each round)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def churn(sim: Simulator, url: str, rng: random.Random, stop: asyncio.Event) -> int:
    """Change the roster and announce it with a signed webhook every ~30 ms; count the changes."""
    changes = 0
    timeout = aiohttp.ClientTimeout(total=0.5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            event, member_id = sim.campaign.random_change(rng)
            changes += 1
            body = sim.webhook_body(member_id)
            headers = {"X-Patreon-Event": event, "X-Patreon-Signature": sign(WEBHOOK_SECRET, body)}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
            await asyncio.sleep(rng.uniform(0.01, 0.05))
    return changes


def kill_mid_write(pid: int, state: Path, deadline: float) -> int:
    """(worker thread) SIGKILL ``pid`` as soon as a snapshot temp file exists; 1 if it did."""
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if any(name.startswith(f".{SNAPSHOT_FILE}.") for name in os.listdir(state)):
                os.kill(pid, signal.SIGKILL)  # our own daemon's PID, nothing else
                return 1
        time.sleep(0.0001)
    return 0


def read_state(state: Path) -> tuple[bytes | None, TokenState | None, list[str]]:
    """(worker thread) Both state files, read under the token lock (a helper may still be writing)."""
    with state_lock(state):
        snap = state / SNAPSHOT_FILE
        tokens = state / TOKENS_FILE
        modes = [oct(stat.S_IMODE(p.stat().st_mode)) for p in (snap, tokens) if p.exists()]
        raw = snap.read_bytes() if snap.exists() else None
        pair = TokenState.decode(tokens.read_bytes()) if tokens.exists() else None
    return raw, pair, modes


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [line for line in daemon.lines() if line.get("event") == name]


@pytest.mark.timeout(180)
async def test_kill_9_at_random_moments_never_tears_state(tmp_path: Path) -> None:
    """50+ kill -9s mid-persistence: both state files always parse, hold a whole state, never go back."""
    sim = Simulator.with_members(600, seed=12)  # a snapshot of ~10 KB: a write takes a moment
    sim.expires_in = 1  # the access token is due for rotation ~0.8 s after each exchange
    configured_refresh = sim.refresh_token
    base = await sim.start()
    port = free_port()
    config = write_config(
        tmp_path,
        base,
        server={"port": port},
        patreon={
            "webhook_cooldown": 0.0,
            "poll_interval": 1.0,
            "requests_per_minute": 100.0,
            "backoff_base": 0.05,
        },
    )
    env = {
        **static_env(sim),
        "PATREON_CLIENT_ID": sim.client_id,
        "PATREON_CLIENT_SECRET": sim.client_secret,
        "PATREON_REFRESH_TOKEN": configured_refresh or "",
    }
    state = tmp_path / "state"
    rng = random.Random(20261203)
    stop = asyncio.Event()
    churner = asyncio.create_task(churn(sim, f"http://127.0.0.1:{port}/v1/webhooks/patreon", rng, stop))
    disk_versions: list[int] = []
    bodies: dict[int, bytes] = {}
    interrupted_writes = rounds = published = aimed = 0
    problems: list[str] = []
    started = time.monotonic()
    try:
        while rounds < ROUNDS and time.monotonic() - started < TIME_BUDGET:
            daemon = Daemon(config, env)
            deadline = time.monotonic() + rng.uniform(0.3, 1.5)  # from mid-import to serving
            if rounds % 2:
                # Every other round, aim: kill the moment a snapshot write is under way.
                aimed += await asyncio.to_thread(kill_mid_write, daemon.pid, state, deadline)
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            await daemon.kill()
            rounds += 1
            interrupted_writes += len(list(state.glob(".*.tmp")))
            raw, tokens, modes = await asyncio.to_thread(read_state, state)
            versions = [e["version"] for e in events(daemon, "snapshot_published")]
            published += len(versions)
            loaded = [e["version"] for e in events(daemon, "snapshot_loaded")]
            problems += [
                f"round {rounds}: {e.get('event')} {e.get('text', '')[:200]}"
                for e in daemon.errors() + events(daemon, "refresh_token_refused")
            ]
            assert set(modes) <= {"0o600"}, modes
            if raw is not None:
                snap = Snapshot.parse(raw)  # a torn file would not parse...
                assert snap.body == raw  # ...nor re-encode to the very same bytes
                previous = disk_versions[-1] if disk_versions else 0
                assert snap.version >= previous, "the version went backwards"
                # An earlier state, one this daemon published, or the one it was writing.
                allowed = {previous, *versions, *loaded, max(versions, default=previous) + 1}
                assert snap.version in allowed, (snap.version, sorted(allowed))
                assert bodies.setdefault(snap.version, raw) == raw, "two states under one version"
                disk_versions.append(snap.version)
            # The persisted pair is the only live one at Patreon (or none was ever issued).
            if tokens is None:
                assert sim.refresh_token == configured_refresh
            else:
                assert tokens.current.refresh_token == sim.refresh_token
        assert rounds >= MIN_ROUNDS
        # And a daemon started afterwards serves at least the last version on disk, then goes on.
        daemon = Daemon(config, env)
        await daemon.started()
        async with aiohttp.ClientSession() as session:
            last = disk_versions[-1] if disk_versions else 0
            async with asyncio.timeout(15):
                while True:
                    async with session.get(f"{daemon.url}/healthz") as resp:
                        health = await resp.json()
                    if health["status"] == "ok" and (health["snapshot"]["version"] or 0) > last:
                        break
                    await asyncio.sleep(0.05)
        await daemon.stop()
        await asyncio.to_thread(read_state, state)  # a token helper may still be finishing
        assert not list(state.glob(".*.tmp")), "stale temp files survived a start"
        problems += [f"final: {e.get('event')}" for e in daemon.errors()]
    finally:
        stop.set()
        changes = await churner
        await sim.stop()
    figures = {
        "rounds": rounds,
        "seconds": round(time.monotonic() - started, 1),
        "roster_changes_with_webhooks": changes,
        "snapshots_published_before_kills": published,
        "distinct_versions_on_disk": len(set(disk_versions)),
        "last_version_on_disk": disk_versions[-1] if disk_versions else None,
        "kills_aimed_at_a_write_in_progress": aimed,
        "kills_that_left_a_temp_file": interrupted_writes,
        "token_exchanges": sim.token_requests,
        "torn_or_backwards_states": 0,
        "errors_logged": problems,
    }
    record_figures("crash", figures)
    assert problems == []
