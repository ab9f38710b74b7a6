"""Fan-out: one snapshot to every WebSocket client and long-poll waiter.

The frame for a snapshot is built once (``{"type":"full_state","data":...}``
with its RFC 6455 header) and the same bytes are written to every client's
transport: no per-client encoding, no per-client task, no queue. A client
that has not drained the previous frame gets no new one appended; it is
marked to receive the newest frame once it drains (latest wins), and closed
with 4008 if it stays blocked past ``slow_timeout``.

Long-poll waiters all await one shared future per version, resolved by the
same publication.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import weakref
from collections import Counter as Tally

import structlog
from aiohttp import WSCloseCode, web

from .metrics import Metrics
from .snapshot import Snapshot

log = structlog.get_logger(__name__)

#: Close code for a client too slow to read: 4000-4999 is for applications;
#: 4008 echoes 1008 (policy) and tells our page to reconnect.
SLOW_CLIENT_CODE = 4008

#: How often a blocked client's buffer is looked at again.
DRAIN_POLL = 0.05

#: A whole shutdown of live clients must fit well inside systemd's stop timeout.
CLOSE_ALL_TIMEOUT = 3.0


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final, uncompressed RFC 6455 text frame (server to client)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def close_frame(code: int, reason: str) -> bytes:
    """An unmasked close frame with ``code`` and ``reason``."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return struct.pack("!BB", 0x88, len(payload)) + payload


def full_state(snapshot: Snapshot) -> bytes:
    """The JSON text of the full_state message for ``snapshot``."""
    return b'{"type":"full_state","data":' + snapshot.body + b"}"


class Closing(Exception):
    """The hub is shutting down; live requests should be answered 503."""


