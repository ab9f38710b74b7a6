"""The soak: thousands of WebSocket and long-poll clients on a real daemon while the roster churns.

A ``sponsord serve`` process runs against the simulator (in this process),
whose campaign changes every few seconds, each change announced by a signed
webhook. ``SOAK_WS`` WebSocket clients and ``SOAK_POLLS`` long-poll clients,
spread over loopback addresses so the default per-address cap applies,
follow it for ``SOAK_SECONDS``. Then the changes stop, and:

- every client must hold the last version (no lost update);
- the daemon's RSS must not have grown by more than ``RSS_BOUND_MIB`` after
  the warm-up (all clients connected and a first stretch of changes);
- the daemon must have logged no error.

The figures go to stdout and to ``tests/artifacts/hostile.json`` (``soak``); the
exit status is 0 only when all three hold.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from sponsord.simulator import Simulator
from sponsord.webhooks import sign

from ..conftest import WEBHOOK_SECRET
from ..live import Daemon, record_figures, static_env, write_config

#: RSS may grow by at most this much between the end of the warm-up and the end.
RSS_BOUND_MIB = 24

#: Clients per loopback source address, under the default per-address cap (64).
PER_ADDRESS = 60

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA
VERSION = re.compile(rb'"version":(\d+)')


def env_number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def source_address(i: int) -> str:
    """The i-th client's loopback address: 127.0.2.1, 127.0.2.2, ... (PER_ADDRESS each)."""
    n = i // PER_ADDRESS
    return f"127.0.{2 + n // 250}.{1 + n % 250}"


