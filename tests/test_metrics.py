"""``GET /metrics``: Prometheus text that parses, and figures that move when things happen.

A real daemon (rotating its tokens) against the simulator; every scrape is
parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from sponsord.simulator import Simulator
from sponsord.webhooks import sign

from .live import Daemon, eventually, get_json, rotating_env, running, static_env, write_config

Sim = tuple[Simulator, str]

#: Every family the issue asks for (counters without their ``_total``).
FAMILIES = {
    "sponsord_clients": "gauge",
    "sponsord_broadcasts": "counter",
    "sponsord_broadcast_seconds": "histogram",
    "sponsord_frames_sent": "counter",
    "sponsord_slow_disconnects": "counter",
    "sponsord_refreshes": "counter",
    "sponsord_upstream_seconds": "histogram",
    "sponsord_webhooks": "counter",
    "sponsord_snapshot_version": "gauge",
    "sponsord_snapshot_age_seconds": "gauge",
    "sponsord_token_rotations": "counter",
    "sponsord_token_expiry_timestamp_seconds": "gauge",
}


@pytest.fixture
async def sim(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Sim:
    """A simulated campaign on a loopback port, and its base URL."""
    simulator = Simulator.with_members(8, seed=4)
    server = await aiohttp_server(simulator.app)
    return simulator, str(server.make_url("")).rstrip("/")


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels`` (0 when absent)."""
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


