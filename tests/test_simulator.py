"""simulator.py: the fake Patreon behind `sponsord demo`, driven by the real client."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer
from yarl import URL

from sponsord.config import Secret
from sponsord.errors import (
    AuthRejected,
    MalformedResponse,
    NotFound,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
)
from sponsord.patreon import MEMBER_QUERY, PatreonClient, StaticToken, parse_members
from sponsord.simulator import MAX_ACTIVE, MIN_ACTIVE, Campaign, Simulator
from sponsord.webhooks import MEMBER_EVENTS, signature_valid

from .conftest import FIXTURES, fixture_json

MEMBERS = "/api/oauth2/v2/campaigns/725055/members"
AUTH = {"Authorization": "Bearer demo-access-token"}
WEBHOOK_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.json") if p.name.startswith(("zulip_", "maael-")))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def client(
    session: aiohttp.ClientSession, server: TestServer, *, timeout: float = 5.0, campaign: str = "725055"
) -> PatreonClient:
    return PatreonClient(
        session,
        str(server.make_url("/")),
        campaign,
        StaticToken("demo-access-token"),
        timeout=timeout,
        tiers=True,  # the simulator's tiers are part of what these tests check
    )


async def get_json(
    session: aiohttp.ClientSession, server: TestServer, query: dict[str, str], path: str = MEMBERS
) -> tuple[int, Any]:
    async with session.get(server.make_url(path).with_query(query), headers=AUTH) as resp:
        return resp.status, await resp.json()


async def test_fetches_2500_members_over_three_pages(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """The real client reads every one of 2,500 members, in the campaign's order, in 3 requests."""
    sim = Simulator.with_members(2500, seed=1)
    server = await aiohttp_server(sim.app)
    members = await client(session, server).fetch_members()
    assert [m.id for m in members] == list(sim.campaign.members)
    assert sim.member_requests == 3
    assert [q.get("page[cursor]") is None for _, q, _ in sim.requests_log] == [True, False, False]


