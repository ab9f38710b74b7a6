"""A WebSocket client after the upgrade: the server side of RFC 6455, lean.

Our clients only listen. So a connection is its transport and a few fields:
incoming frames are checked and dropped (pings answered, a close answered and
the socket closed, an oversized or malformed frame closed with 1009 or 1002),
and outgoing frames are the hub's pre-built bytes, written as they are. The
upgrade itself is checked and answered by :func:`handshake` (permessage-deflate
is declined by leaving it out of the answer).

Flow control comes from asyncio: the transport's high-water mark is 0, so
:meth:`WsConnection.pause_writing` is called the moment any byte stays unsent
and :meth:`WsConnection.resume_writing` once all have gone. ``blocked`` is
therefore "the previous frame is not out yet", and the hub keeps at most the
newest frame in ``pending`` for such a client (latest wins).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping
from typing import Protocol

#: RFC 6455 §1.3: appended to the client's key to prove the server speaks WebSocket.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Versions aiohttp accepts too (13 is RFC 6455; 7 and 8 were its drafts).
VERSIONS = frozenset({"13", "8", "7"})

#: An empty ping: the heartbeat, the same bytes for everyone.
PING = b"\x89\x00"

#: Close codes (RFC 6455 §7.4.1).
PROTOCOL_ERROR, TOO_BIG = 1002, 1009

#: Seconds a closing connection may take to flush before it is cut.
CLOSE_GRACE = 1.0


class BadUpgrade(ValueError):
    """The request is not a WebSocket upgrade we can accept (answered 400)."""


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


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame with ``code`` and ``reason``."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return struct.pack("!BB", 0x88, len(payload)) + payload


def handshake(headers: Mapping[str, str]) -> bytes:
    """The ``101 Switching Protocols`` answer to a valid upgrade; :class:`BadUpgrade` otherwise."""
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        raise BadUpgrade('no "Upgrade: websocket" header')
    if "upgrade" not in headers.get("Connection", "").lower():
        raise BadUpgrade('no "Connection: upgrade" header')
    if headers.get("Sec-WebSocket-Version", "").strip() not in VERSIONS:
        raise BadUpgrade("unsupported Sec-WebSocket-Version (13 expected)")
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise BadUpgrade("bad Sec-WebSocket-Key")
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def _unmask(key: bytes, payload: bytes) -> bytes:
    return bytes(b ^ key[i & 3] for i, b in enumerate(payload))


class Owner(Protocol):
    """What a connection tells its hub."""

    def lost(self, conn: WsConnection) -> None:
        """The connection is gone."""

    def blocked(self, conn: WsConnection) -> None:
        """The connection has unsent bytes (it just became ``blocked``)."""


class Slots(Protocol):
    """The live-client caps a connection gives its slot back to."""

    def release(self, address: str) -> None:
        """Forget one client of ``address``."""


class WsConnection(asyncio.Protocol):
    """One WebSocket client after the upgrade.

    owner: the hub, told when the connection blocks and when it is gone.
    address: the client's address (for logs and the per-address cap).
    limits: where the client's live slot goes back when it is gone.
    max_msg: the largest message a client may send.
    """

    __slots__ = (
        "address",
        "blocked",
        "bucket",
        "buf",
        "closing",
        "limits",
        "max_msg",
        "msg_size",
        "owner",
        "pending",
        "seen",
        "slow",
        "transport",
    )

    def __init__(self, owner: Owner, address: str, limits: Slots | None = None, max_msg: int = 4096) -> None:
        self.owner = owner
        self.address = address
        self.limits = limits
        self.max_msg = max_msg
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.msg_size = 0
        self.blocked = False
        self.pending: bytes | None = None
        self.slow: asyncio.TimerHandle | None = None
        self.seen = True  # heard from since the last ping
        self.bucket = 0
        self.closing = False

    # -- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending = None
        if self.slow is not None:
            self.slow.cancel()
            self.slow = None
        self.owner.lost(self)
        if self.limits is not None:
            limits, self.limits = self.limits, None
            limits.release(self.address)

    def pause_writing(self) -> None:
        self.blocked = True
        self.owner.blocked(self)

    def resume_writing(self) -> None:
        self.blocked = False
        if self.slow is not None:
            self.slow.cancel()
            self.slow = None
        frame, self.pending = self.pending, None
        if frame is not None and self.transport is not None and not self.closing:
            self.transport.write(frame)

    def eof_received(self) -> bool | None:
        return None  # the client half-closed: close our side too

    def data_received(self, data: bytes) -> None:
        self.seen = True
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
            opcode = b0 & 0x0F
            if not b1 & 0x80 or b0 & 0x70:
                self.fail(PROTOCOL_ERROR, "frames must be masked, without extensions")
                return
            if opcode >= 0x8:
                if length > 125 or not b0 & 0x80:
                    self.fail(PROTOCOL_ERROR, "bad control frame")
                    return
            elif opcode in (0x1, 0x2, 0x0):
                # Judged on the announced length, before any of it is buffered.
                size = length if opcode else self.msg_size + length
                if size > self.max_msg:
                    self.fail(TOO_BIG, "message too big")
                    return
                self.msg_size = 0 if b0 & 0x80 else size
            else:
                self.fail(PROTOCOL_ERROR, "unknown opcode")
                return
            end = pos + head + 4 + length
            if end > n:
                break
            if opcode >= 0x8:
                self._control(opcode, _unmask(buf[pos + head : pos + head + 4], buf[end - length : end]))
                if self.transport is None or self.transport.is_closing():
                    return
            pos = end
        self.buf = buf[pos:] if pos < n else b""

    def _control(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if opcode == 0x9:  # ping: pong with the same payload
            if not self.blocked:
                transport.write(struct.pack("!BB", 0x8A, len(payload)) + payload)
        elif opcode == 0x8:  # close: answer it (unless we started it), then hang up
            if not self.closing:
                self.closing = True
                transport.write(b"\x88\x02" + payload[:2] if len(payload) >= 2 else b"\x88\x00")
            transport.close()
        elif opcode != 0xA:
            self.fail(PROTOCOL_ERROR, "unknown control frame")

    # -- used by the hub ---------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Write ``frame`` now, or keep it as the newest pending one while blocked."""
        if self.blocked:
            self.pending = frame
        elif self.transport is not None and not self.closing:
            self.transport.write(frame)

    def fail(self, code: int, reason: str) -> None:
        """Close with ``code``: send the close frame, hang up, cut it if it will not flush."""
        self.close(close_frame(code, reason))
        self.owner.lost(self)  # no more frames for it, even before the socket is gone
        transport = self.transport
        if transport is not None:
            transport.close()
            asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)

    def close(self, frame: bytes) -> None:
        """Start the closing handshake with ``frame``; the client's answer ends it."""
        if self.transport is None or self.closing:
            return
        self.closing = True
        self.pending = None
        self.transport.write(frame)
        if self.blocked:
            self.transport.close()  # it will not read our close frame soon; flush and go
