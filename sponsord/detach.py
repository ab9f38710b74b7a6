"""Taking a connection away from aiohttp once its request has been read.

A live client (a WebSocket after its upgrade, a long-poll while it is held)
needs almost nothing: its transport and a few bytes of state. Left to aiohttp
it keeps a request handler, an HTTP parser, the request with its headers, a
response, two tasks and their coroutine frames, and, for a WebSocket, a
reader, a writer and heartbeat timers: about 14 KiB per idle socket, most of
the memory of a server holding ten thousand pages (see docs/benchmark.md).

:func:`detach` hands the transport to a small :class:`asyncio.Protocol` of
ours and tells aiohttp the connection is gone, so it frees all of the above
and never writes to or closes the socket again. The handler then returns
:func:`detached`, which aiohttp tries to send, fails to (its transport is
gone) and drops like the answer to a client that went away.
"""

from __future__ import annotations

import asyncio

from aiohttp import web


def detach(request: web.Request, protocol: asyncio.Protocol) -> asyncio.Transport:
    """Give ``request``'s connection to ``protocol``; aiohttp lets go of it.

    Raises ConnectionResetError when the client has already gone.
    """
    owner = request.protocol
    transport = owner.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away")
    transport.set_protocol(protocol)
    # aiohttp's own bookkeeping for a lost connection (its server's list, the
    # keep-alive timer, the parser) without the close it would do: with no
    # transport left, its cleanup and any late write find nothing to touch.
    owner.transport = None
    owner.connection_lost(None)
    protocol.connection_made(transport)
    if not transport.is_reading():  # aiohttp may have paused it for its own buffers
        transport.resume_reading()
    return transport


def detached() -> web.StreamResponse:
    """What a handler returns after :func:`detach` (or when it found the client gone).

    aiohttp cannot send it (the transport is no longer its own, or closing)
    and drops it quietly, as for any client that went away.
    """
    return web.StreamResponse(status=101)