async def test_parsed_members_reflect_campaign_state(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """Names, statuses, privacy (hidden, absent, unknown) and tiers arrive as the campaign holds them."""
    campaign = Campaign()
    shown = campaign.add_member("Alice Baker", tier_ids=["9512103"])
    hidden = campaign.add_member("Bo Hidden", hidden=True)
    absent = campaign.add_member("No Flag", hidden=None)
    no_user = campaign.add_member("Ghost", with_user=False)
    omitted = campaign.add_member("Omitted", omit_user_from_included=True)
    former = campaign.add_member("Gone", status="former_patron")
    server = await aiohttp_server(Simulator(campaign).app)
    by_id = {m.id: m for m in await client(session, server).fetch_members()}
    assert by_id[shown].user_full_name == "Alice Baker"
    assert by_id[shown].hide_pledges is False
    assert by_id[shown].tiers == ("Loaf",)
    assert by_id[hidden].hide_pledges is True
    assert by_id[absent].hide_pledges is None
    assert (by_id[no_user].user_id, by_id[no_user].hide_pledges) == (None, None)
    assert by_id[omitted].user_id is not None
    assert by_id[omitted].hide_pledges is None
    assert by_id[former].patron_status == "former_patron"
    assert by_id[former].tiers == ()


async def test_sparse_fieldsets_are_honoured(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """Only the attributes asked for come back: no fields[user]=hide_pledges, no hide_pledges."""
    sim = Simulator(Campaign())
    sim.campaign.add_member("Alice", hidden=True)
    server = await aiohttp_server(sim.app)
    query = dict(MEMBER_QUERY, **{"fields[user]": "full_name"})
    _, doc = await get_json(session, server, query)
    users = [r for r in doc["included"] if r["type"] == "user"]
    assert users[0]["attributes"] == {"full_name": "Alice"}
    assert set(doc["data"][0]["attributes"]) == {"full_name", "patron_status", "pledge_relationship_start"}
    assert parse_members(doc).members[0].hide_pledges is None
    _, doc = await get_json(session, server, dict(MEMBER_QUERY))
    assert parse_members(doc).members[0].hide_pledges is True


async def test_no_fieldset_and_no_include(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """Without fields[...] a resource has no attributes, and without include= no relationships (API v2)."""
    sim = Simulator.with_members(3)
    server = await aiohttp_server(sim.app)
    _, doc = await get_json(session, server, {})
    assert [m["attributes"] for m in doc["data"]] == [{}, {}, {}]
    assert all("relationships" not in m for m in doc["data"])
    assert "included" not in doc
    _, doc = await get_json(session, server, {"include": "user", "fields[member]": "full_name"})
    assert all(r["attributes"] == {} for r in doc["included"])


async def test_page_shapes_match_real_payloads(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """Relationships, included and pagination have the shapes of the docs sample and captured bodies."""
    campaign = Campaign()
    with_user = campaign.add_member("Kopi", tier_ids=["9512023", "9512103"])
    without = campaign.add_member("Nobody", with_user=False)
    campaign.add_member("Third", tier_ids=["9512023"])
    server = await aiohttp_server(Simulator(campaign).app)
    query = {"include": "user,currently_entitled_tiers,campaign", "page[count]": "2", "fields[tier]": "title"}
    status, doc = await get_json(session, server, query)
    assert status == 200
    first, second = doc["data"]
    assert first["id"] == with_user
    assert first["type"] == "member"
    rels = first["relationships"]
    user = campaign.members[with_user].user
    assert user is not None
    assert rels["user"]["data"] == {"id": user.id, "type": "user"}
    assert rels["user"]["links"]["related"] == str(server.make_url(f"/api/oauth2/v2/user/{user.id}"))
    assert rels["currently_entitled_tiers"] == {
        "data": [{"id": "9512023", "type": "tier"}, {"id": "9512103", "type": "tier"}]
    }
    assert rels["campaign"]["data"] == {"id": "725055", "type": "campaign"}
    assert second["id"] == without
    assert second["relationships"]["user"] == {"data": None}
    kinds = [(r["type"], r["id"]) for r in doc["included"]]
    assert len(kinds) == len(set(kinds))
    assert {"title": "Crumb"} in [r["attributes"] for r in doc["included"] if r["type"] == "tier"]
    cursor = doc["meta"]["pagination"]["cursors"]["next"]
    assert doc["meta"]["pagination"]["total"] == 3
    assert URL(doc["links"]["next"]).query["page[cursor]"] == cursor
    async with session.get(doc["links"]["next"], headers=AUTH) as resp:
        last = await resp.json()
    assert [m["attributes"] for m in last["data"]] == [{}]
    assert last["meta"]["pagination"]["cursors"]["next"] is None
    assert "next" not in last.get("links", {})


async def test_page_count_default_clamp_and_bad_values(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """page[count] defaults to 20 and is clamped to 1..1000; a bad count or cursor is a 400."""
    server = await aiohttp_server(Simulator.with_members(1200).app)
    assert len((await get_json(session, server, {}))[1]["data"]) == 20
    assert len((await get_json(session, server, {"page[count]": "5000"}))[1]["data"]) == 1000
    assert len((await get_json(session, server, {"page[count]": "0"}))[1]["data"]) == 1
    assert (await get_json(session, server, {"page[count]": "many"}))[0] == 400
    status, body = await get_json(session, server, {"page[cursor]": "not a cursor!"})
    assert status == 400
    assert body["errors"][0]["status"] == "400"
    assert (await get_json(session, server, {"include": "pledges"}))[0] == 400


async def test_unknown_campaign_and_bad_token(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """Another campaign id is NotFound; a wrong token gets the real 401 body and AuthRejected."""
    sim = Simulator.with_members(3)
    server = await aiohttp_server(sim.app)
    with pytest.raises(NotFound):
        await client(session, server, campaign="999").fetch_members()
    async with session.get(server.make_url(MEMBERS), headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 401
        assert await resp.json() == fixture_json("mxpv-patreon-go_error_test_401_error_body.json")
    sim.access_tokens = {"another"}
    with pytest.raises(AuthRejected):
        await client(session, server).fetch_members()
    assert sim.member_requests == 3


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("401", AuthRejected),
        ("403", AuthRejected),
        ("404", NotFound),
        ("429", RateLimited),
        ("500", UpstreamUnavailable),
        ("503", UpstreamUnavailable),
        ("garbage", MalformedResponse),
        ("wrong_shape", MalformedResponse),
        ("repeat_cursor", MalformedResponse),
        ("truncated", (MalformedResponse, UpstreamUnavailable)),
    ],
)
async def test_fault_maps_to_typed_error(
    aiohttp_server: AiohttpServer,
    session: aiohttp.ClientSession,
    fault: str,
    error: type[UpstreamError] | tuple[type[UpstreamError], ...],
) -> None:
    """Each injected fault reaches the client as its typed error, once; the next fetch succeeds."""
    sim = Simulator.with_members(30)
    server = await aiohttp_server(sim.app)
    sim.inject(fault)
    with pytest.raises(error):
        await client(session, server).fetch_members()
    assert len(await client(session, server).fetch_members()) == 30


async def test_429_retry_after_comes_from_the_body(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """A 429 carries the docs' body (retry_after_seconds 9) unless overridden; the client reads it."""
    sim = Simulator.with_members(3)
    server = await aiohttp_server(sim.app)
    sim.inject("429")
    async with session.get(server.make_url(MEMBERS), headers=AUTH) as resp:
        assert resp.status == 429
        assert await resp.json() == fixture_json("docs_v2_rate_limited_429_error_body.json")
    sim.inject("429", retry_after=2)
    with pytest.raises(RateLimited) as caught:
        await client(session, server).fetch_members()
    assert caught.value.retry_after == 2.0


async def test_faults_are_consumed_in_order(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """inject() queues: faults answer successive requests first in, first out; times= repeats one."""
    sim = Simulator.with_members(3)
    server = await aiohttp_server(sim.app)
    sim.inject("500", times=2)
    sim.inject("404")
    api = client(session, server)
    for expected in (UpstreamUnavailable, UpstreamUnavailable, NotFound):
        with pytest.raises(expected):
            await api.fetch_members()
    assert len(await api.fetch_members()) == 3
    with pytest.raises(ValueError, match="unknown fault"):
        sim.inject("418")


async def test_failure_on_page_two_publishes_nothing(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """A fault on the second page fails the whole fetch (no partial list); the retry gets everything."""
    sim = Simulator.with_members(2500)
    server = await aiohttp_server(sim.app)
    sim.inject_on_page(1, "500")
    api = client(session, server)
    with pytest.raises(UpstreamUnavailable):
        await api.fetch_members()
    assert sim.member_requests == 2
    assert len(await api.fetch_members()) == 2500


async def test_hang_times_out_and_is_released(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """A hung answer is UpstreamUnavailable after the client's timeout, and its handler then ends."""
    sim = Simulator.with_members(3)
    server = await aiohttp_server(sim.app)
    sim.inject("hang")
    with pytest.raises(UpstreamUnavailable):
        await client(session, server, timeout=0.2).fetch_members()
    async with asyncio.timeout(5):
        while sim.hanging:
            await asyncio.sleep(0.01)


async def test_hang_is_released_at_shutdown(session: aiohttp.ClientSession) -> None:
    """Stopping the simulator answers a hung request at once instead of waiting for it."""
    sim = Simulator.with_members(3)
    base = await sim.start()
    sim.inject("hang")
    api = PatreonClient(session, base, "725055", StaticToken("demo-access-token"), timeout=60)
    fetch = asyncio.create_task(api.fetch_members())
    async with asyncio.timeout(5):
        while not sim.hanging:
            await asyncio.sleep(0.01)
        await sim.stop()
        with pytest.raises(UpstreamError):
            await fetch
    assert sim.hanging == 0


async def test_delay_slows_every_answer(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """sim.delay holds each members answer, so a short client timeout fails."""
    sim = Simulator.with_members(3)
    sim.delay = 1.0
    server = await aiohttp_server(sim.app)
    with pytest.raises(UpstreamUnavailable):
        await client(session, server, timeout=0.1).fetch_members()


async def test_start_returns_a_working_base_url(session: aiohttp.ClientSession) -> None:
    """start() serves on a free loopback port and returns its base URL; stop() is idempotent."""
    sim = Simulator.with_members(5)
    base = await sim.start()
    try:
        assert base.startswith("http://127.0.0.1:")
        api = PatreonClient(session, base, "725055", StaticToken("demo-access-token"))
        assert len(await api.fetch_members()) == 5
    finally:
        await sim.stop()
        await sim.stop()


async def refresh(
    session: aiohttp.ClientSession, server: TestServer, token: str, **form: str
) -> tuple[int, Any]:
    data = {
        "grant_type": "refresh_token",
        "refresh_token": token,
        "client_id": "demo-client",
        "client_secret": "demo-secret",
        **form,
    }
    async with session.post(server.make_url("/api/oauth2/token"), data=data) as resp:
        return resp.status, await resp.json()


async def test_refresh_tokens_are_single_use(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """A refresh returns a new pair; the old refresh token dies at once; only the new access token works."""
    sim = Simulator.with_members(3)
    server = await aiohttp_server(sim.app)
    status, pair = await refresh(session, server, "demo-refresh-token")
    assert status == 200
    assert set(pair) >= {"access_token", "refresh_token", "expires_in", "scope", "token_type"}
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] == 2678400
    assert pair["refresh_token"] != "demo-refresh-token"
    assert sim.refresh_token == pair["refresh_token"]
    assert await refresh(session, server, "demo-refresh-token") == (400, {"error": "invalid_grant"})
    with pytest.raises(AuthRejected):
        await client(session, server).fetch_members()
    api = PatreonClient(session, str(server.make_url("/")), "725055", StaticToken(pair["access_token"]))
    assert len(await api.fetch_members()) == 3
    status, again = await refresh(session, server, pair["refresh_token"])
    assert status == 200
    assert again["access_token"] != pair["access_token"]
    assert sim.token_requests == 3


async def test_refresh_keeps_old_access_tokens_when_asked(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """With revoke_old_access_tokens off, the old access token still works after a rotation."""
    sim = Simulator.with_members(3)
    sim.revoke_old_access_tokens = False
    sim.expires_in = 60
    server = await aiohttp_server(sim.app)
    status, pair = await refresh(session, server, "demo-refresh-token")
    assert (status, pair["expires_in"]) == (200, 60)
    assert sim.access_tokens == {"demo-access-token", pair["access_token"]}
    assert len(await client(session, server).fetch_members()) == 3


async def test_refresh_rejects_bad_client_and_grant(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """Wrong client credentials are invalid_client; another grant type is refused; nothing rotates."""
    sim = Simulator()
    server = await aiohttp_server(sim.app)
    assert await refresh(session, server, "demo-refresh-token", client_secret="x") == (
        400,
        {"error": "invalid_client"},
    )
    status, body = await refresh(session, server, "demo-refresh-token", grant_type="authorization_code")
    assert (status, body) == (400, {"error": "unsupported_grant_type"})
    assert sim.refresh_token == "demo-refresh-token"
    assert sim.access_tokens == {"demo-access-token"}


class Receiver:
    """A tiny webhook endpoint that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_post("/hook", self.hook)

    async def hook(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), dict(request.headers)))
        return web.Response(status=202)


async def test_send_webhook_is_signed_and_parses(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """send_webhook POSTs a member body whose signature verifies and which parse_members reads."""
    sim = Simulator.with_members(10, seed=3)
    receiver = Receiver()
    server = await aiohttp_server(receiver.app)
    member_id = next(iter(sim.campaign.members))
    status = await sim.send_webhook(
        session, str(server.make_url("/hook")), "members:pledge:create", member_id
    )
    assert status == 202
    body, headers = receiver.received[0]
    assert headers["X-Patreon-Event"] == "members:pledge:create"
    assert headers["Content-Type"] == "application/json"
    assert signature_valid([Secret("demo-webhook-secret")], body, headers["X-Patreon-Signature"])
    assert not signature_valid([Secret("other")], body, headers["X-Patreon-Signature"])
    doc = json.loads(body)
    member = parse_members({"data": [doc["data"]], "included": doc["included"]}).members[0]
    assert member.id == member_id
    assert member.full_name == sim.campaign.members[member_id].full_name
    await sim.send_webhook(session, str(server.make_url("/hook")), "members:update", member_id, secret="s2")
    body, headers = receiver.received[1]
    assert signature_valid([Secret("s2")], body, headers["X-Patreon-Signature"])


async def test_webhook_body_has_the_captured_shape() -> None:
    """The simulated webhook has the keys of zulip's captured members:pledge:create body."""
    sim = Simulator()
    member_id = sim.campaign.add_member("Kopi", hidden=True)
    ours = json.loads(sim.webhook_body(member_id))
    real = fixture_json("zulip_fixture_members_pledge_create.json")
    assert set(ours) == set(real)
    assert set(ours["data"]) == set(real["data"])
    assert set(ours["data"]["relationships"]) == set(real["data"]["relationships"])
    assert set(ours["data"]["attributes"]) <= set(real["data"]["attributes"])
    assert {r["type"] for r in ours["included"]} >= {r["type"] for r in real["included"]}
    real_user = next(r for r in real["included"] if r["type"] == "user")
    our_user = next(r for r in ours["included"] if r["type"] == "user")
    assert set(our_user["attributes"]) <= set(real_user["attributes"])


@pytest.mark.parametrize("name", WEBHOOK_FIXTURES)
def test_fixture_webhook_members_parse(name: str) -> None:
    """Every captured v2 webhook body's member parses with the client's parser."""
    body = fixture_json(name)
    page = parse_members({"data": [body["data"]], "included": body.get("included", [])})
    (member,) = page.members
    assert member.id == body["data"]["id"]
    assert member.patron_status == body["data"]["attributes"]["patron_status"]
    users = [r for r in body.get("included", []) if r["type"] == "user"]
    assert member.hide_pledges == (users[0]["attributes"]["hide_pledges"] if users else None)


async def test_run_changes_announces_each_change(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """run_changes keeps changing the campaign and sends a signed member webhook for each change."""
    sim = Simulator.with_members(10, seed=5)
    receiver = Receiver()
    server = await aiohttp_server(receiver.app)
    task = asyncio.create_task(
        sim.run_changes(session, str(server.make_url("/hook")), 0.005, random.Random(1))
    )
    async with asyncio.timeout(5):
        while len(receiver.received) < 5:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for body, headers in receiver.received:
        assert headers["X-Patreon-Event"] in MEMBER_EVENTS
        assert signature_valid([Secret(sim.webhook_secret)], body, headers["X-Patreon-Signature"])


async def test_run_changes_survives_an_unreachable_webhook(session: aiohttp.ClientSession) -> None:
    """A webhook URL nobody listens on is logged and ignored; the campaign keeps changing."""
    sim = Simulator.with_members(10, seed=5)
    before = {m.id: (m.patron_status, m.full_name) for m in sim.campaign.members.values()}
    task = asyncio.create_task(sim.run_changes(session, "http://127.0.0.1:9/hook", 0.002, random.Random(2)))
    await asyncio.sleep(0.1)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = {m.id: (m.patron_status, m.full_name) for m in sim.campaign.members.values()}
    assert after != before


def test_seed_is_realistic_and_deterministic() -> None:
    """seed() makes mostly active members, some hidden, and is repeatable for one rng seed."""
    a, b = Campaign(), Campaign()
    a.seed(1000, random.Random(7))
    b.seed(1000, random.Random(7))
    assert [(m.id, m.full_name, m.patron_status) for m in a.members.values()] == [
        (m.id, m.full_name, m.patron_status) for m in b.members.values()
    ]
    members = list(a.members.values())
    active = sum(m.patron_status == "active_patron" for m in members)
    hidden = sum(bool(m.user and m.user.hide_pledges) for m in members)
    assert 700 < active < 900
    assert 100 < hidden < 200
    assert any(m.user is None for m in members)
    assert any(m.omit_user_from_included for m in members)
    assert len({m.user.id for m in members if m.user}) == sum(1 for m in members if m.user)


def test_random_walk_stays_in_bounds() -> None:
    """random_change only emits member events and keeps the active count between the bounds."""
    campaign = Campaign()
    campaign.seed(20, random.Random(1))
    rng = random.Random(2)
    kinds = set()
    for _ in range(3000):
        event, member_id = campaign.random_change(rng)
        kinds.add(event)
        assert event in MEMBER_EVENTS
        assert member_id in campaign.members
        active = sum(m.patron_status == "active_patron" for m in campaign.members.values())
        assert MIN_ACTIVE - 1 <= active <= MAX_ACTIVE + 1
    assert kinds == {"members:pledge:create", "members:pledge:delete", "members:update"}


def test_campaign_edits() -> None:
    """set_status, set_hidden, rename and remove_member change what the API will serve."""
    campaign = Campaign()
    mid = campaign.add_member("Ada")
    campaign.set_status(mid, "declined_patron")
    campaign.set_hidden(mid, True)
    campaign.rename(mid, "Ada Lovelace")
    member = campaign.members[mid]
    assert (member.patron_status, member.tier_ids, member.full_name) == (
        "declined_patron",
        [],
        "Ada Lovelace",
    )
    assert member.user is not None
    assert (member.user.hide_pledges, member.user.full_name) == (True, "Ada Lovelace")
    with pytest.raises(ValueError, match="patron_status"):
        campaign.set_status(mid, "gold_patron")
    campaign.remove_member(mid)
    assert mid not in campaign.members
    ghost = campaign.add_member("Ghost", with_user=False)
    with pytest.raises(ValueError, match="no user"):
        campaign.set_hidden(ghost, True)
