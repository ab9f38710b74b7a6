"""Shared fixtures: configs pointing at a fake Patreon, fixture files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from sponsord.config import (
    Config,
    DisplayConfig,
    PatreonConfig,
    Secret,
    Secrets,
    ServerConfig,
    StateConfig,
)
from sponsord.simulator import Simulator

FIXTURES = Path(__file__).parent / "fixtures" / "patreon"

ACCESS_TOKEN = "demo-access-token"
WEBHOOK_SECRET = "demo-webhook-secret"


def fixture_bytes(name: str) -> bytes:
    """The exact bytes of a saved Patreon payload (see fixtures/patreon/SOURCES.md)."""
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    """A saved Patreon payload, parsed."""
    return json.loads(fixture_bytes(name))


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Build a Config for tests: fast timers, state in tmp_path, demo secrets."""

    def make(api_base: str = "http://127.0.0.1:9", campaign_id: str = "725055", **patreon: Any) -> Config:
        defaults: dict[str, Any] = {
            "poll_interval": 3600.0,
            "webhook_cooldown": 0.2,
            "backoff_base": 0.05,
            "backoff_max": 0.5,
            "request_timeout": 2.0,
            "requests_per_minute": 100.0,
        }
        defaults.update(patreon)
        return Config(
            server=ServerConfig(
                public_url="http://sponsors.test",
                allowed_origins=("https://example.com",),
                slow_client_timeout=1.0,
            ),
            patreon=PatreonConfig(api_base=api_base, campaign_id=campaign_id, **defaults),
            display=DisplayConfig(goal_count=20, join_url="https://www.patreon.com/join/test"),
            state=StateConfig(dir=tmp_path / "state"),
            secrets=Secrets(access_token=Secret(ACCESS_TOKEN), webhook_secret=Secret(WEBHOOK_SECRET)),
            path="<test>",
        )

    return make


def with_server(config: Config, **server: Any) -> Config:
    """A copy of ``config`` with some [server] settings changed."""
    return replace(config, server=replace(config.server, **server))


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) until ``predicate()`` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def sim(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Simulator:
    """A small simulated campaign served on a free port; its URL is ``sim.base``."""
    s = Simulator.with_members(10, seed=5)
    server = await aiohttp_server(s.app)
    s.base = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return s
