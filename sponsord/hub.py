"""Fan-out: one snapshot to every WebSocket client and long-poll waiter.

The frame for a snapshot is built once (``{"type":"full_state","data":...}``
with its RFC 6455 header) and the same bytes are written to every client's
transport: no per-client encoding, no per-client task, no queue. A client
that has not drained the previous frame gets no new one appended; it keeps
only the newest frame and receives it once it drains (latest wins), and is
closed with 4008 if it stays blocked past ``slow_timeout``.

WebSocket clients are normally connections taken from aiohttp after the
upgrade (:mod:`sponsord.detach`) into a :class:`~sponsord.websocket.WsConnection`,
so an idle client costs its socket and a few fields. Their heartbeat is one
timer for the whole hub, pinging a tenth of the clients each tenth of the
interval. Clients that negotiated permessage-deflate (``websocket_compress =
true``) stay aiohttp WebSocket responses (:meth:`Hub.add`), which deflate per
client.

Held long-polls (:class:`~sponsord.longpoll.HeldPoll`) are answered by the same
publication with one pre-rendered HTTP answer; coroutine waiters
(:meth:`Hub.wait_change`) all await one shared future per version.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter as Tally

import structlog
from aiohttp import WSCloseCode, web

from .longpoll import Headers, HeldPoll, render
from .metrics import Metrics
from .snapshot import Snapshot, encode
from .websocket import PING, WsConnection, close_frame, text_frame

__all__ = ["CLOSE_ALL_TIMEOUT", "ClientLimits", "Closing", "Hub", "close_frame", "full_state", "text_frame"]

log = structlog.get_logger(__name__)

#: Close code for a client too slow to read: 4000-4999 is for applications;
#: 4008 echoes 1008 (policy) and tells our page to reconnect.
SLOW_CLIENT_CODE = 4008

#: A whole shutdown of live clients must fit well inside systemd's stop timeout.
CLOSE_ALL_TIMEOUT = 3.0

#: The heartbeat visits clients in this many groups, one group per tick, so
#: ten thousand pings (and pongs) never land at the same moment.
HEARTBEAT_SLICES = 10

#: Seconds a long-poll client is told to wait before it comes back.
RETRY_AFTER = "5"


def full_state(snapshot: Snapshot) -> bytes:
    """The JSON text of the full_state message for ``snapshot``."""
    return b'{"type":"full_state","data":' + snapshot.body + b"}"


class Closing(Exception):
    """The hub is shutting down; live requests should be answered 503."""


class WsClient:
    """One WebSocket client: its transport and at most one pending frame."""

    __slots__ = ("address", "drainer", "pending", "transport", "ws")

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
        # aiohttp-managed clients (permessage-deflate), see add()
        self._strong: set[WsClient] = set()  # a client lives as long as its handler
        # detached clients, see attach()
        self._conns: set[WsConnection] = set()
        self._slices: list[set[WsConnection]] = [set() for _ in range(HEARTBEAT_SLICES)]
        self._next_slice = 0
        self._beat: asyncio.TimerHandle | None = None
        self._beat_every = 0.0
        self._emptied: asyncio.Future[None] | None = None
        # long-polls
        self._changed: asyncio.Future[None] | None = None
        self._polls: set[HeldPoll] = set()
        self.waiters = 0
        # labelled children looked up once, not per client
        self._ws_gauge = metrics.clients.labels("websocket")
        self._poll_gauge = metrics.clients.labels("longpoll")
        self._answers = {code: metrics.longpoll_answers.labels(code) for code in ("200", "204", "503")}

    # -- publication -------------------------------------------------------

    def publish(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` current and hand it to every live client."""
        started = time.perf_counter()
        self.snapshot = snapshot
        payload = full_state(snapshot)
        self._frame = frame = text_frame(payload)
        self._text = ""  # built lazily, only if a compressing client exists
        # The hot loop: one pre-built frame per detached client, nothing else.
        conns = () if self.closing else self._conns  # no data after a close frame
        for conn in conns:
            if conn.blocked:
                conn.pending = frame  # latest wins: replace, never queue
            else:
                conn.transport.write(frame)  # type: ignore[union-attr]
        sent = len(conns)
        if self._strong:
            clients = list(self._strong)
            for client in clients:
                self._offer(client, frame)
            sent += len(clients)
        if self._polls:
            self._answer_polls(snapshot)
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
        m = self.metrics
        m.broadcasts.inc()
        m.frames_sent.inc(sent)
        m.broadcast_seconds.observe(time.perf_counter() - started)
        m.snapshot_version.set(snapshot.version)

    def _offer(self, client: WsClient, frame: bytes) -> None:
        if client.transport.is_closing():
            return
        client.pending = frame  # latest wins: replace, never queue
        if client.drainer is None:
            client.drainer = asyncio.create_task(self._send_managed(client))

    async def _send_managed(self, client: WsClient) -> None:
        """aiohttp-managed clients (``websocket_compress = true``): aiohttp frames,
        deflates where negotiated, and applies flow control; a send blocked past
        ``slow_timeout`` closes the client."""
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

    # -- detached websocket clients ----------------------------------------

    def attach(self, conn: WsConnection, heartbeat: float | None = None) -> None:
        """Register a detached client (its upgrade answered) and send it the current state.

        heartbeat: seconds between pings for every detached client (None: no pings).
        """
        if conn.transport is None or conn.transport.is_closing():
            return
        self._conns.add(conn)
        conn.bucket = self._next_slice
        self._next_slice = (self._next_slice + 1) % HEARTBEAT_SLICES
        self._slices[conn.bucket].add(conn)
        self._ws_gauge.inc()
        if heartbeat and self._beat is None and not self.closing:
            self._beat_every = heartbeat / HEARTBEAT_SLICES
            self._beat = asyncio.get_running_loop().call_later(self._beat_every, self._heartbeat, 0)
        if self.snapshot is not None:
            conn.send(self._frame)

    def lost(self, conn: WsConnection) -> None:
        """A detached client is gone (called by the connection)."""
        if conn in self._conns:
            self._conns.discard(conn)
            self._slices[conn.bucket].discard(conn)
            self._ws_gauge.dec()
        if not self._conns and self._emptied is not None and not self._emptied.done():
            self._emptied.set_result(None)

    def blocked(self, conn: WsConnection) -> None:
        """A detached client has unsent bytes: it has ``slow_timeout`` to take them."""
        if conn.slow is None:
            conn.slow = asyncio.get_running_loop().call_later(self.slow_timeout, self._too_slow, conn)

    def _too_slow(self, conn: WsConnection) -> None:
        conn.slow = None
        if conn.blocked and conn in self._conns:
            self.metrics.slow_disconnects.inc()
            log.info("websocket_slow_client_closed", client=conn.address)
            conn.fail(SLOW_CLIENT_CODE, "too slow, reconnect")

    def _heartbeat(self, tick: int) -> None:
        """Ping one slice of the clients; drop those that ignored the previous ping."""
        self._beat = None
        if self.closing:
            return
        dead = []
        for conn in self._slices[tick % HEARTBEAT_SLICES]:
            if conn.blocked or conn.closing:
                continue  # a blocked client is the slow timer's business
            if not conn.seen:
                dead.append(conn)
            else:
                conn.seen = False
                conn.transport.write(PING)  # type: ignore[union-attr]
        for conn in dead:
            log.info("websocket_heartbeat_missed", client=conn.address)
            conn.transport.abort()  # type: ignore[union-attr]
        self._beat = asyncio.get_running_loop().call_later(self._beat_every, self._heartbeat, tick + 1)

    # -- aiohttp websocket clients -----------------------------------------

    def add(self, ws: web.WebSocketResponse, transport: asyncio.Transport, address: str) -> WsClient:
        """Register a connected client and send it the current state at once."""
        client = WsClient(ws, transport, address)
        self._strong.add(client)
        self._ws_gauge.inc()
        if self.snapshot is not None:
            self._offer(client, self._frame)
        return client

    def discard(self, client: WsClient) -> None:
        """Forget a client whose handler has finished."""
        if client in self._strong:
            self._strong.discard(client)
            self._ws_gauge.dec()
        if client.drainer is not None:
            client.drainer.cancel()

    @property
    def websocket_count(self) -> int:
        """How many WebSocket clients are connected."""
        return len(self._conns) + len(self._strong)

    # -- long-poll ---------------------------------------------------------

    def hold(self, poll: HeldPoll, timeout: float) -> None:
        """Hold a detached long-poll until the next version, or ``timeout`` seconds."""
        if poll.transport is None or poll.transport.is_closing():
            return
        self._polls.add(poll)
        self.waiters += 1
        self._poll_gauge.inc()
        poll.timer = asyncio.get_running_loop().call_later(timeout, self._expired, poll)

    def unhold(self, poll: HeldPoll) -> None:
        """A held poll's client went away (called by the poll)."""
        if poll in self._polls:
            self._polls.discard(poll)
            self.waiters -= 1
            self._poll_gauge.dec()

    def _expired(self, poll: HeldPoll) -> None:
        poll.timer = None
        if poll not in self._polls:
            return
        self.unhold(poll)
        if self.snapshot is None:
            self._answers["503"].inc()
            poll.answer(self._unavailable(poll.cors, "no snapshot yet"))
        else:
            self._answers["204"].inc()
            poll.answer(render(204, (("Cache-Control", "no-store"), *poll.cors)))

    def _answer_polls(self, snapshot: Snapshot) -> None:
        polls, self._polls = self._polls, set()
        base = (("Cache-Control", "no-store"), ("ETag", snapshot.etag))
        answers: dict[Headers, bytes] = {}
        for poll in polls:
            raw = answers.get(poll.cors)
            if raw is None:
                raw = answers[poll.cors] = render(200, base + poll.cors, snapshot.body)
            poll.send(raw)
        for poll in polls:
            poll.hang_up()
        self.waiters -= len(polls)
        self._poll_gauge.dec(len(polls))
        self._answers["200"].inc(len(polls))

    @staticmethod
    def _unavailable(cors: Headers, message: str) -> bytes:
        headers = (("Retry-After", RETRY_AFTER), ("Cache-Control", "no-store"), *cors)
        return render(503, headers, encode({"error": message}))

    async def wait_change(self, since: int | None, timeout: float) -> Snapshot | None:
        """Wait until the version differs from ``since``; None on timeout.

        Raises :class:`Closing` when the hub shuts down meanwhile.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        self.waiters += 1
        self._poll_gauge.inc()
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
            self._poll_gauge.dec()

    # -- shutdown ----------------------------------------------------------

    async def close(self) -> None:
        """Answer every long-poll (503) and close every WebSocket with 1001, concurrently."""
        self.closing = True
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
        polls, self._polls = self._polls, set()
        answers: dict[Headers, bytes] = {}
        for poll in polls:
            raw = answers.get(poll.cors)
            if raw is None:
                raw = answers[poll.cors] = self._unavailable(poll.cors, "shutting down")
            poll.send(raw)
        for poll in polls:
            poll.hang_up()
        self.waiters -= len(polls)
        self._poll_gauge.dec(len(polls))
        self._answers["503"].inc(len(polls))
        conns = list(self._conns)
        clients = list(self._strong)
        if not conns and not clients:
            return
        bye = close_frame(WSCloseCode.GOING_AWAY, "server shutting down")
        if conns:
            self._emptied = asyncio.get_running_loop().create_future()
            for conn in conns:
                conn.close(bye)

        async def close_one(client: WsClient) -> None:
            if client.drainer is not None:
                client.drainer.cancel()
            with contextlib.suppress(Exception):
                await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

        try:
            async with asyncio.timeout(CLOSE_ALL_TIMEOUT):
                await asyncio.gather(
                    *(close_one(c) for c in clients),
                    *([asyncio.shield(self._emptied)] if self._emptied is not None else []),
                )
        except TimeoutError:
            pass
        for client in clients:
            if not client.transport.is_closing():
                client.transport.abort()
        for conn in list(self._conns):
            conn.transport.abort()  # type: ignore[union-attr]
        log.info("websockets_closed", count=len(clients) + len(conns))
