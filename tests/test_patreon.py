"""patreon.py parsing: real payload shapes, null relationships, missing users."""

from __future__ import annotations

from typing import Any

import pytest

from sponsord.errors import MalformedResponse
from sponsord.patreon import MEMBER_QUERY, MEMBER_QUERY_WITH_TIERS, parse_members, retry_after

from .conftest import fixture_json

WEBHOOK_FIXTURES = [
    "zulip_fixture_members_create.json",
    "zulip_fixture_members_update.json",
    "zulip_fixture_members_delete.json",
    "zulip_fixture_members_pledge_create.json",
    "zulip_fixture_members_pledge_update.json",
    "zulip_fixture_members_pledge_delete.json",
    "zulip_fixture_members_pledge_create_paid_post.json",
    "maael-patreon-herald_webhook_members-pledge-update_v2.json",
    "maael-patreon-herald_webhook_members-pledge-create_v2_data-only.json",
    "maael-patreon-herald_webhook_members-pledge-delete_v2_data-only.json",
]


def test_query_asks_exactly_for_what_is_used() -> None:
    """The daemon asks for users and the privacy flag only, 1000 per page; fetch adds tier titles."""
    assert MEMBER_QUERY["include"] == "user"
    assert "fields[tier]" not in MEMBER_QUERY
    assert MEMBER_QUERY_WITH_TIERS["include"] == "user,currently_entitled_tiers"
    assert MEMBER_QUERY_WITH_TIERS["fields[tier]"] == "title"
    assert "hide_pledges" in MEMBER_QUERY["fields[user]"].split(",")
    assert set(MEMBER_QUERY["fields[member]"].split(",")) == {
        "full_name",
        "patron_status",
        "pledge_relationship_start",
    }
    assert MEMBER_QUERY["page[count]"] == "1000"


@pytest.mark.parametrize("name", WEBHOOK_FIXTURES)
def test_real_captured_member_objects_parse(name: str) -> None:
    """Every captured webhook member object parses as a member with its status."""
    body = fixture_json(name)
    page = parse_members({"data": [body["data"]], "included": body.get("included", [])})
    (m,) = page.members
    assert m.id == str(body["data"]["id"])
    assert m.patron_status == body["data"]["attributes"].get("patron_status")
    assert page.next_cursor is None


def test_maael_update_resolves_user_and_tiers() -> None:
    """Included user and tiers are resolved from `included`."""
    body = fixture_json("maael-patreon-herald_webhook_members-pledge-update_v2.json")
    (m,) = parse_members({"data": [body["data"]], "included": body["included"]}).members
    assert m.user_id == "88555402"
    assert m.user_full_name
    assert len(m.tiers) == 2


def doc(
    *members: dict[str, Any], included: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"data": list(members), "included": included or [], **extra}


def raw_member(mid: str, user: Any = None, **attrs: Any) -> dict[str, Any]:
    return {
        "type": "member",
        "id": mid,
        "attributes": {"full_name": "X", "patron_status": "active_patron", **attrs},
        "relationships": {"user": {"data": user}, "currently_entitled_tiers": {"data": []}},
    }


def test_null_relationship_and_missing_user_mean_unknown_privacy() -> None:
    """A null user relationship, or a user absent from included, gives hide_pledges None."""
    page = parse_members(doc(raw_member("1", None), raw_member("2", {"type": "user", "id": "99"})))
    assert [m.hide_pledges for m in page.members] == [None, None]
    assert page.members[1].user_id == "99"


def test_hide_pledges_missing_from_included_user_is_unknown() -> None:
    """An included user without hide_pledges (field not requested) is unknown privacy."""
    user = {"type": "user", "id": "7", "attributes": {"full_name": "Ann"}}
    (m,) = parse_members(doc(raw_member("1", {"type": "user", "id": "7"}), included=[user])).members
    assert m.hide_pledges is None and m.user_full_name == "Ann"


def test_cursor_from_meta_then_links() -> None:
    """The next cursor comes from meta.pagination.cursors.next, else links.next."""
    assert parse_members(doc(meta={"pagination": {"cursors": {"next": "abc"}}})).next_cursor == "abc"
    assert parse_members(doc(meta={"pagination": {"cursors": {"next": None}}})).next_cursor is None
    linked = doc(links={"next": "https://www.patreon.com/api/x?page%5Bcursor%5D=zz&page%5Bcount%5D=2"})
    assert parse_members(linked).next_cursor == "zz"


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"data": {"type": "member"}},
        {"data": [{"type": "campaign", "id": "1"}]},
        {"data": [raw_member("1")], "included": {"a": 1}},
        {"data": [{"type": "member", "id": None}]},
        {"data": [raw_member("1", full_name=5)]},
        {
            "data": [raw_member("1", {"type": "user", "id": "2"})],
            "included": [{"type": "user", "id": "2", "attributes": {"hide_pledges": "yes"}}],
        },
        {"data": [], "meta": {"pagination": {"cursors": {"next": 7}}}},
    ],
)
def test_malformed_documents_raise_the_typed_error(bad: Any) -> None:
    """Wrong shapes raise MalformedResponse, never KeyError/TypeError."""
    with pytest.raises(MalformedResponse):
        parse_members(bad)


def test_retry_after_from_body_then_header() -> None:
    """retry_after_seconds in a JSON:API 429 body wins; Retry-After is the fallback."""
    assert retry_after(fixture_json("docs_v2_rate_limited_429_error_body.json"), "99") == 9.0
    assert retry_after(None, "4") == 4.0
    assert retry_after({"errors": [{}]}, None) is None
