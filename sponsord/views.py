"""The HTTP routes: REST, long-poll, WebSocket, health, metrics and the page.

Errors become HTTP answers here, at the edge. Every live route (WebSocket,
long-poll) counts against the client caps; REST answers are the snapshot's
pre-encoded bytes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import Config
from .detach import detach, detached
from .hub import RETRY_AFTER, Closing, Hub
from .keys import ADDRESSES, CONFIG, EMBED_JS, HUB, LIMITS, METRICS, METRICS_ALLOW, REFRESHER
from .longpoll import HeldPoll
from .proxies import in_networks, ip_or_none
from .snapshot import encode, isoformat
from .websocket import BadUpgrade, WsConnection, handshake

log = structlog.get_logger(__name__)

#: Long-polls may never be held past this: Cloudflare answers 524 after 100 s.
LONGPOLL_MAX = 55.0

#: Clients only listen; a few KiB is plenty for anything they might send.
WS_MAX_MSG = 4096

routes = web.RouteTableDef()


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=encode(obj), content_type="application/json", headers=headers)


def origin_allowed(request: web.Request) -> bool:
    """True for requests without ``Origin`` (not a browser) and allowed origins."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    server = request.app[CONFIG].server
    return origin == server.public_origin or "*" in server.allowed_origins or origin in server.allowed_origins


def cors_headers(request: web.Request) -> dict[str, str]:
    """CORS headers for an allowed cross-origin reader (none otherwise)."""
    origin = request.headers.get("Origin")
    headers = {"Vary": "Origin"}
    if origin is not None and origin_allowed(request):
        headers["Access-Control-Allow-Origin"] = origin
        # Retry-After too: a page backing off from a 503 must be able to read it.
        headers["Access-Control-Expose-Headers"] = "ETag, Retry-After"
    return headers


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header == etag:  # what browsers send back: skip the list parsing
        return True
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def _unavailable(request: web.Request, message: str) -> web.Response:
    headers = {"Retry-After": RETRY_AFTER, "Cache-Control": "no-store", **cors_headers(request)}
    return _json(503, {"error": message}, headers)


@routes.get("/v1/supporters")
async def supporters(request: web.Request) -> web.StreamResponse:
    """The current snapshot; 304 when the client already has it."""
    snap = request.app[HUB].snapshot
    if snap is None:
        return _unavailable(request, "no snapshot yet, the first refresh is running")
    if "Origin" in request.headers:
        headers = {"ETag": snap.etag, "Cache-Control": "no-cache", **cors_headers(request)}
    else:  # not a cross-origin read (the hot path): no CORS headers to work out
        headers = {"ETag": snap.etag, "Cache-Control": "no-cache", "Vary": "Origin"}
    if _etag_matches(request.headers.get("If-None-Match"), snap.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=snap.body, content_type="application/json", headers=headers)


@routes.route("OPTIONS", "/v1/supporters")
@routes.route("OPTIONS", "/v1/supporters/poll")
async def preflight(request: web.Request) -> web.Response:
    """CORS preflight (a page sending If-None-Match needs one)."""
    headers = cors_headers(request)
    if "Access-Control-Allow-Origin" in headers:
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, OPTIONS",
                "Access-Control-Allow-Headers": "If-None-Match",
                "Access-Control-Max-Age": "86400",
            }
        )
    return web.Response(status=204, headers=headers)


def _query_number(request: web.Request, name: str) -> float | None:
    """A numeric query parameter; 400 when it is present but not a finite number."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number") from None
    if not math.isfinite(value):
        raise web.HTTPBadRequest(text=f"{name} must be a finite number")
    return value


def _live_slot(request: web.Request) -> str:
    """Take a live-client slot for this request's address, or raise 503."""
    address = request.app[ADDRESSES](request)
    refused = request.app[LIMITS].acquire(address)
    if refused is not None:
        request.app[METRICS].clients_rejected.labels(refused).inc()
        raise web.HTTPServiceUnavailable(
            text="too many live connections, retry later",
            headers={"Retry-After": RETRY_AFTER, **cors_headers(request)},
        )
    return address


@routes.get("/v1/supporters/poll")
async def poll(request: web.Request) -> web.StreamResponse:
    """Long-poll: answer when the version differs from ``since``, else hold.

    A held GET is detached from aiohttp and answered by the hub: by its next
    publication, at the timeout or at shutdown (see :mod:`sponsord.longpoll`).
    """
    since_raw = _query_number(request, "since")
    since = None if since_raw is None else int(since_raw)
    wait = _query_number(request, "wait")
    config = request.app[CONFIG].server
    hold = config.longpoll_wait if wait is None else min(max(float(wait), 0.0), LONGPOLL_MAX)
    hub = request.app[HUB]
    m = request.app[METRICS]
    headers = {"Cache-Control": "no-store", **cors_headers(request)}
    if hub.closing:
        return _unavailable(request, "shutting down")
    snap = hub.snapshot
    if snap is None or snap.version == since:
        address = _live_slot(request)
        if request.method == "GET" and hold > 0:
            return _hold(request, hub, address, hold)
        try:
            snap = await hub.wait_change(since, hold)
        except Closing:
            m.longpoll_answers.labels("503").inc()
            return _unavailable(request, "shutting down")
        finally:
            request.app[LIMITS].release(address)
        if snap is None:
            m.longpoll_answers.labels("204").inc()
            if hub.snapshot is None:
                return _unavailable(request, "no snapshot yet")
            return web.Response(status=204, headers=headers)
    m.longpoll_answers.labels("200").inc()
    headers["ETag"] = snap.etag
    return web.Response(body=snap.body, content_type="application/json", headers=headers)


