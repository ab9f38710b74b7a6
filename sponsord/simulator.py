"""A fake Patreon: a real aiohttp app speaking the slice of API v2 sponsord uses.

``sponsord demo`` runs it in-process on a loopback port, with a
:class:`Campaign` that changes every few seconds and announces each change with
a correctly signed webhook. The tests start it with ``aiohttp_server(sim.app)``
and use its fault injection to prove that every failure becomes the right
:mod:`sponsord.errors` error.

Shapes follow the real payloads in ``tests/fixtures/patreon/``: attributes only
for the fields asked for (API v2 sends none by default), relationships only for
what was included, ``included`` deduplicated, cursor pagination announced in
``meta.pagination`` and ``links.next``, and single-use OAuth refresh tokens.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import dataclasses
import functools
import itertools
import json
import random
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from .webhooks import sign

log = structlog.get_logger(__name__)

PATREON_BASE = "https://www.patreon.com"
MEMBERS_PATH = "/api/oauth2/v2/campaigns/{campaign_id}/members"
TOKEN_PATH = "/api/oauth2/token"
STATUSES = ("active_patron", "declined_patron", "former_patron", None)
FAULTS = frozenset(
    {"401", "403", "404", "429", "500", "503", "garbage", "truncated", "hang", "wrong_shape", "repeat_cursor"}
)
INCLUDES = frozenset({"user", "currently_entitled_tiers", "campaign", "address", "pledge_history"})
#: Patreon's page size when ``page[count]`` is absent, and the most it allows.
DEFAULT_PAGE_COUNT, MAX_PAGE_COUNT = 20, 1000
#: The random walk of ``sponsord demo`` stays inside this many active patrons,
#: so the wall neither empties nor outgrows the screen.
MIN_ACTIVE, MAX_ACTIVE = 5, 60
#: The answers tests compare with: verbatim copies of the fixtures
#: (mxpv-patreon-go 401 body, docs 429 body), inlined because the package
#: must not read test files.
UNAUTHORIZED_BODY: dict[str, Any] = json.loads(
    '{"errors": [{"code": 1, "code_name": "Unauthorized", "detail": "The server could not verify that you'
    ' are authorized to access the URL requested.", "id": "bb16af2c-c11e-4796-af4d-19fa60007709",'
    ' "status": "401", "title": "Unauthorized"}]}'
)
RATE_LIMITED_BODY: dict[str, Any] = json.loads(
    '{"errors": [{"code": null, "code_name": "RequestThrottled", "detail": "You have made too many'
    ' attempts. Please try again later.", "id": "eb96e70d-909f-40cc-a3dc-e922cc90ea0a",'
    ' "retry_after_seconds": 9, "status": "429", "title": "You have made too many attempts. Please try'
    ' again later."}]}'
)

_FIRST = """Ada Alice Amara Bea Ben Carlos Chen Dana Dmitri Elif Emma Farah Felix Grace Hiro Ines Ivan
    Jade Jonas Kai Kopi Lena Luca Maya Mateo Nia Noah Olga Omar Priya Quinn Rosa Sam Sofia Tariq Uma Vera
    Wen Yara Zoe"""
_LAST = """Abara Baker Costa Dubois Eriksen Fischer Garcia Haddad Ito Jensen Kowalski Larsen Moreau Nakamura
    Okafor Petrov Quispe Rossi Silva Tanaka Ueda Varga Weber Xu Yilmaz Zhang Novak Lindqvist Mbeki O'Brien"""
FIRST_NAMES, LAST_NAMES = tuple(_FIRST.split()), tuple(_LAST.split())


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _random_name(rng: random.Random) -> str:
    # Some real patrons go by one name ("Kopi" in the zulip captures).
    first = rng.choice(FIRST_NAMES)
    return first if rng.random() < 0.1 else f"{first} {rng.choice(LAST_NAMES)}"


