"""Property-based tests (hypothesis): the Patreon parser and the roster's privacy, for any input."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sponsord.app import create_app
from sponsord.errors import MalformedResponse
from sponsord.keys import REFRESHER
from sponsord.patreon import Member, MembersPage, parse_members, retry_after
from sponsord.roster import build_supporters
from sponsord.simulator import Simulator
from sponsord.snapshot import Snapshot

from .live import record_figures

#: The same examples on every run, and no example database left in the checkout.
SETTINGS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Every example run here, recorded in tests/artifacts/hostile.json.
RUNS = {"parser_documents": 0, "rosters": 0, "retry_after": 0}


@pytest.fixture(scope="module", autouse=True)
def report_runs() -> Iterator[None]:
    """After the module: record how many generated examples the properties ran."""
    yield
    record_figures("properties", dict(RUNS))


# -- any JSON value, and JSON:API-ish documents built from it ----------------

#: Whatever ``json.loads`` can return: NaN and infinities included (Python parses them).
leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text(max_size=20)
)
any_json = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def sometimes_wrong(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The right shape most of the time, any JSON value otherwise."""
    return st.one_of(strategy, strategy, strategy, any_json)


huge = st.builds(lambda c, n: c * n, st.characters(), st.integers(min_value=10_000, max_value=200_000))
#: Mostly ordinary text, sometimes a trap, now and then 10k-200k characters.
text = st.integers(0, 9).flatmap(
    lambda roll: (
        huge
        if roll == 0
        else st.sampled_from(["", " ", "\x00", "\ud800", "Anonymous", "</script>"])
        if roll == 1
        else st.text()
    )
)
ids = st.sampled_from(["1", "2", "3", "a-b", ""]) | st.integers(min_value=0, max_value=3) | text
dates = st.sampled_from(
    ["2020-01-01T00:00:00+00:00", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "not a date", ""]
) | st.datetimes().map(datetime.isoformat)


def linkage(kind: str) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({"id": sometimes_wrong(ids), "type": sometimes_wrong(st.just(kind))})


relationships = st.fixed_dictionaries(
    {},
    optional={
        "user": sometimes_wrong(st.fixed_dictionaries({"data": st.none() | linkage("user")})),
        "currently_entitled_tiers": sometimes_wrong(
            st.fixed_dictionaries({"data": st.lists(sometimes_wrong(linkage("tier")), max_size=3)})
        ),
    },
)
member_doc = st.fixed_dictionaries(
    {"type": sometimes_wrong(st.just("member")), "id": sometimes_wrong(ids)},
    optional={
        "attributes": sometimes_wrong(
            st.fixed_dictionaries(
                {},
                optional={
                    "full_name": sometimes_wrong(st.none() | text),
                    "patron_status": sometimes_wrong(
                        st.sampled_from(["active_patron", "declined_patron", "former_patron"]) | st.none()
                    ),
                    "pledge_relationship_start": sometimes_wrong(st.none() | dates),
                },
            )
        ),
        "relationships": sometimes_wrong(relationships),
    },
)
included_doc = st.fixed_dictionaries(
    {"type": sometimes_wrong(st.sampled_from(["user", "tier", "campaign"])), "id": sometimes_wrong(ids)},
    optional={
        "attributes": sometimes_wrong(
            st.fixed_dictionaries(
                {},
                optional={
                    "full_name": sometimes_wrong(st.none() | text),
                    "hide_pledges": sometimes_wrong(st.none() | st.booleans()),
                    "title": sometimes_wrong(st.none() | text),
                    "image_url": text,
                },
            )
        )
    },
)
document = st.fixed_dictionaries(
    {},
    optional={
        "data": sometimes_wrong(st.lists(sometimes_wrong(member_doc), max_size=5)),
        "included": sometimes_wrong(st.lists(sometimes_wrong(included_doc), max_size=5)),
        "meta": sometimes_wrong(
            st.fixed_dictionaries(
                {"pagination": sometimes_wrong(st.fixed_dictionaries({"cursors": any_json}))}
            )
        ),
        "links": sometimes_wrong(
            st.fixed_dictionaries(
                {"next": sometimes_wrong(text | st.just("https://x/members?page%5Bcursor%5D=abc"))}
            )
        ),
    },
)


@SETTINGS
@given(doc=sometimes_wrong(document))
def test_parser_returns_members_or_its_typed_error(doc: Any) -> None:
    """Any JSON:API-ish document gives a MembersPage or MalformedResponse, never another exception."""
    RUNS["parser_documents"] += 1
    try:
        page = parse_members(doc)
    except MalformedResponse:
        return
    assert isinstance(page, MembersPage)
    assert all(isinstance(m, Member) for m in page.members)
    assert page.next_cursor is None or isinstance(page.next_cursor, str)


@SETTINGS
@given(body=any_json, header=st.none() | st.text())
def test_retry_after_never_raises(body: Any, header: str | None) -> None:
    """Any 429 body and Retry-After header give a non-negative number of seconds or None."""
    RUNS["retry_after"] += 1
    wait = retry_after(body, header)
    assert wait is None or wait >= 0


# -- rosters: who may be named ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class UserSpec:
    """A Patreon user; ``hide`` "absent" leaves the attribute out."""

    id: str
    name: str
    hide: bool | str | None
    image: str


