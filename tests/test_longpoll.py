"""Held long-polls: detached from aiohttp, answered by the hub with pre-rendered bytes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sponsord.app import create_app
from sponsord.config import Config
from sponsord.keys import HUB, METRICS, REFRESHER
from sponsord.longpoll import render
from sponsord.simulator import Simulator

from .conftest import until, with_server

Client = TestClient[web.Request, web.Application]
MakeConfig = Callable[..., Config]
POLL = "/v1/supporters/poll"


@pytest.fixture
async def live(
    aiohttp_client: Callable[..., Awaitable[Client]], make_config: MakeConfig, sim: Simulator
) -> Client:
    config = with_server(make_config(sim.base), max_clients_per_address=5)  # type: ignore[attr-defined]
    client = await aiohttp_client(create_app(config))
    await until(lambda: client.app[HUB].snapshot is not None)
    return client


def test_render_is_a_closing_http_answer() -> None:
    """Status line, headers, length, Date, Connection: close; no length on a 204."""
    raw = render(200, (("ETag", '"1-x"'), ("Bad", "a\r\nInjected: 1")), b"{}")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK" and body == b"{}"
    assert b'ETag: "1-x"' in lines and b"Content-Length: 2" in lines and b"Connection: close" in lines
    assert b"Content-Type: application/json" in lines
    assert not any(line.startswith((b"Bad", b"Injected")) for line in lines)
    assert any(line.startswith(b"Date: ") for line in lines)
    assert b"Content-Length" not in render(204, ())


async def test_held_poll_answered_with_headers_and_cors(live: Client, sim: Simulator) -> None:
    """A held poll gets the new version with ETag, no-store and the CORS headers of its origin."""
    version = live.app[HUB].snapshot.version  # type: ignore[union-attr]
    held = asyncio.create_task(
        live.get(POLL, params={"since": str(version)}, headers={"Origin": "https://example.com"})
    )
    await until(lambda: live.app[HUB].waiters == 1)
    runner = live.server.runner
    assert runner is not None and runner.server is not None
    await until(lambda: not runner.server.connections)  # aiohttp keeps nothing of it
    sim.campaign.add_member("Poll Answer")
    snap = await live.app[REFRESHER].refresh(fresh=True)
    assert snap is not None
    resp = await asyncio.wait_for(held, 5)
    body = await resp.read()
    assert resp.status == 200 and body == snap.body
    assert json.loads(body)["meta"]["version"] == version + 1
    assert resp.headers["ETag"] == snap.etag
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Access-Control-Allow-Origin"] == "https://example.com"
    assert resp.headers["Content-Type"] == "application/json"
    assert live.app[HUB].waiters == 0
    assert live.app[METRICS].longpoll_answers.labels("200")._value.get() == 1


async def test_held_poll_times_out_with_204(live: Client) -> None:
    """Nothing new within ``wait``: 204, no body, no-store."""
    version = live.app[HUB].snapshot.version  # type: ignore[union-attr]
    resp = await live.get(POLL, params={"since": str(version), "wait": "0.3"})
    assert resp.status == 204 and await resp.read() == b""
    assert resp.headers["Cache-Control"] == "no-store"
    assert live.app[HUB].waiters == 0


async def test_vanished_poller_frees_its_slot(live: Client) -> None:
    """A client that goes away while held no longer counts against the caps."""
    version = live.app[HUB].snapshot.version  # type: ignore[union-attr]
    host, port = live.server.host, live.server.port
    writers = []
    for _ in range(5):
        _reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {POLL}?since={version} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        writers.append(writer)
    await until(lambda: live.app[HUB].waiters == 5)
    refused = await live.get(POLL, params={"since": str(version), "wait": "1"})
    assert refused.status == 503  # max_clients_per_address = 5
    for writer in writers:
        writer.close()
    await until(lambda: live.app[HUB].waiters == 0)
    ok = await live.get(POLL, params={"since": str(version), "wait": "0.1"})
    assert ok.status == 204


async def test_wait_zero_answers_at_once(live: Client) -> None:
    """``wait=0`` (the page's watchdog) is answered without holding."""
    version = live.app[HUB].snapshot.version  # type: ignore[union-attr]
    resp = await asyncio.wait_for(live.get(POLL, params={"since": str(version), "wait": "0"}), 2)
    assert resp.status == 204


async def test_hub_wait_change_still_serves_coroutines(live: Client, sim: Any) -> None:
    """``Hub.wait_change`` (the coroutine API) wakes on a new version and times out with None."""
    hub = live.app[HUB]
    version = hub.snapshot.version  # type: ignore[union-attr]
    assert await hub.wait_change(version, 0.05) is None
    waiter = asyncio.create_task(hub.wait_change(version, 5))
    await until(lambda: hub.waiters == 1)
    sim.campaign.add_member("Coroutine Waiter")
    await live.app[REFRESHER].refresh(fresh=True)
    snap = await asyncio.wait_for(waiter, 5)
    assert snap is not None and snap.version == version + 1
