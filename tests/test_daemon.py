"""``sponsord serve`` as systemd runs it: notify, watchdog, socket activation, stop.

Real processes and sockets only: the daemon is a subprocess talking to the
simulator in this test's event loop, systemd's notification socket is a
datagram socket owned by the test, and socket activation is done by
``systemd-socket-activate``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer

from sponsord.daemon import SHUTDOWN_TIMEOUT
from sponsord.simulator import Simulator
from sponsord.snapshot import Snapshot, SnapshotStore
from sponsord.webhooks import sign

from .live import SPONSORD, Daemon, eventually, get_json, running, static_env, write_config


@pytest.fixture
async def sim(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> tuple[Simulator, str]:
    """A simulated campaign of 12 members on a loopback port, and its base URL."""
    simulator = Simulator.with_members(12, seed=5)
    server = await aiohttp_server(simulator.app)
    return simulator, str(server.make_url("")).rstrip("/")


class NotifySocket:
    """What systemd listens on for sd_notify: an abstract-namespace datagram socket."""

    def __init__(self) -> None:
        self.name = f"@sponsord-test-{os.getpid()}-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.setblocking(False)
        #: (monotonic time received, datagram text)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[tuple[float, str]]:
        """Read every datagram waiting; all received so far."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode()))

    def with_line(self, line: str) -> list[tuple[float, str]]:
        """The datagrams holding ``line`` (e.g. ``READY=1``)."""
        return [(t, m) for t, m in self.drain() if line in m.split("\n")]

    async def wait_line(self, line: str, timeout: float = 15.0) -> str:
        """Wait for the first datagram holding ``line``; its text."""
        await eventually(lambda: self.with_line(line), timeout=timeout, interval=0.005)
        return self.with_line(line)[0][1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    """A fake systemd notification socket, closed afterwards."""
    ns = NotifySocket()
    yield ns
    ns.close()


def persist_snapshot(state_dir: Path, version: int) -> None:
    """Leave a snapshot on disk, as a previous run of the daemon would."""
    snap = Snapshot.build(version, datetime.now(UTC), [{"title": "From Disk"}], 20)
    SnapshotStore(state_dir).save(snap)


async def test_ready_only_once_listening_with_the_persisted_snapshot(
    sim: tuple[Simulator, str], tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """READY=1 arrives when the port answers and already serves the snapshot from disk."""
    simulator, url = sim
    simulator.delay = 2.0  # Patreon is slow: what is served at READY can only come from disk
    persist_snapshot(tmp_path / "state", 41)
    config = write_config(tmp_path, url, patreon={"request_timeout": 10})
    daemon = Daemon(config, {**static_env(simulator), "NOTIFY_SOCKET": notify_socket.name})
    try:
        ready = await notify_socket.wait_line("READY=1")
        # Nothing before READY, and READY carries a status line.
        assert notify_socket.messages[0][1] == ready
        assert "STATUS=version 41" in ready
        base = await daemon.started(timeout=1)  # the listening line precedes READY
        async with aiohttp.ClientSession() as session:
            status, body = await get_json(session, f"{base}/v1/supporters")
            assert status == 200
            assert body["meta"]["version"] == 41
            assert body["supporters"] == [{"title": "From Disk"}]
            status, health = await get_json(session, f"{base}/healthz")
            assert health["snapshot"]["version"] == 41
        assert await daemon.stop() == 0
    finally:
        daemon.close()


async def test_watchdog_pings_and_stopping(
    sim: tuple[Simulator, str], tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """WATCHDOG=1 every WATCHDOG_USEC/2 with STATUS=; STOPPING=1 on SIGTERM, then exit 0."""
    simulator, url = sim
    config = write_config(tmp_path, url)
    env = {**static_env(simulator), "NOTIFY_SOCKET": notify_socket.name, "WATCHDOG_USEC": "200000"}
    async with running(config, env) as daemon:
        await notify_socket.wait_line("READY=1")
        await daemon.wait_for("snapshot_published")
        window_start = time.monotonic()
        await asyncio.sleep(1.2)
        pings = [t for t, _ in notify_socket.with_line("WATCHDOG=1") if t >= window_start]
        # 0.1 s apart: ~12 in 1.2 s; allow for a loaded CI machine.
        assert 6 <= len(pings) <= 16, pings
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 0.5
        status = [m for _, m in notify_socket.drain() if "WATCHDOG=1" in m][-1]
        assert "STATUS=version 1, " in status
        assert "refreshed" in status and "Patreon ok" in status

        daemon.signal(signal.SIGTERM)
        stopping = await notify_socket.wait_line("STOPPING=1", timeout=5)
        assert "STATUS=stopping" in stopping
        assert await daemon.exited(5) == 0


async def test_watchdog_for_another_pid_is_ignored(
    sim: tuple[Simulator, str], tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """WATCHDOG_PID naming another process means no WATCHDOG=1 from this one."""
    simulator, url = sim
    config = write_config(tmp_path, url)
    env = {
        **static_env(simulator),
        "NOTIFY_SOCKET": notify_socket.name,
        "WATCHDOG_USEC": "100000",
        "WATCHDOG_PID": "1",
    }
    async with running(config, env) as daemon:
        await notify_socket.wait_line("READY=1")
        await asyncio.sleep(0.5)
        assert notify_socket.with_line("WATCHDOG=1") == []
        assert await daemon.stop() == 0


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="no systemd-socket-activate")
async def test_socket_activation_serves_on_the_passed_socket(
    sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """Under systemd-socket-activate the daemon serves /healthz on the inherited socket, not host:port."""
    simulator, url = sim
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        activated_port = probe.getsockname()[1]
    config_port = activated_port + 1 if activated_port < 65535 else activated_port - 1
    config = write_config(tmp_path, url, server={"port": config_port})
    env = static_env(simulator)
    argv = ["systemd-socket-activate", "-l", f"127.0.0.1:{activated_port}"]
    for name in env:
        argv += ["-E", name]  # socket-activate passes only what it is told to
    argv += [SPONSORD, "serve", "--config", str(config)]
    daemon = Daemon(config, env, argv=argv)
    try:
        await eventually(lambda: "Listening on" in daemon.log_text(), timeout=10)
        async with aiohttp.ClientSession() as session:
            # The first connection makes systemd-socket-activate exec sponsord;
            # the connection waits in the listening socket's queue meanwhile.
            status, health = await get_json(
                session, f"http://127.0.0.1:{activated_port}/healthz", timeout=aiohttp.ClientTimeout(total=20)
            )
            assert status == 200
            assert health["status"] in ("starting", "ok")
        listening = await daemon.wait_for("listening")
        assert listening["socket_activated"] is True
        assert listening["url"] == f"http://127.0.0.1:{activated_port}"
        with socket.socket() as other, pytest.raises(ConnectionRefusedError):
            other.connect(("127.0.0.1", config_port))
        assert await daemon.stop() == 0  # same PID: socket-activate exec'd sponsord
    finally:
        daemon.close()


async def test_sigterm_closes_websockets_answers_long_polls_and_exits_0(
    sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """SIGTERM with open WebSockets and long-polls: 1001 / 503 for all, exit 0 within 5 s, state on disk."""
    simulator, url = sim
    config = write_config(tmp_path, url, server={"longpoll_wait": 50})
    async with running(config, static_env(simulator)) as daemon, aiohttp.ClientSession() as session:
        base = daemon.url
        await daemon.wait_for("snapshot_published")
        _status, current = await get_json(session, f"{base}/v1/supporters")
        version = current["meta"]["version"]

        sockets = [await session.ws_connect(f"{base}/v1/supporters/websocket") for _ in range(5)]
        for ws in sockets:
            first = await ws.receive(timeout=5)
            assert json.loads(first.data)["data"]["meta"]["version"] == version

        async def long_poll() -> tuple[int, str | None]:
            async with session.get(f"{base}/v1/supporters/poll?since={version}&wait=50") as resp:
                await resp.read()
                return resp.status, resp.headers.get("Retry-After")

        polls = [asyncio.create_task(long_poll()) for _ in range(5)]

        async def all_held() -> bool:
            _, health = await get_json(session, f"{base}/healthz")
            return bool(health["clients"] == {"websocket": 5, "longpoll": 5})

        await eventually(all_held, timeout=5)

        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        closes = await asyncio.gather(*(ws.receive(timeout=5) for ws in sockets))
        answers = await asyncio.wait_for(asyncio.gather(*polls), 5)
        code = await daemon.exited(5)
        elapsed = time.monotonic() - started

        assert [m.type for m in closes] == [WSMsgType.CLOSE] * 5
        assert [m.data for m in closes] == [1001] * 5
        assert [status for status, _ in answers] == [503] * 5
        assert all(retry for _, retry in answers)
        assert code == 0
        assert elapsed < 5.0
        for ws in sockets:
            await ws.close()
        # The snapshot being served is the one on disk for the next start.
        persisted = SnapshotStore(tmp_path / "state").load()
        assert persisted is not None and persisted.version == version
        events = [line["event"] for line in daemon.lines()]
        assert events[-3:] == ["stopping", "websockets_closed", "stopped"]


async def test_sighup_refreshes_now(sim: tuple[Simulator, str], tmp_path: Path) -> None:
    """SIGHUP (systemctl reload) makes the daemon fetch from Patreon at once."""
    simulator, url = sim
    config = write_config(tmp_path, url)
    async with running(config, static_env(simulator)) as daemon:
        await daemon.wait_for("snapshot_published")
        simulator.campaign.add_member("Newcomer Nadia", start="2030-01-01T00:00:00+00:00")
        before = simulator.member_requests
        daemon.signal(signal.SIGHUP)
        await eventually(lambda: simulator.member_requests > before, timeout=5)
        await daemon.wait_for("snapshot_published", version=2)
        assert await daemon.stop() == 0


async def test_secrets_from_credentials_directory(sim: tuple[Simulator, str], tmp_path: Path) -> None:
    """Secrets as ``LoadCredential=patreon:/etc/sponsord/credentials`` hands them over are used."""
    simulator, url = sim
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    # systemd names each file of the directory "patreon_<file name>".
    (credentials / "patreon_access_token").write_text(next(iter(simulator.access_tokens)) + "\n")
    (credentials / "patreon_webhook_secret").write_text(simulator.webhook_secret)
    config = write_config(tmp_path, url)
    async with running(config, {"CREDENTIALS_DIRECTORY": str(credentials)}) as daemon:
        await daemon.wait_for("snapshot_published")
        async with aiohttp.ClientSession() as session:
            status, health = await get_json(session, f"{daemon.url}/healthz")
            assert status == 200 and health["upstream"]["ok"] is True
        assert await daemon.stop() == 0


async def test_a_request_stuck_mid_body_does_not_stall_the_stop(
    sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """A client that stops sending halfway through a body gets SHUTDOWN_TIMEOUT, then the daemon exits 0.

    (aiohttp stops reading from connections once the stop begins, so such a
    request cannot complete; Patreon retries a webhook that got no answer.)
    """
    simulator, url = sim
    config = write_config(tmp_path, url)
    async with running(config, static_env(simulator)) as daemon:
        await daemon.wait_for("snapshot_published")
        assert daemon.url is not None
        host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
        body = simulator.webhook_body(next(iter(simulator.campaign.members)))
        signature = sign(simulator.webhook_secret, body)
        head = (
            f"POST /v1/webhooks/patreon HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"X-Patreon-Event: members:update\r\nX-Patreon-Signature: {signature}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + body[:100])
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is now waiting for the rest of the body
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert await daemon.exited(SHUTDOWN_TIMEOUT + 3) == 0
        assert time.monotonic() - started < SHUTDOWN_TIMEOUT + 3
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, not left hanging
        writer.close()
