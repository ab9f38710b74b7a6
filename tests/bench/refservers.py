"""The reference servers sponsord is measured against, each in its own process.

``python -m tests.bench.refservers KIND --port P --body FILE`` where KIND is

- ``floor``: raw asyncio, a hand-written upgrade, and one pre-built frame
  written to every transport: as little as Python can do per client;
- ``websockets``: the ``websockets`` library's asyncio server and its
  ``broadcast()`` (library defaults, so permessage-deflate is accepted);
- ``bare``: a bare aiohttp handler answering ``GET /v1/supporters`` with the
  same bytes, headers included (and a 304 for a matching ``If-None-Match``),
  for the REST figure.

The WebSocket servers speak sponsord's protocol: ``/v1/supporters/websocket``
sends the current full_state at once, then one frame per version. Their
``GET /trigger?v=N`` makes version N (FILE's body with its version replaced)
and broadcasts it before answering, like a publication in sponsord.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import resource
import struct
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BACKLOG = 4096


class State:
    """The current full_state message, rebuilt from the body template per version."""

    def __init__(self, body: bytes) -> None:
        self.prefix = body[: body.rindex(b'"version":') + 10]
        self.suffix = body[body.rindex(b"}", 0, -1) :]  # "}}" closing meta and the document
        self.version = int(body[len(self.prefix) : -len(self.suffix)])
        self.message = self.build(self.version)

    def build(self, version: int) -> bytes:
        self.version = version
        body = self.prefix + str(version).encode() + self.suffix
        self.message = b'{"type":"full_state","data":' + body + b"}"
        return self.message


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def version_of(target: str) -> int:
    return int(parse_qs(urlsplit(target).query).get("v", ["0"])[0])


# -- floor -------------------------------------------------------------------


class FloorConn(asyncio.Protocol):
    """A client of the floor server: upgrade by hand, then just a transport."""

    __slots__ = ("buf", "server", "transport", "upgraded")

    def __init__(self, server: Floor) -> None:
        self.server = server
        self.buf = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.clients.discard(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.upgraded:
            # Clients only send pongs and closes; answer a close, ignore the rest.
            if len(data) >= 2 and data[0] & 0x0F == 0x8:
                self.transport.write(b"\x88\x02\x03\xe8")
                self.transport.close()
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = self.buf[:end].split(b"\r\n")
        self.buf = b""
        target = lines[0].split(b" ")[1].decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        if target.startswith("/trigger"):
            self.server.broadcast(version_of(target))
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return
        key = headers.get(b"sec-websocket-key")
        if key is None:
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.close()
            return
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + self.server.frame
        )
        self.upgraded = True
        self.server.clients.add(self)


class Floor:
    def __init__(self, state: State) -> None:
        self.state = state
        self.frame = text_frame(state.message)
        self.clients: set[FloorConn] = set()

    def broadcast(self, version: int) -> None:
        self.frame = frame = text_frame(self.state.build(version))
        for client in self.clients:
            if client.transport is not None:
                client.transport.write(frame)

    async def serve(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: FloorConn(self), host, port, backlog=BACKLOG)
        async with server:
            await server.serve_forever()


# -- websockets --------------------------------------------------------------


async def serve_websockets(state: State, host: str, port: int) -> None:
    from http import HTTPStatus

    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.http11 import Request, Response

    clients: set[ServerConnection] = set()

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/trigger"):
            broadcast(clients, state.build(version_of(request.path)), text=True)
            return connection.respond(HTTPStatus.OK, "")
        return None

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.send(state.message, text=True)
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async with serve(handler, host, port, process_request=process_request, backlog=BACKLOG) as server:
        await server.serve_forever()


# -- bare aiohttp ------------------------------------------------------------


def bare_etag(body: bytes) -> str:
    """The ETag the bare server gives ``body``."""
    return '"bench-' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'


async def serve_bare(body: bytes, host: str, port: int) -> None:
    from aiohttp import web

    etag = bare_etag(body)
    # The headers sponsord sends a reader without Origin, so both answers are the same bytes.
    headers = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Origin"}

    async def supporters(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type="application/json", headers=headers)

    app = web.Application()
    app.router.add_get("/v1/supporters", supporters)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=BACKLOG).start()
    print(f"etag {etag}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("floor", "websockets", "bare"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="a GET /v1/supporters body")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    body = args.body.read_bytes()
    runs: dict[str, Callable[[], object]] = {
        "floor": lambda: Floor(State(body)).serve(args.host, args.port),
        "websockets": lambda: serve_websockets(State(body), args.host, args.port),
        "bare": lambda: serve_bare(body, args.host, args.port),
    }
    print(f"ready {args.kind} pid {os.getpid()}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runs[args.kind]())  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
