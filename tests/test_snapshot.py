"""snapshot.py: encoded once, versioned, persisted atomically."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from sponsord.snapshot import Snapshot, SnapshotStore, first_snapshot

T0 = datetime(2026, 12, 3, 15, 0, 0, tzinfo=UTC)


def test_body_is_the_contract_document() -> None:
    """body is exactly the GET /v1/supporters object, compact JSON."""
    snap = first_snapshot([{"title": "Alice"}, {"title": "Anonymous"}], 20, T0)
    assert json.loads(snap.body) == {
        "supporters": [{"title": "Alice"}, {"title": "Anonymous"}],
        "goal_count": 20,
        "meta": {"updated_at": "2026-12-03T15:00:00Z", "version": 1},
    }
    assert snap.etag.startswith('"1-') and snap.etag.endswith('"')


def test_successor_only_when_shown_content_changes() -> None:
    """Same list and goal → None; a change → version + 1 with a new ETag."""
    snap = first_snapshot([{"title": "A"}], 20, T0)
    assert snap.successor([{"title": "A"}], 20, T0) is None
    nxt = snap.successor([{"title": "A"}, {"title": "B"}], 20, T0)
    assert nxt is not None and nxt.version == 2 and nxt.etag != snap.etag
    goal = snap.successor([{"title": "A"}], 21, T0)
    assert goal is not None and goal.version == 2


def test_unicode_names_round_trip() -> None:
    """Names with any unicode survive encoding and parsing unchanged."""
    names = [{"title": "Zoë 🐰"}, {"title": '<img src=x onerror=alert(1)> "q"'}]
    snap = first_snapshot(names, 3, T0)
    assert Snapshot.parse(snap.body) == snap


def test_store_round_trip_and_mode(tmp_path: Path) -> None:
    """save() then load() gives the same snapshot; the file is 0600."""
    store = SnapshotStore(tmp_path / "state")
    assert store.load() is None
    snap = Snapshot.build(41, T0, [{"title": "A"}], 5)
    store.save(snap)
    assert store.load() == snap
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


def test_store_ignores_garbage_and_cleans_temps(tmp_path: Path) -> None:
    """An unreadable file loads as None; temp files left by a crash are removed."""
    store = SnapshotStore(tmp_path)
    store.path.write_bytes(b'{"supporters": [')
    leftover = tmp_path / ".snapshot.json.abc.tmp"
    leftover.write_bytes(b"half")
    assert store.load() is None
    assert not leftover.exists()