async def scrape(session: aiohttp.ClientSession, daemon: Daemon) -> Scrape:
    """GET /metrics and parse it."""
    async with session.get(f"{daemon.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        return Scrape(await resp.text())


async def webhook(
    session: aiohttp.ClientSession, daemon: Daemon, body: bytes, event: str, signature: str
) -> int:
    """POST a webhook; its status."""
    headers = {"X-Patreon-Event": event, "X-Patreon-Signature": signature}
    async with session.post(f"{daemon.url}/v1/webhooks/patreon", data=body, headers=headers) as resp:
        return resp.status


async def test_every_metric_exists_parses_and_moves(sim: Sim, tmp_path: Path) -> None:
    """Clients, fan-out, refreshes, upstream latency, webhooks, snapshot and token figures all move."""
    simulator, url = sim
    config = write_config(tmp_path, url, server={"longpoll_wait": 30})
    async with running(config, rotating_env(simulator)) as daemon, aiohttp.ClientSession() as session:
        await daemon.wait_for("snapshot_published")
        s0 = await scrape(session, daemon)
        for name, kind in FAMILIES.items():
            assert name in s0.families, name
            assert s0.families[name].type == kind, name
        assert s0.value("sponsord_snapshot_version") == 1
        assert s0.value("sponsord_refreshes_total", outcome="changed") == 1
        assert s0.value("sponsord_upstream_seconds_count") >= 1
        assert s0.value("sponsord_token_rotations_total", outcome="rotated") == 1
        assert s0.value("sponsord_token_expiry_timestamp_seconds") > 0
        assert s0.value("sponsord_clients", transport="websocket") == 0
        # Series an operator alerts on exist at zero from the start.
        assert "sponsord_webhooks_total" in {s.name for s in s0.families["sponsord_webhooks"].samples}

        # Live clients.
        sockets = [await session.ws_connect(f"{daemon.url}/v1/supporters/websocket") for _ in range(2)]
        for ws in sockets:
            await ws.receive(timeout=5)
        poll = asyncio.create_task(session.get(f"{daemon.url}/v1/supporters/poll?since=1&wait=30"))
        await eventually(lambda: _clients(session, daemon, websocket=2, longpoll=1), timeout=5)
        s1 = await scrape(session, daemon)

        # A member joins, announced by a signed webhook: refresh, broadcast, frames.
        member = simulator.campaign.add_member("Newest Member", start="2030-01-01T00:00:00+00:00")
        body = simulator.webhook_body(member)
        assert (
            await webhook(session, daemon, body, "members:create", sign(simulator.webhook_secret, body))
            == 202
        )
        for ws in sockets:
            frame = json.loads((await ws.receive(timeout=5)).data)
            assert frame["data"]["meta"]["version"] == 2
        resp = await poll
        assert resp.status == 200
        resp.release()
        await eventually(lambda: _clients(session, daemon, websocket=2, longpoll=0), timeout=5)
        s2 = await scrape(session, daemon)
        assert s2.value("sponsord_snapshot_version") == 2
        assert s2.value("sponsord_broadcasts_total") == s1.value("sponsord_broadcasts_total") + 1
        assert (
            s2.value("sponsord_broadcast_seconds_count") == s1.value("sponsord_broadcast_seconds_count") + 1
        )
        assert s2.value("sponsord_frames_sent_total") == s1.value("sponsord_frames_sent_total") + 2
        assert s2.value("sponsord_refreshes_total", outcome="changed") == 2
        assert s2.value("sponsord_upstream_seconds_count") > s1.value("sponsord_upstream_seconds_count")
        assert s2.value("sponsord_webhooks_total", result="accepted") == 1

        # Webhooks that are refused or ignored.
        assert await webhook(session, daemon, body, "members:create", "0" * 32) == 401
        big = b"x" * (300 * 1024)
        assert (
            await webhook(session, daemon, big, "members:create", sign(simulator.webhook_secret, big)) == 413
        )
        post = b'{"data": {"type": "post"}}'
        assert (
            await webhook(session, daemon, post, "posts:publish", sign(simulator.webhook_secret, post)) == 200
        )
        s3 = await scrape(session, daemon)
        assert s3.value("sponsord_webhooks_total", result="bad_signature") == 1
        assert s3.value("sponsord_webhooks_total", result="too_large") == 1
        assert s3.value("sponsord_webhooks_total", result="ignored") == 1

        # The snapshot ages between refreshes.
        await asyncio.sleep(1.1)
        s4 = await scrape(session, daemon)
        assert s4.value("sponsord_snapshot_age_seconds") >= s3.value("sponsord_snapshot_age_seconds") + 1

        # Patreon revokes the access token: the next refresh rotates it.
        simulator.access_tokens.clear()
        daemon.signal(signal.SIGHUP)
        await daemon.wait_for("token_rotated", reason="rejected")
        s5 = await scrape(session, daemon)
        assert s5.value("sponsord_token_rotations_total", outcome="rotated") == 2
        assert s5.value("sponsord_refreshes_total", outcome="auth") == 0  # the retry succeeded

        for ws in sockets:
            await ws.close()
        assert await daemon.stop() == 0


async def _clients(session: aiohttp.ClientSession, daemon: Daemon, **expected: int) -> bool:
    s = await scrape(session, daemon)
    return all(s.value("sponsord_clients", transport=t) == n for t, n in expected.items())


async def test_slow_client_disconnects_and_failures_are_counted(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    """A WebSocket client that never reads is closed and counted; a failed refresh is counted by kind."""
    simulator = Simulator.with_members(0)
    # ~5 MB of names: one frame overflows every kernel buffer on the way to a reader that never reads.
    for i in range(800):
        simulator.campaign.add_member(f"{i} " + "x" * 6000, start="2020-01-01T00:00:00+00:00")
    server = await aiohttp_server(simulator.app)
    url = str(server.make_url("")).rstrip("/")
    # A long backoff: few retries against the failing Patreon below.
    patreon = {"backoff_base": 60, "backoff_max": 60}
    config = write_config(tmp_path, url, server={"slow_client_timeout": 0.3}, patreon=patreon)
    async with running(config, static_env(simulator)) as daemon, aiohttp.ClientSession() as session:
        await daemon.wait_for("snapshot_published")
        assert daemon.url is not None
        host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.connect((host, int(port)))
            key = base64.b64encode(os.urandom(16)).decode()
            handshake = (
                f"GET /v1/supporters/websocket HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            sock.sendall(handshake.encode())
            await asyncio.sleep(0.3)
            member = simulator.campaign.add_member("One More", start="2030-01-01T00:00:00+00:00")
            body = simulator.webhook_body(member)
            await webhook(session, daemon, body, "members:create", sign(simulator.webhook_secret, body))
            await daemon.wait_for("websocket_slow_client_closed", timeout=10)
        # That refresh must be over, or the poke below would just join it.
        await daemon.wait_for("snapshot_published", version=2)
        s = await scrape(session, daemon)
        assert s.value("sponsord_slow_disconnects_total") == 1

        simulator.inject("503", times=50)  # down until the test ends
        daemon.signal(signal.SIGHUP)
        await daemon.wait_for("refresh_failed", kind="unavailable")
        s = await scrape(session, daemon)
        assert s.value("sponsord_refreshes_total", outcome="unavailable") >= 1
        _status, health = await get_json(session, f"{daemon.url}/healthz")
        assert health["status"] == "degraded"
        assert await daemon.stop() == 0


async def test_metrics_are_restricted_by_metrics_allow(sim: Sim, tmp_path: Path) -> None:
    """Outside ``metrics_allow`` /metrics answers 403 (loopback is refused when only 10/8 is allowed)."""
    simulator, url = sim
    config = write_config(tmp_path, url, server={"metrics_allow": ["10.0.0.0/8"]})
    async with running(config, static_env(simulator)) as daemon, aiohttp.ClientSession() as session:
        async with session.get(f"{daemon.url}/metrics") as resp:
            assert resp.status == 403
            assert "sponsord_" not in await resp.text()
        assert await daemon.stop() == 0
