"""The Patreon client: the only module that speaks Patreon's JSON:API.

:meth:`PatreonClient.fetch_members` asks
``GET /api/oauth2/v2/campaigns/{id}/members`` for exactly the includes and
fields the roster needs (API v2 returns no attribute it is not asked for,
``user.hide_pledges`` included), follows the pagination cursors to the end and
returns every member, or raises an :class:`~sponsord.errors.UpstreamError`:
never a partial list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import aiohttp
from yarl import URL

from . import __version__
from .budget import TokenBucket
from .errors import (
    AuthRejected,
    MalformedResponse,
    NotFound,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
)
from .gcpause import gc_paused

USER_AGENT = f"sponsord/{__version__} (+https://github.com/sponsord/sponsord)"

#: Patreon's maximum page size; fewer pages means fewer requests against the budget.
PAGE_COUNT = 1000

#: Exactly what the roster reads, nothing more: fewer fields means less
#: personal data held and smaller pages (JSON decoding is most of a refresh).
MEMBER_QUERY = {
    "include": "user",
    "fields[member]": "full_name,patron_status,pledge_relationship_start",
    "fields[user]": "full_name,hide_pledges",
    "page[count]": str(PAGE_COUNT),
}

#: ``sponsord fetch`` also prints each supporter's tier.
MEMBER_QUERY_WITH_TIERS = {
    **MEMBER_QUERY,
    "include": "user,currently_entitled_tiers",
    "fields[tier]": "title",
}


class Member(NamedTuple):
    """One campaign member, reduced to what sponsord uses.

    A named tuple rather than a frozen dataclass: as immutable, and built ten
    thousand times per refresh at a fifth of the cost.

    id: Patreon's member id (a UUID string).
    full_name: the member's own ``full_name`` attribute.
    patron_status: ``active_patron``, ``declined_patron``, ``former_patron`` or None.
    pledge_relationship_start: ISO 8601 start of the pledge, or None.
    user_id: the related user's id, or None when the relationship is null.
    user_full_name: the user's ``full_name``, or None if unknown.
    hide_pledges: the user's privacy flag; None when it cannot be determined.
    tiers: titles of the currently entitled tiers that could be resolved.
    """

    id: str
    full_name: str | None
    patron_status: str | None
    pledge_relationship_start: str | None
    user_id: str | None
    user_full_name: str | None
    hide_pledges: bool | None
    tiers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MembersPage:
    """One parsed page: its members and the cursor of the next page (or None)."""

    members: tuple[Member, ...]
    next_cursor: str | None


class TokenSource(Protocol):
    """Where the client gets its bearer token, and whom it tells of a 401."""

    async def get(self) -> str:
        """The access token to send now."""
        ...

    async def rejected(self, token: str) -> bool:
        """``token`` got a 401; return True if a different one is now available."""
        ...


class StaticToken:
    """A fixed access token (``PATREON_ACCESS_TOKEN``), never rotated."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def get(self) -> str:
        return self._token

    async def rejected(self, token: str) -> bool:
        return False


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedResponse(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.isascii() else _unicode(value)
    raise MalformedResponse(f"{where}: expected a string or null, got {type(value).__name__}")


def _unicode(value: str) -> str:
    """``value`` as valid Unicode: JSON's ``"\\ud800"`` escapes decode to lone surrogates,
    which no UTF-8 encoder accepts, so one odd name would stop every snapshot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _id(value: Any, where: str) -> str:
    # JSON:API ids are strings; some Patreon objects carry numbers. Accept both, nothing else.
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise MalformedResponse(f"{where}: expected an id, got {value!r:.40}")


def _linkage(rel: Any, where: str) -> list[dict[str, Any]]:
    """The resource identifiers of a relationship: [] for a null or missing one."""
    if rel is None:
        return []
    data = _obj(rel, where).get("data")
    if data is None:
        return []
    items = data if isinstance(data, list) else [data]
    return [_obj(item, where) for item in items]


Resources = dict[tuple[str, str], dict[str, Any]]


def _resource(item: Any) -> tuple[tuple[str, str], dict[str, Any]]:
    res = _obj(item, "resource")
    kind = res.get("type")
    if not isinstance(kind, str):
        raise MalformedResponse("type: expected a string")
    return (kind, _id(res.get("id"), "id")), _obj(res.get("attributes") or {}, "attributes")


def _member(item: Any, resources: Resources) -> Member:
    # Error paths are fixed strings: parse_members prefixes the index only on
    # failure, so a 10,000-member refresh formats no strings it does not need.
    res = _obj(item, "member")
    if res.get("type") != "member":
        raise MalformedResponse(f"type: expected 'member', got {res.get('type')!r:.40}")
    attrs = _obj(res.get("attributes") or {}, "attributes")
    rels = _obj(res.get("relationships") or {}, "relationships")

    user_id = user_name = None
    hide: bool | None = None
    users = _linkage(rels.get("user"), "relationships.user")
    if users:
        user_id = _id(users[0].get("id"), "relationships.user.data.id")
        user = resources.get(("user", user_id))
        if user is not None:
            user_name = _opt_str(user.get("full_name"), "user.full_name")
            hide = user.get("hide_pledges")
            if hide is not None and not isinstance(hide, bool):
                raise MalformedResponse("user.hide_pledges: expected true, false or null")

    tiers = []
    for link in _linkage(rels.get("currently_entitled_tiers"), "relationships.currently_entitled_tiers"):
        tier = resources.get(("tier", _id(link.get("id"), "tier.id")))
        title = _opt_str(tier.get("title"), "tier.title") if tier is not None else None
        if title:
            tiers.append(title)

    return Member(
        id=_id(res.get("id"), "id"),
        full_name=_opt_str(attrs.get("full_name"), "full_name"),
        patron_status=_opt_str(attrs.get("patron_status"), "patron_status"),
        pledge_relationship_start=_opt_str(
            attrs.get("pledge_relationship_start"), "pledge_relationship_start"
        ),
        user_id=user_id,
        user_full_name=user_name,
        hide_pledges=hide,
        tiers=tuple(tiers),
    )


def parse_members(document: Any) -> MembersPage:
    """Parse one ``/members`` page; raise :class:`MalformedResponse` on anything else.

    Users and tiers are resolved from ``included``. A null relationship, or a
    user missing from ``included``, gives a member whose privacy is unknown
    (``hide_pledges`` None), which the roster shows as anonymous.
    """
    doc = _obj(document, "document")
    data = doc.get("data")
    if not isinstance(data, list):
        raise MalformedResponse("document.data: expected a list of members")
    included = doc.get("included", [])
    if included is None:
        included = []
    if not isinstance(included, list):
        raise MalformedResponse("document.included: expected a list")

    resources: Resources = {}
    for i, item in enumerate(included):
        try:
            key, attrs = _resource(item)
        except MalformedResponse as exc:
            raise MalformedResponse(f"included[{i}].{exc}") from None
        resources[key] = attrs

    members = []
    for i, item in enumerate(data):
        try:
            members.append(_member(item, resources))
        except MalformedResponse as exc:
            raise MalformedResponse(f"data[{i}].{exc}") from None
    return MembersPage(tuple(members), _next_cursor(doc))


def _next_cursor(doc: Mapping[str, Any]) -> str | None:
    """``meta.pagination.cursors.next``, else the cursor inside ``links.next``."""
    meta = doc.get("meta")
    if isinstance(meta, dict):
        pagination = meta.get("pagination")
        if isinstance(pagination, dict):
            cursors = pagination.get("cursors")
            if isinstance(cursors, dict):
                cursor = _opt_str(cursors.get("next"), "meta.pagination.cursors.next")
                if cursor:
                    return cursor
    links = doc.get("links")
    if isinstance(links, dict) and isinstance(links.get("next"), str):
        try:
            cursor = URL(links["next"]).query.get("page[cursor]")
        except ValueError:
            raise MalformedResponse("links.next: not a URL") from None
        if not cursor:
            raise MalformedResponse("links.next: no page[cursor] in it")
        return cursor
    return None


def retry_after(body: Any, header: str | None) -> float | None:
    """Seconds to wait from a 429: the JSON:API ``retry_after_seconds``, else ``Retry-After``."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        for err in body["errors"]:
            if isinstance(err, dict):
                value = err.get("retry_after_seconds")
                if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                    return float(value)
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    return None


class PatreonClient:
    """Fetches a campaign's members from Patreon (or anything speaking its API).

    session: a shared ``aiohttp.ClientSession``.
    api_base: e.g. ``https://www.patreon.com``.
    tokens: where the bearer token comes from (rotated or static).
    timeout: total seconds for one request, connect and body included.
    max_pages: a refresh that needs more pages fails rather than loop forever.
    budget: the token bucket every request must pass.
    tiers: also ask for each member's tier titles (only ``sponsord fetch`` shows them).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_base: str,
        campaign_id: str,
        tokens: TokenSource,
        *,
        timeout: float = 30.0,
        max_pages: int = 200,
        budget: TokenBucket | None = None,
        tiers: bool = False,
    ) -> None:
        self._query = MEMBER_QUERY_WITH_TIERS if tiers else MEMBER_QUERY
        self._session = session
        self._url = URL(api_base) / "api/oauth2/v2/campaigns" / campaign_id / "members"
        self._tokens = tokens
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_pages = max_pages
        self._budget = budget
        #: requests sent (for tests and metrics)
        self.requests = 0

    async def fetch_members(self) -> list[Member]:
        """Every member of the campaign, all pages, or an UpstreamError."""
        members: list[Member] = []
        seen: set[str] = set()
        cursor: str | None = None
        for _ in range(self._max_pages):
            query = dict(self._query)
            if cursor is not None:
                query["page[cursor]"] = cursor
            document = await self._get_json(query)
            with gc_paused():
                page = parse_members(document)
            members.extend(page.members)
            cursor = page.next_cursor
            if cursor is None:
                return members
            if cursor in seen:
                raise MalformedResponse(f"pagination cursor {cursor!r:.40} repeated")
            seen.add(cursor)
        raise MalformedResponse(f"more than {self._max_pages} pages of members")

    async def _get_json(self, query: Mapping[str, str]) -> Any:
        token = await self._tokens.get()
        try:
            return await self._request(query, token)
        except AuthRejected:
            if not await self._tokens.rejected(token):
                raise
        return await self._request(query, await self._tokens.get())

    async def _request(self, query: Mapping[str, str], token: str) -> Any:
        if self._budget is not None:
            await self._budget.acquire()
        self.requests += 1
        headers = {
            "Authorization": f"Bearer {token}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        try:
            async with self._session.get(
                self._url.with_query(query), headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_header = resp.headers.get("Retry-After")
        except TimeoutError:
            raise UpstreamUnavailable("Patreon did not answer in time") from None
        except aiohttp.ClientPayloadError:
            raise MalformedResponse("Patreon's answer was cut short") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"cannot reach Patreon: {exc.__class__.__name__}") from None
        try:
            with gc_paused():
                body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if status in (401, 403):
            raise AuthRejected(f"Patreon refused the access token (HTTP {status})")
        if status == 404:
            raise NotFound("Patreon has no such campaign for this token (HTTP 404)")
        if status == 429:
            wait = retry_after(body, retry_header)
            raise RateLimited(f"Patreon rate limit (HTTP 429, retry after {wait}s)", wait)
        if status >= 500:
            raise UpstreamUnavailable(f"Patreon answered HTTP {status}")
        if status != 200:
            raise UpstreamError(f"Patreon answered HTTP {status}")
        if body is None:
            raise MalformedResponse("Patreon's answer is not JSON")
        return body