class WsClient:
    """One WebSocket client: its transport and at most one pending frame."""

    __slots__ = ("__weakref__", "address", "drainer", "pending", "transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, address: str) -> None:
        self.ws = ws
        self.transport = transport
        self.pending: bytes | None = None
        self.drainer: asyncio.Task[None] | None = None
        self.address = address


class ClientLimits:
    """Caps on live clients (WebSocket + long-poll), in total and per address."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._by_address: Tally[str] = Tally()

    def acquire(self, address: str) -> str | None:
        """Count one more client; return None, or the reason it is refused."""
        if self.total >= self.max_total:
            return "total_cap"
        if self._by_address[address] >= self.max_per_address:
            return "address_cap"
        self.total += 1
        self._by_address[address] += 1
        return None

    def release(self, address: str) -> None:
        """Forget one client of ``address``."""
        self.total -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]


class Hub:
    """Holds the current snapshot and fans every new one out.

    slow_timeout: seconds a WebSocket client may leave a frame unread.
    metrics: where fan-out figures go.
    """

    def __init__(self, metrics: Metrics, slow_timeout: float = 10.0) -> None:
        self.metrics = metrics
        self.slow_timeout = slow_timeout
        self.snapshot: Snapshot | None = None
        self.closing = False
        self._frame = b""
        self._text = ""
        self._clients: weakref.WeakSet[WsClient] = weakref.WeakSet()
        self._strong: set[WsClient] = set()  # a client lives as long as its handler
        self._changed: asyncio.Future[None] | None = None
        self.waiters = 0

    # -- publication -------------------------------------------------------

    def publish(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` current and hand it to every live client."""
        started = time.perf_counter()
        self.snapshot = snapshot
        payload = full_state(snapshot)
        self._frame = frame = text_frame(payload)
        self._text = ""  # built lazily, only if a compressing client exists
        clients = list(self._clients)
        for client in clients:
            self._offer(client, frame)
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
        m = self.metrics
        m.broadcasts.inc()
        m.frames_sent.inc(len(clients))
        m.broadcast_seconds.observe(time.perf_counter() - started)
        m.snapshot_version.set(snapshot.version)

    def _offer(self, client: WsClient, frame: bytes) -> None:
        transport = client.transport
        if transport.is_closing():
            return
        if client.drainer is not None:
            client.pending = frame  # latest wins: replace, never queue
        elif client.ws.compress:
            client.pending = frame
            client.drainer = asyncio.create_task(self._send_compressed(client))
        elif transport.get_write_buffer_size():
            client.pending = frame
            client.drainer = asyncio.create_task(self._drain(client))
        else:
            transport.write(frame)

    async def _drain(self, client: WsClient) -> None:
        """Wait for a blocked client to drain, then give it the newest frame."""
        transport = client.transport
        deadline = time.monotonic() + self.slow_timeout
        try:
            while not transport.is_closing():
                if not transport.get_write_buffer_size():
                    if client.pending is not None:
                        transport.write(client.pending)
                        client.pending = None
                    return
                if time.monotonic() >= deadline:
                    self._close_slow(client)
                    return
                await asyncio.sleep(DRAIN_POLL)
        finally:
            client.drainer = None
            client.pending = None

    async def _send_compressed(self, client: WsClient) -> None:
        """Clients that negotiated permessage-deflate: aiohttp deflates per client."""
        try:
            while client.pending is not None and not client.transport.is_closing():
                client.pending = None  # latest wins: always send the current text
                async with asyncio.timeout(self.slow_timeout):
                    await client.ws.send_str(self._current_text())
        except TimeoutError:
            self._close_slow(client)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            client.drainer = None
            client.pending = None

    def _current_text(self) -> str:
        if not self._text and self.snapshot is not None:
            self._text = full_state(self.snapshot).decode()
        return self._text

    def _close_slow(self, client: WsClient) -> None:
        self.metrics.slow_disconnects.inc()
        log.info("websocket_slow_client_closed", client=client.address)
        transport = client.transport
        transport.write(close_frame(SLOW_CLIENT_CODE, "too slow, reconnect"))
        transport.close()
        # close() waits for the buffer to drain, which a stuck peer never does.
        asyncio.get_running_loop().call_later(1.0, transport.abort)

    # -- websocket clients -------------------------------------------------

    def add(self, ws: web.WebSocketResponse, transport: asyncio.Transport, address: str) -> WsClient:
        """Register a connected client and send it the current state at once."""
        client = WsClient(ws, transport, address)
        self._clients.add(client)
        self._strong.add(client)
        self.metrics.clients.labels("websocket").inc()
        if self.snapshot is not None:
            self._offer(client, self._frame)
        return client

    def discard(self, client: WsClient) -> None:
        """Forget a client whose handler has finished."""
        if client in self._strong:
            self._strong.discard(client)
            self._clients.discard(client)
            self.metrics.clients.labels("websocket").dec()
        if client.drainer is not None:
            client.drainer.cancel()

    @property
    def websocket_count(self) -> int:
        """How many WebSocket clients are connected."""
        return len(self._strong)

    # -- long-poll ---------------------------------------------------------

    async def wait_change(self, since: int | None, timeout: float) -> Snapshot | None:
        """Wait until the version differs from ``since``; None on timeout.

        Raises :class:`Closing` when the hub shuts down meanwhile.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        self.waiters += 1
        self.metrics.clients.labels("longpoll").inc()
        try:
            while True:
                if self.closing:
                    raise Closing
                snap = self.snapshot
                if snap is not None and snap.version != since:
                    return snap
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return None
                if self._changed is None:
                    self._changed = asyncio.get_running_loop().create_future()
                # asyncio.wait does not cancel the shared future on timeout.
                await asyncio.wait((self._changed,), timeout=remaining)
        finally:
            self.waiters -= 1
            self.metrics.clients.labels("longpoll").dec()

    # -- shutdown ----------------------------------------------------------

    async def close(self) -> None:
        """Wake every long-poll and close every WebSocket with 1001, concurrently."""
        self.closing = True
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
        clients = list(self._strong)
        if not clients:
            return

        async def close_one(client: WsClient) -> None:
            if client.drainer is not None:
                client.drainer.cancel()
            with contextlib.suppress(Exception):
                await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

        try:
            async with asyncio.timeout(CLOSE_ALL_TIMEOUT):
                await asyncio.gather(*(close_one(c) for c in clients))
        except TimeoutError:
            pass
        for client in clients:
            if not client.transport.is_closing():
                client.transport.abort()
        log.info("websockets_closed", count=len(clients))
