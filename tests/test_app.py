"""End to end: the real app against the simulated Patreon on real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sponsord.app import create_app
from sponsord.config import Config
from sponsord.keys import HUB, REFRESHER
from sponsord.simulator import Simulator
from sponsord.snapshot import SnapshotStore
from sponsord.webhooks import sign

from .conftest import WEBHOOK_SECRET, until, with_server

Client = TestClient[web.Request, web.Application]
MakeConfig = Callable[..., Config]


def expected_titles(sim: Simulator) -> tuple[list[str], int]:
    """Named titles and the anonymous count the campaign should produce."""
    named: list[str] = []
    anonymous = 0
    for m in sim.campaign.members.values():
        if m.patron_status != "active_patron":
            continue
        u = m.user
        if (
            u is None
            or m.omit_user_from_included
            or u.hide_pledges is not False
            or not (u.full_name or "").strip()
        ):
            anonymous += 1
        else:
            named.append(u.full_name.strip())
    return named, anonymous


@pytest.fixture
async def sim(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Simulator:
    """A bigger campaign than conftest's: 40 seeded members hit every privacy case."""
    s = Simulator.with_members(40, seed=3)
    server = await aiohttp_server(s.app)
    s.base = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return s


@pytest.fixture
def start_app(
    aiohttp_client: Callable[..., Awaitable[Client]], make_config: MakeConfig, sim: Simulator
) -> Callable[..., Awaitable[Client]]:
    async def start(config: Config | None = None, wait: bool = True) -> Client:
        config = config or make_config(sim.base)  # type: ignore[attr-defined]
        client = await aiohttp_client(create_app(config))
        if wait:
            await until(lambda: client.app[HUB].snapshot is not None)
        return client

    return start


async def test_rest_serves_the_private_snapshot(sim: Simulator, start_app: Any) -> None:
    """GET /v1/supporters shows every active patron, hidden/unknown as exactly Anonymous."""
    client = await start_app()
    resp = await client.get("/v1/supporters")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    named, anonymous = expected_titles(sim)
    titles = [s["title"] for s in body["supporters"]]
    assert sorted(t for t in titles if t != "Anonymous") == sorted(named)
    assert titles.count("Anonymous") == anonymous
    assert all(s == {"title": "Anonymous"} or s["title"] in named for s in body["supporters"])
    assert body["goal_count"] == 20
    assert body["meta"]["version"] == 1
    for m in sim.campaign.members.values():  # nothing of a hidden member leaks
        if m.user is not None and m.user.hide_pledges and m.patron_status == "active_patron":
            assert m.user.full_name not in json.dumps(body)
            assert m.id not in json.dumps(body)


async def test_etag_304_and_cors(start_app: Any) -> None:
    """ETag on every answer, 304 on If-None-Match, CORS only for allowed origins."""
    client = await start_app()
    resp = await client.get("/v1/supporters", headers={"Origin": "https://example.com"})
    etag = resp.headers["ETag"]
    assert resp.headers["Access-Control-Allow-Origin"] == "https://example.com"
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"ETag", "Retry-After"} <= exposed
    again = await client.get("/v1/supporters", headers={"If-None-Match": etag})
    assert again.status == 304 and again.headers["ETag"] == etag
    assert await again.read() == b""
    other = await client.get("/v1/supporters", headers={"Origin": "https://evil.example"})
    assert other.status == 200 and "Access-Control-Allow-Origin" not in other.headers
    pre = await client.options(
        "/v1/supporters",
        headers={"Origin": "https://example.com", "Access-Control-Request-Headers": "if-none-match"},
    )
    assert pre.status == 204 and "If-None-Match" in pre.headers["Access-Control-Allow-Headers"]


async def test_503_before_first_snapshot(sim: Simulator, start_app: Any) -> None:
    """Before the first snapshot: 503 with Retry-After, and /healthz says starting."""
    sim.inject("hang")
    client = await start_app(wait=False)
    resp = await client.get("/v1/supporters")
    assert resp.status == 503 and resp.headers["Retry-After"]
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "starting" and health["snapshot"]["version"] is None


