"""A held long-poll: its transport, its CORS headers, and its answer when it comes.

The view checks the request and, when it must wait, detaches the connection
from aiohttp (:mod:`sponsord.detach`) into a :class:`HeldPoll`. The hub then
answers every held poll of a new snapshot with the same pre-rendered bytes
(one rendering per distinct set of CORS headers), as it writes one frame to
every WebSocket: no task, response object or header serialization per
waiter. An answer ends the connection (``Connection: close``); the page's
next poll opens a new one. Every waiter gets its answer before any connection
is closed: closing costs system calls the next waiter should not wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol

from .websocket import Slots

#: The CORS headers of one request, hashable so answers can be shared.
Headers = tuple[tuple[str, str], ...]


def render(status: int, headers: Sequence[tuple[str, str]], body: bytes = b"", *, json: bool = True) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{k}: {v}" for k, v in headers if "\r" not in v and "\n" not in v]
    if status != 204:
        if json:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"Date: {formatdate(usegmt=True)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


class Owner(Protocol):
    """What a held poll tells its hub."""

    def unhold(self, poll: HeldPoll) -> None:
        """The client went away before its answer."""


class HeldPoll(asyncio.Protocol):
    """One long-poll waiting for a new version.

    owner: the hub holding it.
    address: the client's address (its live slot goes back to ``limits``).
    cors: the CORS headers its answer carries.
    """

    __slots__ = ("address", "cors", "done", "limits", "owner", "timer", "transport")

    def __init__(self, owner: Owner, address: str, cors: Headers, limits: Slots | None = None) -> None:
        self.owner = owner
        self.address = address
        self.cors = cors
        self.limits = limits
        self.done = False
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pass  # anything after the poll (a pipelined request) is not served: the answer closes

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.done = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.owner.unhold(self)
        if self.limits is not None:
            limits, self.limits = self.limits, None
            limits.release(self.address)

    def answer(self, raw: bytes) -> None:
        """Send ``raw`` (a rendered answer) and hang up."""
        self.send(raw)
        self.hang_up()

    def send(self, raw: bytes) -> None:
        """Send ``raw``; the hub calls :meth:`hang_up` once every waiter has its answer."""
        self.done = True
        if self.transport is not None:
            self.transport.write(raw)

    def hang_up(self) -> None:
        """Close the connection (after the answer is flushed)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()
