"""The OpenAPI 3.1 description of the public HTTP surface, served at ``/v1/openapi.json``.

It describes what DESIGN.md's contract promises: the REST snapshot (with its
304 and 503), the long-poll, the WebSocket (as the GET that upgrades; its
frames are the ``FullState`` schema), the Patreon webhook, health, metrics
and the page. ``tests/test_openapi.py`` keeps it true: every route of the app
is here, and real answers validate against these schemas.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import __version__
from .keys import CONFIG
from .snapshot import encode

#: The document changes only with the code; caches may keep it a while.
CACHE_CONTROL = "public, max-age=300"

JSON = "application/json"
TEXT = "text/plain"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict[str, Any], media: str = JSON) -> dict[str, Any]:
    return {media: {"schema": schema}}


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": _content({"type": "string"}, TEXT)}


RETRY_AFTER = _header("Seconds to wait before trying again.", {"type": "string", "pattern": "^[0-9]+$"})
ETAG = _header("Strong validator of the snapshot, for If-None-Match.")
CORS = _header("The request's Origin, when it is in allowed_origins.")

#: A 503 is JSON from the daemon itself (no snapshot yet, shutting down) and
#: plain text from the client caps; both carry Retry-After.
UNAVAILABLE = {
    "description": "No snapshot yet, shutting down, or too many live clients: come back after Retry-After.",
    "headers": {"Retry-After": RETRY_AFTER},
    "content": {**_content(_ref("Error")), **_content({"type": "string"}, TEXT)},
}

ORIGIN = {
    "name": "Origin",
    "in": "header",
    "required": False,
    "description": "A browser's origin; CORS headers are added when it is allowed.",
    "schema": {"type": "string"},
}

SCHEMAS: dict[str, Any] = {
    "Supporter": {
        "type": "object",
        "required": ["title"],
        "properties": {
            "title": {
                "type": "string",
                "description": 'The display name; exactly "Anonymous" (and no other field) for a '
                "supporter who hides their pledges or whose privacy is unknown.",
            }
        },
    },
    "Supporters": {
        "type": "object",
        "required": ["supporters", "goal_count", "meta"],
        "properties": {
            "supporters": {
                "type": "array",
                "items": _ref("Supporter"),
                "description": "Named supporters oldest pledge first, then the anonymous ones.",
            },
            "goal_count": {"type": "integer", "minimum": 0},
            "meta": {
                "type": "object",
                "required": ["updated_at", "version"],
                "properties": {
                    "updated_at": {"type": "string", "format": "date-time"},
                    "version": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Rises by one each time what is shown changes.",
                    },
                },
            },
        },
    },
    "FullState": {
        "type": "object",
        "description": "Every WebSocket text frame: the whole state, never a diff.",
        "required": ["type", "data"],
        "properties": {"type": {"const": "full_state"}, "data": _ref("Supporters")},
    },
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Health": {
        "type": "object",
        "required": ["status", "snapshot", "upstream"],
        "properties": {
            "status": {"enum": ["ok", "degraded", "starting"]},
            "snapshot": {
                "type": "object",
                "required": ["version", "age_seconds"],
                "properties": {
                    "version": {"type": ["integer", "null"]},
                    "age_seconds": {
                        "type": ["number", "null"],
                        "description": "Seconds since the last successful refresh.",
                    },
                    "supporters": {"type": ["integer", "null"]},
                    "updated_at": {"type": ["string", "null"]},
                },
            },
            "upstream": {
                "type": "object",
                "required": ["ok", "last_error", "consecutive_failures", "last_success_at"],
                "properties": {
                    "ok": {"type": ["boolean", "null"]},
                    "last_error": {"type": ["string", "null"]},
                    "consecutive_failures": {"type": "integer", "minimum": 0},
                    "last_success_at": {"type": ["string", "null"]},
                },
            },
            "clients": {
                "type": "object",
                "properties": {
                    "websocket": {"type": "integer", "minimum": 0},
                    "longpoll": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
    "WebhookAnswer": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"enum": ["accepted", "ignored"]}, "event": {"type": "string"}},
    },
}


def _paths() -> dict[str, Any]:
    cors_only = {"Access-Control-Allow-Origin": CORS}
    return {
        "/v1/supporters": {
            "get": {
                "operationId": "getSupporters",
                "summary": "The current snapshot (pre-encoded bytes).",
                "parameters": [
                    ORIGIN,
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "An ETag from an earlier answer; 304 when it is still current.",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The snapshot.",
                        "headers": {"ETag": ETAG, **cors_only},
                        "content": _content(_ref("Supporters")),
                    },
                    "304": {"description": "Not modified: the client has it.", "headers": {"ETag": ETAG}},
                    "503": UNAVAILABLE,
                },
            },
            "options": {
                "operationId": "preflightSupporters",
                "summary": "CORS preflight (If-None-Match is not a simple header).",
                "parameters": [ORIGIN],
                "responses": {"204": {"description": "Preflight answer.", "headers": cors_only}},
            },
        },
        "/v1/supporters/poll": {
            "get": {
                "operationId": "pollSupporters",
                "summary": "Long-poll: the snapshot once its version differs from `since`.",
                "description": "Answers at once when the current version is not `since`; otherwise "
                "holds (25 s by default, never over 55 s) and answers with the new snapshot, "
                "or 204 when nothing changed. Counts against the live-client caps.",
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer"},
                        "description": "The version the client holds.",
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "minimum": 0, "maximum": 55},
                        "description": "Seconds to hold at most (shorter than the server's default).",
                    },
                    ORIGIN,
                ],
                "responses": {
                    "200": {
                        "description": "A snapshot whose version differs from `since`.",
                        "headers": {"ETag": ETAG, "Cache-Control": _header("no-store"), **cors_only},
                        "content": _content(_ref("Supporters")),
                    },
                    "204": {"description": "Nothing changed during the hold."},
                    "400": _text("`since` or `wait` is not a finite number."),
                    "503": UNAVAILABLE,
                },
            },
            "options": {
                "operationId": "preflightPoll",
                "summary": "CORS preflight.",
                "parameters": [ORIGIN],
                "responses": {"204": {"description": "Preflight answer.", "headers": cors_only}},
            },
        },
        "/v1/supporters/websocket": {
            "get": {
                "operationId": "supportersWebSocket",
                "summary": "WebSocket: a FullState frame at once, then one per new version.",
                "description": "An HTTP/1.1 GET with `Upgrade: websocket`. Every text frame is a "
                "`FullState` (see components). A slow client may skip versions, never sees "
                "them out of order; it is closed with 4008 if it stops reading. Counts "
                "against the live-client caps.",
                "parameters": [ORIGIN],
                "responses": {
                    "101": {"description": "Switching protocols: the WebSocket is open."},
                    "400": _text("Not a WebSocket handshake."),
                    "403": _text("A browser Origin outside allowed_origins."),
                    "503": UNAVAILABLE,
                },
            }
        },
        "/v1/webhooks/patreon": {
            "post": {
                "operationId": "patreonWebhook",
                "summary": "Patreon webhook: verified, then a (debounced) refresh.",
                "description": "The signature is checked on the raw body before anything is parsed; "
                "the body is never trusted for data.",
                "parameters": [
                    {
                        "name": "X-Patreon-Signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "Hex HMAC-MD5 of the raw body keyed with the webhook secret.",
                    },
                    {
                        "name": "X-Patreon-Event",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": "members:pledge:create",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": _content({"type": "object"}),
                    "description": "Patreon's JSON:API document, at most 256 KiB.",
                },
                "responses": {
                    "200": {
                        "description": "Valid, but the event cannot change who is shown (ignored).",
                        "content": _content(_ref("WebhookAnswer")),
                    },
                    "202": {
                        "description": "Valid member event: a refresh follows.",
                        "content": _content(_ref("WebhookAnswer")),
                    },
                    "400": _text("Not a well-formed HTTP request body."),
                    "401": _text("Missing or bad X-Patreon-Signature; nothing is refreshed."),
                    "408": _text("The body did not arrive in time."),
                    "413": _text("Body over 256 KiB."),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Snapshot version and age, and the upstream's state.",
                "responses": {"200": {"description": "Health.", "content": _content(_ref("Health"))}},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text format, for the networks in metrics_allow.",
                "responses": {
                    "200": {"description": "Metrics.", "content": _content({"type": "string"}, TEXT)},
                    "403": _text("Not served to this address."),
                },
            }
        },
        "/": {
            "get": {
                "operationId": "page",
                "summary": "The support page.",
                "responses": {
                    "200": {"description": "HTML.", "content": _content({"type": "string"}, "text/html")}
                },
            }
        },
        "/embed.js": {
            "get": {
                "operationId": "embedScript",
                "summary": "The embeddable script, with this server's public URL filled in.",
                "responses": {
                    "200": {
                        "description": "JavaScript.",
                        "content": _content({"type": "string"}, "text/javascript"),
                    }
                },
            }
        },
        "/static/{path}": {
            "get": {
                "operationId": "staticFile",
                "summary": "The page's static files (versioned URLs).",
                "parameters": [
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "The file."}, "404": {"description": "No such file."}},
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": {"description": "OpenAPI 3.1.", "content": _content({"type": "object"})}
                },
            }
        },
    }


def document(public_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``public_url`` becomes its server. ``HEAD`` mirrors every GET."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "sponsord",
            "version": __version__,
            "description": "A live Patreon sponsor wall: snapshot, long-poll, WebSocket, webhook. "
            "Every GET route also answers HEAD (headers only).",
        },
        "paths": _paths(),
        "components": {"schemas": SCHEMAS},
    }
    if public_url:
        doc["servers"] = [{"url": public_url}]
    return doc


routes = web.RouteTableDef()


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """This server's OpenAPI document."""
    body = encode(document(request.app[CONFIG].server.public_url))
    headers = {"Cache-Control": CACHE_CONTROL, "Access-Control-Allow-Origin": "*"}
    return web.Response(body=body, content_type=JSON, headers=headers)