@dataclasses.dataclass(slots=True)
class Tier:
    """A reward tier: Patreon id, title and monthly price in cents."""

    id: str
    title: str
    amount_cents: int

    def attributes(self) -> dict[str, Any]:
        return {
            "amount_cents": self.amount_cents,
            "description": f"The {self.title} tier",
            "published": True,
            "requires_shipping": False,
            "title": self.title,
            "url": f"/join/bunnyloaves/checkout?rid={self.id}",
            "user_limit": None,
        }


@dataclasses.dataclass(slots=True)
class User:
    """A Patreon user; ``hide_pledges`` None means the attribute is absent."""

    id: str
    full_name: str
    hide_pledges: bool | None = False

    def attributes(self) -> dict[str, Any]:
        first, _, last = self.full_name.partition(" ")
        attrs: dict[str, Any] = {
            "about": None,
            "created": "2020-01-01T00:00:00.000+00:00",
            "first_name": first,
            "full_name": self.full_name,
            "image_url": f"{PATREON_BASE}/u/{self.id}.png",
            "is_creator": False,
            "last_name": last,
            "like_count": 0,
            "url": f"{PATREON_BASE}/user?u={self.id}",
            "vanity": None,
        }
        if self.hide_pledges is not None:
            attrs["hide_pledges"] = self.hide_pledges
        return attrs


@dataclasses.dataclass(slots=True)
class SimMember:
    """One member of the simulated campaign (see :meth:`Campaign.add_member`)."""

    id: str
    full_name: str
    patron_status: str | None
    pledge_relationship_start: str | None
    tier_ids: list[str]
    user: User | None
    #: the relationship names the user but ``included`` leaves it out (seen in the wild)
    omit_user_from_included: bool = False

    def attributes(self, tiers: dict[str, Tier]) -> dict[str, Any]:
        active = self.patron_status == "active_patron"
        cents = sum(tiers[t].amount_cents for t in self.tier_ids if t in tiers) if active else 0
        charge = {"active_patron": "Paid", "declined_patron": "Declined", "former_patron": "Deleted"}
        return {
            "campaign_lifetime_support_cents": cents,
            "currently_entitled_amount_cents": cents,
            "email": f"{self.id[:8]}@example.com",
            "full_name": self.full_name,
            "is_follower": False,
            "is_free_trial": False,
            "last_charge_status": charge.get(self.patron_status or ""),
            "lifetime_support_cents": cents,
            "note": "",
            "patron_status": self.patron_status,
            "pledge_cadence": 1 if self.patron_status else None,
            "pledge_relationship_start": self.pledge_relationship_start,
            "will_pay_amount_cents": cents,
        }


