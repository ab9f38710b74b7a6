"""Hostile clients against a real daemon: slowloris, WebSockets that never read, dropped long-polls, caps."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sponsord.simulator import Simulator
from sponsord.webhooks import sign

from .conftest import WEBHOOK_SECRET
from .live import Daemon, record_figures, static_env, write_config

#: The attackers' addresses (all loopback), one per kind, so the per-address cap shows.
SLOWLORIS, NEVER_READ, DROP_POLL = "127.0.0.2", "127.0.0.3", "127.0.0.4"
#: Addresses that together exceed the total cap.
CROWD = [f"127.0.1.{i}" for i in range(1, 9)]

PER_ADDRESS, TOTAL = 64, 300
IDLE_TIMEOUT, HEARTBEAT = 3.0, 1.5
SLOWLORIS_CONNECTIONS, NEVER_READ_ATTEMPTS, CROWD_EACH = 300, 100, 50
ATTACK_SECONDS = 8.0

HANDSHAKE = (
    b"GET /v1/supporters/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of latencies, in milliseconds."""
    if not samples:
        return {}
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "n": len(ordered),
        "p50_ms": round(pick(0.50) * 1000, 1),
        "p95_ms": round(pick(0.95) * 1000, 1),
        "p99_ms": round(pick(0.99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }


async def open_from(source: str, host: str, port: int, rcvbuf: int | None = None) -> socket.socket:
    """A non-blocking TCP socket from ``source`` to the daemon."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    try:
        await loop.sock_connect(sock, (host, port))
    except OSError:
        sock.close()
        raise
    return sock


class Attack:
    """The attackers' state and counts."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stop = asyncio.Event()
        self.sockets: list[socket.socket] = []
        self.counts: dict[str, int] = {}

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def slowloris(self) -> None:
        """Send a request's headers one byte at a time, forever; reconnect when cut off."""
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            try:
                sock = await open_from(SLOWLORIS, self.host, self.port)
            except OSError:
                self.count("slowloris_connect_failed")
                await asyncio.sleep(0.1)
                continue
            self.count("slowloris_connections")
            try:
                await loop.sock_sendall(sock, b"GET /v1/supporters HTTP/1.1\r\nHost: x\r\n")
                while not self.stop.is_set():
                    await loop.sock_sendall(sock, b"X")
                    await asyncio.sleep(0.25)
                    with contextlib.suppress(BlockingIOError):
                        if sock.recv(1024, socket.MSG_PEEK) == b"":
                            raise ConnectionResetError  # the server hung up on us
            except OSError:
                self.count("slowloris_cut_off_by_server")
            finally:
                sock.close()

    async def never_read(self, source: str) -> int:
        """Open a WebSocket and never read a frame; the handshake's status (0: refused)."""
        loop = asyncio.get_running_loop()
        try:
            sock = await open_from(source, self.host, self.port, rcvbuf=4096)
            await loop.sock_sendall(sock, HANDSHAKE)
            status = await asyncio.wait_for(loop.sock_recv(sock, 12), 5)
        except (OSError, TimeoutError):
            return 0
        self.sockets.append(sock)  # held, unread, until the attack ends
        return int(status[9:12]) if status.startswith(b"HTTP/1.1 ") else 0

    async def drop_polls(self, version: int) -> None:
        """Open a long-poll at the current version and hang up at once, in a loop."""
        loop = asyncio.get_running_loop()
        request = f"GET /v1/supporters/poll?since={version}&wait=55 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        while not self.stop.is_set():
            try:
                sock = await open_from(DROP_POLL, self.host, self.port)
                await loop.sock_sendall(sock, request)
                await asyncio.sleep(0.005)
                sock.close()
                self.count("polls_dropped")
            except OSError:
                self.count("poll_drop_failed")
                await asyncio.sleep(0.05)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


class GoodClients:
    """Well-behaved readers on 127.0.0.1: REST probes, one WebSocket, one long-poller."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.phase = "baseline"
        self.latency: dict[str, list[float]] = {}
        self.failures: list[str] = []
        self.ws_versions: list[int] = []
        self.poll_versions: list[int] = []
        self.stop = asyncio.Event()

    async def rest(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                async with session.get(f"{self.url}/v1/supporters") as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError) as exc:
                ok, resp = False, None
                self.failures.append(f"{self.phase}: {type(exc).__name__}")
            if ok:
                self.latency.setdefault(self.phase, []).append(time.perf_counter() - started)
            elif resp is not None:
                self.failures.append(f"{self.phase}: HTTP {resp.status}")
            await asyncio.sleep(0.02)

    async def websocket(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(f"{self.url}/v1/supporters/websocket") as ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                self.ws_versions.append(msg.json()["data"]["meta"]["version"])

    async def longpoll(self, session: aiohttp.ClientSession) -> None:
        since = 0
        while not self.stop.is_set():
            try:
                async with session.get(
                    f"{self.url}/v1/supporters/poll", params={"since": str(since), "wait": "2"}
                ) as resp:
                    if resp.status == 200:
                        since = (await resp.json())["meta"]["version"]
                        self.poll_versions.append(since)
                    elif resp.status != 204:
                        self.failures.append(f"{self.phase}: long-poll HTTP {resp.status}")
                        await asyncio.sleep(0.5)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"{self.phase}: long-poll {type(exc).__name__}")


async def churn(sim: Simulator, hook: str, stop: asyncio.Event) -> None:
    """A roster change announced by a signed webhook every ~0.4 s."""
    rng = random.Random(5)
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            event, member_id = sim.campaign.random_change(rng)
            body = sim.webhook_body(member_id)
            headers = {"X-Patreon-Event": event, "X-Patreon-Signature": sign(WEBHOOK_SECRET, body)}
            async with session.post(hook, data=body, headers=headers) as resp:
                assert resp.status == 202
            await asyncio.sleep(0.4)


async def health(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/healthz") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def until(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Poll ``check`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.timeout(120)
async def test_hostile_clients_do_not_starve_good_ones(tmp_path: Path) -> None:
    """Under slowloris, unread WebSockets and dropped long-polls, good clients stay fast; caps say 503."""
    sim = Simulator.with_members(40, seed=21)
    base = await sim.start()
    config = write_config(
        tmp_path,
        base,
        server={
            "max_clients": TOTAL,
            "max_clients_per_address": PER_ADDRESS,
            "idle_timeout": IDLE_TIMEOUT,
            "heartbeat": HEARTBEAT,
            "slow_client_timeout": 1.0,
        },
        patreon={"webhook_cooldown": 0.1, "requests_per_minute": 100.0, "backoff_base": 0.05},
    )
    daemon = Daemon(config, static_env(sim))
    host, port = (await daemon.started()).removeprefix("http://").split(":")
    attack = Attack(host, int(port))
    good = GoodClients(daemon.url)
    stop_churn = asyncio.Event()
    figures: dict[str, Any] = {}
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.timeout(10):
            while not (await health(session, daemon.url))["snapshot"]["version"]:
                await asyncio.sleep(0.05)
        tasks += [asyncio.create_task(good.rest(session)), asyncio.create_task(good.longpoll(session))]
        ws_task = asyncio.create_task(good.websocket(session))
        churner = asyncio.create_task(churn(sim, f"{daemon.url}/v1/webhooks/patreon", stop_churn))
        tasks.append(churner)
        await asyncio.sleep(2.0)
        fds = {"baseline": daemon.fd_count()}
        rss = {"baseline_kib": daemon.rss_kib()}

        # -- the attack: slowloris, unread WebSockets (one address), dropped long-polls
        good.phase = "attack"
        version = (await health(session, daemon.url))["snapshot"]["version"]
        attackers = [asyncio.create_task(attack.slowloris()) for _ in range(SLOWLORIS_CONNECTIONS)]
        attackers.append(asyncio.create_task(attack.drop_polls(version)))
        statuses = await asyncio.gather(*(attack.never_read(NEVER_READ) for _ in range(NEVER_READ_ATTEMPTS)))
        held = (await health(session, daemon.url))["clients"]["websocket"]
        peak_fds, peak_rss = 0, 0
        attack_end = time.monotonic() + ATTACK_SECONDS
        while time.monotonic() < attack_end:
            peak_fds, peak_rss = max(peak_fds, daemon.fd_count()), max(peak_rss, daemon.rss_kib())
            await asyncio.sleep(0.2)
        # Unread WebSockets are dropped by the server (heartbeat unanswered), not by us.
        during = await health(session, daemon.url)
        attack.stop.set()
        await asyncio.gather(*attackers)

        # -- the total cap: eight addresses ask for more live sockets than the daemon holds
        stop_churn.set()  # the roster holds still from here: a held long-poll stays held
        await churner
        await asyncio.sleep(0.5)
        version = (await health(session, daemon.url))["snapshot"]["version"]
        good.phase = "total_cap"
        crowd = await asyncio.gather(*(attack.never_read(src) for src in CROWD for _ in range(CROWD_EACH)))
        async with session.get(f"{daemon.url}/v1/supporters") as resp:
            rest_at_cap = resp.status
        async with session.get(
            f"{daemon.url}/v1/supporters/poll", params={"since": str(version), "wait": "1"}
        ) as resp:
            poll_at_cap = resp.status, resp.headers.get("Retry-After")
        attack.close()

        # -- after: sockets released, memory bounded, good clients current
        good.phase = "after"

        async def released() -> bool:
            h = await health(session, daemon.url)
            return daemon.fd_count() <= fds["baseline"] + 5 and h["clients"]["longpoll"] <= 1

        fds_released = await until(released, 10)
        fds["peak"], fds["after"] = peak_fds, daemon.fd_count()
        rss["peak_kib"], rss["after_kib"] = peak_rss, daemon.rss_kib()
        dropper_ok = await poll_status_from(DROP_POLL, daemon.url)
        last = (await health(session, daemon.url))["snapshot"]["version"]

        async def current() -> bool:
            return good.ws_versions[-1:] == [last] and good.poll_versions[-1:] == [last]

        await until(current, 5)
        good.stop.set()
        figures = {
            "good_rest_latency": {phase: percentiles(s) for phase, s in good.latency.items()},
            "good_failures": good.failures,
            "good_ws_versions": len(good.ws_versions),
            "good_ws_last_version": good.ws_versions[-1] if good.ws_versions else None,
            "good_longpoll_last_version": good.poll_versions[-1] if good.poll_versions else None,
            "last_version": last,
            "slowloris": {
                "concurrent": SLOWLORIS_CONNECTIONS,
                "connections_opened": attack.counts.get("slowloris_connections", 0),
                "cut_off_by_server": attack.counts.get("slowloris_cut_off_by_server", 0),
                "idle_timeout_s": IDLE_TIMEOUT,
            },
            "never_read_websockets": {
                "attempts": NEVER_READ_ATTEMPTS,
                "accepted_101": statuses.count(101),
                "refused_503": statuses.count(503),
                "held_by_server_at_start": held,
                "held_by_server_after_attack": during["clients"]["websocket"],
            },
            "dropped_longpolls": {
                "dropped": attack.counts.get("polls_dropped", 0),
                "waiters_left_during_attack": during["clients"]["longpoll"],
                "dropper_address_served_after": dropper_ok,
            },
            "total_cap": {
                "max_clients": TOTAL,
                "attempts": len(crowd),
                "accepted_101": crowd.count(101),
                "refused_503": crowd.count(503),
                "other": len(crowd) - crowd.count(101) - crowd.count(503),
                "rest_status_at_cap": rest_at_cap,
                "held_longpoll_at_cap": list(poll_at_cap),
            },
            "fds": fds,
            "fds_released": fds_released,
            "rss": rss,
            "errors_logged": [str(e)[-600:] for e in daemon.errors()],
        }
        record_figures("hostile", figures)
        # The caps answer 503, never fail; the rest of the attack is shed.
        assert statuses.count(101) == PER_ADDRESS and statuses.count(503) == NEVER_READ_ATTEMPTS - PER_ADDRESS
        assert crowd.count(503) > 0 and crowd.count(101) + crowd.count(503) == len(crowd)
        assert rest_at_cap == 200  # REST is never capped
        assert poll_at_cap[0] == 503 and poll_at_cap[1]  # a held long-poll is, with Retry-After
        assert attack.counts.get("slowloris_cut_off_by_server", 0) >= SLOWLORIS_CONNECTIONS
        assert during["clients"]["websocket"] <= 2  # the good one (and perhaps one being dropped)
        assert during["clients"]["longpoll"] <= 2
        assert dropper_ok in (200, 204)
        # Good clients: served all along, and current at the end.
        assert good.failures == []
        assert figures["good_rest_latency"]["attack"]["p99_ms"] < 1000
        assert good.ws_versions[-1] == last and good.poll_versions[-1] == last
        assert good.ws_versions == sorted(set(good.ws_versions))
        assert fds_released, fds
        assert rss["after_kib"] - rss["baseline_kib"] < 30 * 1024
        assert figures["errors_logged"] == []
        ws_task.cancel()
    finally:
        stop_churn.set()
        good.stop.set()
        attack.stop.set()
        attack.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        await daemon.stop()
        await sim.stop()


async def poll_status_from(source: str, url: str) -> int:
    """The status of a short long-poll sent from ``source`` (is the address still served?)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{url}/v1/supporters/poll", params={"since": "-1", "wait": "1"}) as resp,
    ):
        return resp.status