def _hold(request: web.Request, hub: Hub, address: str, hold: float) -> web.StreamResponse:
    """Hand the poll to the hub; aiohttp keeps nothing of it while it waits."""
    limits = request.app[LIMITS]
    held = HeldPoll(hub, address, tuple(cors_headers(request).items()), limits)
    try:
        detach(request, held)
    except ConnectionResetError:  # gone before we got to it: nothing to answer
        limits.release(address)
        return detached()
    hub.hold(held, hold)
    return detached()


@routes.get("/v1/supporters/websocket")
async def websocket(request: web.Request) -> web.StreamResponse:
    """Live full_state frames: the current one at once, then one per version.

    After the upgrade the connection is detached from aiohttp into a
    :class:`~sponsord.websocket.WsConnection` (a few hundred bytes instead of
    aiohttp's ~14 KiB per socket), and permessage-deflate is declined. Only
    with ``websocket_compress = true`` does aiohttp keep the socket, to deflate.
    """
    app = request.app
    if not origin_allowed(request):
        app[METRICS].clients_rejected.labels("origin").inc()
        raise web.HTTPForbidden(text="origin not allowed")
    hub = app[HUB]
    if hub.closing:
        return _unavailable(request, "shutting down")
    server = app[CONFIG].server
    if server.websocket_compress:
        return await _websocket_deflating(request, hub)
    try:
        accept = handshake(request.headers)
    except BadUpgrade as exc:
        raise web.HTTPBadRequest(text=f"not a WebSocket upgrade: {exc}") from None
    address = _live_slot(request)
    limits = app[LIMITS]
    conn = WsConnection(hub, address, limits, max_msg=WS_MAX_MSG)
    try:
        transport = detach(request, conn)
    except ConnectionResetError:  # gone before we got to it: nothing to answer
        limits.release(address)
        return detached()
    transport.write(accept)
    hub.attach(conn, server.heartbeat)
    return detached()


async def _websocket_deflating(request: web.Request, hub: Hub) -> web.StreamResponse:
    """An aiohttp-managed socket, for a server configured to accept permessage-deflate."""
    app = request.app
    address = _live_slot(request)
    try:
        server = app[CONFIG].server
        ws = web.WebSocketResponse(
            heartbeat=server.heartbeat,
            max_msg_size=WS_MAX_MSG,
            compress=server.websocket_compress,
            timeout=2.0,  # for the close handshake: a vanished peer must not stall shutdown
        )
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        client = hub.add(ws, transport, address)
        try:
            async for _ in ws:
                pass  # clients only listen; anything they send is ignored
        finally:
            hub.discard(client)
        return ws
    finally:
        app[LIMITS].release(address)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Snapshot version and age, and the upstream's state."""
    refresher = request.app[REFRESHER]
    snap = request.app[HUB].snapshot
    h = refresher.health
    age = refresher.age_seconds()
    if age is None and snap is not None:
        age = max(0.0, (datetime.now(UTC) - snap.updated_at).total_seconds())
    if snap is None:
        status = "starting"
    elif h.consecutive_failures:
        status = "degraded"
    else:
        status = "ok"
    body = {
        "status": status,
        "snapshot": {
            "version": snap.version if snap else None,
            "age_seconds": round(age, 3) if age is not None else None,
            "supporters": len(snap.supporters) if snap else None,
            "updated_at": isoformat(snap.updated_at) if snap else None,
        },
        "upstream": {
            "ok": h.ok,
            "last_error": h.last_error,
            "consecutive_failures": h.consecutive_failures,
            "last_success_at": isoformat(h.last_success_at) if h.last_success_at else None,
        },
        "clients": {"websocket": request.app[HUB].websocket_count, "longpoll": request.app[HUB].waiters},
    }
    return _json(200, body, {"Cache-Control": "no-store"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format, for the addresses in ``metrics_allow``."""
    client = ip_or_none(request.app[ADDRESSES](request))
    allowed = request.app[METRICS_ALLOW]
    if not in_networks(client, allowed):
        raise web.HTTPForbidden(text="metrics are not served to this address")
    m = request.app[METRICS]
    age = request.app[REFRESHER].age_seconds()
    m.snapshot_age.set(age if age is not None else math.nan)
    return web.Response(body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/")
@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    """The demo support page, embedding the wall with the public snippet."""
    return _page_context(request)


@routes.get("/embed.js")
async def embed(request: web.Request) -> web.Response:
    """The embeddable script with this server's public URL filled in (rendered once per app)."""
    return web.Response(
        body=request.app[EMBED_JS],
        content_type="text/javascript",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"},
    )


def render_embed(app: web.Application) -> bytes:
    """``embed.js`` for ``app``'s config: everything in it is fixed while the app runs."""
    template = aiohttp_jinja2.get_env(app).get_template("embed.js")
    return template.render(page_context(app[CONFIG])).encode()


def _page_context(request: web.Request) -> dict[str, Any]:
    return page_context(request.app[CONFIG])


def page_context(config: Config) -> dict[str, Any]:
    """What the page and embed.js templates are filled with."""
    return {
        "public_url": config.server.public_url,
        "join_url": config.display.join_url,
        "goal_count": config.display.goal_count,
    }
