"""The snapshot: one immutable, versioned state, encoded once, kept on disk.

Everything a reader gets comes from :attr:`Snapshot.body`, the exact bytes of
``GET /v1/supporters``, encoded once when the snapshot is made. ``version``
rises only when what is shown changes, and continues across restarts because
the last snapshot is persisted atomically and read back at start.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from .files import remove_stale_temps, write_atomic
from .roster import Supporter

log = structlog.get_logger(__name__)

SNAPSHOT_FILE = "snapshot.json"


def encode(obj: Any) -> bytes:
    """Compact UTF-8 JSON: the one encoder for everything sent to clients."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def isoformat(moment: datetime) -> str:
    """``2026-12-03T15:00:00Z``: UTC, whole seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One published state.

    version: rises by one each time the shown content changes; never reused.
    updated_at: when this content was first published.
    supporters: the display list (privacy already applied).
    goal_count: the configured goal.
    body: the encoded ``GET /v1/supporters`` document.
    etag: a strong ETag of ``body`` (quoted).
    """

    version: int
    updated_at: datetime
    supporters: tuple[Supporter, ...]
    goal_count: int
    body: bytes
    etag: str

    @classmethod
    def build(
        cls, version: int, updated_at: datetime, supporters: Sequence[Supporter], goal_count: int
    ) -> Snapshot:
        """Make a snapshot, encoding its body once (``updated_at`` to whole seconds)."""
        updated_at = updated_at.replace(microsecond=0)
        supporters = tuple(dict(s) for s in supporters)
        body = encode(
            {
                "supporters": supporters,
                "goal_count": goal_count,
                "meta": {"updated_at": isoformat(updated_at), "version": version},
            }
        )
        digest = hashlib.blake2b(body, digest_size=12).hexdigest()
        return cls(version, updated_at, supporters, goal_count, body, f'"{version}-{digest}"')

    def shows(self, supporters: Sequence[Supporter], goal_count: int) -> bool:
        """True when ``supporters`` and ``goal_count`` are what this snapshot shows."""
        return self.goal_count == goal_count and list(self.supporters) == list(supporters)

    def successor(self, supporters: Sequence[Supporter], goal_count: int, now: datetime) -> Snapshot | None:
        """The next snapshot, or None when nothing shown would change."""
        if self.shows(supporters, goal_count):
            return None
        return Snapshot.build(self.version + 1, now, supporters, goal_count)

    @classmethod
    def parse(cls, body: bytes) -> Snapshot:
        """Rebuild a snapshot from its body; ValueError if it is not one."""
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        meta = doc["meta"]
        supporters = doc["supporters"]
        version, goal = meta["version"], doc["goal_count"]
        if not (isinstance(version, int) and version >= 1 and isinstance(goal, int)):
            raise ValueError("bad version or goal_count")
        if not isinstance(supporters, list) or not all(
            isinstance(s, dict) and isinstance(s.get("title"), str) for s in supporters
        ):
            raise ValueError("bad supporters")
        updated_at = datetime.strptime(meta["updated_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        return cls.build(version, updated_at, supporters, goal)


def first_snapshot(supporters: Sequence[Supporter], goal_count: int, now: datetime) -> Snapshot:
    """Version 1, for a daemon that has never published before."""
    return Snapshot.build(1, now, supporters, goal_count)


class SnapshotStore:
    """Keeps the last snapshot in ``<state dir>/snapshot.json``, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / SNAPSHOT_FILE

    def load(self) -> Snapshot | None:
        """The persisted snapshot, or None if there is none (or it is unreadable)."""
        remove_stale_temps(self.path.parent, self.path.name)
        try:
            body = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Snapshot.parse(body)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("snapshot_unreadable", path=str(self.path), error=str(exc))
            return None

    def save(self, snapshot: Snapshot) -> None:
        """Persist ``snapshot`` (old or new on disk, never a torn file)."""
        write_atomic(self.path, snapshot.body, mode=0o600)
