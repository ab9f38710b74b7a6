"""roster.py: who counts, privacy, and a stable order."""

from __future__ import annotations

import json
import random

from sponsord.patreon import Member
from sponsord.roster import build_supporters, display_name
from sponsord.snapshot import Snapshot


def member(
    mid: str,
    name: str | None = "Alice",
    *,
    status: str | None = "active_patron",
    hide: bool | None = False,
    user_name: str | None = None,
    start: str | None = "2024-01-01T00:00:00+00:00",
) -> Member:
    return Member(
        id=mid,
        full_name=name,
        patron_status=status,
        pledge_relationship_start=start,
        user_id=f"u{mid}",
        user_full_name=user_name,
        hide_pledges=hide,
        tiers=("Loaf",),
    )


def test_only_active_patrons_count() -> None:
    """Declined, former and never-pledged (null) members get no loaf."""
    members = [
        member("1", "Ann", status="active_patron"),
        member("2", "Bob", status="declined_patron"),
        member("3", "Cid", status="former_patron"),
        member("4", "Dee", status=None),
    ]
    assert build_supporters(members) == ({"title": "Ann"},)


def test_hidden_and_unknown_privacy_are_exactly_anonymous() -> None:
    """hide_pledges true or unknown → exactly {"title": "Anonymous"}, nothing else."""
    members = [
        member("1", "Secret Sam", hide=True),
        member("2", "Unknown Una", hide=None),
        member("3", "Open Olga", hide=False),
    ]
    out = build_supporters(members)
    assert out == ({"title": "Open Olga"}, {"title": "Anonymous"}, {"title": "Anonymous"})
    encoded = json.dumps(out)
    assert "Sam" not in encoded and "Una" not in encoded


def test_user_name_preferred_trimmed_and_empty_is_anonymous() -> None:
    """The user's full_name wins over the member's, trimmed; an empty name is Anonymous."""
    assert display_name(member("1", "Member Name", user_name="  User Name ")) == "User Name"
    assert display_name(member("2", "  Member Name  ")) == "Member Name"
    assert build_supporters([member("3", "   ", user_name="")]) == ({"title": "Anonymous"},)


def test_order_oldest_first_ties_by_id_anonymous_last() -> None:
    """Named by pledge start (ties by member id), then anonymous; undated sort last."""
    members = [
        member("b", "Second", start="2024-02-01T00:00:00+00:00"),
        member("z", "Hidden", hide=True, start="2020-01-01T00:00:00+00:00"),
        member("a", "First", start="2024-01-01T00:00:00.000+00:00"),
        member("c", "Undated", start=None),
        member("a2", "Tie", start="2024-02-01T00:00:00+00:00"),
        member("d", "Garbled", start="yesterday"),
    ]
    titles = [s["title"] for s in build_supporters(members)]
    assert titles == ["First", "Tie", "Second", "Undated", "Garbled", "Anonymous"]


def test_order_is_stable_under_shuffling() -> None:
    """The same members in any order give the same list (loaves do not jump)."""
    members = [member(str(i), f"N{i}", start=f"2024-01-{1 + i % 5:02d}T00:00:00+00:00") for i in range(40)]
    expected = build_supporters(members)
    rng = random.Random(7)
    for _ in range(10):
        rng.shuffle(members)
        assert build_supporters(members) == expected


def test_duplicate_member_counted_once() -> None:
    """A member seen twice (pages shifting) still gets one loaf."""
    assert build_supporters([member("1", "Ann"), member("1", "Ann")]) == ({"title": "Ann"},)


def test_hidden_member_leaves_no_trace_in_snapshot_body() -> None:
    """No name, id, tier or date of a hidden member appears in the encoded snapshot."""
    from datetime import UTC, datetime

    hidden = member("uuid-123", "Private Person", hide=True, user_name="Private Person")
    snap = Snapshot.build(1, datetime(2026, 1, 1, tzinfo=UTC), build_supporters([hidden]), 20)
    for needle in (b"Private", b"uuid-123", b"uuid-123", b"Loaf", b"2024-01-01"):
        assert needle not in snap.body