async def test_multi_page_campaign_is_complete(
    aiohttp_server: Any, aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """2,500 members over 3 pages are all shown; the simulator saw 3 page requests."""
    big = Simulator.with_members(2500, seed=11)
    server = await aiohttp_server(big.app)
    client = await aiohttp_client(create_app(make_config(str(server.make_url("")).rstrip("/"))))
    await until(lambda: client.app[HUB].snapshot is not None, timeout=20)
    body = await (await client.get("/v1/supporters")).json()
    named, anonymous = expected_titles(big)
    titles = [s["title"] for s in body["supporters"]]
    assert len(titles) == len(named) + anonymous > 1500
    assert big.member_requests == 3


@pytest.mark.parametrize(
    "fault", ["401", "403", "429", "500", "503", "garbage", "truncated", "hang", "wrong_shape"]
)
async def test_upstream_faults_keep_the_last_good_snapshot(
    sim: Simulator, start_app: Any, fault: str
) -> None:
    """Each upstream fault keeps serving the last good snapshot and shows in /healthz."""
    client = await start_app()
    before = await (await client.get("/v1/supporters")).read()
    sim.campaign.add_member("Newcomer Nia")
    sim.inject(fault, retry_after=0.01)
    refresher = client.app[REFRESHER]
    await refresher.refresh(fresh=True)
    assert await (await client.get("/v1/supporters")).read() == before
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "degraded"
    assert health["upstream"]["ok"] is False and health["upstream"]["consecutive_failures"] == 1
    assert health["upstream"]["last_error"]
    await refresher.refresh(fresh=True)
    body = await (await client.get("/v1/supporters")).json()
    assert {"title": "Newcomer Nia"} in body["supporters"] and body["meta"]["version"] == 2


async def test_failure_on_a_later_page_publishes_nothing(
    aiohttp_server: Any, aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """A refresh whose second page fails publishes no partial list."""
    big = Simulator.with_members(1500, seed=5)
    server = await aiohttp_server(big.app)
    client = await aiohttp_client(create_app(make_config(str(server.make_url("")).rstrip("/"))))
    await until(lambda: client.app[HUB].snapshot is not None, timeout=20)
    first = client.app[HUB].snapshot
    for mid in list(big.campaign.members)[:200]:
        big.campaign.remove_member(mid)
    big.inject_on_page(1, "500")
    await client.app[REFRESHER].refresh(fresh=True)
    assert client.app[HUB].snapshot is first
    big.inject_on_page(1, "repeat_cursor")
    await client.app[REFRESHER].refresh(fresh=True)
    assert client.app[HUB].snapshot is first


async def test_restart_serves_persisted_snapshot_before_upstream(
    sim: Simulator, start_app: Any, make_config: MakeConfig
) -> None:
    """After a restart the persisted snapshot is served, same version, while Patreon hangs."""
    config = make_config(sim.base)  # type: ignore[attr-defined]
    first = await start_app(config)
    sim.campaign.add_member("Second Version")
    await first.app[REFRESHER].refresh(fresh=True)
    body = await (await first.get("/v1/supporters")).read()
    await first.close()
    sim.inject("hang", times=5)
    second = await start_app(config, wait=False)
    resp = await second.get("/v1/supporters")
    assert resp.status == 200 and await resp.read() == body
    assert json.loads(body)["meta"]["version"] == 2
    assert SnapshotStore(config.state.dir).load() is not None


async def post_webhook(
    client: Client,
    body: bytes,
    event: str = "members:pledge:create",
    secret: str = WEBHOOK_SECRET,
    **headers: str,
) -> aiohttp.ClientResponse:
    sig = sign(secret, body)
    return await client.post(
        "/v1/webhooks/patreon",
        data=body,
        headers={
            "X-Patreon-Event": event,
            "X-Patreon-Signature": sig,
            "Content-Type": "application/json",
            **headers,
        },
    )


async def test_webhook_valid_triggers_refresh(sim: Simulator, start_app: Any) -> None:
    """A valid signed member webhook answers 202 and the change shows up."""
    client = await start_app()
    mid = sim.campaign.add_member("Webhook Wendy")
    resp = await post_webhook(client, sim.webhook_body(mid))
    assert resp.status == 202
    await until(lambda: client.app[HUB].snapshot.version == 2)  # type: ignore[union-attr]
    assert {"title": "Webhook Wendy"} in client.app[HUB].snapshot.supporters  # type: ignore[union-attr]


async def test_webhook_rejections_cause_no_refresh(sim: Simulator, start_app: Any) -> None:
    """Bad/missing signature → 401, too large → 413, posts event → 200; none refresh."""
    client = await start_app()
    before = sim.member_requests
    body = b'{"data": {"type": "member"}}'
    assert (await post_webhook(client, body, secret="wrong")).status == 401
    tampered = await client.post(
        "/v1/webhooks/patreon",
        data=body + b" ",
        headers={"X-Patreon-Event": "members:create", "X-Patreon-Signature": sign(WEBHOOK_SECRET, body)},
    )
    assert tampered.status == 401
    missing = await client.post(
        "/v1/webhooks/patreon", data=body, headers={"X-Patreon-Event": "members:create"}
    )
    assert missing.status == 401
    big = b"x" * (256 * 1024 + 1)
    assert (await post_webhook(client, big)).status == 413
    ignored = await post_webhook(client, b'{"data":{"type":"post"}}', event="posts:publish")
    assert ignored.status == 200 and (await ignored.json())["status"] == "ignored"
    await asyncio.sleep(0.5)
    assert sim.member_requests == before


async def test_webhook_burst_is_coalesced(sim: Simulator, start_app: Any, make_config: MakeConfig) -> None:
    """100 valid webhooks in a burst cause at most 3 fetches; the last change shows."""
    client = await start_app(make_config(sim.base, webhook_cooldown=1.0))  # type: ignore[attr-defined]
    before = sim.member_requests
    mids = [sim.campaign.add_member(f"Burst {i}") for i in range(100)]
    statuses = await asyncio.gather(*(post_webhook(client, sim.webhook_body(m)) for m in mids))
    assert {r.status for r in statuses} == {202}
    await until(lambda: {"title": "Burst 99"} in client.app[HUB].snapshot.supporters)  # type: ignore[union-attr]
    await asyncio.sleep(1.5)
    assert 1 <= sim.member_requests - before <= 3


async def test_healthz_reports_snapshot_and_upstream(start_app: Any) -> None:
    """/healthz has status, version, age and the upstream's state."""
    client = await start_app()
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok"
    assert health["snapshot"]["version"] == 1 and 0 <= health["snapshot"]["age_seconds"] < 5
    assert health["upstream"] == {
        "ok": True,
        "last_error": None,
        "consecutive_failures": 0,
        "last_success_at": health["upstream"]["last_success_at"],
    }
    assert health["upstream"]["last_success_at"].endswith("Z")


@pytest.fixture
async def live(start_app: Any) -> AsyncIterator[Client]:
    return await start_app()


async def publish_change(client: Client, sim: Simulator, name: str) -> int:
    sim.campaign.add_member(name)
    snap = await client.app[REFRESHER].refresh(fresh=True)
    assert snap is not None
    return snap.version


async def test_websocket_first_frame_then_one_per_version(sim: Simulator, live: Client) -> None:
    """A client gets the current full_state at once, then each new version in order."""
    async with live.ws_connect("/v1/supporters/websocket") as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "full_state"
        rest = await (await live.get("/v1/supporters")).json()
        assert first["data"] == rest
        versions = [first["data"]["meta"]["version"]]
        for i in range(3):
            await publish_change(live, sim, f"Frame {i}")
            msg = await ws.receive_json(timeout=5)
            versions.append(msg["data"]["meta"]["version"])
        assert versions == [1, 2, 3, 4]


async def test_websocket_same_bytes_for_everyone(sim: Simulator, live: Client) -> None:
    """Every client receives byte-identical frames (built once per snapshot)."""
    sockets = [await live.ws_connect("/v1/supporters/websocket") for _ in range(5)]
    try:
        firsts = {(await ws.receive(timeout=5)).data for ws in sockets}
        assert len(firsts) == 1
        await publish_change(live, sim, "Same Bytes")
        seconds = {(await ws.receive(timeout=5)).data for ws in sockets}
        assert len(seconds) == 1 and seconds != firsts
    finally:
        for ws in sockets:
            await ws.close()


async def test_websocket_origin_rejected(live: Client) -> None:
    """A browser Origin outside allowed_origins gets 403 before the upgrade."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await live.ws_connect("/v1/supporters/websocket", headers={"Origin": "https://evil.example"})
    assert info.value.status == 403
    ok = await live.ws_connect("/v1/supporters/websocket", headers={"Origin": "https://example.com"})
    assert (await ok.receive_json(timeout=5))["type"] == "full_state"
    await ok.close()


async def test_longpoll_behind_at_timeout(sim: Simulator, live: Client) -> None:
    """Behind → 200 at once; at the version → held, 200 on change; nothing → 204."""
    behind = await live.get("/v1/supporters/poll", params={"since": "0"})
    assert behind.status == 200 and behind.headers["Cache-Control"] == "no-store"
    version = (await behind.json())["meta"]["version"]
    timeout = await live.get("/v1/supporters/poll", params={"since": str(version), "wait": "0.2"})
    assert timeout.status == 204
    held = asyncio.create_task(live.get("/v1/supporters/poll", params={"since": str(version), "wait": "10"}))
    await asyncio.sleep(0.2)
    assert not held.done()
    await publish_change(live, sim, "Long Poller")
    resp = await asyncio.wait_for(held, 5)
    assert resp.status == 200 and (await resp.json())["meta"]["version"] == version + 1
    bad = await live.get("/v1/supporters/poll", params={"since": "abc"})
    assert bad.status == 400


async def test_shutdown_closes_websockets_1001_and_answers_longpolls(
    sim: Simulator, aiohttp_server: Any, make_config: MakeConfig
) -> None:
    """On shutdown every WebSocket gets 1001 and every long-poll a 503, quickly."""
    app = create_app(make_config(sim.base))  # type: ignore[attr-defined]
    server = await aiohttp_server(app)
    await until(lambda: app[HUB].snapshot is not None)
    version = app[HUB].snapshot.version  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(server.make_url("/v1/supporters/websocket")) for _ in range(20)]
        for ws in sockets:
            await ws.receive(timeout=5)
        polls = [
            asyncio.create_task(session.get(server.make_url(f"/v1/supporters/poll?since={version}&wait=30")))
            for _ in range(10)
        ]
        await until(lambda: app[HUB].waiters == 10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        closer = asyncio.create_task(server.close())
        codes = []
        for ws in sockets:
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            codes.append(msg.data)
        answers = [await asyncio.wait_for(p, 5) for p in polls]
        await closer
        assert set(codes) == {1001}
        assert {r.status for r in answers} == {503}
        assert all(r.headers.get("Retry-After") for r in answers)
        assert loop.time() - started < 5


async def test_stalled_websocket_is_closed_others_keep_receiving(
    sim: Simulator, start_app: Any, make_config: MakeConfig
) -> None:
    """A client that never reads is cut off; a reading client still gets every version."""
    config = with_server(make_config(sim.base), slow_client_timeout=0.5)  # type: ignore[attr-defined]
    client = await start_app(config)
    hub = client.app[HUB]
    # Big names make each frame large so an unread socket fills its buffers fast.
    for i in range(60):
        sim.campaign.add_member(f"{i:03d} " + "L" * 2000)
    await client.app[REFRESHER].refresh(fresh=True)
    host, port = client.server.host, client.server.port
    _reader, writer = await asyncio.open_connection(host, port, limit=1024)
    writer.write(
        b"GET /v1/supporters/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    # The stalled client never reads again; make its kernel buffers small and full.
    sock = writer.get_extra_info("socket")
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    good = await client.ws_connect("/v1/supporters/websocket", max_msg_size=0)
    await good.receive(timeout=5)
    await until(lambda: hub.websocket_count == 2)
    seen = []
    for i in range(40):
        await publish_change(client, sim, f"Z{i:02d} " + "M" * 2000)
        seen.append(json.loads((await good.receive(timeout=5)).data)["data"]["meta"]["version"])
        if hub.websocket_count == 1:
            break
        await asyncio.sleep(0.05)
    await until(lambda: hub.websocket_count == 1, timeout=10)
    assert client.app[HUB].metrics.slow_disconnects._value.get() == 1
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    await publish_change(client, sim, "After the stall")
    last = json.loads((await good.receive(timeout=5)).data)
    assert {"title": "After the stall"} in last["data"]["supporters"]
    writer.close()
    await good.close()


async def test_connection_caps_answer_503(sim: Simulator, start_app: Any, make_config: MakeConfig) -> None:
    """Above max_clients_per_address, live requests get 503 + Retry-After, REST still works."""
    config = with_server(make_config(sim.base), max_clients_per_address=3)  # type: ignore[attr-defined]
    client = await start_app(config)
    sockets = [await client.ws_connect("/v1/supporters/websocket") for _ in range(3)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/v1/supporters/websocket")
    assert info.value.status == 503
    version = client.app[HUB].snapshot.version  # type: ignore[union-attr]
    poll = await client.get("/v1/supporters/poll", params={"since": str(version), "wait": "1"})
    assert poll.status == 503 and poll.headers["Retry-After"]
    assert (await client.get("/v1/supporters")).status == 200
    await sockets[0].close()
    await until(lambda: client.app[HUB].websocket_count == 2)
    again = await client.ws_connect("/v1/supporters/websocket")
    await again.close()
    for ws in sockets[1:]:
        await ws.close()


async def test_every_member_shape_is_handled(
    aiohttp_server: Any, aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """Every patron_status, hide_pledges true/false/missing, a missing user, a null user."""
    sim = Simulator.with_members(0)
    c = sim.campaign
    c.add_member("Visible Vera", start="2020-01-01T00:00:00+00:00")
    c.add_member("Hidden Hank", hidden=True, start="2019-01-01T00:00:00+00:00")
    c.add_member("Flagless Fay", hidden=None, start="2018-01-01T00:00:00+00:00")
    c.add_member("Omitted Otto", omit_user_from_included=True, start="2017-01-01T00:00:00+00:00")
    c.add_member("Userless Uma", with_user=False, start="2016-01-01T00:00:00+00:00")
    c.add_member("Declined Dan", status="declined_patron")
    c.add_member("Former Flo", status="former_patron")
    c.add_member("Never Ned", status=None)
    c.add_member("Later Lou", start="2021-06-01T00:00:00+00:00")
    server = await aiohttp_server(sim.app)
    client = await aiohttp_client(create_app(make_config(str(server.make_url("")).rstrip("/"))))
    await until(lambda: client.app[HUB].snapshot is not None)
    raw = await (await client.get("/v1/supporters")).read()
    body = json.loads(raw)
    assert (
        body["supporters"]
        == [{"title": "Visible Vera"}, {"title": "Later Lou"}] + [{"title": "Anonymous"}] * 4
    )
    for name in ("Hank", "Fay", "Otto", "Uma", "Dan", "Flo", "Ned"):
        assert name.encode() not in raw


async def test_websockets_library_client(sim: Simulator, live: Client) -> None:
    """A client built on the `websockets` library gets the same frames."""
    import websockets

    url = f"ws://{live.server.host}:{live.server.port}/v1/supporters/websocket"
    async with websockets.connect(url, compression=None) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        version = first["data"]["meta"]["version"]
        await publish_change(live, sim, "Library Lena")
        second = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert second["type"] == "full_state"
        assert second["data"]["meta"]["version"] == version + 1
        assert {"title": "Library Lena"} in second["data"]["supporters"]


async def test_permessage_deflate_declined_by_default_and_optional(
    sim: Simulator, start_app: Any, make_config: MakeConfig
) -> None:
    """A browser-like deflate offer is declined by default; with the option on it works."""
    import websockets

    for enabled in (False, True):
        config = with_server(make_config(sim.base), websocket_compress=enabled)  # type: ignore[attr-defined]
        client = await start_app(config)
        url = f"ws://{client.server.host}:{client.server.port}/v1/supporters/websocket"
        async with websockets.connect(url, compression="deflate") as ws:
            assert bool(ws.response.headers.get("Sec-WebSocket-Extensions")) is enabled
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            await publish_change(client, sim, f"Deflate {enabled}")
            second = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert second["data"]["meta"]["version"] == first["data"]["meta"]["version"] + 1
        await client.close()


async def test_heartbeat_pings_and_incoming_size_limit(
    sim: Simulator, start_app: Any, make_config: MakeConfig
) -> None:
    """The server pings on its heartbeat; a client message over a few KiB closes the socket (1009)."""
    config = with_server(make_config(sim.base), heartbeat=1.0)  # type: ignore[attr-defined]
    client = await start_app(config)
    async with client.ws_connect("/v1/supporters/websocket", autoping=False) as ws:
        await ws.receive(timeout=5)  # the full_state
        ping = await ws.receive(timeout=5)
        assert ping.type == aiohttp.WSMsgType.PING
        await ws.pong(ping.data)
        await ws.send_str("x" * 10_000)
        msg = await ws.receive(timeout=5)
        while msg.type == aiohttp.WSMsgType.PING:
            msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_total_client_cap(sim: Simulator, start_app: Any, make_config: MakeConfig) -> None:
    """Above max_clients in total, a new live client gets 503 with Retry-After."""
    config = with_server(make_config(sim.base), max_clients=2)  # type: ignore[attr-defined]
    client = await start_app(config)
    a = await client.ws_connect("/v1/supporters/websocket")
    version = client.app[HUB].snapshot.version  # type: ignore[union-attr]
    held = asyncio.create_task(client.get("/v1/supporters/poll", params={"since": str(version), "wait": "5"}))
    await until(lambda: client.app[HUB].waiters == 1)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/v1/supporters/websocket")
    assert info.value.status == 503
    await publish_change(client, sim, "Cap Release")
    assert (await held).status == 200
    await a.close()


async def test_managed_path_serves_clients_without_deflate_too(
    sim: Simulator, start_app: Any, make_config: MakeConfig
) -> None:
    """With websocket_compress on, a client that offers no deflate still gets every version."""
    import websockets

    config = with_server(make_config(sim.base), websocket_compress=True)  # type: ignore[attr-defined]
    client = await start_app(config)
    url = f"ws://{client.server.host}:{client.server.port}/v1/supporters/websocket"
    async with websockets.connect(url, compression=None) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        for i in range(3):
            await publish_change(client, sim, f"Plain {i}")
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert msg["data"]["meta"]["version"] == first["data"]["meta"]["version"] + i + 1
