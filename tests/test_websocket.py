"""The detached WebSocket: handshake, frames from clients, heartbeat, aiohttp letting go."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sponsord.app import create_app
from sponsord.config import Config
from sponsord.keys import HUB, METRICS
from sponsord.simulator import Simulator
from sponsord.websocket import BadUpgrade, close_frame, handshake, text_frame

from .conftest import until, with_server

Client = TestClient[web.Request, web.Application]
MakeConfig = Callable[..., Config]
PATH = "/v1/supporters/websocket"


@pytest.fixture
def start(
    aiohttp_client: Callable[..., Awaitable[Client]], make_config: MakeConfig, sim: Simulator
) -> Callable[..., Awaitable[Client]]:
    async def go(**server: Any) -> Client:
        config = with_server(make_config(sim.base), **server)  # type: ignore[attr-defined]
        client = await aiohttp_client(create_app(config))
        await until(lambda: client.app[HUB].snapshot is not None)
        return client

    return go


def masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame (masked) of any length."""
    key = os.urandom(4)
    body = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + key + body


UPGRADE = (
    b"GET /v1/supporters/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def raw_socket(client: Client) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-driven WebSocket: upgraded, the 101 and the first frame read."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(UPGRADE)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    await read_frame(reader)
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(opcode, payload) of the next server frame."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


def test_handshake_answers_the_rfc_example() -> None:
    """The accept key is RFC 6455's own example; anything but a WebSocket upgrade is refused."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    answer = handshake(headers)
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
    assert b"Extensions" not in answer  # permessage-deflate is declined by omission
    for key, bad in [
        ("Upgrade", "h2c"),
        ("Connection", "keep-alive"),
        ("Sec-WebSocket-Version", "12"),
        ("Sec-WebSocket-Key", base64.b64encode(b"short").decode()),
        ("Sec-WebSocket-Key", "not base64!"),
    ]:
        with pytest.raises(BadUpgrade):
            handshake({**headers, key: bad})


def test_frames_are_rfc_6455() -> None:
    """Server frames are unmasked, final, with the right length encoding."""
    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame(b"x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
    assert close_frame(1001, "bye") == b"\x88\x05\x03\xe9bye"


async def test_plain_get_gets_400(start: Any) -> None:
    """A GET without the upgrade headers is answered 400, not held."""
    client = await start()
    resp = await client.get(PATH)
    assert resp.status == 400
    assert client.app[HUB].websocket_count == 0


async def test_aiohttp_holds_nothing_for_a_connected_client(start: Any) -> None:
    """After the upgrade aiohttp forgets the connection; the hub alone holds it."""
    client = await start()
    sockets = [await client.ws_connect(PATH) for _ in range(5)]
    for ws in sockets:
        assert (await ws.receive_json(timeout=5))["type"] == "full_state"
        assert not ws.compress  # the offer of permessage-deflate was declined
    hub = client.app[HUB]
    await until(lambda: hub.websocket_count == 5)
    runner = client.server.runner
    assert runner is not None and runner.server is not None
    await until(lambda: not runner.server.connections)
    assert client.app[METRICS].clients.labels("websocket")._value.get() == 5
    for ws in sockets:
        await ws.close()
    await until(lambda: hub.websocket_count == 0)
    assert client.app[METRICS].clients.labels("websocket")._value.get() == 0


async def test_ping_gets_pong_and_close_gets_close(start: Any) -> None:
    """A client's ping is answered with its payload; its close with the same code."""
    client = await start()
    ws = await client.ws_connect(PATH, autoping=False)
    await ws.receive(timeout=5)
    await ws.ping(b"are you there")
    pong = await ws.receive(timeout=5)
    assert pong.type == aiohttp.WSMsgType.PONG and pong.data == b"are you there"
    await ws.close(code=4000)
    assert ws.close_code == 4000
    await until(lambda: client.app[HUB].websocket_count == 0)


async def test_oversized_and_malformed_frames_are_closed(start: Any) -> None:
    """Over the message limit: 1009 (fragments add up); unmasked: 1002. The slot is freed."""
    client = await start()
    hub = client.app[HUB]
    reader, writer = await raw_socket(client)
    writer.write(masked(0x1, b"a" * 3000, fin=False) + masked(0x0, b"b" * 3000))
    assert await read_frame(reader) == (0x8, close_frame(1009, "message too big")[2:])
    writer.close()
    reader, writer = await raw_socket(client)
    writer.write(b"\x81\x02hi")  # unmasked
    assert (await read_frame(reader))[1][:2] == (1002).to_bytes(2, "big")
    writer.close()
    await until(lambda: hub.websocket_count == 0)


async def test_heartbeat_pings_and_drops_the_silent(start: Any) -> None:
    """Every client is pinged each interval; one that never answers is dropped."""
    client = await start(heartbeat=1.0)
    hub = client.app[HUB]
    answering = await client.ws_connect(PATH, autoping=False)
    await answering.receive(timeout=5)
    reader, writer = await raw_socket(client)  # reads, never answers
    await until(lambda: hub.websocket_count == 2)
    ping = await answering.receive(timeout=3)
    assert ping.type == aiohttp.WSMsgType.PING
    await answering.pong(ping.data)
    assert await read_frame(reader) == (0x9, b"")
    await until(lambda: hub.websocket_count == 1, timeout=5)
    assert await reader.read() == b""  # the silent one was cut
    ping = await answering.receive(timeout=3)
    assert ping.type == aiohttp.WSMsgType.PING  # the answering one lives on
    writer.close()
    await answering.close()
