"""Patreon webhooks: the signature check and the route.

The raw body is read under a hard limit and its ``X-Patreon-Signature`` (hex
HMAC-MD5 of the raw bytes, keyed with the webhook secret) checked in constant
time *before* anything parses it. A valid member event asks the refresher for
a refresh and is answered 202 at once; the body itself is never trusted for
data, since a full refresh is the only source of truth.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterable

import structlog
from aiohttp import web

from .config import Secret
from .keys import ADDRESSES, CONFIG, METRICS, REFRESHER

log = structlog.get_logger(__name__)

#: Patreon's member payloads are a few KiB; 256 KiB leaves room and caps abuse.
MAX_BODY = 256 * 1024

#: Patreon sends a few KiB in one go; a body still trickling in after this
#: long is someone holding our sockets (a slow-POST attack).
BODY_TIMEOUT = 10.0

#: Events that can change who is shown. ``posts:*`` and unknown ones cannot.
MEMBER_EVENTS = frozenset(
    {
        "members:create",
        "members:update",
        "members:delete",
        "members:pledge:create",
        "members:pledge:update",
        "members:pledge:delete",
        # API v1 names, still sent by webhooks created long ago
        "pledges:create",
        "pledges:update",
        "pledges:delete",
    }
)


def sign(secret: str | bytes, body: bytes) -> str:
    """The lower-case hex signature Patreon sends for ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.md5).hexdigest()


def signature_valid(secrets: Iterable[Secret], body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` under one of ``secrets``.

    Hex case is not significant. Every secret is tried (current and previous,
    during a rotation) so timing does not tell which one matched.
    """
    if not header:
        return False
    try:
        given = header.strip().lower().encode("ascii")
    except UnicodeEncodeError:
        return False
    valid = False
    for secret in secrets:
        valid |= hmac.compare_digest(sign(secret.reveal(), body).encode(), given)
    return valid


async def read_limited(
    request: web.Request, limit: int = MAX_BODY, timeout: float = BODY_TIMEOUT
) -> bytes | None:
    """The raw body, or None when it exceeds ``limit`` (read no further).

    A body that cannot be decoded (bad chunks, bad gzip) is a 400, one that
    has not arrived within ``timeout`` a 408: client errors, never a 500.
    """
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.read(64 * 1024):
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    except web.RequestPayloadError:
        raise web.HTTPBadRequest(text="malformed request body") from None
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the request body did not arrive in time") from None
    return b"".join(chunks)


routes = web.RouteTableDef()


@routes.post("/v1/webhooks/patreon")
async def patreon_webhook(request: web.Request) -> web.Response:
    """Verify, then ask for a refresh: 202 accepted, 200 ignored, 401, 413."""
    app = request.app
    counter = app[METRICS].webhooks
    body = await read_limited(request)
    if body is None:
        counter.labels("too_large").inc()
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_BODY, actual_size=request.content_length or MAX_BODY + 1
        )
    secrets = app[CONFIG].secrets.webhook_secrets
    if not secrets:
        counter.labels("no_secret").inc()
        log.error("webhook_secret_missing", hint="set PATREON_WEBHOOK_SECRET")
        raise web.HTTPUnauthorized(text="webhook secret not configured")
    if not signature_valid(secrets, body, request.headers.get("X-Patreon-Signature")):
        counter.labels("bad_signature").inc()
        log.warning("webhook_bad_signature", client=app[ADDRESSES](request), size=len(body))
        raise web.HTTPUnauthorized(text="bad or missing X-Patreon-Signature")
    event = request.headers.get("X-Patreon-Event", "")
    if event not in MEMBER_EVENTS:
        counter.labels("ignored").inc()
        log.info("webhook_ignored", patreon_event=event[:64])
        return web.json_response({"status": "ignored", "event": event[:64]})
    counter.labels("accepted").inc()
    log.info("webhook_accepted", patreon_event=event)
    app[REFRESHER].notify()
    return web.json_response({"status": "accepted"}, status=202)
