"""The client side: a WebSocket swarm, long-poll waiters and an HTTP load generator.

Everything here runs in the one benchmark process, so it is written for a
low cost per connection and per message: bare :class:`asyncio.Protocol`
subclasses with ``__slots__``, no task per client, no JSON parsing (a frame's
version is found with ``rfind``). The WebSocket client speaks just enough of
RFC 6455 to be honest: a real upgrade, frames of any length, masked pongs to
every ping, a close answered with a close, and, when asked, an offer of
permessage-deflate like a browser's (inflated when a server accepts it).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import struct
import time
import zlib
from collections.abc import Callable

#: Same shape as a browser's offer (Chromium sends exactly this).
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"

#: The page's reconnect schedule (web/templates/embed.js): n-th retry waits
#: uniform(0, min(cap, base * 2**n)) seconds.
BACKOFF_BASE, BACKOFF_CAP = 1.0, 30.0

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame_version(payload: bytes) -> int:
    """The ``meta.version`` of a full_state message, found without parsing JSON."""
    i = payload.rfind(b'"version":')
    if i < 0:
        return -1
    j = i + 10
    k = j
    while k < len(payload) and 48 <= payload[k] <= 57:
        k += 1
    return int(payload[j:k]) if k > j else -1


def masked(opcode: int, payload: bytes) -> bytes:
    """A final client frame (masked, as RFC 6455 requires) of at most 125 bytes."""
    key = os.urandom(4)
    body = bytes(b ^ key[i & 3] for i, b in enumerate(payload[:125]))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(body)) + key + body


class WsConn(asyncio.Protocol):
    """One WebSocket client of a :class:`Swarm`."""

    __slots__ = (
        "buf",
        "counted",
        "frag",
        "inflate",
        "open",
        "ready",
        "slot",
        "swarm",
        "transport",
        "version",
        "wbits",
    )

    def __init__(self, swarm: Swarm, slot: int) -> None:
        self.swarm = swarm
        self.slot = slot
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.open = False
        self.version = -1
        self.counted = -1  # the swarm generation this client was last counted in
        self.wbits = 0  # >0 once permessage-deflate was accepted
        self.inflate: zlib._Decompress | None = None
        self.frag: bytes | None = None
        self.ready: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.swarm.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.transport = None
        self._settle(ConnectionError("closed before the first frame"))
        self.swarm.lost(self)

    def _settle(self, exc: BaseException | None = None) -> None:
        ready, self.ready = self.ready, None
        if ready is not None and not ready.done():
            if exc is None:
                ready.set_result(None)
            else:
                ready.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        if self.open:
            self._frames(data)
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 16384:
                self._fail("handshake too long")
            return
        head, rest = self.buf[:end], self.buf[end + 4 :]
        self.buf = b""
        if not head.startswith(b"HTTP/1.1 101"):
            self._fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            return
        if self.swarm.accept not in head.lower():
            self._fail("wrong Sec-WebSocket-Accept")
            return
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"sec-websocket-extensions:") and b"permessage-deflate" in line:
                self.wbits = 15
                if b"server_max_window_bits=" in line:
                    self.wbits = int(line.split(b"server_max_window_bits=")[1].split(b";")[0].strip())
        self.open = True
        self.swarm.opened(self)
        if rest:
            self._frames(rest)

    def _fail(self, why: str) -> None:
        self.swarm.failures.append(why)
        self._settle(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    def _frames(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:  # servers must not mask; tolerate it anyway
                head += 4
            end = pos + head + length
            if end > n:
                break
            payload = buf[end - length : end]
            if b1 & 0x80:
                key = buf[end - length - 4 : end - length]
                payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
            self._frame(b0, payload)
            pos = end
            if self.transport is None:
                return
        self.buf = buf[pos:] if pos < n else b""

    def _frame(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode >= 0x8:
            if opcode == OP_PING and self.transport is not None:
                self.transport.write(masked(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.swarm.close_codes.append(code)
                if self.transport is not None:
                    self.transport.write(masked(OP_CLOSE, payload[:2]))
                    self.transport.close()
            return
        if opcode == 0 and self.frag is not None:  # continuation
            self.frag += payload
        else:
            self.frag = payload
            if b0 & 0x40:  # RSV1: compressed message (permessage-deflate)
                self.frag = b"\x00" + self.frag  # marker, stripped below
        if not b0 & 0x80:
            return
        message, self.frag = self.frag, None
        if message[:1] == b"\x00" and self.wbits:
            if self.inflate is None:
                self.inflate = zlib.decompressobj(-self.wbits)
            message = self.inflate.decompress(message[1:] + b"\x00\x00\xff\xff")
        self.swarm.received(self, frame_version(message))


class Swarm:
    """Many WebSocket clients of one server, and when each got which version.

    deflate: offer permessage-deflate in the upgrade, as a browser does.
    """

    def __init__(self, host: str, port: int, path: str, *, deflate: bool = False) -> None:
        self.host, self.port = host, port
        key = base64.b64encode(os.urandom(16)).decode()
        digest = hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        self.accept = b"sec-websocket-accept: " + base64.b64encode(digest).lower()
        ext = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if deflate else ""
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        ).encode()
        self.clients: list[WsConn | None] = []
        self.failures: list[str] = []
        self.close_codes: list[int] = []
        self.open = 0
        self.compressed = 0
        # the broadcast being timed
        self.gen = 0
        self.target = 0
        self.expected = 0
        self.times: list[float] = []
        self.done: asyncio.Event = asyncio.Event()
        # reconnect storm
        self.reconnect = False
        self.backoff: dict[int, int] = {}
        self.rng = random.Random(6455)
        self.reconnects = 0
        self.dialing: set[asyncio.Future[None]] = set()

    # -- callbacks from the connections ------------------------------------

    def opened(self, conn: WsConn) -> None:
        self.open += 1
        if conn.wbits:
            self.compressed += 1

    def received(self, conn: WsConn, version: int) -> None:
        if conn.version < 0:
            conn._settle()
        conn.version = version
        self.backoff.pop(conn.slot, None)
        if version >= self.target and conn.counted != self.gen:
            conn.counted = self.gen
            self.times.append(time.perf_counter())
            if len(self.times) >= self.expected:
                self.done.set()

    def lost(self, conn: WsConn) -> None:
        if conn.open:
            self.open -= 1
        if self.reconnect and self.clients[conn.slot] is conn:
            self._schedule(conn.slot)

    # -- connecting --------------------------------------------------------

    async def _connect_one(self, slot: int) -> WsConn:
        loop = asyncio.get_running_loop()
        conn = WsConn(self, slot)
        conn.ready = loop.create_future()
        ready = conn.ready
        self.clients[slot] = conn
        await loop.create_connection(lambda: conn, self.host, self.port)
        await ready
        return conn

    async def connect(self, n: int, *, concurrency: int = 256, timeout: float = 120.0) -> float:
        """Open ``n`` clients, each holding its first frame; return the seconds it took."""
        start = len(self.clients)
        self.clients.extend([None] * n)
        gate = asyncio.Semaphore(concurrency)
        errors: list[BaseException] = []

        async def one(slot: int) -> None:
            async with gate:
                try:
                    await self._connect_one(slot)
                except (OSError, ConnectionError) as exc:
                    errors.append(exc)

        began = time.perf_counter()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(one(start + i) for i in range(n)))
        took = time.perf_counter() - began
        if errors:
            raise ConnectionError(f"{len(errors)} of {n} clients failed: {errors[0]!r}")
        return took

    # -- timing a broadcast ------------------------------------------------

    def expect(self, version: int, count: int | None = None) -> None:
        """Start timing: every client should now receive ``version`` (or newer)."""
        self.gen += 1
        self.target = version
        self.expected = len(self.clients) if count is None else count
        self.times = []
        self.done = asyncio.Event()

    async def wait(self, timeout: float) -> list[float]:
        """The receipt times of the expected version (fewer on timeout)."""
        try:
            async with asyncio.timeout(timeout):
                await self.done.wait()
        except TimeoutError:
            pass
        return list(self.times)

    # -- reconnect storm ---------------------------------------------------

    def _schedule(self, slot: int) -> None:
        failures = self.backoff[slot] = self.backoff.get(slot, 0) + 1
        delay = self.rng.random() * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1))
        asyncio.get_running_loop().call_later(delay, self._respawn, slot)

    def _respawn(self, slot: int) -> None:
        if self.reconnect:
            self.reconnects += 1
            task = asyncio.ensure_future(self._dial(slot))
            self.dialing.add(task)
            task.add_done_callback(self.dialing.discard)

    async def _dial(self, slot: int) -> None:
        if not self.reconnect:
            return
        conn = self.clients[slot] = WsConn(self, slot)
        try:
            await asyncio.get_running_loop().create_connection(lambda: conn, self.host, self.port)
        except OSError:  # refused while the server restarts: connection_lost never comes
            if self.reconnect:
                self._schedule(slot)

    # -- teardown ----------------------------------------------------------

    async def close(self, *, timeout: float = 10.0) -> None:
        """Close every client (abort, like a tab going away) and wait until the kernel saw it."""
        self.reconnect = False
        for task in list(self.dialing):
            task.cancel()
        for conn in self.clients:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
        self.clients = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)


# -- long-poll ---------------------------------------------------------------


def parse_head(buf: bytes) -> tuple[int, int, int] | None:
    """(status, body offset, Content-Length) of an HTTP/1.1 answer, None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].lower()
    i = head.find(b"\r\ncontent-length:")
    length = 0
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17 : j if j >= 0 else end])
    return int(head[9:12]), end + 4, length


