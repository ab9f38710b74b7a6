"""sd_notify and sd_listen_fds in plain Python, on real sockets.

(The daemon's use of both, in a real process, is in test_daemon.py.)
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sponsord.sdnotify import Notifier, listen_sockets


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a Unix socket path must fit in 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as name:
        yield Path(name)


def test_notify_to_a_socket_path(short_dir: Path) -> None:
    """A filesystem NOTIFY_SOCKET gets the lines as one datagram, newline-separated."""
    path = str(short_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.enabled
        assert notifier.notify("READY=1", "STATUS=version 3")
        assert server.recv(4096) == b"READY=1\nSTATUS=version 3"
        notifier.close()


def test_notify_to_an_abstract_socket() -> None:
    """An ``@name`` NOTIFY_SOCKET is in the abstract namespace."""
    name = f"sponsord-sdn-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.notify("WATCHDOG=1")
        assert server.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    """Outside systemd every call is a quiet no-op."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False


def test_a_vanished_socket_does_not_raise(short_dir: Path) -> None:
    """If systemd's socket is gone, notify() reports False instead of raising."""
    notifier = Notifier({"NOTIFY_SOCKET": str(short_dir / "missing")})
    assert notifier.notify("READY=1") is False
    notifier.close()


def test_watchdog_interval_is_half_the_timeout() -> None:
    """WATCHDOG_USEC=30 s means a ping every 15 s; WATCHDOG_PID must be ours if set."""
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000"}
    assert Notifier(env).watchdog_interval == 15.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 15.0
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({**env, "WATCHDOG_USEC": "nonsense"}).watchdog_interval is None


def test_listen_sockets_only_for_this_pid() -> None:
    """LISTEN_FDS addressed to another process is ignored (and left alone)."""
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert listen_sockets(env) == []
    assert env == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert listen_sockets({}) == []