class Fleet:
    """What every client holds, and what went wrong."""

    def __init__(self) -> None:
        self.ws_versions: dict[int, int] = {}
        self.poll_versions: dict[int, int] = {}
        self.frames = 0
        self.poll_answers = 0
        self.reconnects = 0
        self.refused: dict[str, int] = {}
        self.out_of_order = 0
        self.stopping = False
        self.changes = 0

    def refuse(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1


class WsClient(asyncio.Protocol):
    """A lean RFC 6455 client: handshake, frames, pongs, close; remembers the last version."""

    def __init__(self, fleet: Fleet, slot: int) -> None:
        self.fleet, self.slot = fleet, slot
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                "GET /v1/supporters/websocket HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload[:125]))
        assert self.transport is not None
        self.transport.write(struct.pack("!BB", 0x80 | opcode, 0x80 | len(body)) + mask + body)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            status = head.split(b" ", 2)[1].decode(errors="replace")
            if status != "101":
                self.fleet.refuse(f"websocket {status}")
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
        while len(self.buffer) >= 2:
            opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                (length,) = struct.unpack("!H", self.buffer[2:4])
                offset = 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                (length,) = struct.unpack("!Q", self.buffer[2:10])
                offset = 10
            if len(self.buffer) < offset + length:
                return
            payload = self.buffer[offset : offset + length]
            self.buffer = self.buffer[offset + length :]
            if opcode == OP_TEXT:
                match = VERSION.search(payload, max(0, len(payload) - 120))
                if match:
                    version = int(match.group(1))
                    if version < self.fleet.ws_versions.get(self.slot, 0):
                        self.fleet.out_of_order += 1
                    self.fleet.ws_versions[self.slot] = version
                    self.fleet.frames += 1
            elif opcode == OP_PING:
                self.send(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.send(OP_CLOSE, payload[:2])
                assert self.transport is not None
                self.transport.close()


async def websocket_client(fleet: Fleet, slot: int, host: str, port: int) -> None:
    """Keep one WebSocket open (reconnecting with jittered backoff) until the soak stops."""
    loop = asyncio.get_running_loop()
    failures = 0
    while not fleet.stopping:
        try:
            _, client = await loop.create_connection(
                lambda: WsClient(fleet, slot), host, port, local_addr=(source_address(slot), 0)
            )
            await client.closed
            failures = 0 if client.upgraded else failures + 1
        except OSError:
            fleet.refuse("websocket connect")
            failures += 1
        if not fleet.stopping:
            fleet.reconnects += 1
            await asyncio.sleep(random.uniform(0, min(10.0, 0.5 * 2**failures)))


async def longpoll_client(fleet: Fleet, slot: int, session: aiohttp.ClientSession, url: str) -> None:
    """Long-poll in a loop, as the page's fallback does, until the soak stops."""
    since = 0
    while not fleet.stopping:
        try:
            async with session.get(url, params={"since": str(since), "wait": "25"}) as resp:
                body = await resp.read()
                if resp.status == 200:
                    version = int(VERSION.findall(body)[-1])
                    if version < since:
                        fleet.out_of_order += 1
                    since = fleet.poll_versions[slot] = version
                    fleet.poll_answers += 1
                elif resp.status != 204:
                    fleet.refuse(f"long-poll {resp.status}")
                    await asyncio.sleep(random.uniform(0, 5))
        except (aiohttp.ClientError, TimeoutError):
            fleet.refuse("long-poll error")
            fleet.reconnects += 1
            await asyncio.sleep(random.uniform(0, 2))


async def churn(sim: Simulator, hook: str, interval: float, rng: random.Random, fleet: Fleet) -> None:
    """A roster change every ``interval`` (±50%) s, each with its signed webhook (counted)."""
    async with aiohttp.ClientSession() as session:
        while True:
            await asyncio.sleep(interval * rng.uniform(0.5, 1.5))
            event, member_id = sim.campaign.random_change(rng)
            body = sim.webhook_body(member_id)
            headers = {"X-Patreon-Event": event, "X-Patreon-Signature": sign(WEBHOOK_SECRET, body)}
            try:
                async with session.post(hook, data=body, headers=headers) as resp:
                    await resp.read()
                    fleet.changes += resp.status == 202
            except (aiohttp.ClientError, TimeoutError):
                pass


async def soak() -> dict[str, Any]:
    seconds = env_number("SOAK_SECONDS", 600)
    n_ws, n_polls = int(env_number("SOAK_WS", 2000)), int(env_number("SOAK_POLLS", 1000))
    interval = env_number("SOAK_INTERVAL", 3.0)
    warmup = min(60.0, max(10.0, seconds / 10))
    rng = random.Random(7)
    sim = Simulator.with_members(200, seed=7)
    base = await sim.start()
    workdir = Path(tempfile.mkdtemp(prefix="sponsord-soak-"))
    patreon = {"webhook_cooldown": 0.5, "backoff_base": 0.05, "requests_per_minute": 60.0}
    daemon = Daemon(write_config(workdir, base, patreon=patreon), static_env(sim))
    host, port = (await daemon.started()).removeprefix("http://").split(":")
    await asyncio.sleep(1.0)  # the first snapshot
    rss_idle = daemon.rss_kib()
    fleet = Fleet()
    started = time.monotonic()
    print(f"soak: {n_ws} WebSockets, {n_polls} long-polls, {seconds:.0f} s, pid {daemon.pid}", flush=True)
    first_poll = -(-n_ws // PER_ADDRESS) * PER_ADDRESS  # long-polls start on a fresh address
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=(source_address(first_poll + i), 0)),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        for i in range(0, n_polls, PER_ADDRESS)
    ]
    poll_url = f"{daemon.url}/v1/supporters/poll"
    clients = [asyncio.create_task(websocket_client(fleet, i, host, int(port))) for i in range(n_ws)]
    clients += [
        asyncio.create_task(longpoll_client(fleet, i, sessions[i // PER_ADDRESS], poll_url))
        for i in range(n_polls)
    ]
    churner = asyncio.create_task(churn(sim, f"{daemon.url}/v1/webhooks/patreon", interval, rng, fleet))
    samples: list[dict[str, Any]] = []
    rss_warm: int | None = None
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            await asyncio.sleep(5)
            sample = {
                "t": round(elapsed),
                "rss_kib": daemon.rss_kib(),
                "fds": daemon.fd_count(),
                "ws_holding": len(fleet.ws_versions),
                "frames": fleet.frames,
                "poll_answers": fleet.poll_answers,
            }
            samples.append(sample)
            if rss_warm is None and elapsed >= warmup:
                rss_warm = sample["rss_kib"]
            print(f"soak: {sample}", flush=True)
        churner.cancel()
        await asyncio.gather(churner, return_exceptions=True)
        # The last change must reach everyone: wait for quiescence, then for the clients.
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(2.0)
            async with session.get(f"{daemon.url}/v1/supporters") as resp:
                last = int(VERSION.findall(await resp.read())[-1])
            async with session.get(f"{daemon.url}/metrics") as resp:
                metrics = await resp.text()
        deadline = time.monotonic() + 40  # a long-poll answers within its 25 s hold
        while time.monotonic() < deadline:
            ws_behind = [s for s in range(n_ws) if fleet.ws_versions.get(s) != last]
            polls_behind = [s for s in range(n_polls) if fleet.poll_versions.get(s) != last]
            if not ws_behind and not polls_behind:
                break
            await asyncio.sleep(0.5)
        rss_end = daemon.rss_kib()
    finally:
        fleet.stopping = True
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        for session in sessions:
            await session.close()
        code = await daemon.stop()
        await sim.stop()
    rss_warm = rss_warm or samples[0]["rss_kib"]
    growth_mib = (rss_end - rss_warm) / 1024
    errors = daemon.errors()
    figures = {
        "seconds": round(time.monotonic() - started),
        "websocket_clients": n_ws,
        "longpoll_clients": n_polls,
        "roster_changes": fleet.changes,
        "versions_published": last,
        "frames_delivered": fleet.frames,
        "longpoll_answers_200": fleet.poll_answers,
        "ws_holding_last_version": n_ws - len(ws_behind),
        "longpoll_holding_last_version": n_polls - len(polls_behind),
        "out_of_order": fleet.out_of_order,
        "reconnects": fleet.reconnects,
        "refused": fleet.refused,
        "rss_idle_kib": rss_idle,
        "rss_start_kib": samples[0]["rss_kib"] if samples else None,
        "rss_after_warmup_kib": rss_warm,
        "rss_end_kib": rss_end,
        "rss_growth_after_warmup_mib": round(growth_mib, 1),
        "rss_bound_mib": RSS_BOUND_MIB,
        "peak_fds": max(s["fds"] for s in samples) if samples else None,
        "slow_disconnects": _metric(metrics, "sponsord_slow_disconnects_total"),
        "errors_logged": [str(e)[:300] for e in errors],
        "daemon_exit": code,
    }
    figures["ok"] = (
        not ws_behind
        and not polls_behind
        and fleet.out_of_order == 0
        and growth_mib <= RSS_BOUND_MIB
        and not errors
        and code == 0
    )
    return figures


def _metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def main() -> int:
    """Run the soak, print and record its figures; 0 when it held."""
    figures = asyncio.run(soak())
    record_figures("soak", figures)
    print("soak: PASS" if figures["ok"] else "soak: FAIL", flush=True)
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