@dataclasses.dataclass(frozen=True)
class Listing:
    """One appearance of a member on a page."""

    member_id: str
    name: str | None
    status: str | None
    start: str | None
    user: UserSpec | None
    user_included: bool

    def private(self, included: set[str]) -> bool:
        """DESIGN.md: hidden, or privacy unknown (no user, or the user not included on the page)."""
        return self.user is None or self.user.id not in included or self.user.hide is not False


@st.composite
def rosters(draw: st.DrawFn) -> list[list[Listing]]:
    """Pages of listings: shared member ids across pages, users consistent everywhere."""
    users = draw(
        st.lists(
            st.builds(
                UserSpec,
                id=st.uuids().map(str),
                name=text,
                hide=st.sampled_from([True, False, False, None, "absent"]),
                image=st.uuids().map(lambda u: f"https://c10.patreonusercontent.com/{u}.png"),
            ),
            max_size=8,
            unique_by=lambda u: u.id,
        )
    )
    member_ids = draw(st.lists(st.uuids().map(str), min_size=1, max_size=8, unique=True))
    listing = st.builds(
        Listing,
        member_id=st.sampled_from(member_ids),
        name=st.none() | text,
        status=st.sampled_from(["active_patron", "active_patron", "declined_patron", "former_patron", None]),
        start=st.none() | dates,
        user=st.none() | st.sampled_from(users) if users else st.none(),
        user_included=st.booleans() | st.just(True),
    )
    return draw(st.lists(st.lists(listing, max_size=6), min_size=1, max_size=3))


def render(page: list[Listing]) -> dict[str, Any]:
    """One /members page as Patreon would send it (sparse fields, deduplicated included)."""
    data, included = [], {}
    for item in page:
        rel: dict[str, Any] = {"data": None}
        if item.user is not None:
            rel = {"data": {"id": item.user.id, "type": "user"}}
            if item.user_included:
                attrs: dict[str, Any] = {"full_name": item.user.name, "image_url": item.user.image}
                if item.user.hide != "absent":
                    attrs["hide_pledges"] = item.user.hide
                included[item.user.id] = {"type": "user", "id": item.user.id, "attributes": attrs}
        attributes = {
            "full_name": item.name,
            "patron_status": item.status,
            "pledge_relationship_start": item.start,
        }
        data.append(
            {"type": "member", "id": item.member_id, "attributes": attributes, "relationships": {"user": rel}}
        )
    return {"data": data, "included": list(included.values())}


def sanitized(member: Member, placeholder: str) -> Member:
    """``member`` with nothing of its own left: the body must not change."""
    return member._replace(
        id=placeholder, full_name=None, user_id=None, user_full_name=None, hide_pledges=True
    )


@SETTINGS
@given(pages=rosters(), version=st.integers(min_value=1, max_value=10**9), goal=st.integers(0, 10**6))
def test_no_private_member_leaks_into_the_snapshot(
    pages: list[list[Listing]], version: int, goal: int
) -> None:
    """For any roster, the encoded snapshot is exactly what it would be with private members' data erased."""
    RUNS["rosters"] += 1
    members: list[Member] = []
    for page in pages:
        # Through JSON, as the client does: escapes, lone surrogates and all.
        members.extend(parse_members(json.loads(json.dumps(render(page)))).members)
    private = set()
    for page in pages:
        included = {i.user.id for i in page if i.user is not None and i.user_included}
        private |= {item.member_id for item in page if item.private(included)}
    stamp = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
    body = Snapshot.build(version, stamp, build_supporters(members), goal).body
    placeholders = {mid: f"private-{i}" for i, mid in enumerate(sorted(private))}
    erased = [sanitized(m, placeholders[m.id]) if m.id in private else m for m in members]
    expected = Snapshot.build(version, stamp, build_supporters(erased), goal).body
    assert body == expected
    # And spelled out: no id, name or image of a private member that the erased body lacks.
    text_body = body.decode()
    for page in pages:
        for item in page:
            if item.member_id not in private:
                continue
            tokens = [item.member_id, item.name or ""]
            if item.user is not None:
                tokens += [item.user.id, item.user.name, item.user.image]
            for token in tokens:
                shown = json.dumps(token.strip(), ensure_ascii=False)[1:-1]
                if shown and shown not in expected.decode():
                    assert shown not in text_body


async def test_a_lone_surrogate_name_does_not_stop_refreshing(
    aiohttp_server: Callable[..., Awaitable[TestServer]], aiohttp_client: Any, make_config: Any
) -> None:
    """Regression (found above): a name escaped as a lone surrogate is shown as U+FFFD; refreshing goes on."""
    sim = Simulator.with_members(0)
    sim.campaign.add_member("\ud800 Lone", start="2020-01-01T00:00:00+00:00")
    server = await aiohttp_server(sim.app)
    client = await aiohttp_client(create_app(make_config(str(server.make_url("")).rstrip("/"))))
    refresher = client.app[REFRESHER]
    snap = await refresher.refresh(fresh=True)
    assert snap is not None and snap.supporters == ({"title": "\ufffd Lone"},)
    sim.campaign.add_member("Next Nadia", start="2021-01-01T00:00:00+00:00")
    snap = await refresher.refresh(fresh=True)
    assert snap is not None and {"title": "Next Nadia"} in snap.supporters
    assert refresher.health.ok is True