class PollConn(asyncio.Protocol):
    """One long-poll request; records when its complete answer arrived."""

    __slots__ = ("buf", "need", "on_answer", "request", "start", "status", "transport")

    def __init__(self, request: bytes, on_answer: Callable[[int, int, float], None]) -> None:
        self.request = request
        self.on_answer = on_answer
        self.buf = b""
        self.need = -1
        self.start = 0
        self.status = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            parsed = parse_head(self.buf)
            if parsed is None:
                return
            self.status, self.start, length = parsed
            self.need = self.start + length
        if len(self.buf) >= self.need:
            # Like a browser honouring "Connection: close": done reading, the
            # server's close (EOF) ends the connection.
            self.on_answer(self.status, frame_version(self.buf[self.start :]), time.perf_counter())
            self.buf = b""
            self.need = 1 << 62


async def open_polls(
    host: str, port: int, path: str, n: int, on_answer: Callable[[int, int, float], None]
) -> list[asyncio.Transport]:
    """Send ``n`` long-poll requests (each on its own connection, like separate pages)."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(256)
    transports: list[asyncio.Transport] = []

    async def one() -> None:
        async with gate:
            transport, _ = await loop.create_connection(lambda: PollConn(request, on_answer), host, port)
            transports.append(transport)

    await asyncio.gather(*(one() for _ in range(n)))
    return transports


# -- HTTP/1.1 keep-alive load generator -------------------------------------


class LoadConn(asyncio.Protocol):
    """Sends one request, waits for the whole answer, sends the next, until told to stop."""

    __slots__ = ("buf", "gen", "need", "transport")

    def __init__(self, gen: LoadGen) -> None:
        self.gen = gen
        self.buf = b""
        self.need = -1
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.gen.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.gen.errors += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                if b"\r\n\r\n" not in self.buf:
                    return
                status, start, length = parse_head(self.buf)  # type: ignore[misc]
                self.gen.statuses[status] = self.gen.statuses.get(status, 0) + 1
                self.need = start + length
            if len(self.buf) < self.need:
                return
            self.buf = self.buf[self.need :]
            self.need = -1
            self.gen.count += 1
            if self.gen.running and self.transport is not None:
                self.transport.write(self.gen.request)


class LoadGen:
    """``connections`` keep-alive clients hammering one URL for ``seconds``."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
        self.host, self.port = host, port
        self.count = 0
        self.errors = 0
        self.running = False
        self.statuses: dict[int, int] = {}

    async def run(self, seconds: float, connections: int = 32, warmup: float = 0.5) -> float:
        """Requests per second over ``seconds`` (after ``warmup``)."""
        loop = asyncio.get_running_loop()
        self.running = True
        conns = [
            (await loop.create_connection(lambda: LoadConn(self), self.host, self.port))[0]
            for _ in range(connections)
        ]
        await asyncio.sleep(warmup)
        first, began = self.count, time.perf_counter()
        await asyncio.sleep(seconds)
        done, ended = self.count, time.perf_counter()
        self.running = False
        await asyncio.sleep(0.05)
        for transport in conns:
            transport.close()
        self.errors -= len(conns)  # the closes above are not errors
        await asyncio.sleep(0.05)
        return (done - first) / (ended - began)