class Campaign:
    """The simulated state: one campaign, its tiers and its members in a stable order."""

    def __init__(
        self,
        campaign_id: str = "725055",
        *,
        tiers: Sequence[Tier] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.id = campaign_id
        default = (
            Tier("9512023", "Crumb", 100),
            Tier("9512103", "Loaf", 500),
            Tier("9512204", "Bakery", 2000),
        )
        self.tiers = {t.id: t for t in (tiers if tiers is not None else default)}
        #: insertion order is the listing order, so pages stay stable between requests
        self.members: dict[str, SimMember] = {}
        self._rng = rng or random.Random()
        self._user_ids: set[str] = set()

    def attributes(self) -> dict[str, Any]:
        active = sum(m.patron_status == "active_patron" for m in self.members.values())
        return {
            "created_at": "2019-05-01T10:00:00.000+00:00",
            "creation_name": "bunny loaves",
            "is_monthly": True,
            "is_nsfw": False,
            "patron_count": active,
            "pay_per_name": "month",
            "pledge_url": f"/checkout/{self.id}",
            "published_at": "2019-05-01T10:30:00.000+00:00",
            "url": f"{PATREON_BASE}/bunnyloaves",
            "vanity": "bunnyloaves",
        }

    def _new_user_id(self) -> str:
        while (uid := str(self._rng.randrange(10_000_000, 200_000_000))) in self._user_ids:
            pass
        self._user_ids.add(uid)
        return uid

    def add_member(
        self,
        full_name: str = "Test Patron",
        *,
        status: str | None = "active_patron",
        hidden: bool | None = False,
        with_user: bool = True,
        user_name: str | None = None,
        tier_ids: Sequence[str] | None = None,
        start: str | None = None,
        member_id: str | None = None,
        user_id: str | None = None,
        omit_user_from_included: bool = False,
    ) -> str:
        """Add a member (by default an active, visible patron of the first tier); return its id."""
        if status not in STATUSES:
            raise ValueError(f"unknown patron_status {status!r}")
        mid = member_id or str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        if mid in self.members:
            raise ValueError(f"member {mid} exists")
        user = None
        if with_user:
            user = User(
                user_id or self._new_user_id(), user_name if user_name is not None else full_name, hidden
            )
        if tier_ids is None:
            tier_ids = list(self.tiers)[:1] if status == "active_patron" else []
        if start is None and status is not None:
            start = _now_iso()
        self.members[mid] = SimMember(
            mid, full_name, status, start, list(tier_ids), user, omit_user_from_included
        )
        return mid

    def remove_member(self, member_id: str) -> None:
        del self.members[member_id]

    def set_status(self, member_id: str, status: str | None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown patron_status {status!r}")
        member = self.members[member_id]
        member.patron_status = status
        if status != "active_patron":
            member.tier_ids = []  # only active patrons are entitled to a tier
        elif not member.tier_ids:
            member.tier_ids = list(self.tiers)[:1]

    def set_hidden(self, member_id: str, flag: bool | None) -> None:
        user = self.members[member_id].user
        if user is None:
            raise ValueError(f"member {member_id} has no user")
        user.hide_pledges = flag

    def rename(self, member_id: str, name: str) -> None:
        member = self.members[member_id]
        member.full_name = name
        if member.user is not None:
            member.user.full_name = name

    def seed(self, n: int, rng: random.Random) -> None:
        """Add ``n`` realistic members: mostly active, ~15% hidden, a few odd ones."""
        now = datetime.now(UTC)
        for _ in range(n):
            status = rng.choices(STATUSES, weights=(80, 7, 10, 3))[0]
            roll = rng.random()
            start = (now - timedelta(seconds=rng.randrange(5 * 365 * 86400))).isoformat(
                timespec="milliseconds"
            )
            name = _random_name(rng)
            self.add_member(
                name,
                status=status,
                start=start if status else None,
                hidden=True if roll < 0.15 else (None if roll < 0.17 else False),
                with_user=rng.random() >= 0.03,
                omit_user_from_included=rng.random() < 0.02,
                member_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                tier_ids=[rng.choice(list(self.tiers))] if status == "active_patron" and self.tiers else [],
            )

    def random_change(self, rng: random.Random) -> tuple[str, str]:
        """Apply one join, leave, privacy flip or rename; return (webhook event, member id)."""
        active = [m for m in self.members.values() if m.patron_status == "active_patron"]
        if len(active) < MIN_ACTIVE:
            kind = "join"
        elif len(active) > MAX_ACTIVE:
            kind = "leave"
        else:
            kind = rng.choices(("join", "leave", "privacy", "rename"), weights=(3, 2, 2, 1))[0]
        if kind == "join":
            former = [m for m in self.members.values() if m.patron_status == "former_patron"]
            if former and rng.random() < 0.3:  # a returning patron keeps their member id
                member = rng.choice(former)
                self.set_status(member.id, "active_patron")
                member.pledge_relationship_start = _now_iso()
                return "members:pledge:create", member.id
            tier = [rng.choice(list(self.tiers))] if self.tiers else []
            return "members:pledge:create", self.add_member(
                _random_name(rng), tier_ids=tier, hidden=rng.random() < 0.15
            )
        if kind == "leave":
            member = rng.choice(active)
            self.set_status(member.id, "former_patron")
            return "members:pledge:delete", member.id
        with_user = [m for m in active if m.user is not None]
        if kind == "privacy" and with_user:
            member = rng.choice(with_user)
            self.set_hidden(member.id, not (member.user and member.user.hide_pledges))
            return "members:update", member.id
        member = rng.choice(active)
        self.rename(member.id, _random_name(rng))
        return "members:update", member.id


@dataclasses.dataclass(frozen=True, slots=True)
class _Fault:
    kind: str
    retry_after: float | None = None


def _error(status: int, code_name: str, detail: str) -> web.Response:
    error = {"code": None, "code_name": code_name, "detail": detail, "id": str(uuid.uuid4())}
    return web.json_response({"errors": [{**error, "status": str(status), "title": detail}]}, status=status)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    prefix, _, number = text.partition(":")
    return int(number) if prefix == "offset" and number.isdigit() else None


def _pick(make: Callable[[], dict[str, Any]], wanted: Sequence[str] | None) -> dict[str, Any]:
    """The attributes asked for (all of them for None), built only when some are asked for."""
    if wanted is not None and not wanted:
        return {}
    full = make()
    return full if wanted is None else {k: full[k] for k in wanted if k in full}


def _link(kind: str, rid: str, related: str) -> dict[str, Any]:
    return {"data": {"id": rid, "type": kind}, "links": {"related": related}}


def _document(
    c: Campaign,
    members: Iterable[SimMember],
    include: Collection[str],
    fields: Mapping[str, Sequence[str] | None],
    api: str,
) -> dict[str, Any]:
    """``data`` (members) and, when something is included, deduplicated ``included``."""
    data: list[dict[str, Any]] = []
    included: dict[tuple[str, str], dict[str, Any]] = {}

    def add(kind: str, rid: str, make: Callable[[], dict[str, Any]]) -> None:
        if (kind, rid) not in included:
            included[kind, rid] = {"attributes": _pick(make, fields.get(kind, ())), "id": rid, "type": kind}

    for m in members:
        rels: dict[str, Any] = {}
        if "address" in include:
            rels["address"] = {"data": None}
        if "campaign" in include:
            rels["campaign"] = _link("campaign", c.id, f"{api}/campaigns/{c.id}")
            add("campaign", c.id, c.attributes)
        if "currently_entitled_tiers" in include:
            rels["currently_entitled_tiers"] = {"data": [{"id": t, "type": "tier"} for t in m.tier_ids]}
            for t in m.tier_ids:
                if t in c.tiers:
                    add("tier", t, c.tiers[t].attributes)
        if "pledge_history" in include:
            rels["pledge_history"] = {"data": []}
        if "user" in include:
            rels["user"] = {"data": None}
            if m.user is not None:
                rels["user"] = _link("user", m.user.id, f"{api}/user/{m.user.id}")
                if not m.omit_user_from_included:
                    add("user", m.user.id, m.user.attributes)
        attrs = _pick(functools.partial(m.attributes, c.tiers), fields.get("member", ()))
        item: dict[str, Any] = {"attributes": attrs, "id": m.id, "type": "member"}
        if rels:
            item["relationships"] = rels
        data.append(item)
    doc: dict[str, Any] = {"data": data}
    if include:
        doc["included"] = list(included.values())
    return doc


class Simulator:
    """A fake Patreon API around a :class:`Campaign`; ``app`` is the aiohttp application."""

    def __init__(self, campaign: Campaign | None = None) -> None:
        self.campaign = campaign or Campaign()
        self.access_tokens: set[str] = {"demo-access-token"}
        self.refresh_token: str | None = "demo-refresh-token"
        self.client_id, self.client_secret = "demo-client", "demo-secret"
        self.webhook_secret = "demo-webhook-secret"
        self.expires_in = 2678400  # Patreon's 31 days
        self.revoke_old_access_tokens = True
        self.delay = 0.0
        #: attributes per type when no ``fields[type]`` is given: none, like API v2
        self.default_fields: dict[str, tuple[str, ...]] = dict.fromkeys(
            ("member", "user", "tier", "campaign"), ()
        )
        self.member_requests = 0
        self.token_requests = 0
        self.requests_log: deque[tuple[str, dict[str, str], float]] = deque(maxlen=10_000)
        self.hanging = 0  # handlers currently held by a "hang" fault
        self._faults: deque[_Fault] = deque()
        self._page_faults: dict[int, deque[_Fault]] = {}
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._log_middleware])
        self.app.router.add_get(MEMBERS_PATH, self._members)
        self.app.router.add_post(TOKEN_PATH, self._token)
        self.app.on_shutdown.append(self._on_shutdown)

    @classmethod
    def with_members(cls, n: int, *, seed: int = 0, campaign_id: str = "725055") -> Simulator:
        """A simulator whose campaign holds ``n`` seeded members (deterministic per ``seed``)."""
        rng = random.Random(seed)
        campaign = Campaign(campaign_id, rng=rng)
        campaign.seed(n, rng)
        return cls(campaign)

    def inject(self, fault: str, times: int = 1, *, retry_after: float | None = None) -> None:
        """Answer the next ``times`` member requests with ``fault`` (FIFO after earlier ones)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self._faults.extend([_Fault(fault, retry_after)] * times)

    def inject_on_page(self, page_index: int, fault: str, *, retry_after: float | None = None) -> None:
        """Answer the next request for page ``page_index`` (0 = first) with ``fault``."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self._page_faults.setdefault(page_index, deque()).append(_Fault(fault, retry_after))

    @web.middleware
    async def _log_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests_log.append((request.path, dict(request.query), time.monotonic()))
        return await handler(request)

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing.set()  # releases every hung handler, so shutdown never waits on them

    async def _members(self, request: web.Request) -> web.StreamResponse:
        self.member_requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        q = request.query
        cursor = q.get("page[cursor]")
        try:
            count = min(max(int(q.get("page[count]", DEFAULT_PAGE_COUNT)), 1), MAX_PAGE_COUNT)
        except ValueError:
            return _error(400, "ParameterInvalid", "page[count] must be an integer")
        offset = 0 if cursor is None else _decode_cursor(cursor)
        page_faults = self._page_faults.get(offset // count) if offset is not None else None
        fault = page_faults.popleft() if page_faults else (self._faults.popleft() if self._faults else None)
        if fault is not None and fault.kind != "repeat_cursor":
            return await self._fault(request, fault)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.access_tokens:
            return web.json_response(UNAUTHORIZED_BODY, status=401)
        if request.match_info["campaign_id"] != self.campaign.id:
            return _error(404, "ResourceMissing", "This campaign does not exist.")
        if offset is None:
            return _error(400, "ParameterInvalid", "page[cursor] is not a valid cursor")
        include = [i for i in q.get("include", "").split(",") if i]
        if unknown := set(include) - INCLUDES:
            return _error(400, "ParameterInvalid", f"include: unknown relationship {sorted(unknown)[0]!r}")
        fields: dict[str, Sequence[str] | None] = {**self.default_fields}
        for key, value in q.items():
            if key.startswith("fields[") and key.endswith("]"):
                fields[key[7:-1]] = [f for f in value.split(",") if f]
        page = itertools.islice(self.campaign.members.values(), offset, offset + count)
        api = f"{request.scheme}://{request.host}/api/oauth2/v2"
        doc = _document(self.campaign, page, include, fields, api)
        total = len(self.campaign.members)
        next_cursor = _encode_cursor(offset + count) if offset + count < total else None
        if fault is not None:  # repeat_cursor: hand back the cursor just used
            next_cursor = cursor or _encode_cursor(offset)
            if cursor is None:  # the first page has no cursor to repeat: repeat on the next one
                self._faults.appendleft(fault)
        doc["meta"] = {"pagination": {"cursors": {"next": next_cursor}, "total": total}}
        if next_cursor is not None:
            doc["links"] = {"next": str(request.url.update_query({"page[cursor]": next_cursor}))}
        return web.Response(
            body=json.dumps(doc, separators=(",", ":")).encode(), content_type="application/json"
        )

    async def _fault(self, request: web.Request, fault: _Fault) -> web.StreamResponse:
        kind = fault.kind
        if kind == "401":
            return web.json_response(UNAUTHORIZED_BODY, status=401)
        if kind == "429":
            body = copy.deepcopy(RATE_LIMITED_BODY)
            if fault.retry_after is not None:
                body["errors"][0]["retry_after_seconds"] = fault.retry_after
            return web.json_response(body, status=429)
        if kind in ("403", "404", "500", "503"):
            return _error(int(kind), "Fault", f"injected HTTP {kind}")
        if kind == "garbage":
            return web.Response(
                body=b"\xff<html><body>502 Bad Gateway</body></html>", content_type="application/json"
            )
        if kind == "wrong_shape":
            return web.json_response({"data": {"id": "x", "type": "member"}, "meta": {}})
        if kind == "truncated":
            cut = b'{"data": [{"id": "03ca69c3-ebea-4b9a-8fac-e4a837873254", "type": "mem'
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(cut) + 1000  # promise more than is ever sent
            await resp.prepare(request)
            await resp.write(cut)
            if request.transport is not None:
                request.transport.close()
            return resp
        # "hang": aiohttp does not cancel a handler whose client went away, so
        # watch the socket ourselves, and let shutdown release us too.
        self.hanging += 1
        try:
            while (
                not self._closing.is_set()
                and request.transport is not None
                and not request.transport.is_closing()
            ):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 0.05)
        finally:
            self.hanging -= 1
        return _error(503, "Fault", "the simulator is shutting down")

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        # Patreon's docs put the parameters in the query string; clients send a form. Take both.
        params = dict(request.query)
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        if params.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if (params.get("client_id"), params.get("client_secret")) != (self.client_id, self.client_secret):
            return web.json_response({"error": "invalid_client"}, status=400)
        if self.refresh_token is None or params.get("refresh_token") != self.refresh_token:
            return web.json_response({"error": "invalid_grant"}, status=400)
        access, self.refresh_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        if self.revoke_old_access_tokens:
            self.access_tokens.clear()
        self.access_tokens.add(access)
        return web.json_response(
            {
                "access_token": access,
                "refresh_token": self.refresh_token,
                "expires_in": self.expires_in,
                "scope": "identity campaigns campaigns.members",
                "token_type": "Bearer",
                "version": "0.0.1",
            }
        )

    def webhook_body(self, member_id: str) -> bytes:
        """The v2 webhook body Patreon would send about ``member_id``: every attribute, all included."""
        m, api = self.campaign.members[member_id], f"{PATREON_BASE}/api/oauth2/v2"
        include = ("address", "campaign", "currently_entitled_tiers", "user")
        doc = _document(
            self.campaign,
            [dataclasses.replace(m, omit_user_from_included=False)],
            include,
            dict.fromkeys(("member", "user", "tier", "campaign")),
            api,
        )
        doc["data"] = doc["data"][0]
        doc["links"] = {"self": f"{api}/members/{m.id}"}
        return json.dumps(doc, indent=2).encode()

    async def send_webhook(
        self,
        session: aiohttp.ClientSession,
        url: str,
        event: str,
        member_id: str,
        *,
        secret: str | None = None,
    ) -> int:
        """POST a signed webhook about ``member_id`` to ``url``; return the HTTP status."""
        body = self.webhook_body(member_id)
        headers = {
            "Content-Type": "application/json",
            "X-Patreon-Event": event,
            "X-Patreon-Signature": sign(secret if secret is not None else self.webhook_secret, body),
        }
        async with session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            await resp.read()
            return resp.status

    async def run_changes(
        self, session: aiohttp.ClientSession, webhook_url: str | None, interval: float, rng: random.Random
    ) -> None:
        """Change the campaign every ``interval`` (±50%) seconds until cancelled, announcing each change."""
        while True:
            await asyncio.sleep(interval * rng.uniform(0.5, 1.5))
            event, member_id = self.campaign.random_change(rng)
            log.info("simulator.change", patreon_event=event, member_id=member_id)
            if webhook_url is None:
                continue
            try:
                status = await self.send_webhook(session, webhook_url, event, member_id)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("simulator.webhook_failed", error=exc.__class__.__name__)
            else:
                if status >= 300:
                    log.warning("simulator.webhook_refused", status=status)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); return the base URL."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0][1]
        return f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"

    async def stop(self) -> None:
        """Stop serving (releasing hung requests); safe to call twice."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
