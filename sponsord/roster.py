"""Members into supporters: who counts, who stays anonymous, in what order.

The rules (DESIGN.md, "Who is shown"):

- only members whose ``patron_status`` is ``active_patron`` count;
- a member whose user hides their pledges, or whose privacy cannot be
  determined, becomes exactly ``{"title": "Anonymous"}``: no name, id, image,
  tier or date that could identify them;
- a named supporter's title is the user's ``full_name``, else the member's,
  trimmed; an empty name is "Anonymous";
- named supporters first, oldest pledge first (ties by member id), then the
  anonymous ones in the same order, so the loaves do not jump between refreshes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from .patreon import Member

ANONYMOUS = "Anonymous"
ACTIVE = "active_patron"

#: Undated pledges sort after every dated one.
_LATEST = datetime.max.replace(tzinfo=UTC)

Supporter = dict[str, str]


def counts(member: Member) -> bool:
    """True when the member is an active patron and so gets a loaf."""
    return member.patron_status == ACTIVE


def display_name(member: Member) -> str | None:
    """The name to show, or None when the member must stay anonymous."""
    if member.hide_pledges is not False:
        return None  # hidden, or privacy unknown: never risk showing a name
    for name in (member.user_full_name, member.full_name):
        if name and name.strip():
            return name.strip()
    return None


def pledge_start(member: Member) -> datetime:
    """When the pledge started (for ordering); undated or unparsable sorts last."""
    raw = member.pledge_relationship_start
    if not raw:
        return _LATEST
    try:
        start = datetime.fromisoformat(raw)
    except ValueError:
        return _LATEST
    return start if start.tzinfo else start.replace(tzinfo=UTC)


def build_supporters(members: Iterable[Member]) -> tuple[Supporter, ...]:
    """The supporters to show, in display order, privacy applied."""
    members = list(members)
    # A member listed twice (pages shifting under a cursor) gets one loaf, and
    # is named only if no listing hides them: privacy must not depend on order.
    private = {m.id for m in members if m.hide_pledges is not False}
    named: list[tuple[datetime, str, str]] = []
    anonymous: list[tuple[datetime, str]] = []
    seen: set[str] = set()
    for member in members:
        if not counts(member) or member.id in seen:
            continue
        seen.add(member.id)
        name = None if member.id in private else display_name(member)
        if name is None:
            anonymous.append((pledge_start(member), member.id))
        else:
            named.append((pledge_start(member), member.id, name))
    named.sort()
    anonymous.sort()
    return tuple({"title": name} for _, _, name in named) + tuple({"title": ANONYMOUS} for _ in anonymous)
