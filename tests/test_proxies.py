"""Who the client is: proxy headers believed only from trusted proxies, end to end.

A real daemon on loopback. With ``trusted_proxies = ["127.0.0.1/32"]`` the
test itself is the trusted proxy and its ``CF-Connecting-IP`` and
``X-Forwarded-For`` decide the client address; without it, or with
``"cloudflare"`` (loopback is no Cloudflare edge), the same headers are
ignored. The resolved address shows in the logs, in the per-address cap and
in who may read ``/metrics``.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from sponsord.proxies import cloudflare_networks, in_networks, ip_or_none, parse_networks
from sponsord.simulator import Simulator

from .live import Daemon, eventually, get_json, running, static_env, write_config

Sim = tuple[Simulator, str]


@pytest.fixture
async def sim(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Sim:
    """A small simulated campaign on a loopback port, and its base URL."""
    simulator = Simulator.with_members(4, seed=9)
    server = await aiohttp_server(simulator.app)
    return simulator, str(server.make_url("")).rstrip("/")


def config_for(tmp_path: Path, url: str, trusted: Any) -> Path:
    """A daemon config: 2 live clients per address, long-polls held long."""
    return write_config(
        tmp_path,
        url,
        server={"trusted_proxies": trusted, "max_clients_per_address": 2, "longpoll_wait": 30},
    )


async def bad_webhook_client(session: aiohttp.ClientSession, daemon: Daemon, headers: dict[str, str]) -> str:
    """Send a webhook with a wrong signature; the client address the daemon logged for it."""
    before = len([x for x in daemon.lines() if x.get("event") == "webhook_bad_signature"])
    hdrs = {"X-Patreon-Event": "members:update", "X-Patreon-Signature": "00" * 16, **headers}
    async with session.post(f"{daemon.url}/v1/webhooks/patreon", data=b"{}", headers=hdrs) as resp:
        assert resp.status == 401

    def logged() -> list[dict[str, Any]]:
        return [x for x in daemon.lines() if x.get("event") == "webhook_bad_signature"][before:]

    await eventually(logged, timeout=5)
    return str(logged()[0]["client"])


async def held_long_polls(session: aiohttp.ClientSession, daemon: Daemon, addresses: list[str]) -> list[int]:
    """Open one long-poll per CF-Connecting-IP in ``addresses``; the statuses of those refused at once.

    The ones held are cancelled after a moment (they are not answered yet).
    """
    _, current = await get_json(session, f"{daemon.url}/v1/supporters")
    version = current["meta"]["version"]

    async def poll(address: str) -> int:
        async with session.get(
            f"{daemon.url}/v1/supporters/poll?since={version}&wait=30", headers={"CF-Connecting-IP": address}
        ) as resp:
            return resp.status

    tasks = []
    for address in addresses:
        tasks.append(asyncio.create_task(poll(address)))
        await asyncio.sleep(0.1)  # in order: the cap is first come, first served
    done, pending = await asyncio.wait(tasks, timeout=1.0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [t.result() for t in tasks if t in done]


async def test_trusted_proxy_headers_decide_the_client(sim: Sim, tmp_path: Path) -> None:
    """From a trusted proxy, CF-Connecting-IP (else the last untrusted X-Forwarded-For hop) is the client."""
    simulator, url = sim
    config = config_for(tmp_path, url, ["127.0.0.1/32"])
    async with running(config, static_env(simulator)) as daemon, aiohttp.ClientSession() as session:
        await daemon.wait_for("snapshot_published")
        assert await bad_webhook_client(session, daemon, {"CF-Connecting-IP": "203.0.113.7"}) == "203.0.113.7"
        xff = {"X-Forwarded-For": "198.51.100.1, 198.51.100.50, 127.0.0.1"}
        assert await bad_webhook_client(session, daemon, xff) == "198.51.100.50"
        assert await bad_webhook_client(session, daemon, {"CF-Connecting-IP": "2001:db8::5"}) == "2001:db8::5"
        # A garbled header is not believed; the proxy itself is the client then.
        assert await bad_webhook_client(session, daemon, {"CF-Connecting-IP": "not-an-ip"}) == "127.0.0.1"

        # /metrics is for loopback: a visitor's address behind the proxy is refused.
        async with session.get(f"{daemon.url}/metrics", headers={"CF-Connecting-IP": "203.0.113.7"}) as resp:
            assert resp.status == 403
        async with session.get(f"{daemon.url}/metrics") as resp:
            assert resp.status == 200

        # The per-address cap (2) counts visitors, not the proxy.
        refused = await held_long_polls(
            session, daemon, ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.1", "192.0.2.1"]
        )
        assert refused == [503]  # only the third from 192.0.2.1
        assert await daemon.stop() == 0


@pytest.mark.parametrize("trusted", [[], "cloudflare", ["10.0.0.0/8"]])
async def test_untrusted_peer_headers_are_ignored(sim: Sim, tmp_path: Path, trusted: Any) -> None:
    """From a peer that is not a trusted proxy, CF-Connecting-IP and X-Forwarded-For change nothing."""
    simulator, url = sim
    config = config_for(tmp_path, url, trusted)
    async with running(config, static_env(simulator)) as daemon, aiohttp.ClientSession() as session:
        await daemon.wait_for("snapshot_published")
        assert await bad_webhook_client(session, daemon, {"CF-Connecting-IP": "203.0.113.7"}) == "127.0.0.1"
        assert await bad_webhook_client(session, daemon, {"X-Forwarded-For": "198.51.100.1"}) == "127.0.0.1"
        # A forged header does not get a remote visitor past metrics_allow, nor refused from loopback.
        async with session.get(f"{daemon.url}/metrics", headers={"CF-Connecting-IP": "203.0.113.7"}) as resp:
            assert resp.status == 200
        # Every forged address is the same client: the third long-poll is refused.
        refused = await held_long_polls(session, daemon, ["192.0.2.1", "192.0.2.2", "192.0.2.3"])
        assert refused == [503]
        assert await daemon.stop() == 0


def test_shipped_cloudflare_ranges() -> None:
    """The shipped list holds Cloudflare's IPv4 and IPv6 ranges, and "cloudflare" means exactly them."""
    networks = cloudflare_networks()
    assert {n.version for n in networks} == {4, 6}
    assert len(networks) >= 15
    assert ipaddress.ip_network("173.245.48.0/20") in networks
    assert ipaddress.ip_network("2606:4700::/32") in networks
    assert parse_networks(["cloudflare"]) == networks
    assert in_networks(ip_or_none("104.16.1.1"), networks)
    assert in_networks(ip_or_none("::ffff:104.16.1.1"), networks)  # as seen on a dual-stack socket
    assert not in_networks(ip_or_none("127.0.0.1"), networks)
    assert not in_networks(ip_or_none("8.8.8.8"), networks)
